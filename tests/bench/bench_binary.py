"""`just bench` (binary part): the compiled `slm` against the Python package (the anchor).

Per start: exec → /ready 200, exec → first streamed token, and the peak RSS (VmHWM summed over
the process tree: the one-file launcher and its child) after one request. The binary's first
start unpacks its payload into a fresh cache directory and is reported apart; later starts
reuse it. Default model, ctx 2048, 2 threads. Nothing is asserted. Skipped (with a line)
when build/out/bin/slm has not been built (`just binary`).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "build" / "out" / "bin" / "slm"
REPEAT = int(os.environ.get("SLM_BENCH_REPEAT", "5"))
CHAT = {"model": "SmolLM2-135M-Instruct.Q4_1", "max_tokens": 8, "stream": True,
        "messages": [{"role": "user", "content": "Say hello."}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def hwm_bytes(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def one_start(command: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(seconds to /ready 200, seconds to the first token, peak RSS bytes)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        began = time.monotonic()
        proc = subprocess.Popen(
            [*command, "serve", "--port", str(port), "--ctx", "2048", "--threads", "2",
             "--ledger-path", f"{tmp}/ledger.db"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ready = None
            while ready is None:
                if proc.poll() is not None:
                    raise RuntimeError(f"{command[0]} exited {proc.returncode}")
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    conn.request("GET", "/ready")
                    if conn.getresponse().status == 200:
                        ready = time.monotonic() - began
                    conn.close()
                except OSError:
                    pass
                if ready is None:
                    time.sleep(0.01)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/v1/chat/completions", json.dumps(CHAT),
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            first = None
            while first is None:
                line = response.readline()
                if line.startswith(b"data: ") and b'"content":"' in line \
                        and b'"content":""' not in line:
                    first = time.monotonic() - began
                if not line:
                    raise RuntimeError("stream ended without a token")
            response.read()
            conn.close()
            return ready, first, hwm_bytes(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> int:
    if not BINARY.is_file():
        print("bench_binary: build/out/bin/slm is not built (`just binary`); skipped")
        return 0
    python = [sys.executable, "-m", "slm"]
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache}
        unpack_ready, unpack_first, _ = one_start([str(BINARY)], env)
        rows: dict[str, list[tuple[float, float, int]]] = {"python": [], "binary": []}
        for _ in range(REPEAT):  # interleaved: the machine drifts
            rows["python"].append(one_start(python, env))
            rows["binary"].append(one_start([str(BINARY)], env))
    print(f"cold start and memory, default model, ctx 2048, median of {REPEAT} starts")
    print(f"  {'':8} {'/ready s':>9} {'1st token s':>12} {'peak RSS MiB':>13}")
    med = {}
    for name, samples in rows.items():
        med[name] = [statistics.median(s[i] for s in samples) for i in range(3)]
        ready, first, rss = med[name]
        print(f"  {name:8} {ready:9.3f} {first:12.3f} {rss / 2**20:13.1f}")
    p, b = med["python"], med["binary"]
    print(f"  binary/python: /ready {b[0] / p[0]:.2f}, first token {b[1] / p[1]:.2f}, "
          f"RSS {b[2] / p[2]:.2f}")
    print(f"  binary first start (unpacking into an empty cache): /ready {unpack_ready:.3f} s, "
          f"first token {unpack_first:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
