"""Sigstore signatures over a release: ``slm-gate sign`` and ``slm-gate verify``.

``sign`` makes a bundle beside every artefact (``FILE.sigstore.json``) and a release
manifest (the release's identity: architecture, version, source commit; then artefact ->
sha256 -> bundle), then signs the manifest too, so an entry cannot be dropped or swapped
unnoticed. ``verify`` checks the manifest's signature, that the release is for the expected
architecture and not older than the one installed, then every artefact's sha256 and bundle
against the signer named in ``policy/signing.toml``, and reports every failure, not only
the first.
"""

from __future__ import annotations

import json
import os
import re
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sigstore.models import ClientTrustConfig
    from sigstore.oidc import IdentityToken
    from sigstore.sign import Signer as SigstoreSigner

from slm.errors import SignatureError
from slm.model.file import sha256_of
from slm.model.signature import ArtefactVerifier, Signer, Verified, bundle_path_for, first_line

from slm_policy.errors import ReleaseError

SIGNING_POLICY = Path(__file__).resolve().parents[1] / "signing.toml"
MANIFEST_SCHEMA = "service-slm.release/v2"
ARCHITECTURES = ("amd64", "arm64")


@dataclass(frozen=True)
class ReleaseIdentity:
    """What a release is: for which architecture (Debian's name), which version (dotted
    numbers: the product version and the build number, ``0.1.0.128``) and from which source
    commit."""

    architecture: str
    version: str
    commit: str

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ReleaseError(f"release architecture {self.architecture!r} is not one of "
                               f"{', '.join(ARCHITECTURES)}")
        _version_key(self.version, "release version")
        if not re.fullmatch(r"[0-9a-f]{40}", self.commit):
            raise ReleaseError(f"release commit {self.commit!r} is not a 40-hex git commit")

    def as_dict(self) -> dict[str, str]:
        return {"architecture": self.architecture, "version": self.version,
                "commit": self.commit}

    def older_than(self, version: str) -> bool:
        """Whether this release is older than ``version``, in the order the device uses
        (``slm.model.release_floor.version_key``)."""
        return _version_key(self.version, "release version") < _version_key(
            version, "installed version")


def _version_key(version: str, what: str) -> tuple[int, ...]:
    from slm.model.release_floor import version_key

    try:
        return version_key(version)
    except SignatureError:
        raise ReleaseError(f"{what} {version!r} is not dotted numbers (e.g. "
                           "0.1.0.128)") from None


def identity_of_binary(binary_manifest: Path) -> ReleaseIdentity:
    """The release identity a build recorded in its binary manifest (``slm.manifest.json``:
    ``architecture``, ``version``, ``commit``)."""
    try:
        doc = json.loads(binary_manifest.read_text())
        return ReleaseIdentity(doc["architecture"], doc["version"], doc["commit"])
    except FileNotFoundError:
        raise ReleaseError(f"binary manifest not found: {binary_manifest}") from None
    except OSError as exc:
        raise ReleaseError(f"cannot read {binary_manifest}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ReleaseError(f"binary manifest {binary_manifest} names no release identity "
                           f"(architecture, version, commit): {exc}") from None


@dataclass(frozen=True)
class Signed:
    """One artefact signed: where its bundle went and how long signing took."""

    path: Path
    bundle: Path
    sha256: str
    size: int
    seconds: float


def load_signer(name: str, policy: Path = SIGNING_POLICY) -> Signer:
    """The signer ``name`` from ``policy/signing.toml``."""
    try:
        signers = tomllib.loads(policy.read_text())["signers"]
        entry = signers[name]
        return Signer(identity=str(entry["identity"]), issuer=str(entry["issuer"]))
    except FileNotFoundError:
        raise ReleaseError(f"signing policy not found: {policy}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ReleaseError(f"signing policy {policy} is not valid TOML: {exc}") from None
    except KeyError as exc:
        raise ReleaseError(f"signing policy {policy} has no signer {name!r} "
                           f"with identity and issuer (missing {exc})") from None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _trust_config(path: Path | None) -> ClientTrustConfig:
    from sigstore.models import ClientTrustConfig

    if path is None:  # public Sigstore, its trust root through TUF (network)
        from sigstore.errors import Error as SigstoreError

        try:
            return ClientTrustConfig.production()
        except SigstoreError as exc:
            raise ReleaseError(f"public Sigstore's trust config: {first_line(exc)} (offline? "
                               "pass --trust-config)") from None
    try:
        return ClientTrustConfig.from_json(path.read_text())
    except FileNotFoundError:
        raise ReleaseError(f"trust config not found: {path}") from None
    except Exception as exc:
        raise ReleaseError(f"trust config {path} is not valid: {first_line(exc)}") from None


def identity_token(token_file: Path | None) -> IdentityToken:
    """The OIDC token to sign with: a file, ``$SIGSTORE_ID_TOKEN``, or the CI's ambient one."""
    from sigstore.oidc import IdentityError, IdentityToken, detect_credential

    try:
        if token_file is not None:
            raw = token_file.read_text().strip()
        else:
            raw = os.environ.get("SIGSTORE_ID_TOKEN") or detect_credential() or ""
        if not raw:
            raise ReleaseError("no OIDC identity token: pass --identity-token-file, set "
                               "SIGSTORE_ID_TOKEN, or sign in a CI with ambient OIDC")
        return IdentityToken(raw)
    except OSError as exc:
        raise ReleaseError(f"cannot read the identity token: {exc}") from None
    except IdentityError as exc:
        raise ReleaseError(f"the identity token is not usable: {first_line(exc)}") from None


def sign(artefacts: list[Path], *, trust_config: Path | None, token_file: Path | None,
         manifest: Path | None = None, identity: ReleaseIdentity | None = None) -> list[Signed]:
    """Sign every artefact (bundle beside it); with ``manifest``, write and sign the
    release manifest naming ``identity`` and listing them, paths relative to the manifest's
    directory."""
    from sigstore.hashes import Hashed
    from sigstore.sign import SigningContext
    from sigstore_models.common.v1 import HashAlgorithm

    if manifest is not None and identity is None:
        raise ReleaseError("a release manifest needs the release's identity (architecture, "
                           "version, commit)")
    missing = [str(a) for a in artefacts if not a.is_file()]
    if missing:
        raise ReleaseError(f"cannot sign missing artefact(s): {', '.join(missing)}")
    config = _trust_config(trust_config)
    token = identity_token(token_file)
    signed: list[Signed] = []

    def sign_one(signer: SigstoreSigner, path: Path) -> Signed:
        began = time.perf_counter()
        digest, size = bytes.fromhex(sha256_of(path)), path.stat().st_size
        bundle = signer.sign_artifact(Hashed(algorithm=HashAlgorithm.SHA2_256, digest=digest))
        target = bundle_path_for(path)
        _write_atomic(target, bundle.to_json())
        return Signed(path, target, digest.hex(), size, time.perf_counter() - began)

    try:
        context = SigningContext.from_trust_config(config)
        with context.signer(token, cache=True) as signer:
            signed = [sign_one(signer, path) for path in artefacts]
            if manifest is not None and identity is not None:
                _write_atomic(manifest, json.dumps(_manifest(identity, signed,
                                                             manifest.parent),
                                                   indent=2) + "\n")
                signed.append(sign_one(signer, manifest))
    except OSError as exc:
        raise ReleaseError(f"signing failed: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - sigstore's Fulcio/Rekor/expiry errors share no
        # base class with its Error; Fulcio's own message is often only in the cause
        cause = f" ({first_line(exc.__cause__)})" if exc.__cause__ else ""
        raise ReleaseError(f"signing failed: {type(exc).__name__}: {first_line(exc)}"
                           f"{cause}") from None
    return signed


def _manifest(identity: ReleaseIdentity, signed: list[Signed],
              base: Path) -> dict[str, Any]:
    def rel(path: Path) -> str:
        return os.path.relpath(path.resolve(), base.resolve())

    return {"schema": MANIFEST_SCHEMA, "release": identity.as_dict(), "artefacts": [
        {"path": rel(s.path), "sha256": s.sha256, "size": s.size, "bundle": rel(s.bundle)}
        for s in signed]}


@dataclass(frozen=True)
class Verification:
    """The outcome of ``verify``: what verified, the release's identity (None when the
    manifest itself was refused) and one line per failure (none: the release verifies)."""

    verified: list[Verified]
    identity: ReleaseIdentity | None
    failures: list[str]


def verify(manifest: Path, *, trusted_root: Path | None, signer: Signer,
           expect: list[Path] | None = None, architecture: str | None = None,
           installed_version: str | None = None) -> Verification:
    """Verify the release manifest; that it is for ``architecture`` and not older than
    ``installed_version`` (when given); then every artefact it lists (and, with ``expect``,
    that it lists each of those files). Raises SignatureError for an unusable trust root,
    ReleaseError for an unusable ``installed_version``."""
    verifier = _verifier(trusted_root, signer)
    try:
        head, data = verifier.verify_document(manifest)
    except SignatureError as exc:
        return Verification([], None, [f"release manifest: {exc.one_line()}"])
    try:
        doc = json.loads(data)
        if doc.get("schema") != MANIFEST_SCHEMA:
            raise ValueError(f"schema is {doc.get('schema')!r}, expected {MANIFEST_SCHEMA}")
        release = doc["release"]
        identity = ReleaseIdentity(release["architecture"], release["version"],
                                   release["commit"])
        entries = [(e["path"], e["sha256"], e["bundle"]) for e in doc["artefacts"]]
    except (ValueError, KeyError, TypeError, AttributeError, ReleaseError) as exc:
        return Verification([head], None, [f"release manifest {manifest} is malformed: {exc}"])
    verified, failures = [head], []
    if architecture is not None and identity.architecture != architecture:
        failures.append(f"release manifest {manifest} is for {identity.architecture}, "
                        f"not {architecture}")
    if installed_version is not None and identity.older_than(installed_version):
        failures.append(f"release {identity.version} is older than the installed "
                        f"{installed_version}: a downgrade is refused")
    listed = {(manifest.parent / rel).resolve() for rel, _, _ in entries}
    failures += [f"{path}: not in the release manifest {manifest}"
                 for path in expect or [] if path.resolve() not in listed]
    for rel, sha256, bundle_rel in entries:
        path, bundle = manifest.parent / rel, manifest.parent / bundle_rel
        try:
            result = verifier.verify(path, bundle)
        except SignatureError as exc:
            failures.append(exc.one_line())
            continue
        if result.sha256 != sha256:
            failures.append(f"{path}: sha256 {result.sha256} is not the release's {sha256}")
            continue
        verified.append(result)
    if not entries:
        failures.append(f"release manifest {manifest} lists no artefacts")
    return Verification(verified, identity, failures)


def _verifier(trusted_root: Path | None, signer: Signer) -> ArtefactVerifier:
    if trusted_root is None:
        # public Sigstore: the trust root through TUF (network), cached for later offline use
        from sigstore.errors import Error as SigstoreError
        from sigstore.models import ClientTrustConfig

        try:
            cached = ClientTrustConfig.production().trusted_root
        except SigstoreError as exc:
            raise ReleaseError(f"public Sigstore's trusted root: {first_line(exc)} (offline? "
                               "pass --trusted-root)") from None
        path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
            "service-slm" / "trusted_root.public.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, cached._inner.to_json())
        trusted_root = path
    return ArtefactVerifier(trusted_root, signer)
