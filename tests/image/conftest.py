"""Fixtures for the checks on a running appliance: `just test-image ARCH`.

One VM per session, booted from a fresh copy-on-write overlay of
build/out/image/ARCH/disk.raw under qemu (TCG); testinfra reaches it over SSH (OpenSSH's
client, ControlMaster) on a forwarded loopback port.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import testinfra

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "image"))
from vm import ADMIN_KEY, ApplianceVM  # noqa: E402

LEDGER = "/var/lib/slm/ledger.db"
BOOT_TIMEOUT_S = 900  # TCG: amd64 boots clean in about a minute, arm64 in a few


@pytest.fixture(scope="session")
def arch(pytestconfig: pytest.Config) -> str:
    return pytestconfig.getoption("--image-arch")


@pytest.fixture(scope="session")
def image_dir(arch: str) -> Path:
    directory = ROOT / "build/out/image" / arch
    if not (directory / "manifest.json").is_file():
        pytest.fail(f"no image in {directory}: run just image {arch}")
    return directory


@pytest.fixture(scope="session")
def manifest(image_dir: Path) -> dict:
    return json.loads((image_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def vm(arch: str, image_dir: Path, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[ApplianceVM]:
    machine = ApplianceVM(arch=arch, image_dir=image_dir,
                          run_dir=tmp_path_factory.mktemp(f"vm-{arch}"))
    machine.start()
    try:
        machine.wait_clean_boot(BOOT_TIMEOUT_S)
        yield machine
    finally:
        machine.stop()


@pytest.fixture(scope="session")
def host(vm: ApplianceVM):
    return testinfra.get_host(f"ssh://root@127.0.0.1:{vm.ssh_port}",
                              ssh_config=str(vm.ssh_config))


@pytest.fixture(scope="session")
def doorman(vm: ApplianceVM) -> Iterator[httpx.Client]:
    """The Doorman through the forwarded HTTPS port, as an operator's client: the device
    certificate trusted, the admin key that first boot made."""
    with httpx.Client(base_url=vm.url, verify=vm.tls(), timeout=900,
                      headers={"Authorization": f"Bearer {vm.admin_key()}"}) as client:
        yield client


def guest_http(method: str, path: str, body: str = "", *, key: str | None = ADMIN_KEY) -> str:
    """A shell command that makes one HTTP/1.1 request to the Doorman's plain loopback
    listener from inside the guest (bash's /dev/tcp: the image carries no HTTP client),
    with the API key read from the file ``key`` (None: no key), and prints the response."""
    head = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body.encode())}\r\n")
    auth = f'"Authorization: Bearer $(cat {key})\r\n"' if key else "''"
    return ("bash -c " + shlex.quote(
        f"exec 3<>/dev/tcp/127.0.0.1/8080 && printf %s%s%s {shlex.quote(head)} {auth} "
        f"{shlex.quote(chr(13) + chr(10) + body)} >&3 && timeout 900 cat <&3"))


def ledger_verify(host) -> tuple[int, str]:
    """Run `slm ledger verify` in the guest (it fails unless the chain is intact); returns
    the record count and the head hash."""
    out = host.check_output(f"slm ledger verify --db {LEDGER}")
    count, head = re.match(r"ok: (\d+) records, head ([0-9a-f]{64})", out).groups()
    return int(count), head
