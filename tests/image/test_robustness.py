"""The appliance recovers: a killed Doorman is restarted and its ledger still verifies; a
reboot keeps the state. Runs after test_appliance.py (it restarts the service and the VM)."""

from __future__ import annotations

import time

import httpx
from conftest import ledger_verify


def _wait_ready(vm, timeout: float = 600) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        try:
            if vm.get("/ready", timeout=5)[0] == 200:
                return time.monotonic() - began
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"/ready not 200 within {timeout} s")


def _recorded_request(vm) -> None:
    """A request the Doorman answers and records without running the model (an unknown
    model: 404); under TCG a completion costs a minute, and test_appliance ran those."""
    response = httpx.post(vm.url + "/v1/chat/completions", timeout=120, json={
        "model": "no-such-model", "messages": [{"role": "user", "content": "Still there?"}]})
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"]


def test_killed_service_is_restarted_and_the_ledger_verifies(vm, host):
    _recorded_request(vm)
    count, _ = ledger_verify(host)
    pid = host.check_output("systemctl show -p MainPID --value slm.service")
    host.run_expect([0], "systemctl kill -s KILL slm.service")
    time.sleep(3)
    took = _wait_ready(vm)
    assert host.check_output("systemctl show -p MainPID --value slm.service") != pid
    assert int(host.check_output("systemctl show -p NRestarts --value slm.service")) >= 1
    assert host.service("slm.service").is_running
    # every acknowledged record survived the SIGKILL
    assert ledger_verify(host)[0] == count
    _recorded_request(vm)
    assert ledger_verify(host)[0] == count + 1
    print(f"ready again {took:.1f} s after SIGKILL")


def test_reboot_keeps_the_state(vm, host):
    _recorded_request(vm)
    count, head = ledger_verify(host)
    host_key = host.file("/var/lib/slm-appliance/ssh/ssh_host_ed25519_key.pub").content_string
    firstboot = host.file("/var/lib/slm-appliance/firstboot.done").content_string
    figures = vm.reboot()
    assert figures["boot_check"].startswith("clean boot"), figures
    assert ledger_verify(host) == (count, head)
    assert host.file("/var/lib/slm-appliance/ssh/ssh_host_ed25519_key.pub"
                     ).content_string == host_key
    assert host.file("/var/lib/slm-appliance/firstboot.done").content_string == firstboot
    _recorded_request(vm)
    assert ledger_verify(host)[0] == count + 1
    # the persistent journal on /var kept the first boot's log (the machine id is
    # transient on the read-only root, so earlier boots are read with --merge)
    assert len(host.check_output("journalctl --merge -F _BOOT_ID").split()) >= 2
