"""image/build.py --key-store / --tls-cert / --tls-key: what is given is checked and
lands in the state partition's tree where first boot looks for it."""

from __future__ import annotations

import importlib.util
import stat
import sys
from pathlib import Path

import pytest
from slm.access.keys import KeyStore, Scope
from support.paths import ROOT
from support.tls import make_pki

sys.path.insert(0, str(ROOT / "image"))
from image_errors import ImageBuildError  # noqa: E402

# image/build.py under a name of its own ("build" is also a PyPI package)
_spec = importlib.util.spec_from_file_location("image_build", ROOT / "image/build.py")
assert _spec and _spec.loader
image_build = importlib.util.module_from_spec(_spec)
sys.modules["image_build"] = image_build
_spec.loader.exec_module(image_build)
Provisioning = image_build.Provisioning


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_key_store_and_a_certificate_land_where_first_boot_looks(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    store = KeyStore(tmp_path / "fleet-keys.json")
    store.create("fleet-ops", frozenset(Scope))
    given = Provisioning(store.path, pki.server_cert, pki.server_key)
    given.check()
    var = tmp_path / "var"
    assert given.install(var) == {"key_store": True, "tls_certificate": True}
    installed = var / "lib/slm/keys.json"
    assert installed.read_bytes() == store.path.read_bytes() and _mode(installed) == 0o600
    assert _mode(installed.parent) == 0o700
    tls = var / "lib/slm-appliance/tls"
    assert (tls / "device.key").read_bytes() == pki.server_key.read_bytes()
    assert _mode(tls / "device.key") == 0o600 and _mode(tls) == 0o700
    assert (tls / "device.crt").read_bytes() == pki.server_cert.read_bytes()


def test_nothing_given_installs_nothing(tmp_path: Path) -> None:
    Provisioning().check()
    assert Provisioning().install(tmp_path) == {"key_store": False, "tls_certificate": False}
    assert list(tmp_path.iterdir()) == []


def test_what_would_not_work_on_the_device_is_refused(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    with pytest.raises(ImageBuildError, match="go together"):
        Provisioning(tls_cert=pki.server_cert).check()
    with pytest.raises(ImageBuildError, match="do not load"):
        Provisioning(tls_cert=pki.server_cert, tls_key=pki.client_key).check()
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ImageBuildError, match="is not a key store"):
        Provisioning(key_store=tmp_path / "broken.json").check()
    with pytest.raises(ImageBuildError, match="is not a key store"):
        Provisioning(key_store=tmp_path / "missing.json").check()
    store = KeyStore(tmp_path / "revoked.json")
    store.create("gone", frozenset({Scope.INFERENCE}))
    store.revoke("gone")
    with pytest.raises(ImageBuildError, match="no active key"):
        Provisioning(key_store=store.path).check()
