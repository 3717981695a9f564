"""Checks on the running appliance (testinfra over SSH): the Doorman, its state, the
hardening of the system. `just test-image ARCH`."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import LEDGER, ROOT, guest_http, ledger_verify

MODEL_ID = "SmolLM2-135M-Instruct.Q4_1"
BUDGET_BYTES = 550 * 10**6  # policy/budget.toml budget_mb
EXPOSURE_TARGET = 2.0       # as tests/test_systemd.py judges the unit files


def _chat_body(text: str) -> str:
    # a few tokens only: under TCG (no KVM) one completion of the default model takes a minute
    return json.dumps({"model": MODEL_ID, "max_tokens": 4, "temperature": 0,
                       "messages": [{"role": "user", "content": text}]})


@pytest.fixture(scope="module")
def forwarded_chat(doorman, host) -> tuple[httpx.Response, int, int]:
    """One chat completion through the forwarded HTTPS port with the admin key, with the
    ledger's record count before and after it."""
    before = ledger_verify(host)[0]
    response = doorman.post("/v1/chat/completions", content=_chat_body("Hi."),
                            headers={"Content-Type": "application/json"})
    return response, before, ledger_verify(host)[0]


def test_boot_was_clean_and_recorded(vm, host):
    assert vm.boot_figures and vm.boot_figures["ready_s"] > 0
    assert host.file("/var/lib/slm-appliance/boot-check").content_string.startswith(
        "clean boot")
    assert host.service("slm-boot-check.service").is_enabled


def test_slm_service_is_active_and_enabled(host):
    slm = host.service("slm.service")
    assert slm.is_running and slm.is_enabled
    assert host.check_output("systemctl show -p Type --value slm.service") == "notify"


def test_slm_runs_as_its_own_non_root_user(host):
    pid = host.check_output("systemctl show -p MainPID --value slm.service")
    user = host.check_output(f"ps -o user= -p {pid}").strip()
    uid = int(host.check_output(f"ps -o uid= -p {pid}").strip())
    assert user == "slm" and uid >= 1000  # DynamicUser: a uid from 61184-65519
    assert host.check_output(f"readlink /proc/{pid}/exe") == "/usr/lib/slm/bin/slm.bin"


def test_only_sshd_and_the_doorman_listen_beyond_loopback(host):
    def beyond_loopback(flags: str) -> set[str]:
        sockets = host.check_output(f"ss -Hl{flags} | awk '{{print $4}}'").split()
        return {a for a in sockets if not a.startswith(("127.", "[::1]", "[::ffff:127."))}

    # the Doorman: HTTPS on 8443 for the network; its plain 127.0.0.1:8080 is loopback
    assert beyond_loopback("tn") == {"0.0.0.0:22", "[::]:22", "0.0.0.0:8443"}
    assert "127.0.0.1:8080" in host.check_output("ss -Hltn | awk '{print $4}'").split()
    # UDP: only networkd's DHCP clients (68 for DHCPv4, 546 for DHCPv6 on the interface)
    assert {a.rsplit(":", 1)[1] for a in beyond_loopback("un")} <= {"68", "546"}


def test_ready_inside_the_guest(host):
    response = host.check_output(guest_http("GET", "/ready"))
    assert response.startswith("HTTP/1.1 200")
    assert '"status":"ready"' in response.replace(" ", "")


def test_chat_completion_inside_the_guest(host):
    response = host.check_output(guest_http("POST", "/v1/chat/completions",
                                            _chat_body("Say hello.")))
    assert response.startswith("HTTP/1.1 200"), response[:300]
    body = json.loads(response.split("\r\n\r\n", 1)[1])
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] > 0


def test_chat_completion_through_the_forwarded_port(forwarded_chat):
    response = forwarded_chat[0]
    assert response.status_code == 200, response.text
    assert response.headers["x-slm-tier"] == "A"
    assert response.json()["choices"][0]["message"]["content"].strip()


def test_ledger_grows_with_a_request_and_verifies(host, forwarded_chat):
    _response, before, after = forwarded_chat
    assert host.file(LEDGER).exists and host.file(LEDGER).size > 0
    assert after == before + 1  # ledger_verify ran `slm ledger verify`: the chain is intact


def test_root_file_system_is_read_only_squashfs(host):
    root = host.mount_point("/")
    assert root.filesystem == "squashfs" and "ro" in root.options
    assert host.run("touch /usr/lib/slm/written").rc != 0
    var = host.mount_point("/var")
    assert var.filesystem == "ext4" and "rw" in var.options


def test_no_compiler_and_no_package_cache(host):
    for tool in ("gcc", "cc", "c++", "g++", "clang", "tcc", "make", "as", "ld"):
        assert not host.exists(tool), tool
    assert host.check_output("find /var/cache/apt /var/lib/apt/lists -type f | wc -l") == "0"
    assert host.check_output("ls /usr/share/man 2>/dev/null | wc -l") == "0"


def test_journal_has_the_services_structured_entries(doorman, host):
    doorman.get("/v1/models", timeout=30)
    lines = host.check_output("journalctl -b -u slm.service -o json --no-pager "
                              "SYSLOG_IDENTIFIER=slm").splitlines()
    entries = [json.loads(line) for line in lines]
    requests = [e for e in entries if "REQUEST_ID" in e]
    assert requests, "no request entries with a REQUEST_ID field"
    assert all(e.get("LOGGER", "").startswith("slm") for e in requests)
    assert {"PRIORITY", "CODE_FILE"} <= set(requests[-1])


def test_watchdog_is_configured_and_fed(host):
    assert host.check_output("systemctl show -p WatchdogUSec --value slm.service") == "1min"
    assert host.check_output("systemctl show -p NRestarts --value slm.service") == "0"


def test_unit_exposure_is_within_target(host):
    out = host.run("systemd-analyze security --no-pager slm.service").stdout
    level = float(re.search(r"Overall exposure level for slm.service: ([0-9.]+)",
                            out).group(1))
    assert level <= EXPOSURE_TARGET, out[-400:]


def test_memory_stays_under_the_budget_under_the_device_load(host, forwarded_chat,
                                                            device_load):
    """After what a device sees at its busiest (a start with an adapter and the signature
    check, then a document read while a cited answer and an adapter's answer are decoded,
    the prompt cache on): the service's cgroup peak since that start, page cache and the
    document reader included, within the budget (MB, as the unit's MemoryMax counts it)."""
    assert forwarded_chat[0].status_code == 200
    refused = {name: (r.status_code, r.text[:300]) for name, r in device_load.items()
               if r.status_code not in (200, 201)}
    assert not refused, refused
    peak = int(host.file("/sys/fs/cgroup/system.slice/slm.service/memory.peak")
               .content_string)
    limit = host.check_output("systemctl show -p MemoryMax --value slm.service")
    print(f"slm.service cgroup memory.peak {peak / 1e6:.1f} MB (budget {BUDGET_BYTES / 1e6:g})")
    assert int(limit) == BUDGET_BYTES  # the unit's MemoryMax in the policy's unit, MB
    assert 0 < peak <= BUDGET_BYTES, f"{peak / 1e6:.1f} MB"


def test_the_sbom_names_the_component_of_every_shipped_file(host, image_dir):
    """The release's SBOM (signed with it) holds every file of the booted binary's tree and
    Litestream beside it, each under the component it came from, and every package the
    running system has installed."""
    bom = json.loads((image_dir / "sbom.cdx.json").read_text())
    named = {p["value"] for c in bom["components"] for p in c.get("properties", [])
             if p["name"] == "service-slm:file"}
    shipped = set(host.check_output("find /usr/lib/slm/bin -type f -printf '%P\\n'").split())
    assert "slm.bin" in shipped and "litestream" in shipped
    assert shipped <= named, sorted(shipped - named)[:5]
    installed = set(host.check_output("dpkg-query -W -f '${Package}\\n'").split())
    listed = {c["name"] for c in bom["components"]
              if c.get("description", "").startswith("Debian package of the appliance")}
    assert installed and installed == listed, sorted(installed ^ listed)[:5]


def test_model_sha256_matches_the_manifest(host, manifest):
    model = manifest["model"]
    assert host.file(model["path"]).sha256sum == model["sha256"]
    inside = json.loads(host.file("/usr/lib/slm/image.json").content_string)
    assert inside["model"]["sha256"] == model["sha256"]
    assert inside["binary"]["sha256"] == manifest["binary"]["sha256"]


def test_binary_and_model_signatures_were_verified_at_start(host, manifest):
    """[signing] in the image: the start verified the binary's signed file list and the
    model offline, against the pinned trust root and the signer the build used."""
    config = host.file("/etc/slm/slm.toml").content_string
    assert "[signing]" in config and manifest["signing"]["identity"] in config
    assert host.file("/usr/lib/slm/trust/trusted_root.json").is_file
    assert host.file("/usr/lib/slm/bin.files.json.sigstore.json").is_file
    assert host.file(manifest["model"]["path"] + ".sigstore.json").is_file
    log = host.check_output("journalctl -b -u slm.service -o cat --no-pager")
    verified = [line for line in log.splitlines() if "signature verified" in line]
    assert any("bin.files.json" in line for line in verified), log[-2000:]
    assert any(manifest["model"]["path"] in line for line in verified), log[-2000:]
    # the same check by hand, as an operator would run it
    done = host.run("slm verify --config /etc/slm/slm.toml")
    assert done.rc == 0, done.stderr
    print("\n".join(verified))
    print(done.stdout)


def test_no_world_writable_files(host):
    found = host.check_output(
        "find / -xdev \\( -type f -o -type d \\) -perm -0002 ! -perm -1000 2>/dev/null; "
        "find /var -xdev \\( -type f -o -type d \\) -perm -0002 ! -perm -1000 2>/dev/null")
    assert found == ""


def test_sshd_refuses_passwords(vm, host):
    config = host.check_output("sshd -T")
    assert "passwordauthentication no" in config
    assert "kbdinteractiveauthentication no" in config
    attempt = subprocess.run(
        ["ssh", "-F", "none", "-p", str(vm.ssh_port), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "PubkeyAuthentication=no",
         "-o", "PreferredAuthentications=password,keyboard-interactive",
         "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "root@127.0.0.1", "true"],
        capture_output=True, text=True, timeout=60)
    assert attempt.returncode == 255
    assert "Permission denied (publickey)" in attempt.stderr


def test_first_boot_made_the_host_key_on_the_state_partition(host):
    assert host.file("/var/lib/slm-appliance/firstboot.done").exists
    key = host.file("/var/lib/slm-appliance/ssh/ssh_host_ed25519_key")
    assert key.exists and key.mode == 0o600 and key.user == "root"
    assert not host.check_output("ls /etc/ssh | grep -c ssh_host_ || true").strip("0\n")


@pytest.mark.parametrize("path", ["/etc/slm/slm.toml", "/usr/lib/systemd/system/slm.service"])
def test_appliance_files_are_root_owned_and_not_writable_by_others(host, path):
    f = host.file(path)
    assert f.user == "root" and not f.mode & 0o022


ADAPTER_DIR = "/run/slm-adapter"  # the root is read-only: the operator's copy lives in /run


def _push(vm, data: bytes, path: str) -> None:
    subprocess.run(vm.ssh_command(f"cat > {path} && chmod 0644 {path}"), input=data,
                   check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def with_adapter(vm, host, manifest, tmp_path_factory) -> Iterator[str]:
    """The Doorman restarted with a LoRA adapter loaded, as an operator adds one: an adapter
    for the default model (generated), signed by the release's signer (build/with-sigstore.sh),
    its [[adapter]] table in a copy of the config that a runtime drop-in points the unit to.
    The start-up admission verifies it with the rest. Returns the adapter's model id."""
    from slm.model.file import default_model_path, sha256_of
    from slm_policy.budget_load import ADAPTER_NAME, adapter_config, write_lora

    model = default_model_path()
    assert sha256_of(model) == manifest["model"]["sha256"]
    adapter = write_lora(tmp_path_factory.mktemp("adapter") / f"{ADAPTER_NAME}.gguf", model)
    subprocess.run([str(ROOT / "build/with-sigstore.sh"), str(ROOT / ".venv/bin/slm-gate"),
                    "sign", str(adapter)], check=True, capture_output=True, timeout=300)
    host.run_expect([0], f"install -d -m 0755 {ADAPTER_DIR}")
    guest_adapter = f"{ADAPTER_DIR}/{adapter.name}"
    _push(vm, adapter.read_bytes(), guest_adapter)
    _push(vm, Path(str(adapter) + ".sigstore.json").read_bytes(),
          guest_adapter + ".sigstore.json")
    config = host.file("/etc/slm/slm.toml").content_string + "\n" + adapter_config(
        Path(guest_adapter), sha256_of(adapter), manifest["model"]["sha256"])
    _push(vm, config.encode(), f"{ADAPTER_DIR}/slm.toml")
    unit = host.file("/usr/lib/systemd/system/slm.service").content_string
    start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    dropin = "/run/systemd/system/slm.service.d"
    host.run_expect([0], f"install -d {dropin}")
    _push(vm, ("[Service]\nExecStart=\n" + start.replace(
        "/etc/slm/slm.toml", f"{ADAPTER_DIR}/slm.toml") + "\n").encode(),
        f"{dropin}/50-adapter.conf")
    host.run_expect([0], "systemctl daemon-reload && systemctl restart slm.service")
    began = time.monotonic()
    while True:
        try:
            if vm.get("/ready", timeout=10)[0] == 200:
                break
        except OSError:  # refused while it restarts
            pass
        assert time.monotonic() - began < 600, "not ready with the adapter within 600 s"
        time.sleep(2)
    # later restarts (test_robustness) go back to the image's own configuration
    host.run_expect([0], f"rm -r {dropin} && systemctl daemon-reload")
    yield f"{MODEL_ID}:{ADAPTER_NAME}"
    host.run(f"rm -r {ADAPTER_DIR}")  # /run is a small tmpfs: test_robustness needs room


@pytest.fixture(scope="module")
def device_load(doorman, with_adapter) -> dict[str, httpx.Response]:
    """A device at its busiest, in the order it sees it: the service started with an
    adapter, the prompt cache on; a short PDF ingested; then, at once, a cited answer from
    it, an answer through the adapter, and a longer DOCX read by the limited child (through
    the forwarded HTTPS port). Sized for TCG: each prompt is short and asks for two
    tokens."""
    import threading

    import support.document_files as document_files

    pdf = document_files.pdf([["Appliance notes."],
                              ["Mail ops@example.com when the kiln overheats."]])
    notes = doorman.post("/v1/documents", files={"file": ("notes.pdf", pdf, "application/pdf")})
    assert notes.status_code == 201, notes.text
    log = document_files.docx_file({"Harbour log": [
        f"Entry {i}: the keeper wound the clockwork and noted the wind at dusk."
        for i in range(400)]})
    done: dict[str, httpx.Response] = {"notes": notes}

    def cited() -> None:
        done["cited"] = doorman.post("/v1/chat/completions", json={
            "model": MODEL_ID, "documents": [notes.json()["id"]], "max_tokens": 2,
            "temperature": 0, "messages": [{"role": "user", "content": "Whom to mail?"}]})

    def reading() -> None:
        done["log"] = doorman.post("/v1/documents", files={"file": (
            "log.docx", log, "application/vnd.openxmlformats-officedocument."
            "wordprocessingml.document")})

    def adapted() -> None:
        done["adapter"] = doorman.post("/v1/chat/completions", json={
            "model": with_adapter, "max_tokens": 2, "temperature": 0,
            "messages": [{"role": "user", "content": "Ahoy?"}]})

    workers = [threading.Thread(target=f) for f in (cited, adapted, reading)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return done


def test_document_ingest_in_the_guest(device_load):
    """The PDF through the forwarded port, read by the compiled binary's limited child
    process under the hardened unit and sanitised."""
    card = device_load["notes"].json()
    assert card["kind"] == "pdf" and card["sanitised"] == {"EMAIL": 1}
    assert card["chunks"] == 2  # one per page: the parser saw both pages
    log = device_load["log"]
    assert log.status_code == 201, log.text
    assert log.json()["kind"] == "docx" and log.json()["chunks"] > 1


def test_an_answer_through_the_adapter_in_the_guest(device_load, with_adapter):
    answer = device_load["adapter"]
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == with_adapter


def test_a_cited_answer_in_the_guest(doorman, device_load):
    answer = device_load["cited"]
    assert answer.status_code == 200, answer.text
    notes = device_load["notes"].json()
    assert {c["document"] for c in answer.json()["citations"]} == {notes["id"]}
    assert doorman.get(f"/v1/documents/{notes['id']}", timeout=60).json() == notes
