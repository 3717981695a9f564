"""`just soak [MINUTES]`: a bounded load test of a real `slm serve` on loopback.

Four clients mix what a device sees for MINUTES (20 by default; CI runs a few): chat
completions streamed and not, text completions, streams cancelled after their first chunk,
bad requests (malformed JSON, values out of range, an unknown model, a wrong key, a wrong
scope), model cards, usage, health, and small documents uploaded and deleted. The service
runs the default model (or SLM_SOAK_MODEL) with its prompt cache off (a bounded cache that
fills would read as growth) under a key store with two keys.

Printed: requests by endpoint and by status, memory (RssAnon + VmSwap, so that a leak
cannot hide in swap, and VmRSS) of the service's processes (the one-file launcher and the
service; the document readers, which come and go, left out) after the warm-up and at the
end, their open file descriptors then and at the end, ledger records against the audited
requests sent, and the chain's verification. Exits 1 (one line per reason) when memory grew
5 MB or more after the warm-up, descriptors grew, a 5xx other than a declared 503/504 came
back, the ledger does not hold exactly one record per audited request and every
acknowledged request id, or the chain does not verify. SLM_BINARY runs the compiled binary.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from slm.access.keys import KeyStore, Scope
from slm.audit.verify_export import verify
from slm_policy.budget import process_tree, status_kb

SLM = [os.environ["SLM_BINARY"]] if os.environ.get("SLM_BINARY") else [
    sys.executable, "-m", "slm"]
CLIENTS = 4
GROWTH_LIMIT_KB = 5 * 1024
AUDITED = {"chat", "completions", "documents", "documents_delete"}
MODEL_ID = "soak"


def log(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_pids(pid: int) -> list[int]:
    """``pid``'s process tree (the one-file launcher and the service) without the document
    readers, which come and go with each upload."""
    def reader(p: int) -> bool:
        try:
            return b"extract-text" in Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            return True  # gone already
    return [p for p in process_tree(pid) if not reader(p)]


def memory_kb(pid: int) -> tuple[int, int]:
    """(RssAnon + VmSwap, VmRSS) of the service's processes, in kB."""
    pids = service_pids(pid)
    anon = sum(status_kb(p, "RssAnon") + status_kb(p, "VmSwap") for p in pids)
    return anon, sum(status_kb(p, "VmRSS") for p in pids)


def open_fds(pid: int) -> int:
    total = 0
    for p in service_pids(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except FileNotFoundError:
            pass
    return total


class Tally:
    """What the clients sent and got, shared by their threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_endpoint: collections.Counter[str] = collections.Counter()
        self.by_status: collections.Counter[str] = collections.Counter()
        self.audited_sent = 0
        self.acknowledged: list[str] = []
        self.problems: list[str] = []

    def record(self, endpoint: str, status: str, request_id: str | None = None) -> None:
        with self.lock:
            self.by_endpoint[endpoint] += 1
            self.by_status[status] += 1
            if endpoint in AUDITED:
                self.audited_sent += 1
                if request_id and status.startswith("2"):
                    self.acknowledged.append(request_id)
            if status.startswith("5") and status not in ("503", "504"):
                self.problems.append(f"{endpoint} answered {status}")


def _chat_body(rng: random.Random, *, stream: bool = False) -> dict:
    words = " ".join(rng.choice(["lamp", "kiln", "river", "quartz", "note", "ledger"])
                     for _ in range(rng.randint(3, 30)))
    return {"model": MODEL_ID, "max_tokens": rng.randint(1, 12), "temperature": 0.7,
            "seed": rng.randint(0, 10**6), "stream": stream,
            "messages": [{"role": "user", "content": f"Say something about {words}."}]}


def client(base: str, key: str, docs_key: str, until: float, seed: int, tally: Tally) -> None:
    """One client: a random mix of requests until ``until``."""
    rng = random.Random(seed)
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, timeout=120, headers=auth) as c:
        while time.monotonic() < until:
            kind = rng.choices(
                ["chat", "stream", "cancel", "completion", "bad", "models", "usage",
                 "health", "document"], weights=[20, 15, 8, 10, 15, 5, 5, 5, 4])[0]
            try:
                _one(c, kind, rng, docs_key, tally)
            except httpx.HTTPError as exc:
                with tally.lock:
                    tally.problems.append(f"{kind}: {type(exc).__name__}: {exc}")


def _one(c: httpx.Client, kind: str, rng: random.Random, docs_key: str, tally: Tally) -> None:
    if kind == "chat":
        r = c.post("/v1/chat/completions", json=_chat_body(rng))
        tally.record("chat", str(r.status_code), r.headers.get("x-request-id"))
    elif kind == "stream":
        with c.stream("POST", "/v1/chat/completions", json=_chat_body(rng, stream=True)) as r:
            body = b"".join(r.iter_bytes())
            ok = r.status_code == 200 and body.rstrip().endswith(b"data: [DONE]")
            if r.status_code == 200 and not ok:
                tally.problems.append("a stream ended without [DONE]")
            tally.record("chat", str(r.status_code), r.headers.get("x-request-id"))
    elif kind == "cancel":  # the client leaves after the first chunk: 499 in the ledger
        with c.stream("POST", "/v1/chat/completions",
                      json={**_chat_body(rng, stream=True), "max_tokens": 64}) as r:
            next(r.iter_raw(), None)
        tally.record("chat", "cancelled")
    elif kind == "completion":
        r = c.post("/v1/completions", json={"model": MODEL_ID, "prompt": "Once upon a time",
                                            "max_tokens": rng.randint(1, 8)})
        tally.record("completions", str(r.status_code), r.headers.get("x-request-id"))
    elif kind == "bad":
        endpoint, r = _bad(c, rng, docs_key)
        tally.record(endpoint, str(r.status_code))
        if r.status_code < 400 or r.status_code >= 500:
            tally.problems.append(f"a bad request to {endpoint} got {r.status_code}")
    elif kind == "models":
        tally.record("models", str(c.get("/v1/models").status_code))
    elif kind == "usage":
        tally.record("usage", str(c.get("/v1/usage").status_code))
    elif kind == "health":
        tally.record("health", str(c.get("/health").status_code))
    else:
        docs = {"Authorization": f"Bearer {docs_key}"}
        text = f"# Notes {rng.random()}\n\nMail ops@example.com about the kiln.\n".encode()
        r = c.post("/v1/documents", headers=docs,
                   files={"file": ("notes.md", text, "text/markdown")})
        tally.record("documents", str(r.status_code), r.headers.get("x-request-id"))
        if r.status_code == 201:
            gone = c.delete(f"/v1/documents/{r.json()['id']}", headers=docs)
            tally.record("documents_delete", str(gone.status_code),
                         gone.headers.get("x-request-id"))


def _bad(c: httpx.Client, rng: random.Random, docs_key: str) -> tuple[str, httpx.Response]:
    choice = rng.randrange(5)
    if choice == 0:
        return "chat", c.post("/v1/chat/completions", content=b"{not json",
                              headers={"Content-Type": "application/json"})
    if choice == 1:
        return "chat", c.post("/v1/chat/completions",
                              json={**_chat_body(rng), "temperature": 9})
    if choice == 2:
        return "chat", c.post("/v1/chat/completions",
                              json={**_chat_body(rng), "model": "no-such-model"})
    if choice == 3:
        return "chat", c.post("/v1/chat/completions", json=_chat_body(rng),
                              headers={"Authorization": "Bearer slm-wrong"})
    return "completions", c.post("/v1/completions", json={"model": MODEL_ID, "prompt": "x"},
                                 headers={"Authorization": f"Bearer {docs_key}"})  # 403


def _wait_ready(base: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"soak: the server exited {proc.returncode}")
        try:
            if httpx.get(base + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("soak: the server was not ready in time")


def soak(minutes: float) -> int:
    total_s = minutes * 60
    warm_up_s = min(120.0, total_s / 4)
    work = Path(tempfile.mkdtemp(prefix="slm-soak-"))
    store = KeyStore(work / "keys.json")
    key = store.create("soak", frozenset({Scope.INFERENCE}))
    docs_key = store.create("soak-docs", frozenset({Scope.DOCUMENTS}))
    (work / "slm.toml").write_text(f'[server]\nkey_store = "{store.path}"\n')
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    ledger = work / "ledger.db"
    args = [*SLM, "serve", "--config", str(work / "slm.toml"), "--port", str(port),
            "--model-id", MODEL_ID, "--ctx", "2048", "--ledger-path", str(ledger),
            "--prompt-cache-memory-mb", "0", "--log-level", "warning"]
    if os.environ.get("SLM_SOAK_MODEL"):
        args += ["--model", os.environ["SLM_SOAK_MODEL"]]
    server_log = (work / "log").open("wb")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=server_log)
    tally = Tally()
    try:
        _wait_ready(base, proc)
        began = time.monotonic()
        until = began + total_s
        threads = [threading.Thread(target=client, args=(base, key, docs_key, until, i, tally))
                   for i in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(warm_up_s)
        mem_start, fds_start = memory_kb(proc.pid), open_fds(proc.pid)
        served_at_warm = sum(tally.by_endpoint.values())
        log(f"warmed up after {warm_up_s:.0f} s ({served_at_warm} requests): "
            f"RssAnon+VmSwap {mem_start[0] / 1024:.1f} MB, VmRSS {mem_start[1] / 1024:.1f} MB, "
            f"{fds_start} fds")
        for t in threads:
            t.join()
        time.sleep(1.0)  # the last records, written without waiting (499s, refusals)
        mem_end, fds_end = memory_kb(proc.pid), open_fds(proc.pid)
        elapsed = time.monotonic() - began
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        server_log.close()
    if proc.returncode != 0:
        print(f"soak: the server exited {proc.returncode}; its log is {work / 'log'}",
              file=sys.stderr)
        return 1
    with sqlite3.connect(ledger) as db:
        ids = {row[0] for row in db.execute("SELECT request_id FROM records")}
    verdict = verify(ledger)
    growth = mem_end[0] - mem_start[0]
    served = sum(tally.by_endpoint.values())
    print(f"soak: {elapsed / 60:.1f} min, {CLIENTS} clients, {served} requests "
          f"({served / elapsed:.1f}/s)")
    print("  by endpoint: " + ", ".join(f"{k} {v}" for k, v in tally.by_endpoint.most_common()))
    print("  by status:   " + ", ".join(f"{k} {v}" for k, v in sorted(tally.by_status.items())))
    print(f"  memory (RssAnon+VmSwap) after warm-up {mem_start[0] / 1024:.1f} MB, at the end "
          f"{mem_end[0] / 1024:.1f} MB: growth {growth / 1024:+.2f} MB (limit 5 MB); VmRSS "
          f"{mem_start[1] / 1024:.1f} → {mem_end[1] / 1024:.1f} MB")
    print(f"  open fds after warm-up {fds_start}, at the end {fds_end}")
    print(f"  ledger: {len(ids)} records, {tally.audited_sent} audited requests sent, "
          f"{len(tally.acknowledged)} acknowledged; chain "
          f"{'verifies' if verdict.ok else 'BROKEN'} ({verdict.count} records)")
    failures = list(dict.fromkeys(tally.problems))[:10]
    if growth >= GROWTH_LIMIT_KB:
        failures.append(f"memory grew {growth / 1024:.2f} MB after the warm-up")
    if fds_end > fds_start:
        failures.append(f"open file descriptors grew from {fds_start} to {fds_end}")
    if len(ids) != tally.audited_sent:
        failures.append(f"{len(ids)} ledger records for {tally.audited_sent} audited requests")
    if not set(tally.acknowledged) <= ids:
        failures.append(f"{len(set(tally.acknowledged) - ids)} acknowledged requests "
                        "are not in the ledger")
    if not verdict.ok:
        failures.append("the ledger's chain does not verify")
    for failure in failures:
        print(f"soak: FAILED: {failure}", file=sys.stderr)
    summary = {"minutes": round(elapsed / 60, 2), "requests": served,
               "by_status": dict(tally.by_status), "growth_mb": round(growth / 1024, 3),
               "fds": [fds_start, fds_end], "records": len(ids), "ok": not failures}
    Path("build/out").mkdir(parents=True, exist_ok=True)
    Path("build/out/soak.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(soak(float(sys.argv[1]) if len(sys.argv) > 1 else 20.0))
