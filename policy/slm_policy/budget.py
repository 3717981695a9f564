"""The memory-budget gate: run the service as on the appliance, fill its context with load,
measure its peak, and compare with the budget and with the planner's prediction.

Measured: VmHWM (peak RSS) summed over the service's process tree, PSS at the end, and the
peak of a memory cgroup the service runs in when one can be created (v2 ``memory.peak``,
v1 ``memory.max_usage_in_bytes``).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slm.model.planner import MB, plan

POLICY = Path(__file__).resolve().parents[1] / "budget.toml"


@dataclass(frozen=True)
class Budget:
    budget_mb: float
    runtime_baseline_mb: float
    image_size_limit_mb: float
    prediction_tolerance: float


def load_budget(path: Path = POLICY) -> Budget:
    try:
        doc = tomllib.loads(path.read_text())
        return Budget(float(doc["budget_mb"]), float(doc["runtime_baseline_mb"]),
                      float(doc["image_size_limit_mb"]), float(doc["prediction_tolerance"]))
    except (OSError, tomllib.TOMLDecodeError, KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: broken budget policy: {exc}") from None


def _evict_from_page_cache(path: Path) -> None:
    """Drop the file's clean cached pages, so the service's reads are charged to its cgroup
    (page cache is charged to whoever touched it first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class Cgroup:
    """A memory cgroup to run the service in (None-like when none can be made)."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.peak_file = ""
        name = f"slm-budget-{os.getpid()}"
        for root, peak in ((Path("/sys/fs/cgroup"), "memory.peak"),
                           (Path("/sys/fs/cgroup/memory"), "memory.max_usage_in_bytes")):
            try:
                candidate = root / name
                candidate.mkdir()
            except OSError:
                continue
            if (candidate / peak).exists():
                self.path, self.peak_file = candidate, peak
                break
            candidate.rmdir()

    def add(self, pid: int) -> None:
        if self.path:
            (self.path / "cgroup.procs").write_text(str(pid))

    def peak(self) -> int | None:
        if not self.path:
            return None
        return int((self.path / self.peak_file).read_text())

    def remove(self) -> None:
        if self.path:
            try:
                self.path.rmdir()
            except OSError:
                pass


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (children of every thread); a process that ends
    meanwhile is left out."""
    out = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                out += process_tree(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def status_kb(pid: int, field: str) -> int:
    """One ``kB`` field of ``/proc/PID/status`` (0 once the process is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _request(port: int, path: str,
             body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    if body is None:
        conn.request("GET", path)
    else:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, {}


def measure(model: Path | None, ctx: int, *, threads: int = 2, concurrency: int = 3,
            kv_type: str = "f16") -> dict[str, float | None]:
    """Start the service, fill its context from concurrent clients, return peak figures."""
    port = _free_port()
    work = Path(tempfile.mkdtemp(prefix="slm-budget-"))
    args = [sys.executable, "-m", "slm", "serve", "--port", str(port), "--ctx", str(ctx),
            "--threads", str(threads), "--kv-type", kv_type, "--log-level", "warning",
            "--ledger-path", str(work / "ledger.db"), "--memory-budget-mb", "100000",
            # the gate measures memory, not latency: on a busy machine three full-context
            # requests queued behind each other outlast the default 300 s deadline (504)
            "--request-timeout-s", "3600",
            # what the planner predicts is the model's footprint; the prompt cache is
            # carved out of the headroom the plan leaves (slm.server.startup.prompt_cache_bytes)
            "--prompt-cache-memory-mb", "0"]
    if model is not None:
        args += ["--model", str(model), "--model-id", "m"]
    cgroup = Cgroup()
    from slm.model.file import default_model_path

    _evict_from_page_cache(model or default_model_path())
    # The child joins the cgroup before it execs: everything it maps is charged there.
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: cgroup.add(os.getpid()))
    try:
        model_id = None
        for _ in range(600):
            try:
                status, _ = _request(port, "/ready")
                if status == 200:
                    model_id = _request(port, "/v1/models")[1]["data"][0]["id"]
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited with {proc.returncode}")
            time.sleep(0.1)
        # Size a prompt that fills the context but for the generated tokens.
        status, probe = _request(port, "/v1/completions",
                                 {"model": model_id, "prompt": "lighthouse keeper " * 4,
                                  "max_tokens": 1})
        if status != 200:
            raise RuntimeError(f"probe request failed with HTTP {status}: {probe}")
        per_repeat = probe["usage"]["prompt_tokens"] / 4
        repeats = int((ctx - 96) / per_repeat)
        errors: list[str] = []

        def client(k: int) -> None:
            for stream in (False, True):
                body = {"model": model_id, "prompt": f"{k} " + "lighthouse keeper " * repeats,
                        "max_tokens": 48, "temperature": 0, "stream": stream}
                status, _ = _request(port, "/v1/completions", body)
                if status != 200:
                    errors.append(f"HTTP {status}")

        threads_ = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
        for t in threads_:
            t.start()
        for t in threads_:
            t.join()
        if errors:
            raise RuntimeError(f"load requests failed: {errors[:3]}")
        pids = process_tree(proc.pid)
        hwm = sum(status_kb(p, "VmHWM") for p in pids) * 1024
        pss = sum(_pss_kb(p) for p in pids) * 1024
        return {"peak_rss": hwm, "pss": pss, "cgroup_peak": cgroup.peak()}
    finally:
        proc.terminate()
        proc.wait(60)
        cgroup.remove()
        for f in work.iterdir():
            f.unlink()
        work.rmdir()


def calibrate(model: Path | None = None, ctx: int = 512) -> float:
    """The runtime baseline: measured peak minus the planned model parts, at a small context."""
    from slm.model.file import default_model_path

    measured = measure(model, ctx)["peak_rss"] or 0
    parts = plan(model or default_model_path(), n_ctx=ctx, baseline_mb=0).total
    return (measured - parts) / MB


def run_gate(model: Path | None, contexts: list[int], budget: Budget, *,
             configured_ctx: int, kv_type: str = "f16") -> tuple[bool, list[dict[str, Any]]]:
    """Measure each context; the gate fails on any over-budget peak at the configured
    context or any prediction off by more than the tolerance."""
    from slm.model.file import default_model_path

    path = model or default_model_path()
    rows, ok = [], True
    for ctx in contexts:
        predicted = plan(path, n_ctx=ctx, kv_type=kv_type,
                         baseline_mb=budget.runtime_baseline_mb)
        got = measure(model, ctx, kv_type=kv_type)
        measured = got["peak_rss"] or 0
        error = (predicted.total - measured) / measured
        peak = max(measured, got["cgroup_peak"] or 0)
        over = ctx == configured_ctx and peak > budget.budget_mb * MB
        bad_prediction = abs(error) > budget.prediction_tolerance
        ok = ok and not over and not bad_prediction
        rows.append({"ctx": ctx, "predicted": predicted.total, "measured": measured,
                     "error": error, "pss": got["pss"], "cgroup_peak": got["cgroup_peak"],
                     "over_budget": over, "bad_prediction": bad_prediction,
                     "plan": predicted.as_dict()})
    return ok, rows
