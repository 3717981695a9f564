"""Offline Sigstore verification of an artefact against a pinned trust root and a signer.

The appliance and the release tool share this check: a file is accepted only when its
bundle (``FILE.sigstore.json`` beside it, Sigstore's convention) verifies against the
pinned ``trusted_root.json`` (Fulcio CA, CT log, Rekor and TSA keys) and names the expected
signer (certificate identity and OIDC issuer). No network is used: the bundle carries the
certificate, its SCT, the transparency-log entry with inclusion proof and checkpoint, and
the signed timestamps.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from slm.errors import SignatureError

BUNDLE_SUFFIX = ".sigstore.json"


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


def bundle_path_for(artefact: Path) -> Path:
    """Where an artefact's bundle lives: beside it, named ``ARTEFACT.sigstore.json``."""
    return artefact.with_name(artefact.name + BUNDLE_SUFFIX)


def _sha256(path: Path) -> tuple[bytes, int]:
    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").digest()
    return digest, path.stat().st_size


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
            raise SignatureError(f"trusted root {trusted_root} is not valid: {exc}") from None
        try:
            self._verifier = Verifier(trusted_root=root)
        except Exception as exc:  # e.g. no certificate authority valid now
            raise SignatureError(f"trusted root {trusted_root} is not usable: "
                                 f"{_first_line(exc)}") from None
        self._policy = policy.Identity(identity=signer.identity, issuer=signer.issuer)
        self.signer = signer

    def verify(self, artefact: Path, bundle: Path | None = None) -> Verified:
        """Verify ``artefact`` with ``bundle`` (default: the one beside it).

        Raises SignatureError naming the artefact and the reason.
        """
        from sigstore.errors import Error as SigstoreError
        from sigstore.hashes import Hashed
        from sigstore.models import Bundle
        from sigstore_models.common.v1 import HashAlgorithm

        began = time.perf_counter()
        bundle = bundle or bundle_path_for(artefact)
        if not artefact.is_file():
            raise SignatureError(f"{artefact}: not found")
        if not bundle.is_file():
            raise SignatureError(f"{artefact}: no signature bundle ({bundle} is missing)",
                                 hint="unsigned artefacts are refused")
        try:
            parsed = Bundle.from_json(bundle.read_bytes())
        except Exception as exc:  # malformed JSON, schema or certificate
            raise SignatureError(f"{artefact}: bundle {bundle} is malformed: "
                                 f"{_first_line(exc)}") from None
        digest, size = _sha256(artefact)
        try:
            self._verifier.verify_artifact(
                Hashed(algorithm=HashAlgorithm.SHA2_256, digest=digest), parsed, self._policy)
        except SigstoreError as exc:
            raise SignatureError(f"{artefact}: signature does not verify: {_first_line(exc)}",
                                 hint=f"expected signer {self.signer.identity} "
                                      f"({self.signer.issuer})") from None
        except Exception as exc:  # a bundle that parses but breaks deeper checks
            raise SignatureError(f"{artefact}: signature does not verify: "
                                 f"{type(exc).__name__}: {_first_line(exc)}") from None
        self._check_signed_within_validity(artefact, parsed)
        return Verified(path=artefact, sha256=digest.hex(), size=size,
                        log_index=int(parsed.log_entry._inner.log_index),
                        seconds=time.perf_counter() - began)


    def _check_signed_within_validity(self, artefact: Path, bundle) -> None:
        """sigstore accepts a certificate authority or log key after its ``validFor`` ended
        (old signatures stay valid) but does not check that the signature was made before
        it ended; this does: a key retired from the trust root signs nothing new."""
        from cryptography.hazmat.primitives import serialization

        cert = bundle.signing_certificate
        issued = cert.not_valid_before_utc
        issuer = cert.issuer.public_bytes(serialization.Encoding.DER)
        ca_windows = self._windows["ca"].get(issuer, [])
        if ca_windows and not any(_within(issued, w) for w in ca_windows):
            raise SignatureError(f"{artefact}: signature does not verify: its certificate was "
                                 f"issued {issued:%Y-%m-%dT%H:%M:%SZ}, outside the validity "
                                 "of its certificate authority in the trusted root")
        entry = bundle.log_entry._inner
        logged = dt.datetime.fromtimestamp(int(entry.integrated_time), dt.UTC)
        log_windows = self._windows["tlog"].get(bytes(entry.log_id.key_id), [])
        if entry.integrated_time and log_windows and not any(
                _within(logged, w) for w in log_windows):
            raise SignatureError(f"{artefact}: signature does not verify: logged "
                                 f"{logged:%Y-%m-%dT%H:%M:%SZ}, outside the validity of the "
                                 "transparency log's key in the trusted root")


Window = tuple[dt.datetime | None, dt.datetime | None]


def _validity_windows(root: dict) -> dict[str, dict[bytes, list[Window]]]:
    """The trusted root's CA (by subject DER) and log-key (by log id) validity windows."""
    import base64

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    def window(valid_for: dict | None) -> Window:
        def when(key: str) -> dt.datetime | None:
            text = (valid_for or {}).get(key)
            return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
        return when("start"), when("end")

    windows: dict[str, dict[bytes, list[Window]]] = {"ca": {}, "tlog": {}}
    for ca in root.get("certificateAuthorities", []):
        chain = ca.get("certChain", {}).get("certificates", [])
        if chain:
            first = x509.load_der_x509_certificate(base64.b64decode(chain[0]["rawBytes"]))
            subject = first.subject.public_bytes(serialization.Encoding.DER)
            windows["ca"].setdefault(subject, []).append(window(ca.get("validFor")))
    for tlog in root.get("tlogs", []):
        key_id = base64.b64decode(tlog.get("logId", {}).get("keyId", ""))
        windows["tlog"].setdefault(key_id, []).append(
            window(tlog.get("publicKey", {}).get("validFor")))
    return windows


def _within(moment: dt.datetime, window: Window) -> bool:
    start, end = window
    return (start is None or start <= moment) and (end is None or moment <= end)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


FILE_LIST_SCHEMA = "service-slm.file-list/v1"


def describe_tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: regular files by sha256, symlinks as ``symlink:TARGET``."""
    entries: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            entries[rel] = f"symlink:{path.readlink()}"
        elif path.is_file():
            entries[rel] = _sha256(path)[0].hex()
        elif not path.is_dir():
            entries[rel] = "special"
    return entries


def file_list(root: Path) -> dict:
    """The file list of a directory tree, as signed at build time."""
    return {"schema": FILE_LIST_SCHEMA, "root": str(root), "files": describe_tree(root)}


def verify_file_list(list_path: Path, verifier: ArtefactVerifier) -> Verified:
    """Verify a signed file list, then the tree it describes: every listed file present with
    its sha256, nothing unlisted added. Raises SignatureError naming the differences."""
    verified = verifier.verify(list_path)
    try:
        doc = json.loads(list_path.read_text())
        if doc.get("schema") != FILE_LIST_SCHEMA:
            raise ValueError(f"schema {doc.get('schema')!r}")
        root, expected = Path(doc["root"]), dict(doc["files"])
    except (ValueError, KeyError, TypeError) as exc:
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
                   file_list_path: Path | None) -> list[Verified]:
    """The start-up admission: the signed file list (the binary) and the model, offline.

    Raises SignatureError on the first artefact refused."""
    verifier = ArtefactVerifier(trusted_root, signer)
    done = []
    if file_list_path is not None:
        done.append(verify_file_list(file_list_path, verifier))
    done.append(verifier.verify(model))
    return done
