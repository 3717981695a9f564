"""Sigstore signing and offline verification, for real, against the local test stack.

The unmodified ``sigstore`` library signs (Fulcio-like CA, Rekor-like log, TSA on
loopback: tests/sigstore_stack.py) and verifies with only the pinned trusted root; the
release tool (``slm-gate sign`` / ``verify``), the stock ``sigstore verify identity`` CLI,
and the Doorman's start-up admission (``[signing]``: exit 3, nothing loads) are checked.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from slm.errors import SignatureError
from slm.model.signature import ArtefactVerifier, Signer, bundle_path_for, file_list
from slm_policy.errors import ReleaseError
from slm_policy.release import ReleaseIdentity, sign, verify
from slm_policy.sigstore_stack import SigstoreStack
from support.server import run_slm

SIGSTORE_CLI = str(Path(sys.executable).with_name("sigstore"))
GATE = [sys.executable, "-m", "slm_policy.cli"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigstoreStack]:
    with SigstoreStack(tmp_path_factory.mktemp("sigstore")) as running:
        yield running


@pytest.fixture(scope="module")
def other_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigstoreStack]:
    """A second instance: its trust root is unknown to the first's signatures."""
    with SigstoreStack(tmp_path_factory.mktemp("sigstore-other")) as running:
        yield running


@pytest.fixture(scope="module")
def token_file(stack: SigstoreStack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(stack.token())
    return path


@pytest.fixture
def signed(stack: SigstoreStack, token_file: Path, tmp_path: Path) -> Callable[..., Path]:
    """Factory: a file with the given content, signed (bundle beside it)."""

    def make(name: str = "artefact.bin", content: bytes = b"the doorman\n" * 1000) -> Path:
        path = tmp_path / name
        path.write_bytes(content)
        sign([path], trust_config=stack.trust_config_path, token_file=token_file)
        return path

    return make


def verifier(stack: SigstoreStack, *, identity: str | None = None,
             issuer: str | None = None, root: Path | None = None) -> ArtefactVerifier:
    return ArtefactVerifier(root or stack.trusted_root_path,
                            Signer(identity or stack.identity, issuer or stack.issuer))


def edit_bundle(artefact: Path, change: Callable[[dict], None]) -> None:
    bundle = bundle_path_for(artefact)
    doc = json.loads(bundle.read_text())
    change(doc)
    bundle.write_text(json.dumps(doc))


def flip_b64(value: str) -> str:
    """The same base64 field with its last byte changed."""
    raw = bytearray(base64.b64decode(value))
    raw[-1] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def test_signed_artefact_verifies_offline(stack: SigstoreStack, signed) -> None:
    artefact = signed()
    done = verifier(stack).verify(artefact)
    assert done.size == artefact.stat().st_size
    bundle = json.loads(bundle_path_for(artefact).read_text())
    entry = bundle["verificationMaterial"]["tlogEntries"][0]
    assert entry["inclusionProof"]["checkpoint"]["envelope"]
    assert entry["inclusionPromise"]["signedEntryTimestamp"]


def test_stock_sigstore_cli_verifies_our_bundles(stack: SigstoreStack, signed) -> None:
    artefact = signed()
    ok = subprocess.run(
        [SIGSTORE_CLI, "--trust-config", str(stack.trust_config_path), "verify", "identity",
         "--bundle", str(bundle_path_for(artefact)), "--cert-identity", stack.identity,
         "--cert-oidc-issuer", stack.issuer, str(artefact)],
        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    wrong = subprocess.run(
        [SIGSTORE_CLI, "--trust-config", str(stack.trust_config_path), "verify", "identity",
         "--bundle", str(bundle_path_for(artefact)), "--cert-identity", "mallory@evil.test",
         "--cert-oidc-issuer", stack.issuer, str(artefact)],
        capture_output=True, text=True, timeout=120)
    assert wrong.returncode != 0


REFUSALS: dict[str, tuple[Callable, str]] = {
    "wrong identity": (lambda s, a, o: verifier(s, identity="mallory@evil.test").verify(a),
                       "SANs do not match mallory@evil.test"),
    "wrong issuer": (lambda s, a, o: verifier(s, issuer="https://evil.test").verify(a),
                     "OIDCIssuer does not match"),
    "tampered artefact": (lambda s, a, o: (a.write_bytes(a.read_bytes() + b"!"),
                                           verifier(s).verify(a)), "digest mismatch"),
    "tampered SET": (lambda s, a, o: (edit_bundle(a, lambda d: d["verificationMaterial"][
        "tlogEntries"][0]["inclusionPromise"].update(signedEntryTimestamp=flip_b64(
            d["verificationMaterial"]["tlogEntries"][0]["inclusionPromise"][
                "signedEntryTimestamp"]))), verifier(s).verify(a)), "SET: invalid"),
    "tampered inclusion proof": (lambda s, a, o: (edit_bundle(a, lambda d: d[
        "verificationMaterial"]["tlogEntries"][0]["inclusionProof"].update(rootHash=flip_b64(
            d["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["rootHash"]))),
        verifier(s).verify(a)), "inclusion proof contains invalid root hash"),
    "tampered signature": (lambda s, a, o: (edit_bundle(a, lambda d: d["messageSignature"]
        .update(signature=flip_b64(d["messageSignature"]["signature"]))),
        verifier(s).verify(a)), "Signature is invalid for input"),
    "unknown trust root": (lambda s, a, o: verifier(s, root=o.trusted_root_path).verify(a),
                           "certificate chain"),
    "missing bundle": (lambda s, a, o: (bundle_path_for(a).unlink(), verifier(s).verify(a)),
                       "no signature bundle"),
    "malformed bundle": (lambda s, a, o: (bundle_path_for(a).write_text("{not json"),
                                          verifier(s).verify(a)), "malformed"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_with_a_clear_message(case: str, stack: SigstoreStack,
                                      other_stack: SigstoreStack, signed) -> None:
    action, expected = REFUSALS[case]
    artefact = signed()
    with pytest.raises(SignatureError) as refused:
        action(stack, artefact, other_stack)
    line = refused.value.one_line()
    assert str(artefact) in line and expected in line, line
    assert "\n" not in line and len(line) < 600


def test_bundle_of_another_artefact_is_refused(stack: SigstoreStack, signed) -> None:
    one, two = signed("one.bin", b"one"), signed("two.bin", b"two")
    shutil.copy(bundle_path_for(two), bundle_path_for(one))
    with pytest.raises(SignatureError, match="does not verify"):
        verifier(stack).verify(one)


EXPIRED_ROOTS = {
    # the CA's validity ended before the certificate was issued (a retired CA)
    "CA retired": (lambda r: [ca["validFor"].update(end="2020-01-01T00:00:00Z")
                              for ca in r["certificateAuthorities"]], "certificate authority"),
    # the log key's validity ended before the entry was logged (a rotated log key)
    "log key retired": (lambda r: [t["publicKey"]["validFor"].update(end="2020-01-01T00:00:00Z")
                                   for t in r["tlogs"]], "transparency log"),
    # a root not yet valid: sigstore itself finds no usable CA
    "not yet valid": (lambda r: [ca["validFor"].update(start="2999-01-01T00:00:00Z")
                                 for ca in r["certificateAuthorities"]], "not usable"),
}


@pytest.mark.parametrize("case", list(EXPIRED_ROOTS))
def test_expired_trust_root_is_refused(case: str, stack: SigstoreStack, signed,
                                       tmp_path: Path) -> None:
    change, expected = EXPIRED_ROOTS[case]
    artefact = signed()
    root = json.loads(stack.trusted_root_path.read_text())
    change(root)
    expired = tmp_path / "expired_root.json"
    expired.write_text(json.dumps(root))
    with pytest.raises(SignatureError) as refused:
        verifier(stack, root=expired).verify(artefact)
    assert expected in refused.value.message, refused.value.message


def test_broken_trust_root_is_a_clear_error(stack: SigstoreStack, tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match="trusted root not found"):
        verifier(stack, root=tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SignatureError, match="is not valid"):
        verifier(stack, root=tmp_path / "bad.json")


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_release_round_trip_and_tampering(stack: SigstoreStack, token_file: Path,
                                          tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    artefacts = [tmp_path / "bin/slm", tmp_path / "model.gguf", tmp_path / "sbom.cdx.json"]
    for i, path in enumerate(artefacts):
        path.write_bytes(bytes([i]) * 4096)
    manifest = tmp_path / "release.json"
    done = sign(artefacts, trust_config=stack.trust_config_path, token_file=token_file,
                manifest=manifest, identity=ReleaseIdentity("amd64", "0.1.0.7", COMMIT))
    assert [d.path for d in done] == [*artefacts, manifest]
    doc = json.loads(manifest.read_text())
    assert doc["release"] == {"architecture": "amd64", "version": "0.1.0.7", "commit": COMMIT}
    assert [e["path"] for e in doc["artefacts"]] == ["bin/slm", "model.gguf", "sbom.cdx.json"]
    signer = Signer(stack.identity, stack.issuer)
    result = verify(manifest, trusted_root=stack.trusted_root_path, signer=signer)
    assert result.failures == [] and len(result.verified) == 4
    assert result.identity == ReleaseIdentity("amd64", "0.1.0.7", COMMIT)

    # through the CLI: exit 0, then exit 1 naming the tampered artefact (and only it)
    args = [*GATE, "verify", str(manifest), "--signer", "local",
            "--trusted-root", str(stack.trusted_root_path)]
    ok = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and f"release 0.1.0.7 for amd64 from commit {COMMIT}" in ok.stdout
    # every expected artefact must be listed: an unlisted one fails, named
    (tmp_path / "image.raw.zst").write_bytes(b"not in the release")
    unlisted = subprocess.run([*args, "--expect", *map(str, artefacts),
                               str(tmp_path / "image.raw.zst")],
                              capture_output=True, text=True, timeout=120)
    assert unlisted.returncode == 1 and "image.raw.zst: not in the release" in unlisted.stderr
    artefacts[1].write_bytes(b"a swapped model")
    bad = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    fails = [line for line in bad.stderr.splitlines() if "FAIL" in line]
    assert len(fails) == 1 and "model.gguf" in fails[0], bad.stderr

    # an artefact swapped with its own valid bundle still differs from the release's sha256
    sign([artefacts[1]], trust_config=stack.trust_config_path, token_file=token_file)
    failures = verify(manifest, trusted_root=stack.trusted_root_path, signer=signer).failures
    assert len(failures) == 1 and "is not the release's" in failures[0]

    # the manifest is signed: editing it is refused before any artefact is trusted
    manifest.write_text(manifest.read_text().replace("sbom.cdx.json\"", "sbom.cdx.json \""))
    result = verify(manifest, trusted_root=stack.trusted_root_path, signer=signer)
    assert result.verified == [] and "release manifest" in result.failures[0]


def test_a_release_for_another_architecture_or_older_is_refused(
        stack: SigstoreStack, token_file: Path, tmp_path: Path) -> None:
    (tmp_path / "slm").write_bytes(b"binary")
    manifest = tmp_path / "release.json"
    sign([tmp_path / "slm"], trust_config=stack.trust_config_path, token_file=token_file,
         manifest=manifest, identity=ReleaseIdentity("arm64", "0.1.0.7", COMMIT))
    signer = Signer(stack.identity, stack.issuer)

    def failures(**kwargs: str) -> list[str]:
        return verify(manifest, trusted_root=stack.trusted_root_path, signer=signer,
                      **kwargs).failures  # type: ignore[arg-type]

    assert failures(architecture="arm64", installed_version="0.1.0.7") == []
    assert failures(installed_version="0.1.0.6") == []
    assert failures(installed_version="0.0.9.200") == []
    assert failures(architecture="amd64") == [
        f"release manifest {manifest} is for arm64, not amd64"]
    # numeric ordering, not text: 0.1.0.7 is older than 0.1.0.10
    assert failures(installed_version="0.1.0.10") == [
        "release 0.1.0.7 is older than the installed 0.1.0.10: a downgrade is refused"]
    cli = subprocess.run([*GATE, "verify", str(manifest), "--signer", "local", "--trusted-root",
                          str(stack.trusted_root_path), "--arch", "amd64",
                          "--installed-version", "0.2"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1, cli.stderr
    assert "is for arm64, not amd64" in cli.stderr and "a downgrade is refused" in cli.stderr
    bad = subprocess.run([*GATE, "verify", str(manifest), "--signer", "local", "--trusted-root",
                          str(stack.trusted_root_path), "--installed-version", "latest"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "'latest' is not dotted numbers" in bad.stderr


@pytest.mark.parametrize("fields, message", [
    (("i386", "0.1.0.1", COMMIT), "architecture 'i386'"),
    (("amd64", "one", COMMIT), "version 'one'"),
    (("amd64", "0.2.0rc1", COMMIT), "version '0.2.0rc1' is not dotted numbers"),
    (("amd64", "0.1.0", "HEAD"), "commit 'HEAD'"),
])
def test_a_release_identity_must_be_complete(fields: tuple[str, str, str],
                                             message: str) -> None:
    with pytest.raises(ReleaseError, match=message):
        ReleaseIdentity(*fields)


def test_a_release_manifest_without_identity_is_not_signed(stack: SigstoreStack,
                                                           token_file: Path,
                                                           tmp_path: Path) -> None:
    (tmp_path / "slm").write_bytes(b"binary")
    with pytest.raises(ReleaseError, match="needs the release's identity"):
        sign([tmp_path / "slm"], trust_config=stack.trust_config_path, token_file=token_file,
             manifest=tmp_path / "release.json")
    assert not (tmp_path / "release.json").exists()
    assert not bundle_path_for(tmp_path / "slm").exists()


def test_a_forged_token_is_a_one_line_signing_error(stack: SigstoreStack,
                                                     other_stack: SigstoreStack,
                                                     tmp_path: Path) -> None:
    """Fulcio refuses a token from another issuer key: exit 2, one line, no traceback."""
    (tmp_path / "a.bin").write_bytes(b"a")
    (tmp_path / "token").write_text(other_stack.token())
    done = subprocess.run([*GATE, "sign", str(tmp_path / "a.bin"), "--trust-config",
                           str(stack.trust_config_path), "--identity-token-file",
                           str(tmp_path / "token")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "signing failed" in done.stderr
    assert not bundle_path_for(tmp_path / "a.bin").exists()


def test_gate_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    missing = subprocess.run([*GATE, "verify", str(tmp_path / "release.json"),
                              "--signer", "nobody", "--trusted-root", str(tmp_path / "r.json")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "nobody" in missing.stderr
    no_root = subprocess.run([*GATE, "verify", str(tmp_path / "release.json"),
                              "--signer", "local", "--trusted-root", str(tmp_path / "r.json")],
                             capture_output=True, text=True, timeout=60)
    assert no_root.returncode == 2 and "trusted root not found" in no_root.stderr
    assert no_root.stderr.strip().count("\n") == 0
    unsigned = subprocess.run([*GATE, "sign", str(tmp_path / "nothing.bin")],
                              capture_output=True, text=True, timeout=60)
    assert unsigned.returncode == 2 and "nothing.bin" in unsigned.stderr


# --- the Doorman's start-up admission ([signing]) ----------------------------------------


def signing_config(stack: SigstoreStack, file_list_path: Path | None = None) -> str:
    text = (f'[signing]\ntrusted_root = "{stack.trusted_root_path}"\n'
            f'identity = "{stack.identity}"\nissuer = "{stack.issuer}"\n')
    if file_list_path:
        text += f'file_list = "{file_list_path}"\n'
    return text


@pytest.fixture
def signed_model(tiny_model: Path, stack: SigstoreStack, token_file: Path,
                 tmp_path: Path) -> Path:
    model = tmp_path / "tiny.gguf"
    shutil.copy(tiny_model, model)
    sign([model], trust_config=stack.trust_config_path, token_file=token_file)
    return model


@pytest.fixture
def signed_tree(stack: SigstoreStack, token_file: Path, tmp_path: Path) -> Path:
    """A stand-in for the unpacked binary: a directory and its signed file list."""
    tree = tmp_path / "bin"
    (tree / "lib").mkdir(parents=True)
    (tree / "slm.bin").write_bytes(b"\x7fELF binary")
    (tree / "lib/libllama.so").write_bytes(b"\x7fELF library")
    (tree / "slm").symlink_to("slm.bin")
    listing = tmp_path / "bin.files.json"
    listing.write_text(json.dumps(file_list(tree)))
    sign([listing], trust_config=stack.trust_config_path, token_file=token_file)
    return listing


def test_slm_verify_accepts_signed_model_and_tree(stack: SigstoreStack, signed_model: Path,
                                                  signed_tree: Path, tmp_path: Path) -> None:
    config = tmp_path / "slm.toml"
    config.write_text(signing_config(stack, signed_tree))
    done = run_slm("verify", "--config", str(config), "--model", str(signed_model))
    assert done.returncode == 0, done.stderr
    assert "bin.files.json" in done.stdout and "tiny.gguf" in done.stdout


@pytest.mark.parametrize("change", ["changed", "added", "missing", "retargeted"])
def test_slm_verify_refuses_a_changed_tree(change: str, stack: SigstoreStack,
                                           signed_model: Path, signed_tree: Path,
                                           tmp_path: Path) -> None:
    tree = tmp_path / "bin"
    if change == "changed":
        (tree / "lib/libllama.so").write_bytes(b"\x7fELF patched")
    elif change == "retargeted":
        (tree / "slm").unlink()
        (tree / "slm").symlink_to("lib/libllama.so")
        change = "changed"
    elif change == "added":
        (tree / "lib/sitecustomize.py").write_text("print('hi')")
    else:
        (tree / "lib/libllama.so").unlink()
    config = tmp_path / "slm.toml"
    config.write_text(signing_config(stack, signed_tree))
    done = run_slm("verify", "--config", str(config), "--model", str(signed_model))
    assert done.returncode == 3
    assert f"{change} " in done.stderr and "signed file list" in done.stderr, done.stderr


def test_a_symlink_out_of_the_tree_is_refused(stack: SigstoreStack, signed_model: Path,
                                              signed_tree: Path, tmp_path: Path) -> None:
    (tmp_path / "bin/lib/libc.so").symlink_to("/lib/x86_64-linux-gnu/libc.so.6")
    config = tmp_path / "slm.toml"
    config.write_text(signing_config(stack, signed_tree))
    done = run_slm("verify", "--config", str(config), "--model", str(signed_model))
    assert done.returncode == 3 and "points outside" in done.stderr, done.stderr
    with pytest.raises(SignatureError, match="points outside"):
        file_list(tmp_path / "bin")


def test_the_service_never_imports_sigstore(stack: SigstoreStack, signed_model: Path) -> None:
    """The start-up check runs in a forked child: the serving process stays lean."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from slm.config.settings import Settings\n"
        "from slm.server.startup import check_signatures_in_child\n"
        f"s = Settings(trusted_root={str(stack.trusted_root_path)!r}, "
        f"signing_identity={stack.identity!r}, signing_issuer={stack.issuer!r})\n"
        f"done = check_signatures_in_child(s, Path({str(signed_model)!r}))\n"
        "assert len(done) == 1 and done[0].sha256, done\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sigstore', 'cryptography', 'pydantic')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_serve_starts_on_a_signed_model(start_server, stack: SigstoreStack,
                                        signed_model: Path) -> None:
    server = start_server(signed_model, signing_config(stack))
    assert "signature verified" in server.log()


@pytest.mark.parametrize("model_state", ["unsigned", "swapped", "wrong signer"])
def test_serve_refuses_a_model_that_does_not_verify(
        model_state: str, stack: SigstoreStack, signed_model: Path, tmp_path: Path) -> None:
    if model_state == "unsigned":
        bundle_path_for(signed_model).unlink()
        expected = "no signature bundle"
    elif model_state == "swapped":
        data = bytearray(signed_model.read_bytes())
        data[-1] ^= 0xFF
        signed_model.write_bytes(bytes(data))
        expected = "does not verify"
    else:
        expected = "mallory@evil.test"
    config = tmp_path / "slm.toml"
    text = signing_config(stack)
    if model_state == "wrong signer":
        text = text.replace(stack.identity, "mallory@evil.test")
    config.write_text(text)
    done = run_slm("serve", "--config", str(config), "--model", str(signed_model),
                   "--port", "0", "--ledger-path", str(tmp_path / "ledger.db"), timeout=120)
    assert done.returncode == 3, done.stderr
    assert "refused" in done.stderr and expected in done.stderr, done.stderr
    assert not (tmp_path / "ledger.db").exists()  # nothing started


def test_signing_config_needs_a_signer(tmp_path: Path) -> None:
    config = tmp_path / "slm.toml"
    config.write_text('[signing]\ntrusted_root = "/x/trusted_root.json"\n')
    done = run_slm("config", "show", "--config", str(config))
    assert done.returncode == 2 and "signing.identity" in done.stderr


def test_adapters_go_through_the_same_admission(start_server, stack: SigstoreStack,
                                                signed_model: Path, token_file: Path,
                                                tmp_path: Path) -> None:
    """A LoRA adapter made for the signed model must be signed too: `slm verify` names it,
    and without its bundle `slm serve` refuses to start (exit 3)."""
    import hashlib

    from support.tiny_model import write_tiny_lora

    lora = write_tiny_lora(tmp_path / "pirate.gguf")
    sign([lora], trust_config=stack.trust_config_path, token_file=token_file)
    digest = hashlib.sha256(lora.read_bytes()).hexdigest()
    base = hashlib.sha256(signed_model.read_bytes()).hexdigest()
    config = tmp_path / "slm.toml"
    config.write_text(signing_config(stack) + f'[[adapter]]\nname = "pirate"\nfile = "{lora}"\n'
                      f'sha256 = "{digest}"\nbase_sha256 = "{base}"\n')
    done = run_slm("verify", "--config", str(config), "--model", str(signed_model),
                   timeout=120)
    assert done.returncode == 0, done.stderr
    assert str(lora) in done.stdout
    server = start_server(signed_model, config.read_text())
    assert f"signature verified: {lora}" in server.log()
    adapted = httpx.post(server.base + "/v1/chat/completions", timeout=60, json={
        "model": "tiny:pirate", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2})
    assert adapted.status_code == 200, adapted.text
    bundle_path_for(lora).unlink()
    refused = run_slm("serve", "--config", str(config), "--model", str(signed_model),
                      "--port", "0", "--ledger-path", str(tmp_path / "ledger.db"), timeout=120)
    assert refused.returncode == 3, refused.stderr
    assert "pirate.gguf" in refused.stderr and "no signature bundle" in refused.stderr
    assert not (tmp_path / "ledger.db").exists()


# --- no downgrade: signing.installed_release ----------------------------------------------


@pytest.fixture
def released_tree(stack: SigstoreStack, token_file: Path, tmp_path: Path) -> Path:
    """A signed file list naming release 0.1.0.7, as the image build writes it."""
    tree = tmp_path / "bin"
    tree.mkdir()
    (tree / "slm.bin").write_bytes(b"\x7fELF binary")
    listing = tmp_path / "bin.files.json"
    listing.write_text(json.dumps({**file_list(tree), "release": {
        "architecture": "amd64", "version": "0.1.0.7", "commit": COMMIT}}))
    sign([listing], trust_config=stack.trust_config_path, token_file=token_file)
    return listing


@pytest.mark.parametrize("recorded", ["0.1.0.10", "0.2"])
def test_an_older_release_than_the_device_served_is_refused(
        recorded: str, stack: SigstoreStack, signed_model: Path, released_tree: Path,
        tmp_path: Path) -> None:
    floor = tmp_path / "installed-release"
    floor.write_text(recorded + "\n")
    config = tmp_path / "slm.toml"
    config.write_text(signing_config(stack, released_tree)
                      + f'installed_release = "{floor}"\n')
    done = run_slm("serve", "--config", str(config), "--model", str(signed_model),
                   "--port", "0", "--ledger-path", str(tmp_path / "ledger.db"), timeout=120)
    assert done.returncode == 3, done.stderr
    assert f"release 0.1.0.7 is older than {recorded}" in done.stderr, done.stderr
    assert "a downgrade is refused" in done.stderr
    assert floor.read_text() == recorded + "\n" and not (tmp_path / "ledger.db").exists()


@pytest.mark.parametrize("recorded", [None, "0.1.0.7", "0.1.0.6"])
def test_a_release_once_ready_becomes_the_installed_one(
        recorded: str | None, start_server, stack: SigstoreStack, signed_model: Path,
        released_tree: Path, tmp_path: Path) -> None:
    import time

    floor = tmp_path / "installed-release"
    if recorded:
        floor.write_text(recorded + "\n")
    start_server(signed_model, signing_config(stack, released_tree)
                 + f'installed_release = "{floor}"\n')
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (floor.exists() and "0.1.0.7" in
                                               floor.read_text()):
        time.sleep(0.1)
    assert floor.read_text() == "0.1.0.7\n"


def test_installed_release_needs_a_file_list(tmp_path: Path) -> None:
    config = tmp_path / "slm.toml"
    config.write_text('[signing]\ntrusted_root = "/x/t.json"\nidentity = "a"\nissuer = "b"\n'
                      'installed_release = "/x/installed"\n')
    done = run_slm("config", "show", "--config", str(config))
    assert done.returncode == 2 and "signing.file_list" in done.stderr
