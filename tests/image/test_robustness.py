"""The appliance recovers: a killed Doorman is restarted and its ledger still verifies; a
reboot keeps the state; a swapped model, and a release older than the one the device
served, are refused and the service does not start. Runs
after test_appliance.py (it restarts the service and the VM)."""

from __future__ import annotations

import time

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


def _recorded_request(doorman) -> None:
    """A request the Doorman answers and records without running the model (an unknown
    model: 404); under TCG a completion costs a minute, and test_appliance ran those."""
    response = doorman.post("/v1/chat/completions", timeout=120, json={
        "model": "no-such-model", "messages": [{"role": "user", "content": "Still there?"}]})
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"]


def test_killed_service_is_restarted_and_the_ledger_verifies(vm, host, doorman):
    _recorded_request(doorman)
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
    _recorded_request(doorman)
    assert ledger_verify(host)[0] == count + 1
    print(f"ready again {took:.1f} s after SIGKILL")


def test_swapped_model_is_refused_and_the_service_does_not_start(vm, host, manifest):
    """A model that is not the signed one (bind-mounted over it: the root is read-only)
    stops the Doorman at its signature check: exit 3, no restart loop, a clear journal line.
    Put back, the service starts again."""
    model = manifest["model"]["path"]
    swapped = "/run/swapped.gguf"
    host.run_expect([0], f"cp {model} {swapped} && printf 'tampered' >> {swapped}")
    host.run_expect([0], f"mount --bind {swapped} {model}")
    try:
        host.run_expect([0], "systemctl stop slm.service")
        since = host.check_output("date +%s")
        host.run("systemctl start slm.service")  # fails: the start is refused
        time.sleep(8)  # longer than RestartSec: a restart loop would show in NRestarts
        show = host.check_output("systemctl show -p ActiveState -p ExecMainStatus "
                                 "-p NRestarts slm.service")
        assert "ActiveState=failed" in show and "ExecMainStatus=3" in show, show
        log = host.check_output(f"journalctl -u slm.service --since @{since} -o cat")
        assert "refused" in log and model in log and "does not verify" in log, log[-2000:]
        nrestarts = host.check_output("systemctl show -p NRestarts --value slm.service")
        time.sleep(5)
        assert host.check_output("systemctl show -p NRestarts --value slm.service") == nrestarts
    finally:
        host.run(f"umount {model}; rm -f {swapped}")
    host.run_expect([0], "systemctl reset-failed slm.service; systemctl start slm.service")
    took = _wait_ready(vm)
    assert host.service("slm.service").is_running
    print(f"swapped model refused; ready again {took:.1f} s after it was put back")


def test_a_release_older_than_the_installed_one_is_refused(vm, host, manifest):
    """Once ready, the Doorman recorded its release (from the signed file list) on the state
    partition. Were a newer release recorded (one that ran here before), this one is a
    downgrade: refused at start, exit 3, no restart loop. The record put back, it starts."""
    floor = "/var/lib/slm/installed-release"
    version = manifest["release"]["version"]
    assert host.file(floor).content_string.strip() == version
    host.run_expect([0], f"cp {floor} /run/installed-release && printf '99\\n' > {floor}")
    try:
        host.run_expect([0], "systemctl stop slm.service")
        since = host.check_output("date +%s")
        host.run("systemctl start slm.service")  # fails: the start is refused
        time.sleep(8)
        show = host.check_output("systemctl show -p ActiveState -p ExecMainStatus "
                                 "slm.service")
        assert "ActiveState=failed" in show and "ExecMainStatus=3" in show, show
        log = host.check_output(f"journalctl -u slm.service --since @{since} -o cat")
        assert f"release {version} is older than 99" in log, log[-2000:]
    finally:
        host.run(f"cp /run/installed-release {floor}")
    host.run_expect([0], "systemctl reset-failed slm.service; systemctl start slm.service")
    took = _wait_ready(vm)
    assert host.file(floor).content_string.strip() == version
    print(f"downgrade refused; ready again {took:.1f} s after the record was put back")


def test_reboot_keeps_the_state(vm, host, doorman):
    _recorded_request(doorman)
    count, head = ledger_verify(host)
    host_key = host.file("/var/lib/slm-appliance/ssh/ssh_host_ed25519_key.pub").content_string
    firstboot = host.file("/var/lib/slm-appliance/firstboot.done").content_string
    figures = vm.reboot()
    assert figures["boot_check"].startswith("clean boot"), figures
    assert ledger_verify(host) == (count, head)
    assert host.file("/var/lib/slm-appliance/ssh/ssh_host_ed25519_key.pub"
                     ).content_string == host_key
    assert host.file("/var/lib/slm-appliance/firstboot.done").content_string == firstboot
    _recorded_request(doorman)  # the same device certificate and admin key after a reboot
    assert ledger_verify(host)[0] == count + 1
    # the prompt cache's directory for this model, on the persistent /var (a snapshot
    # needs a prompt of 64+ tokens: minutes under TCG; restarts are tested on the host)
    sha = host.check_output("sha256sum /usr/lib/slm/share/slm/*.gguf").split()[0]
    assert host.file(f"/var/cache/slm/prompt-cache/{sha}").is_directory
    # the persistent journal on /var kept the first boot's log (the machine id is
    # transient on the read-only root, so earlier boots are read with --merge)
    assert len(host.check_output("journalctl --merge -F _BOOT_ID").split()) >= 2
