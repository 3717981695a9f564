"""The API key store: named keys with scopes, rate limits and token budgets, kept only as
hashes.

One JSON file (``server.key_store``, ``/var/lib/slm/keys.json`` on the appliance, mode 0600).
A key is ``slm-`` and 43 URL-safe characters (256 random bits), shown once when it is made;
the file keeps its sha256, which is enough for a secret of that entropy and lets a lookup
cost one hash. Writers (``slm keys create`` / ``revoke``) take an exclusive lock on a
lock file beside the store, rewrite the store to a temporary file and rename it into
place, so a reader never sees half a file and two writers never lose each other's change;
written by root, the file belongs to the owner of its directory (the service's user).
The service reloads the store whenever the file changes, so a revocation applies to the
next request without a restart. Revoked keys stay listed (with when), and a name is never
given to a second key, so the ledger's key names stay unambiguous.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from slm.errors import SlmError

KEY_PREFIX = "slm-"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
FORMAT_VERSION = 1
# A key's limits (None: unlimited): requests and tokens per sliding minute
# (:mod:`slm.access.limits`), tokens per UTC day and month (:mod:`slm.access.budgets`).
LIMITS = ("rpm", "tpm", "tokens_per_day", "tokens_per_month")


class KeyStoreError(SlmError):
    """The key store cannot be read or written, or a key operation is refused."""


class KeyRefused(KeyStoreError):
    """A change the store refuses: ``reason`` is ``invalid`` (a bad name, scope or limit),
    ``exists`` (the name was taken, perhaps by a revoked key), ``unknown`` (no such key)
    or ``revoked`` (already)."""

    def __init__(self, message: str, *, reason: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class Scope(StrEnum):
    """What a key may do: ``inference`` (chat, completions, embeddings), ``documents``
    (upload, list, delete, cite), ``admin`` (metrics, adapters, keys)."""

    INFERENCE = "inference"
    DOCUMENTS = "documents"
    ADMIN = "admin"


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """One key as stored: never the key itself, only its sha256."""

    name: str
    sha256: str
    scopes: frozenset[Scope]
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute
    tokens_per_day: int | None = None  # per UTC calendar day
    tokens_per_month: int | None = None  # per UTC calendar month
    created: str = ""
    revoked: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None

    def allows(self, scope: Scope) -> bool:
        return self.active and scope in self.scopes

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256,
                "scopes": sorted(s.value for s in self.scopes),
                **{name: getattr(self, name) for name in LIMITS},
                "created": self.created, "revoked": self.revoked}

    def public_json(self) -> dict[str, Any]:
        """What may be shown of the key (``slm keys list --json``, ``/v1/keys``): all but
        its hash."""
        return {k: v for k, v in self.to_json().items() if k != "sha256"}

    @classmethod
    def from_json(cls, entry: Any, where: str) -> ApiKey:
        """An entry of the file, checked (KeyStoreError naming what is wrong)."""
        if not isinstance(entry, dict):
            raise KeyStoreError(f"{where}: an entry is not an object")
        try:
            key = cls(
                name=entry["name"], sha256=entry["sha256"],
                scopes=frozenset(Scope(s) for s in entry["scopes"]),
                **{name: entry.get(name) for name in LIMITS},
                created=entry.get("created", ""), revoked=entry.get("revoked"))
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyStoreError(f"{where}: a malformed entry ({exc!r})") from None
        if not (isinstance(key.name, str) and _NAME.match(key.name)):
            raise KeyStoreError(f"{where}: bad key name {key.name!r}")
        if not (isinstance(key.sha256, str) and _SHA256.match(key.sha256)):
            raise KeyStoreError(f"{where}: key {key.name!r} has no valid sha256")
        for name in LIMITS:
            limit = getattr(key, name)
            if limit is not None and (type(limit) is not int or limit < 1):
                raise KeyStoreError(f"{where}: key {key.name!r} has a bad {name} {limit!r}")
        return key


def hash_key(key: str) -> str:
    """The sha256 the store keeps of ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise KeyRefused(f"bad key name {name!r}", reason="invalid",
                         hint="lowercase letters, digits, '.', '-' or '_', at most 64")
    return name


class KeyStore:
    """The key file at ``path``: read with :meth:`keys`, looked up per request with
    :meth:`authenticate`, changed with :meth:`create` and :meth:`revoke`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._keys: tuple[ApiKey, ...] = ()

    # -- reading ------------------------------------------------------------------------

    def keys(self) -> tuple[ApiKey, ...]:
        """Every key in the file (none when it does not exist yet), reloaded when the file
        changed since the last call."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return ()
        except OSError as exc:
            raise KeyStoreError(f"cannot read the key store {self.path}: {exc.strerror}") \
                from None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._seen:
                self._keys = self._read()
                self._seen = stamp
            return self._keys

    def _read(self) -> tuple[ApiKey, ...]:
        where = str(self.path)
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return ()
        except OSError as exc:
            raise KeyStoreError(f"cannot read the key store {where}: {exc.strerror}") from None
        except ValueError as exc:
            raise KeyStoreError(f"{where}: not JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            raise KeyStoreError(f"{where}: not a key store of version {FORMAT_VERSION}")
        entries = doc.get("keys")
        if not isinstance(entries, list):
            raise KeyStoreError(f"{where}: 'keys' must be a list")
        keys = tuple(ApiKey.from_json(e, where) for e in entries)
        if len({k.name for k in keys}) != len(keys):
            raise KeyStoreError(f"{where}: a key name is used twice")
        return keys

    def authenticate(self, presented: str) -> ApiKey | None:
        """The active key ``presented`` is, or None (see :func:`find_key`)."""
        return find_key(self.keys(), presented)

    # -- changing -----------------------------------------------------------------------

    def create(self, name: str, scopes: frozenset[Scope], *, rpm: int | None = None,
               tpm: int | None = None, tokens_per_day: int | None = None,
               tokens_per_month: int | None = None) -> str:
        """Store a new key and return it (the only time it is seen); a limit of None is
        no limit."""
        check_name(name)
        if not scopes:
            raise KeyRefused("a key needs at least one scope", reason="invalid",
                             hint=f"--scope {','.join(s.value for s in Scope)}")
        limits = {"rpm": rpm, "tpm": tpm, "tokens_per_day": tokens_per_day,
                  "tokens_per_month": tokens_per_month}
        for limit_name, limit in limits.items():
            if limit is not None and limit < 1:
                raise KeyRefused(f"--{limit_name.replace('_', '-')} must be at least 1",
                                 reason="invalid")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._writing() as keys:
            if any(k.name == name for k in keys):
                raise KeyRefused(f"a key named {name!r} exists already", reason="exists",
                                 hint="names are never reused, even after a revocation")
            keys.append(ApiKey(name=name, sha256=hash_key(secret), scopes=scopes, rpm=rpm,
                               tpm=tpm, tokens_per_day=tokens_per_day,
                               tokens_per_month=tokens_per_month, created=_now()))
        return secret

    def revoke(self, name: str) -> ApiKey:
        """Mark the key ``name`` revoked (from the next request on); return it."""
        with self._writing() as keys:
            for i, key in enumerate(keys):
                if key.name == name:
                    if not key.active:
                        raise KeyRefused(f"key {name!r} was revoked already ({key.revoked})",
                                         reason="revoked")
                    keys[i] = dataclasses.replace(key, revoked=_now())
                    return keys[i]
        raise KeyRefused(f"no key named {name!r}", reason="unknown")

    @contextlib.contextmanager
    def _writing(self) -> Iterator[list[ApiKey]]:
        """The keys under the store's lock, written back atomically (mode 0600) when the
        block ends without an error."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(self.path.with_name(self.path.name + ".lock"),
                              os.O_RDWR | os.O_CREAT, 0o600)
            if os.geteuid() == 0:  # so that the service can take the lock too
                owner = self.path.parent.stat()
                os.fchown(lock_fd, owner.st_uid, owner.st_gid)
        except OSError as exc:
            raise KeyStoreError(f"cannot write the key store {self.path}: {exc.strerror}") \
                from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            keys = list(self._read())
            yield keys
            self._write(keys)
        finally:
            os.close(lock_fd)

    def _write(self, keys: list[ApiKey]) -> None:
        doc = {"version": FORMAT_VERSION, "keys": [k.to_json() for k in keys]}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            if os.geteuid() == 0:  # root (over SSH) writes it for the service's user
                owner = self.path.parent.stat()
                os.fchown(fd, owner.st_uid, owner.st_gid)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=1)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise KeyStoreError(f"cannot write the key store {self.path}: {exc.strerror}") \
                from None


def find_key(keys: tuple[ApiKey, ...], presented: str) -> ApiKey | None:
    """The active key among ``keys`` that ``presented`` is, or None. Every stored hash is
    compared, in constant time, whatever matched."""
    digest = hash_key(presented).encode()
    matched = None
    for key in keys:
        if hmac.compare_digest(digest, key.sha256.encode()) and key.active:
            matched = key
    return matched


def parse_scopes(text: str) -> frozenset[Scope]:
    """``inference,documents`` → the scopes (KeyStoreError naming an unknown one)."""
    scopes = set()
    for part in (p.strip() for p in text.split(",")):
        try:
            scopes.add(Scope(part))
        except ValueError:
            raise KeyRefused(f"unknown scope {part!r}", reason="invalid",
                             hint=f"one of {', '.join(s.value for s in Scope)}") from None
    return frozenset(scopes)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
