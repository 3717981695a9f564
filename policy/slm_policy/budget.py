"""The memory-budget gate: run the binary as the appliance does, put the device's busiest
load on it, measure its peak, and compare with the budget and with the planner's prediction.

Measured: the service's own peak RSS (VmHWM), the process tree's PSS and RssAnon + VmSwap
sampled every 0.2 s (the document reader included while it lives), and the peak of a memory
cgroup the service runs in when one can be created (v2 ``memory.peak``, v1
``memory.max_usage_in_bytes``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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

from slm_policy import budget_load as load

POLICY = Path(__file__).resolve().parents[1] / "budget.toml"


@dataclass(frozen=True)
class Budget:
    """policy/budget.toml: the memory budget and image size limit, in MB (10^6 bytes)."""

    budget_mb: float
    image_size_limit_mb: float
    prediction_tolerance: float


def load_budget(path: Path = POLICY) -> Budget:
    try:
        doc = tomllib.loads(path.read_text())
        return Budget(float(doc["budget_mb"]), float(doc["image_size_limit_mb"]),
                      float(doc["prediction_tolerance"]))
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
        self.why_none = "no writable cgroup v2 or v1 memory hierarchy at /sys/fs/cgroup"
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

    def describe(self) -> str:
        """Where the peak came from, or why there is none."""
        if self.path is None:
            return f"none: {self.why_none}"
        return f"{self.path / self.peak_file}"

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


def status_fields_kb(pid: int) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/PID/status``, read once (empty once the process is
    gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return {name: int(rest.split()[0]) for name, _, rest in
            (line.partition(":") for line in lines) if rest.strip().endswith(" kB")}


def status_kb(pid: int, field: str) -> int:
    """One ``kB`` field of ``/proc/PID/status`` (0 once the process is gone)."""
    return status_fields_kb(pid).get(field, 0)


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_UNPACKED: dict[Path, Path] = {}


def unpacked(binary: Path) -> Path:
    """The one-file binary's payload unpacked (once per gate run, in a scratch directory
    removed at exit): the tree the appliance runs, ``slm.bin`` with no launcher."""
    if binary not in _UNPACKED:
        import atexit

        cache = Path(tempfile.mkdtemp(prefix="slm-budget-unpack-"))
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        subprocess.run([str(binary), "--version"], env={**os.environ, "XDG_CACHE_HOME":
                                                        str(cache)},
                       stdout=subprocess.DEVNULL, check=True)
        trees = [p for p in (cache / "slm").iterdir() if (p / "slm.bin").is_file()]
        if len(trees) != 1:
            raise RuntimeError(f"{binary}: no unpacked slm.bin")
        _UNPACKED[binary] = trees[0] / "slm.bin"
    return _UNPACKED[binary]


def service_command(binary: Path | None) -> list[str]:
    """How the service is started: the compiled binary as the appliance runs it (its
    unpacked ``slm.bin``) or, without one, the Python package (a development stand-in)."""
    return [str(unpacked(binary))] if binary is not None else [sys.executable, "-m", "slm"]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def _is_document_reader(command: bytes) -> bool:
    return b"extract-text" in command.split(b"\0")


def _prompt_cache_bytes(port: int) -> int:
    """What the prompt cache holds now, from ``/metrics`` (``slm_prompt_cache_bytes``)."""
    for line in load.get_text(port, "/metrics").splitlines():
        if line.startswith("slm_prompt_cache_bytes "):
            return int(float(line.split()[1]))
    raise RuntimeError("/metrics has no slm_prompt_cache_bytes")


class TreeSampler:
    """Samples the service's process tree every ``interval`` s in the background and keeps
    the largest sums seen: VmHWM (an upper bound: pages shared between processes, such as
    the service's and the document reader's libraries, count once per process), PSS
    (shared pages split between their users, so sums add up) and RssAnon + VmSwap.
    Transient children (the document reader) count while they live; ``long_lived_hwm`` is
    the exact peak RSS of the processes still there at the end (the service)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.hwm = self.pss = self.anon_swap = self.long_lived_hwm = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> None:
        # a child between fork and exec still shows the service's memory (a copy, or the
        # same pages under vfork): counted only once it runs a program of its own
        commands = {p: _cmdline(p) for p in process_tree(self.pid)}
        own = commands.get(self.pid, b"")
        pids = [p for p, command in commands.items() if p == self.pid or command != own]
        status = [status_fields_kb(p) for p in pids]
        hwm = sum(s.get("VmHWM", 0) for s in status) * 1024
        self.hwm = max(self.hwm, hwm)
        self.pss = max(self.pss, sum(_pss_kb(p) for p in pids) * 1024)
        if not any(_is_document_reader(commands[p]) for p in pids):
            self.long_lived_hwm = hwm  # VmHWM never falls: the last reading is the peak
        self.anon_swap = max(self.anon_swap, sum(
            s.get("RssAnon", 0) + s.get("VmSwap", 0) for s in status) * 1024)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self.sample()
        except BaseException as exc:  # noqa: BLE001 - re-raised by stop(): no stale peaks
            self.error = exc

    def stop(self) -> None:
        """Stop sampling; a sampling error is raised here, so no peak goes stale."""
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"sampling the process tree failed: {self.error!r}")


def measure(model: Path | None, ctx: int, *, binary: Path | None = None,
            budget_mb: float | None = None, baseline_mb: float | None = None,
            threads: int = 2, concurrency: int = 3, kv_type: str = "f16") -> dict[str, Any]:
    """Start the service, fill its context from concurrent clients, return peak figures.

    With ``budget_mb`` (the gate): the service runs as on the appliance, with that memory
    budget and ``baseline_mb`` (as the image configures it), the prompt cache on (a shorter
    prompt, sent twice, that it keeps), a LoRA adapter that one client uses, and a document
    read while the completions run. Without it (calibration): the model alone, prompt cache
    off."""
    from slm.model.file import default_model_path, sha256_of

    path = model or default_model_path()
    port = _free_port()
    work = Path(tempfile.mkdtemp(prefix="slm-budget-"))
    full = budget_mb is not None
    args = [*service_command(binary), "serve", "--port", str(port), "--ctx", str(ctx),
            "--threads", str(threads), "--kv-type", kv_type, "--log-level", "warning",
            "--ledger-path", str(work / "ledger.db"),
            # the gate measures memory, not latency: on a busy machine three full-context
            # requests queued behind each other outlast the default 300 s deadline (504)
            "--request-timeout-s", "3600"]
    if model is not None or binary is not None:  # the unpacked tree has no model beside it
        args += ["--model", str(path), "--model-id", "m"]
    cgroup: Cgroup | None = None
    proc: subprocess.Popen[bytes] | None = None
    sampler: TreeSampler | None = None
    stderr = (work / "service.log").open("wb")
    try:
        adapter_bytes = 0
        if full:
            adapter = load.write_lora(work / "adapter.gguf", path)
            adapter_bytes = adapter.stat().st_size
            (work / "slm.toml").write_text(
                load.adapter_config(adapter, sha256_of(adapter), sha256_of(path))
                # the reader shares two cores with three full-context requests
                + "[documents]\nextract_timeout_s = 600.0\n")
            args += ["--config", str(work / "slm.toml"), "--memory-budget-mb",
                     f"{budget_mb:g}"]
            if baseline_mb is not None:
                args += ["--memory-baseline-mb", f"{baseline_mb:.1f}"]
        else:
            args += ["--memory-budget-mb", "100000", "--prompt-cache-memory-mb", "0"]
        cgroup = Cgroup()
        _evict_from_page_cache(path)
        # The child joins the cgroup before it execs: everything it maps is charged there.
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr,
                                preexec_fn=lambda: cgroup.add(os.getpid()) if cgroup else None)
        sampler = TreeSampler(proc.pid)
        model_id = _wait_ready(proc, port, work / "service.log")
        # Size a prompt that fills the context but for the generated tokens.
        status, probe = load.post_json(port, "/v1/completions", {
            "model": model_id, "prompt": "lighthouse keeper " * 4, "max_tokens": 1})
        if status != 200:
            raise RuntimeError(f"probe request failed with HTTP {status}: {probe}")
        per_repeat = probe["usage"]["prompt_tokens"] / 4
        repeats = int((ctx - 96) / per_repeat)
        errors: list[str] = []

        def complete(who: str, target: str, prompt: str, stream: bool) -> None:
            status, reply = load.post_json(port, "/v1/completions", {
                "model": target, "prompt": prompt, "max_tokens": 48, "temperature": 0,
                "stream": stream})
            if status != 200:
                errors.append(f"{who}: HTTP {status} {reply.get('error', '')}")

        def client(k: int) -> None:
            # client 0 goes through the adapter (its own prompt-cache entries, its weights)
            target = f"{model_id}:{load.ADAPTER_NAME}" if full and k == 0 else model_id
            for stream in (False, True):
                complete(f"client {k}", target, f"{k} " + "lighthouse keeper " * repeats,
                         stream)

        def cached() -> None:
            # a full-context snapshot is larger than the cache (KV of ctx tokens): a prompt
            # of a few hundred tokens is kept, and its second request restores it
            prompt = "harbour pilot " * int(384 / per_repeat)
            for stream in (False, True):
                complete("cached", model_id, prompt, stream)

        def reader() -> None:
            status, reply = load.upload(port, "harbour-log.docx", load.document())
            if status != 201:
                errors.append(f"document upload: HTTP {status} {reply.get('error', '')}")

        workers = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
        if full:
            workers += [threading.Thread(target=cached), threading.Thread(target=reader)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        if errors:
            raise RuntimeError(f"load requests failed: {errors[:3]}")
        cache_bytes = _prompt_cache_bytes(port) if full else 0
        if full and cache_bytes == 0:
            raise RuntimeError("the prompt cache holds nothing after the load: it was not "
                               "exercised")
        sampler.stop()
        sampler.sample()  # once more, after the load: the long-lived tree's final state
        return {"measured": sampler.long_lived_hwm, "pss_peak": sampler.pss,
                "hwm_sum_peak": sampler.hwm, "anon_swap_peak": sampler.anon_swap,
                "cgroup_peak": cgroup.peak(), "cgroup": cgroup.describe(),
                "adapter_bytes": adapter_bytes, "prompt_cache_bytes": cache_bytes}
    finally:
        if sampler is not None:
            with contextlib.suppress(RuntimeError):
                sampler.stop()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
        stderr.close()
        if cgroup is not None:
            cgroup.remove()
        shutil.rmtree(work, ignore_errors=True)


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> str:
    """The served model id once ``/ready`` answers 200 (RuntimeError with the last line of
    its ``log`` if the service exits)."""
    for _ in range(1200):
        try:
            if load.request(port, "GET", "/ready", timeout=5)[0] == 200:
                model_id: str = load.request(port, "GET", "/v1/models")[1]["data"][0]["id"]
                return model_id
        except OSError:
            pass
        if proc.poll() is not None:
            lines = log.read_text(errors="replace").strip().splitlines()
            raise RuntimeError(f"the service exited with {proc.returncode}: "
                               f"{lines[-1] if lines else '(no output)'}")
        time.sleep(0.1)
    raise RuntimeError("the service was not ready within 120 s")


def calibrate(model: Path | None = None, ctx: int = 512, *,
              binary: Path | None = None) -> float:
    """The runtime baseline in MB: measured peak minus the planned model parts, at a small
    context, the model alone."""
    from slm.model.file import default_model_path

    measured = measure(model, ctx, binary=binary)["measured"]
    parts = plan(model or default_model_path(), n_ctx=ctx, baseline_mb=0).total
    if measured <= parts:
        raise RuntimeError(f"the service's peak ({measured / MB:.1f} MB) is below the "
                           f"planned model parts ({parts / MB:.1f} MB): no baseline can be "
                           "derived; the planner overestimates this model")
    return float((measured - parts) / MB)


def record_baseline(manifest: Path, baseline_mb: float) -> None:
    """Store the measured baseline in the binary's manifest (``runtime_baseline_mb``),
    written atomically: the baseline belongs to the build it was measured on."""
    doc = json.loads(manifest.read_text())
    doc["runtime_baseline_mb"] = round(baseline_mb, 1)
    tmp = manifest.with_name(f".{manifest.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, manifest)


def run_gate(model: Path | None, contexts: list[int], budget: Budget, *,
             configured_ctx: int, baseline_mb: float, binary: Path | None = None,
             kv_type: str = "f16") -> tuple[bool, list[dict[str, Any]]]:
    """Measure each context under the full load; the gate fails on any over-budget peak at
    the configured context or any prediction off by more than the tolerance.

    The peak judged is the largest of: the cgroup's ``memory.peak`` (page cache
    included), the tree's sampled PSS and its RssAnon + VmSwap (the document reader
    included while it lives), and the service's own peak RSS (VmHWM). The prediction is
    the planner's footprint plus what the load adds by design (what the prompt cache
    held at the end, the adapter's tensors) against that VmHWM."""
    from slm.model.file import default_model_path

    path = model or default_model_path()
    rows, ok = [], True
    for ctx in contexts:
        predicted = plan(path, n_ctx=ctx, kv_type=kv_type, baseline_mb=baseline_mb)
        got = measure(model, ctx, binary=binary, budget_mb=budget.budget_mb,
                      baseline_mb=baseline_mb, kv_type=kv_type)
        expected = predicted.total + got["prompt_cache_bytes"] + got["adapter_bytes"]
        measured = got["measured"]
        error = (expected - measured) / measured
        peak = max(got["measured"], got["pss_peak"], got["anon_swap_peak"],
                   got["cgroup_peak"] or 0)
        over = ctx == configured_ctx and peak > budget.budget_mb * MB
        bad_prediction = abs(error) > budget.prediction_tolerance
        ok = ok and not over and not bad_prediction
        rows.append({"ctx": ctx, "predicted": expected, "measured": measured, "error": error,
                     "peak": peak, "over_budget": over, "bad_prediction": bad_prediction,
                     **got,
                     "plan": predicted.as_dict()})
    return ok, rows
