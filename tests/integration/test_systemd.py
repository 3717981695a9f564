"""systemd integration over the real protocols: sd_notify datagrams on a NOTIFY_SOCKET the
test owns, and journald's native protocol on a journal socket the test owns."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from slm.ops.logs import journal_field
from support.paths import ROOT
from support.server import EOG_BIAS, TINY_ID, Server


class NotifySocket:
    """A datagram socket collecting sd_notify messages with their arrival times."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def first(self, needle: str, timeout: float = 30) -> float:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for at, text in list(self.messages):
                if needle in text.split("\n"):
                    return at
            time.sleep(0.02)
        raise AssertionError(f"no {needle!r} in {self.messages}")

    def pings(self, since: float, until: float) -> int:
        return sum(1 for at, text in list(self.messages)
                   if since <= at < until and text == "WATCHDOG=1")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def start(tmp_path, tiny_model, notify, **env: str) -> Server:
    server = Server(tmp_path, tiny_model, env={
        "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000", **env})
    return server


def test_ready_only_after_load_then_watchdog_then_stopping(tmp_path, tiny_model, notify):
    server = start(tmp_path, tiny_model, notify)
    try:
        loading = notify.first("STATUS=loading model tiny.gguf (context 4096)")
        ready = notify.first("READY=1")
        assert loading < ready
        # READY means served: /ready answers 200 from then on
        assert httpx.get(server.base + "/ready", timeout=5).status_code == 200
        time.sleep(2.2)
        now = time.monotonic()
        assert notify.pings(now - 2.0, now) >= 3  # every 0.5 s
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(20) == 0
        assert notify.first("STOPPING=1") > ready
    finally:
        server.stop()


def test_watchdog_is_off_when_it_is_meant_for_another_process(tmp_path, tiny_model, notify):
    server = start(tmp_path, tiny_model, notify, WATCHDOG_PID="1")
    try:
        ready = notify.first("READY=1")
        time.sleep(1.6)
        assert notify.pings(ready, time.monotonic()) == 0
    finally:
        server.stop()


def test_a_stalled_engine_stops_the_watchdog_pings(tmp_path, tiny_model, notify):
    server = start(tmp_path, tiny_model, notify, SLM_TEST_STALL_WORKER_S="4")
    try:
        server.wait_ready()
        notify.first("WATCHDOG=1")
        request = threading.Thread(target=lambda: httpx.post(
            server.base + "/v1/chat/completions", timeout=60, json={
                "model": TINY_ID, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2, "logit_bias": EOG_BIAS}))
        began = time.monotonic()
        request.start()
        time.sleep(3.5)  # the worker hangs for 4 s; the stall limit is 1 s
        assert notify.pings(began + 1.6, began + 3.5) == 0
        request.join(30)
        time.sleep(1.5)
        now = time.monotonic()
        assert notify.pings(now - 1.2, now) >= 1  # progress again: pings resume
        assert "watchdog pings withheld" in server.log()
    finally:
        server.stop()


def test_without_notify_socket_nothing_is_sent_and_all_works(tiny_server):
    assert httpx.get(tiny_server.base + "/ready", timeout=5).status_code == 200


JOURNAL_SOCKET = Path("/run/systemd/journal/socket")


@pytest.mark.skipif(JOURNAL_SOCKET.exists() or os.geteuid() != 0,
                    reason="needs root and no journald on this machine (the test plays it)")
def test_journal_entries_carry_request_fields(tmp_path, tiny_model):
    JOURNAL_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(JOURNAL_SOCKET))
    journal.settimeout(0.5)
    server = Server(tmp_path, tiny_model, "", "--log-format", "journal")
    try:
        server.wait_ready()
        r = httpx.post(server.base + "/v1/completions", timeout=30, json={
            "model": TINY_ID, "prompt": "hi", "max_tokens": 1})
        entries = []
        end = time.monotonic() + 10
        while time.monotonic() < end and not any(
                f"REQUEST_ID={r.headers['x-request-id']}" in e for e in entries):
            try:
                entries.append(journal.recv(65536).decode(errors="replace"))
            except TimeoutError:
                pass
        request = next(e for e in entries if f"REQUEST_ID={r.headers['x-request-id']}" in e)
        fields = dict(line.split("=", 1) for line in request.splitlines() if "=" in line)
        assert fields["MESSAGE"] == "request" and fields["PRIORITY"] == "6"
        assert fields["TIER"] == "A" and fields["STATUS"] == "200"
        assert fields["SYSLOG_IDENTIFIER"] == "slm" and fields["ENDPOINT"] == "completions"
        assert any("MODEL_SHA256=" in e for e in entries)  # the "model ready" entry
    finally:
        server.stop()
        journal.close()
        JOURNAL_SOCKET.unlink()
        for parent in (JOURNAL_SOCKET.parent, JOURNAL_SOCKET.parent.parent):
            try:
                parent.rmdir()
            except OSError:
                break


def test_journal_field_names():
    assert journal_field("request_id") == "REQUEST_ID"
    assert journal_field("model_sha256") == "MODEL_SHA256"
    assert journal_field("_private.x") == "PRIVATE_X"
    assert journal_field("2fa") == "SLM_2FA"  # journald drops fields starting with a digit
    assert journal_field("priority") == "SLM_PRIORITY"  # never clashes with our own


def test_journal_format_without_a_journal_falls_back_to_text(capfd):
    import logging

    from slm.ops.logs import JournalHandler

    handler = JournalHandler()
    handler._send = lambda *a, **k: (_ for _ in ()).throw(OSError("no journal socket"))
    record = logging.makeLogRecord({"msg": "hello", "levelname": "INFO", "levelno": 20,
                                    "name": "slm.test"})
    handler.emit(record)
    handler.emit(record)
    assert capfd.readouterr().err.count("INFO slm.test: hello") == 2


UNITS = ROOT / "image" / "systemd"


@pytest.mark.parametrize("name", ["slm.service", "slm-litestream.service"])
def test_unit_files_verify_and_their_exposure_is_at_most_2(tmp_path, name):
    import re
    import shutil
    import subprocess

    analyze = shutil.which("systemd-analyze")
    assert analyze, "build/bootstrap.sh installs systemd (for systemd-analyze)"
    # verify needs ExecStart to exist: point it at this checkout's `slm`
    slm = shutil.which("slm") or str(Path(os.sys.executable).parent / "slm")
    for other in UNITS.glob("*.service"):  # verify resolves PartOf= / Before= names
        (tmp_path / other.name).write_text(other.read_text().replace("/usr/bin/slm", slm))
    unit = tmp_path / name
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    security = subprocess.run([analyze, "security", "--offline=true", str(unit)],
                              capture_output=True, text=True)
    level = re.search(rf"Overall exposure level for {name}: ([0-9.]+)", security.stdout)
    assert level, security.stdout + security.stderr
    assert float(level.group(1)) <= 2.0
    import tomllib

    policy = tomllib.loads((UNITS.parents[1] / "policy" / "budget.toml").read_text())
    if name == "slm.service":
        # MB = 10^6 bytes, as the policy counts (systemd's "M" would be MiB)
        assert f"MemoryMax={int(policy['budget_mb'] * 10**6)}\n" in unit.read_text()
