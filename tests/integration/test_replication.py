"""Litestream replicates the ledger (file replica and S3 on loopback) and restores it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from slm.audit.verify_export import verify
from support.server import TINY_ID, free_port, run_slm

BIN = Path(sys.executable).parent


def all_rows(path: Path) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT * FROM records ORDER BY id").fetchall()
    finally:
        conn.close()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children of every thread, recursively)."""
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def serve_some_requests(server, n: int = 12) -> None:
    for i in range(n):
        r = httpx.post(server.base + "/v1/completions",
                       json={"model": TINY_ID, "prompt": f"hello {i}", "max_tokens": 1})
        assert r.status_code == 200


def test_file_replica_restores_record_for_record(start_server, tiny_model, tmp_path):
    replica = f"file://{tmp_path / 'replica'}"
    server = start_server(tiny_model, f'[ledger]\nreplica = "{replica}"\n')
    serve_some_requests(server)
    assert server.stop() == 0  # SIGTERM: Litestream ships the last pages before exiting
    assert "litestream exited unexpectedly" not in server.log()
    out = tmp_path / "restored" / "ledger.db"
    r = run_slm("ledger", "restore", "--replica", replica, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"restored {out}: 12 records")
    assert all_rows(out) == all_rows(server.ledger)
    assert verify(out).ok


def test_companion_unit_mode_replicates_from_its_own_process(start_server, tiny_model,
                                                             tmp_path):
    from support.server import SLM

    replica = f"file://{tmp_path / 'replica'}"
    config = tmp_path / "companion.toml"
    ledger = tmp_path / "companion-ledger.db"
    config.write_text(f'[ledger]\nreplica = "{replica}"\nreplicate_in_service = false\n'
                      f'path = "{ledger}"\n')
    assert run_slm("ledger", "replicate", "--check", "--config", str(config)).returncode == 0
    assert run_slm("ledger", "replicate", "--check").returncode == 1  # no replica: skip
    # the companion starts first (Before=slm.service) and stops last
    companion = subprocess.Popen([*SLM, "ledger", "replicate", "--config", str(config)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    server = start_server(tiny_model, config.read_text(), "--ledger-path", str(ledger))
    serve_some_requests(server, 5)
    assert server.stop() == 0
    assert "replicating the ledger" not in server.log()  # the service ran no Litestream
    companion.terminate()
    output = companion.communicate(timeout=60)[0].decode()
    assert companion.returncode == 0, output
    out = tmp_path / "restored-companion.db"
    r = run_slm("ledger", "restore", "--replica", replica, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert all_rows(out) == all_rows(ledger) and len(all_rows(out)) == 5


def test_restore_refuses_to_overwrite(tmp_path):
    out = tmp_path / "existing.db"
    out.write_bytes(b"keep me")
    r = run_slm("ledger", "restore", "--replica", f"file://{tmp_path}/none", "--out", str(out))
    assert r.returncode == 1 and "already exists" in r.stderr
    assert out.read_bytes() == b"keep me"


def test_restore_from_an_empty_replica_fails_cleanly(tmp_path):
    out = tmp_path / "new.db"
    r = run_slm("ledger", "restore", "--replica", f"file://{tmp_path}/empty", "--out", str(out))
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.fixture
def s3(tmp_path):
    """moto's S3-compatible server on loopback, with one bucket."""
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    env.pop("AWS_CA_BUNDLE", None)
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert httpx.put(f"{endpoint}/ledger-bucket").status_code == 200
        yield endpoint, env
    finally:
        proc.terminate()
        proc.wait(10)


def test_s3_replica_on_loopback_restores_record_for_record(
    start_server, tiny_model, tmp_path, s3, monkeypatch
):
    endpoint, env = s3
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, env[key])  # the server and the restore inherit them
    config = (f'[ledger]\nreplica = "s3://ledger-bucket/doorman"\n'
              f'replica_endpoint = "{endpoint}"\n')
    server = start_server(tiny_model, config)
    serve_some_requests(server, 9)
    assert server.stop() == 0
    listing = httpx.get(f"{endpoint}/ledger-bucket?list-type=2&prefix=doorman").text
    assert "<Key>doorman/" in listing
    out = tmp_path / "restored.db"
    r = run_slm("ledger", "restore", "--config", str(server.config), "--out", str(out),
                env={k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    assert r.returncode == 0, r.stderr
    assert all_rows(out) == all_rows(server.ledger)
    assert verify(out).count == 9


def test_a_crashed_litestream_is_restarted(start_server, tiny_model, tmp_path):
    replica = f"file://{tmp_path / 'replica'}"
    server = start_server(tiny_model, f'[ledger]\nreplica = "{replica}"\n')

    def litestream_pids() -> list[int]:
        # descendants, not only children: the one-file binary's launcher is the parent
        out = subprocess.run(["pgrep", "-x", "litestream"], capture_output=True,
                             text=True).stdout
        mine = set(descendants(server.proc.pid))
        return [int(x) for x in out.split() if int(x) in mine]

    first = litestream_pids()
    assert len(first) == 1
    os.kill(first[0], 9)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and litestream_pids() in ([], first):
        time.sleep(0.1)
    assert litestream_pids() not in ([], first)
    serve_some_requests(server, 5)
    assert server.stop() == 0
    out = tmp_path / "restored.db"
    assert run_slm("ledger", "restore", "--replica", replica, "--out", str(out)).returncode == 0
    assert all_rows(out) == all_rows(server.ledger)


def test_file_replica_with_a_host_is_refused(tmp_path):
    from slm.audit.replication import Replica, ReplicationError

    with pytest.raises(ReplicationError, match="names host"):
        Replica("file://backups/ledger").litestream_entry()
