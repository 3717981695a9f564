"""Smoke test of tests/sigstore_stack.py: the stock sigstore client signs against the stack and
its bundles verify offline against the trusted root alone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sigstore._internal.fulcio.client import FulcioClientError
from sigstore.errors import VerificationError
from sigstore.models import Bundle, ClientTrustConfig, TrustedRoot
from sigstore.oidc import IdentityToken
from sigstore.sign import SigningContext
from sigstore.verify import Verifier, policy
from slm_policy.sigstore_stack import SigstoreStack

SIGSTORE = Path(sys.executable).with_name("sigstore")  # the venv's stock CLI


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigstoreStack]:
    with SigstoreStack(tmp_path_factory.mktemp("sigstore")) as running:
        yield running


def _context(stack: SigstoreStack) -> SigningContext:
    config = ClientTrustConfig.from_json(stack.trust_config_path.read_text())
    return SigningContext.from_trust_config(config)


def test_api_signs_and_bundle_verifies_offline(stack: SigstoreStack) -> None:
    data = b"service-slm release artefact\n"
    with _context(stack).signer(IdentityToken(stack.token())) as signer:
        bundle = Bundle.from_json(signer.sign_artifact(data).to_json())
    assert bundle.verification_material.timestamp_verification_data is not None  # TSA stamped

    verifier = Verifier(trusted_root=TrustedRoot.from_file(str(stack.trusted_root_path)))
    verifier.verify_artifact(data, bundle, policy.Identity(
        identity=stack.identity, issuer=stack.issuer))
    with pytest.raises(VerificationError):
        verifier.verify_artifact(data, bundle, policy.Identity(
            identity="someone@else.test", issuer=stack.issuer))


def test_stock_cli_signs_and_verifies(stack: SigstoreStack, tmp_path: Path) -> None:
    artifact = tmp_path / "artifact.bin"
    artifact.write_bytes(os.urandom(4096))
    bundle = tmp_path / "artifact.bin.sigstore.json"
    trust = ["--trust-config", str(stack.trust_config_path)]
    sign = [SIGSTORE, *trust, "sign", "--identity-token", stack.token(),
            "--bundle", bundle, artifact]
    verify = [SIGSTORE, *trust, "verify", "identity", "--offline", "--bundle", bundle,
              "--cert-identity", stack.identity, "--cert-oidc-issuer", stack.issuer, artifact]
    for command in (sign, verify):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr


def test_fulcio_refuses_a_forged_token(stack: SigstoreStack, tmp_path: Path) -> None:
    forged = SigstoreStack(tmp_path).token()  # same claims, signed by another OIDC key
    with pytest.raises(FulcioClientError) as refused, \
            _context(stack).signer(IdentityToken(forged)):
        pass
    assert "401" in str(refused.value.__cause__)
