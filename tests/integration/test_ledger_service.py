"""Every mediated call leaves a ledger record; an unwritable ledger stops inference."""

from __future__ import annotations

import hashlib
import json
import resource
import signal
import sqlite3
import subprocess
import threading
import time

import httpx
from slm.audit.verify_export import verify
from support.server import EOG_BIAS, SLM, TINY_ID, Server, free_port

MARKER = "zebra-unicorn-7731"


def records(path) -> list[dict]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM records ORDER BY id")]
    finally:
        conn.close()


def wait_for_records(path, n, timeout=10.0) -> list[dict]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = records(path)
        if len(got) >= n:
            return got
        time.sleep(0.05)
    return records(path)


def test_records_carry_the_audit_fields_and_never_the_prompt(start_server, tiny_model):
    server = start_server(tiny_model, '[server]\napi_keys = ["ledger-test-key-1"]\n')
    auth = {"Authorization": "Bearer ledger-test-key-1"}
    url = server.base + "/v1/chat/completions"
    messages = [{"role": "user", "content": f"my secret is {MARKER}"}]
    ok = httpx.post(url, headers=auth, json={"model": TINY_ID, "messages": messages,
                                             "max_tokens": 3, "logit_bias": EOG_BIAS})
    assert ok.status_code == 200
    httpx.post(url, headers=auth, json={"model": "nope", "messages": messages})
    httpx.post(url, json={"model": TINY_ID, "messages": messages})  # no key: 401
    with httpx.stream("POST", url, headers=auth, json={
            "model": TINY_ID, "messages": messages, "max_tokens": 3, "stream": True,
            "logit_bias": EOG_BIAS}) as r:
        list(r.iter_lines())
    got = wait_for_records(server.ledger, 4)
    assert [(r["endpoint"], r["status"]) for r in got] == [
        ("chat", 200), ("chat", 404), ("chat", 401), ("chat", 200)]
    first = got[0]
    assert first["request_id"] == ok.headers["x-request-id"]
    assert first["tier"] == "A" and first["model"] == TINY_ID
    assert first["model_sha256"] == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert (first["prompt_tokens"], first["completion_tokens"]) == (
        ok.json()["usage"]["prompt_tokens"], 3)
    assert first["finish_reason"] == "length" and first["latency_us"] > 0
    canonical = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert first["prompt_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert first["prompt_text"] is None
    assert first["api_key_id"].startswith("key-") and "ledger-test" not in first["api_key_id"]
    assert got[1]["error_code"] == "model_not_found" and got[2]["api_key_id"] is None
    assert got[3]["completion_tokens"] == 3
    server.stop()
    for path in server.ledger.parent.glob(server.ledger.name + "*"):  # db, -wal, -shm
        assert MARKER.encode() not in path.read_bytes()
    assert verify(server.ledger).ok


def test_store_prompt_setting_keeps_the_prompt_text(start_server, tiny_model):
    server = start_server(tiny_model, "[ledger]\nstore_prompt = true\n")
    httpx.post(server.base + "/v1/completions",
               json={"model": TINY_ID, "prompt": MARKER, "max_tokens": 1})
    assert wait_for_records(server.ledger, 1)[0]["prompt_text"] == MARKER


def test_chain_head_is_written_to_the_log(start_server, tiny_model):
    server = start_server(tiny_model, "[ledger]\nhead_log_interval_s = 0.1\n")
    httpx.post(server.base + "/v1/completions",
               json={"model": TINY_ID, "prompt": "hi", "max_tokens": 1})
    wait_for_records(server.ledger, 1)
    server.stop()
    heads = [json.loads(line) for line in server.log().splitlines()
             if '"ledger head"' in line]
    last = heads[-1]
    verdict = verify(server.ledger, (last["ledger_count"], last["ledger_head"]))
    assert verdict.ok and verdict.count == last["ledger_count"] == 1


def test_unwritable_ledger_stops_inference_with_503(tmp_path, tiny_model):
    """The ledger's file may not grow past 64 KiB (RLIMIT_FSIZE): writes fail with EFBIG."""
    port = free_port()
    ledger = tmp_path / "ledger.db"
    limit = 64 * 1024

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.Popen(
        [*SLM, "serve", "--model", str(tiny_model), "--model-id", TINY_ID, "--port", str(port),
         "--ledger-path", str(ledger), "--threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=small_files,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(base + "/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        acknowledged, refused = [], None
        for _ in range(500):
            r = httpx.post(base + "/v1/completions",
                           json={"model": TINY_ID, "prompt": "hi", "max_tokens": 1})
            if r.status_code == 200:
                acknowledged.append(r.headers["x-request-id"])
            else:
                refused = r
                break
        assert refused is not None, "the ledger never filled up"
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "ledger_unavailable"
        again = httpx.post(base + "/v1/completions",
                           json={"model": TINY_ID, "prompt": "hi", "max_tokens": 1})
        assert again.status_code == 503
        assert httpx.get(base + "/ready").status_code == 503
        assert httpx.get(base + "/health").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    stored = {r["request_id"] for r in records(ledger)}
    assert set(acknowledged) <= stored  # every acknowledged call is in the ledger
    assert verify(ledger).ok


def test_kill_9_under_load_loses_no_acknowledged_record(start_server, tiny_model):
    server: Server = start_server(tiny_model)
    url = server.base + "/v1/completions"
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.post(url, json={"model": TINY_ID, "prompt": "hello", "max_tokens": 2})
                except httpx.TransportError:
                    return
                if r.status_code == 200:
                    with lock:
                        acknowledged.append(r.headers["x-request-id"])

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    # kill once the load is real (a count, not a time: a busy CI machine answers slowly)
    deadline = time.monotonic() + 120
    while len(acknowledged) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.proc.kill()  # SIGKILL mid-load: no clean-up runs
    server.proc.wait()
    stop.set()
    for t in threads:
        t.join(15)
    assert len(acknowledged) > 20
    stored = {r["request_id"] for r in records(server.ledger)}
    assert set(acknowledged) <= stored
    assert verify(server.ledger).ok


def test_a_corrupt_ledger_stops_the_start_with_one_line(tmp_path, tiny_model):
    from support.server import run_slm

    ledger = tmp_path / "ledger.db"
    ledger.write_bytes(b"this is no database" * 200)
    r = run_slm("serve", "--model", str(tiny_model), "--port", str(free_port()),
                "--ledger-path", str(ledger))
    assert r.returncode == 2  # like every unreadable ledger (see slm.cli.main)
    assert "ledger" in r.stderr and r.stderr.count("\n") == 1
    assert ledger.read_bytes() == b"this is no database" * 200  # left as it was
