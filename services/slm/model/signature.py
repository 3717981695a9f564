"""Offline Sigstore verification of an artefact against a pinned trust root and a signer.

The appliance and the release tool share this check: a file is accepted only when its
bundle (``FILE.sigstore.json`` beside it, Sigstore's convention) verifies against the
pinned ``trusted_root.json`` (Fulcio CA, CT log, Rekor and TSA keys) and names the expected
signer (certificate identity and OIDC issuer). No network is used: the bundle carries the
certificate, its SCT, the transparency-log entry with inclusion proof and checkpoint, and
the signed timestamps.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slm.errors import SignatureError

BUNDLE_SUFFIX = ".sigstore.json"
FILE_LIST_SCHEMA = "service-slm.file-list/v1"
Window = tuple[dt.datetime | None, dt.datetime | None]


def digest_uncached(fh: Any) -> bytes:
    """sha256 of an open file, then its clean pages dropped from the page cache
    (``POSIX_FADV_DONTNEED``): a check that reads the model and the whole binary tree at
    start must not leave them charged to the service's memory cgroup. Pages someone maps
    (llama.cpp's model, the loaded libraries) stay; they are theirs."""
    digest = hashlib.file_digest(fh, "sha256").digest()
    with contextlib.suppress(OSError):  # a hint: a file system without it changes nothing
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return digest


@dataclass(frozen=True)
class Signer:
    """Who must have signed: the certificate's identity (SAN) and the OIDC issuer."""

    identity: str
    issuer: str


@dataclass(frozen=True)
class Verified:
    """A verified artefact: what was checked, against which log entry, and how long it took."""

    path: Path
    sha256: str
    size: int
    log_index: int
    seconds: float

    def line(self) -> str:
        """One line for a CLI or the journal."""
        return (f"verified {self.path} ({self.size / 1e6:.1f} MB, log index {self.log_index}) "
                f"in {self.seconds:.2f} s")


def bundle_path_for(artefact: Path) -> Path:
    """Where an artefact's bundle lives: beside it, named ``ARTEFACT.sigstore.json``."""
    return artefact.with_name(artefact.name + BUNDLE_SUFFIX)


def first_line(exc: BaseException, limit: int = 240) -> str:
    """An exception's first line, cut to ``limit`` characters (some carry whole proofs)."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return text if len(text) <= limit else text[:limit] + "…"


class ArtefactVerifier:
    """Verifies artefacts offline against one trust root and one signer."""

    def __init__(self, trusted_root: Path, signer: Signer) -> None:
        # sigstore is imported here, not at module level: only a configured check pays for it
        from sigstore.models import TrustedRoot
        from sigstore.verify import Verifier, policy

        try:
            root = TrustedRoot.from_file(str(trusted_root))
            self._windows = _validity_windows(json.loads(trusted_root.read_text()))
        except FileNotFoundError:
            raise SignatureError(f"trusted root not found: {trusted_root}") from None
        except Exception as exc:  # the sigstore/pydantic parse errors have no common base
            raise SignatureError(f"trusted root {trusted_root} is not valid: "
                                 f"{first_line(exc)}") from None
        try:
            self._verifier = Verifier(trusted_root=root)
        except Exception as exc:  # e.g. no certificate authority valid now
            raise SignatureError(f"trusted root {trusted_root} is not usable: "
                                 f"{first_line(exc)}") from None
        self._policy = policy.Identity(identity=signer.identity, issuer=signer.issuer)
        self.signer = signer

    def verify(self, artefact: Path, bundle: Path | None = None) -> Verified:
        """Verify ``artefact`` with ``bundle`` (default: the one beside it), hashing the file
        as it streams. Raises SignatureError naming the artefact and the reason."""
        began = time.perf_counter()
        try:
            with artefact.open("rb") as fh:
                digest = digest_uncached(fh)
                size = os.fstat(fh.fileno()).st_size
        except OSError as exc:
            raise SignatureError(f"{artefact}: cannot read: {exc.strerror}") from None
        return self._verify_digest(artefact, digest, size, bundle, began)

    def verify_document(self, path: Path, bundle: Path | None = None) -> tuple[Verified, bytes]:
        """Read a small signed document once, verify those bytes, and return them: what is
        parsed afterwards is exactly what was verified."""
        began = time.perf_counter()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SignatureError(f"{path}: cannot read: {exc.strerror}") from None
        verified = self._verify_digest(path, hashlib.sha256(data).digest(), len(data), bundle,
                                       began)
        return verified, data

    def _verify_digest(self, artefact: Path, digest: bytes, size: int, bundle: Path | None,
                       began: float) -> Verified:
        from sigstore.errors import Error as SigstoreError
        from sigstore.hashes import Hashed
        from sigstore.models import Bundle
        from sigstore_models.common.v1 import HashAlgorithm

        bundle = bundle or bundle_path_for(artefact)
        try:
            parsed = Bundle.from_json(bundle.read_bytes())
        except FileNotFoundError:
            raise SignatureError(f"{artefact}: no signature bundle ({bundle} is missing)",
                                 hint="unsigned artefacts are refused") from None
        except Exception as exc:  # unreadable, malformed JSON, schema or certificate
            raise SignatureError(f"{artefact}: bundle {bundle} is malformed: "
                                 f"{first_line(exc)}") from None
        try:
            self._verifier.verify_artifact(
                Hashed(algorithm=HashAlgorithm.SHA2_256, digest=digest), parsed, self._policy)
        except SigstoreError as exc:
            reason = first_line(exc)
            hint = (f"expected signer {self.signer.identity} ({self.signer.issuer})"
                    if "SAN" in reason or "ssuer" in reason else None)
            raise SignatureError(f"{artefact}: signature does not verify: {reason}",
                                 hint=hint) from None
        except Exception as exc:  # a bundle that parses but breaks deeper checks
            raise SignatureError(f"{artefact}: signature does not verify: "
                                 f"{type(exc).__name__}: {first_line(exc)}") from None
        self._check_signed_within_validity(artefact, parsed)
        return Verified(path=artefact, sha256=digest.hex(), size=size,
                        log_index=int(parsed.log_entry._inner.log_index),
                        seconds=time.perf_counter() - began)

    def _check_signed_within_validity(self, artefact: Path, bundle: Any) -> None:
        """sigstore accepts a certificate authority or log key after its ``validFor`` ended
        (old signatures stay valid) but does not check that the signature was made before
        it ended; this does: a key retired from the trust root signs nothing new. The
        certificate's notBefore is its issue time (Fulcio certificates live ten minutes)."""
        cert = bundle.signing_certificate
        issued = cert.not_valid_before_utc
        windows = [w for ca, w in self._windows["ca"] if _issued_by(cert, ca)]
        if not any(_within(issued, w) for w in windows):
            raise SignatureError(f"{artefact}: signature does not verify: its certificate was "
                                 f"issued {issued:%Y-%m-%dT%H:%M:%SZ}, outside the validity "
                                 "of its certificate authority in the trusted root")
        entry = bundle.log_entry._inner
        if not entry.integrated_time:  # no log time (a TSA-only bundle): sigstore checks that
            return
        logged = dt.datetime.fromtimestamp(int(entry.integrated_time), dt.UTC)
        windows = self._windows["tlog"].get(bytes(entry.log_id.key_id), [])
        if not any(_within(logged, w) for w in windows):
            raise SignatureError(f"{artefact}: signature does not verify: logged "
                                 f"{logged:%Y-%m-%dT%H:%M:%SZ}, outside the validity of the "
                                 "transparency log's key in the trusted root")


def _validity_windows(root: dict[str, Any]) -> dict[str, Any]:
    """The trusted root's CA certificates (the one issuing leaves, with its window) and log
    keys (by log id) with their validity windows."""
    from cryptography import x509

    def window(valid_for: dict[str, Any] | None) -> Window:
        def when(key: str) -> dt.datetime | None:
            text = (valid_for or {}).get(key)
            return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
        return when("start"), when("end")

    cas = []
    for ca in root.get("certificateAuthorities", []):
        chain = ca.get("certChain", {}).get("certificates", [])
        if chain:
            issuing = x509.load_der_x509_certificate(base64.b64decode(chain[0]["rawBytes"]))
            cas.append((issuing, window(ca.get("validFor"))))
    tlogs: dict[bytes, list[Window]] = {}
    for tlog in root.get("tlogs", []):
        key_id = base64.b64decode(tlog.get("logId", {}).get("keyId", ""))
        tlogs.setdefault(key_id, []).append(window(tlog.get("publicKey", {}).get("validFor")))
    return {"ca": cas, "tlog": tlogs}


def _issued_by(cert: Any, ca: Any) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except Exception:  # wrong issuer name, key or signature
        return False


def _within(moment: dt.datetime, window: Window) -> bool:
    """start <= moment < end, as sigstore judges its timestamp authorities."""
    start, end = window
    return (start is None or start <= moment) and (end is None or moment < end)


def describe_tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: regular files by sha256, symlinks as ``symlink:TARGET``
    (only targets inside ``root``), anything else as ``special``."""
    entries: dict[str, str] = {}
    base = root.resolve()
    try:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                target = path.readlink()
                if not (path.parent / target).resolve().is_relative_to(base):
                    raise SignatureError(f"{path}: symlink to {target} points outside {root}")
                entries[rel] = f"symlink:{target}"
            elif path.is_file():
                with path.open("rb") as fh:
                    entries[rel] = digest_uncached(fh).hex()
            elif not path.is_dir():
                entries[rel] = "special"
    except OSError as exc:
        raise SignatureError(f"{exc.filename or root}: cannot read: {exc.strerror}") from None
    return entries


def file_list(root: Path, recorded_root: str | None = None) -> dict[str, Any]:
    """The file list of a directory tree, as signed at build time (``recorded_root``: where
    the tree will sit when checked, e.g. inside the image)."""
    return {"schema": FILE_LIST_SCHEMA, "root": recorded_root or str(root),
            "files": describe_tree(root)}


def verify_file_list(list_path: Path, verifier: ArtefactVerifier) -> Verified:
    """Verify a signed file list, then the tree it describes: every listed file present with
    its sha256, nothing unlisted added. Raises SignatureError naming the differences."""
    verified, data = verifier.verify_document(list_path)
    try:
        doc = json.loads(data)
        if doc.get("schema") != FILE_LIST_SCHEMA:
            raise ValueError(f"schema {doc.get('schema')!r}")
        root, expected = Path(doc["root"]), dict(doc["files"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SignatureError(f"{list_path}: not a file list: {exc}") from None
    actual = describe_tree(root) if root.is_dir() else {}
    changed = sorted(k for k in expected if k in actual and actual[k] != expected[k])
    missing = sorted(k for k in expected if k not in actual)
    added = sorted(k for k in actual if k not in expected)
    if changed or missing or added:
        parts = [f"{label} {', '.join(names[:3])}" + (f" (+{len(names) - 3})"
                 if len(names) > 3 else "")
                 for label, names in (("changed", changed), ("missing", missing),
                                      ("added", added)) if names]
        raise SignatureError(f"{root} does not match its signed file list {list_path}: "
                             + "; ".join(parts))
    return verified


def check_at_start(trusted_root: Path, signer: Signer, model: Path,
                   file_list_path: Path | None,
                   adapters_for: Callable[[str], list[Path]] = lambda _sha256: [],
                   ) -> list[Verified]:
    """The start-up admission, offline: the signed file list (the binary), the model, and
    ``adapters_for(the model's verified sha256)`` (its LoRA adapters).

    Raises SignatureError on the first artefact refused."""
    verifier = ArtefactVerifier(trusted_root, signer)
    done = []
    if file_list_path is not None:
        done.append(verify_file_list(file_list_path, verifier))
    done.append(verifier.verify(model))
    done += [verifier.verify(path) for path in adapters_for(done[-1].sha256)]
    return done
