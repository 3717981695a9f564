"""The image build's signature step: only signed artefacts go in, and the appliance gets
what it needs to check them again at every start, offline.

At build time the binary and the model must verify against the pinned trust root and the
signer (``policy/signing.toml``). Into the image go the model's bundle (beside the model),
a signed file list of the unpacked binary (``/usr/lib/slm/bin.files.json``: the binary as
it runs on the appliance is that tree, not the one-file launcher), the pinned
``trusted_root.json`` and a ``[signing]`` section in ``/etc/slm/slm.toml``. ``slm serve``
then refuses to start (exit 3, no restart) when any of them does not verify.

The signing environment comes from ``build/with-sigstore.sh``: SLM_TRUSTED_ROOT,
SLM_SIGNER, and (to sign the file list) SLM_TRUST_CONFIG and SLM_IDENTITY_TOKEN_FILE.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from image_errors import SigningSetupError
from slm.errors import SignatureError
from slm.model.signature import ArtefactVerifier, Signer, bundle_path_for, file_list
from slm_policy.release import ReleaseError, load_signer, sign

TRUST_DIR = "/usr/lib/slm/trust"
FILE_LIST = "/usr/lib/slm/bin.files.json"
INSTALLED_RELEASE = "/var/lib/slm/installed-release"  # slm.service's StateDirectory


@dataclass(frozen=True)
class ImageSigning:
    """Who must have signed, the pinned trust root, and how to sign the file list."""

    signer_name: str
    signer: Signer
    trusted_root: Path
    trust_config: Path | None
    token_file: Path | None

    @classmethod
    def from_env(cls) -> ImageSigning:
        root = os.environ.get("SLM_TRUSTED_ROOT")
        if not root:
            raise SigningSetupError(
                "no signing environment (SLM_TRUSTED_ROOT unset): the image takes only signed "
                "artefacts; run the build through build/with-sigstore.sh (just image does)")
        name = os.environ.get("SLM_SIGNER", "release")
        try:
            signer = load_signer(name)
        except ReleaseError as exc:
            raise SigningSetupError(exc.message, hint=exc.hint) from None
        config = os.environ.get("SLM_TRUST_CONFIG")
        token = os.environ.get("SLM_IDENTITY_TOKEN_FILE")
        return cls(name, signer, Path(root), Path(config) if config else None,
                   Path(token) if token else None)

    def verify_inputs(self, *artefacts: Path) -> dict[str, float]:
        """Refuse any input whose bundle does not verify; seconds per artefact."""
        try:
            verifier = ArtefactVerifier(self.trusted_root, self.signer)
            return {a.name: round(verifier.verify(a).seconds, 3) for a in artefacts}
        except SignatureError as exc:
            raise SigningSetupError(exc.one_line()) from None

    def seal(self, rootfs: Path, payload: str, model_in_image: Path, model_bundle: Path,
             work: Path, release: dict[str, str]) -> dict:
        """Put the model's bundle, the signed file list of ``payload``/bin (naming the
        ``release``: architecture, version, commit), the trust root and the ``[signing]``
        config into ``rootfs``; returns what the manifest records."""
        shutil.copy2(model_bundle, bundle_path_for(model_in_image))
        bin_dir = rootfs / payload.lstrip("/") / "bin"
        try:
            listing = {**file_list(bin_dir, f"{payload}/bin"), "release": release}
        except SignatureError as exc:
            raise SigningSetupError(exc.one_line()) from None
        staged = work / Path(FILE_LIST).name
        staged.write_text(json.dumps(listing, indent=1, sort_keys=True) + "\n")
        began = time.perf_counter()
        try:
            sign([staged], trust_config=self.trust_config, token_file=self.token_file)
        except ReleaseError as exc:
            raise SigningSetupError(f"cannot sign the binary's file list: {exc}") from None
        signed_in = time.perf_counter() - began
        self.verify_inputs(staged)
        target = rootfs / FILE_LIST.lstrip("/")
        shutil.copy2(staged, target)
        shutil.copy2(bundle_path_for(staged), bundle_path_for(target))
        trust = rootfs / TRUST_DIR.lstrip("/")
        trust.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.trusted_root, trust / "trusted_root.json")
        config = rootfs / "etc/slm/slm.toml"
        text = config.read_text()
        if "[signing]" in text:
            raise SigningSetupError(f"{config} already has a [signing] section; the build "
                                    "writes it")
        quoted = json.dumps  # a JSON string is a valid TOML basic string
        config.write_text(text + (
            "\n[signing]\n"
            "# the binary (its file list) and the model must verify at every start, offline\n"
            f"trusted_root = {quoted(TRUST_DIR + '/trusted_root.json')}\n"
            f"identity = {quoted(self.signer.identity)}\n"
            f"issuer = {quoted(self.signer.issuer)}\n"
            f"file_list = {quoted(FILE_LIST)}\n"
            "# the newest release this device has served (state partition): no downgrade\n"
            f"installed_release = {quoted(INSTALLED_RELEASE)}\n"))
        return {"signer": self.signer_name, "identity": self.signer.identity,
                "issuer": self.signer.issuer, "file_list_entries": len(listing["files"]),
                "file_list_sign_seconds": round(signed_in, 2)}
