"""`just bench`: the default model's speed through the Doorman against its anchors.

All figures come from one run with the same thread count and OpenMP wait policy:
- llama.cpp's own `llama-bench`, built (once, cached) from the llama.cpp source that the
  llama-cpp-python sdist vendors, portable like our wheel;
- llama-cpp-python's high-level `Llama` in-process (what most Python servers use);
- our engine in-process (llama.cpp's C sampler chain through the low-level API);
- the Doorman over HTTP, streaming, measured by a client on loopback.
Printed: generation tokens/s and ratios to llama-bench, time to first token, per-request
HTTP overhead at max_tokens=1, peak RSS of the server. Nothing is asserted.

Each in-process anchor runs in a process of its own: a process that once loaded llama.cpp
keeps its OpenMP threads (spinning, with OMP_WAIT_POLICY=active), which would slow the HTTP
client and so the server.

Environment: SLM_BENCH_THREADS (default 2), SLM_BENCH_OMP (default|active|passive, default
`default`: libgomp's spin-then-sleep, the service's default), SLM_BENCH_TOKENS (default
256), SLM_BENCH_REPEAT (default 5).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

THREADS = int(os.environ.get("SLM_BENCH_THREADS", "2"))
OMP = os.environ.get("SLM_BENCH_OMP", "default")
N_GEN = int(os.environ.get("SLM_BENCH_TOKENS", "256"))
REPEAT = int(os.environ.get("SLM_BENCH_REPEAT", "5"))
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
CACHE = Path(os.environ.get("SLM_CACHE", Path.home() / ".cache" / "service-slm"))
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
# Every path generates after the same chat-rendered prompt (llama-bench: at the same depth):
# on a 135M model attention over the context is a visible share of each token's cost.
MESSAGES = [{"role": "user", "content": f"(0) {PROMPT}"}]

# Before llama_cpp loads, for every anchor (inherited by llama-bench and the server).
if OMP == "default":
    os.environ.pop("OMP_WAIT_POLICY", None)
else:
    os.environ["OMP_WAIT_POLICY"] = OMP.upper()

from slm.model.file import DEFAULT_MODEL_SHA256, open_model_file  # noqa: E402


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# -- llama-bench ------------------------------------------------------------------------


def llama_bench_binary() -> Path:
    """Build llama-bench from the sdist's vendored llama.cpp (portable), cached."""
    out = CACHE / f"llama-bench-{LLAMA_CPP_PYTHON_VERSION}" / "llama-bench"
    if out.exists():
        return out
    sdist_dir = CACHE / "sdist"
    sdist = sdist_dir / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if not sdist.exists():
        log("downloading the llama-cpp-python sdist (for its vendored llama.cpp)")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(sdist_dir)],
            check=True, stdout=subprocess.DEVNULL,
        )
    work = CACHE / "llama-bench-build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log("building llama-bench (portable, once; a few minutes)")
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    src = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
    build = work / "build"
    subprocess.run(
        ["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
         "-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF",
         "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
         "-DLLAMA_BUILD_TOOLS=ON"],
        check=True, stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        ["cmake", "--build", str(build), "--target", "llama-bench", "-j", str(os.cpu_count())],
        check=True, stdout=subprocess.DEVNULL,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(next(build.glob("bin/llama-bench")), out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def run_llama_bench(model: Path, *, prompt: int, gen: int, reps: int, depth: int = 0) -> float:
    """llama-bench tokens/s for one test (pp or tg), generating after ``depth`` tokens."""
    res = subprocess.run(
        [str(llama_bench_binary()), "-m", str(model), "-t", str(THREADS), "-p", str(prompt),
         "-n", str(gen), "-r", str(reps), "-d", str(depth), "-o", "json"],
        check=True, capture_output=True, text=True,
    )
    return float(json.loads(res.stdout)[0]["avg_ts"])


# -- in-process anchors -----------------------------------------------------------------


def run_llama_cpp_python(model: Path) -> dict[str, float]:
    """High-level `Llama`, streaming, greedy, EOS banned: time between first and last token."""
    from llama_cpp import Llama

    llm = Llama(str(model), n_ctx=2048, n_threads=THREADS, n_threads_batch=THREADS,
                verbose=False)
    eos = llm.token_eos()
    speeds = []
    for _ in range(1):
        llm.reset()
        stamps = []
        rendered = _rendered_prompt(model)
        for _chunk in llm.create_completion(rendered, max_tokens=N_GEN, temperature=0,
                                            logit_bias={eos: -1e9}, stream=True):
            stamps.append(time.perf_counter())
        speeds.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    del llm
    return {"tg": statistics.median(speeds)}


def run_engine(model: Path) -> dict[str, float]:
    """Our engine in-process: same loop as the server, without HTTP."""
    from slm.tier_a.engine import Engine, SamplingParams, quiet_llama_logs

    quiet_llama_logs()
    engine = Engine(open_model_file(model, None), n_ctx=2048, n_threads=THREADS, n_batch=512)
    engine.warm_up()
    eos_ids = eog_ids(engine)
    prompt = engine.chat_prompt(MESSAGES)
    speeds, one_token = [], []
    for _ in range(1):
        engine._forget_cache()
        stamps: list[float] = []
        engine.generate(
            prompt,
            SamplingParams(max_tokens=N_GEN, temperature=0,
                           logit_bias=tuple((t, -100.0) for t in eos_ids)),
            on_text=lambda _t, s=stamps: s.append(time.perf_counter()),
            interrupted=lambda: False,
        )
        speeds.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    for _ in range(5):
        began = time.perf_counter()
        engine.generate(prompt, SamplingParams(max_tokens=1, temperature=0),
                        on_text=lambda _t: None, interrupted=lambda: False)
        one_token.append(time.perf_counter() - began)
    engine.close()
    return {"tg": statistics.median(speeds), "one_token_s": statistics.median(one_token)}


def eog_ids(engine) -> list[int]:
    import llama_cpp as C

    vocab = C.llama_model_get_vocab(engine._model)
    return [t for t in range(engine.n_vocab) if C.llama_vocab_is_eog(vocab, t)]


# -- the Doorman over HTTP --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: dict) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    return conn.getresponse()


class HttpTarget:
    """The Doorman as a subprocess on loopback, measured by a light client."""

    def __init__(self, model: Path, model_id: str, eos_ids: list[int]) -> None:
        self.port = free_port()
        self.model_id = model_id
        self.bias = {str(t): -100 for t in eos_ids}
        self.ledger_dir = Path(tempfile.mkdtemp(prefix="slm-bench-", dir=Path.home()))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "slm", "serve", "--model", str(model),
             "--port", str(self.port), "--threads", str(THREADS), "--omp-wait-policy", OMP,
             "--ctx", "2048", "--log-level", "warning",
             "--ledger-path", str(self.ledger_dir / "ledger.db")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("server did not become ready")
            time.sleep(0.1)
        self.rounds = 0

    def stream_once(self) -> dict[str, float]:
        """One streamed generation of N_GEN tokens; a new prompt each time (no cache hit)."""
        self.rounds += 1
        body = {"model": self.model_id, "max_tokens": N_GEN, "temperature": 0,
                "logit_bias": self.bias, "stream": True,
                "stream_options": {"include_usage": True},
                # "(n)" differs in one token: no prompt-cache hit, same length
                "messages": [{"role": "user", "content": f"({self.rounds % 10}) {PROMPT}"}]}
        sent = time.perf_counter()
        stamps, usage = [], None
        for raw in post(self.port, body):  # a light client: it shares the 2 cores
            if raw.startswith(b'data: {"id"') and b'"delta":{"content":"' in raw:
                stamps.append(time.perf_counter())
            elif b'"usage"' in raw:
                usage = json.loads(raw[6:])
        # Chunks may carry several tokens (stream coalescing); the first carries one.
        tokens = usage["usage"]["completion_tokens"]
        return {"tg": (tokens - 1) / (stamps[-1] - stamps[0]),
                "tg_server": usage["timings"]["predicted_per_second"],
                "ttft_s": stamps[0] - sent}

    def finish(self) -> dict[str, float]:
        """max_tokens=1 latency, ledger wait, peak RSS; then stop the server."""
        try:
            one = []
            messages = [{"role": "user", "content": PROMPT}]
            for _ in range(20):
                began = time.perf_counter()
                post(self.port, {"model": self.model_id, "messages": messages,
                                 "max_tokens": 1, "temperature": 0}).read()
                one.append(time.perf_counter() - began)
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            conn.request("GET", "/metrics")
            metrics = conn.getresponse().read().decode()
            sums = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                    if line.startswith("slm_ledger_append_seconds_")}
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            hwm_kb = int(next(x for x in status.splitlines()
                              if x.startswith("VmHWM")).split()[1])
            return {
                "one_token_s": statistics.median(one),
                "ledger_wait_s": sums["slm_ledger_append_seconds_sum"]
                / max(1.0, sums["slm_ledger_append_seconds_count"]),
                "peak_rss_mb": hwm_kb / 1024,
            }
        finally:
            self.proc.terminate()
            self.proc.wait(30)
            shutil.rmtree(self.ledger_dir, ignore_errors=True)


PARTS = {"llama-cpp-python": run_llama_cpp_python, "engine": run_engine}


def in_own_process(part: str, model: Path) -> dict[str, float]:
    """Run one in-process anchor in a fresh process; its figures come back as JSON."""
    res = subprocess.run([sys.executable, __file__, "part", part, str(model)],
                         check=True, capture_output=True, text=True)
    return json.loads(res.stdout)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "part":
        if sys.argv[2] == "eog":
            print(json.dumps(eog_ids_for(Path(sys.argv[3]))))
        elif sys.argv[2] == "depth":
            print(json.dumps(prompt_depth(Path(sys.argv[3]))))
        else:
            print(json.dumps(PARTS[sys.argv[2]](Path(sys.argv[3]))))
        return 0
    model_file = open_model_file(None, DEFAULT_MODEL_SHA256)
    model, model_id = model_file.path, model_file.default_id
    log(f"model {model.name}, threads {THREADS}, OMP_WAIT_POLICY {OMP}, {N_GEN} tokens, "
        f"{REPEAT} interleaved rounds")
    pp512 = run_llama_bench(model, prompt=512, gen=0, reps=3)
    depth = in_own_process("depth", model)
    web = HttpTarget(model, model_id, in_own_process("eog", model))
    # Interleaved rounds: drift of the machine's speed hits every path alike; each path's
    # ratio is taken against the llama-bench run of its own round.
    names = ("llama-bench", "llama-cpp-python", "engine", "http", "http_server")
    speeds: dict[str, list[float]] = {n: [] for n in names}
    ttfts, engine_one = [], []
    try:
        for r in range(REPEAT):
            speeds["llama-bench"].append(
                run_llama_bench(model, prompt=0, gen=N_GEN, reps=1, depth=depth))
            speeds["llama-cpp-python"].append(in_own_process("llama-cpp-python", model)["tg"])
            eng = in_own_process("engine", model)
            speeds["engine"].append(eng["tg"])
            engine_one.append(eng["one_token_s"])
            got = web.stream_once()
            speeds["http"].append(got["tg"])
            speeds["http_server"].append(got["tg_server"])
            ttfts.append(got["ttft_s"])
            log(f"round {r + 1}: " + ", ".join(f"{n} {speeds[n][-1]:.1f}" for n in names))
    finally:
        tail = web.finish()

    def ratio(name: str) -> float:
        return statistics.median(
            a / b for a, b in zip(speeds[name], speeds["llama-bench"], strict=True))

    labels = {
        "llama-bench": "llama-bench (llama.cpp, anchor)",
        "llama-cpp-python": "llama-cpp-python Llama, in-process",
        "engine": "Doorman engine, in-process",
        "http": "Doorman HTTP streaming (client-measured)",
        "http_server": "Doorman HTTP streaming (server timings)",
    }
    print(f"\nGeneration, {model.name}, {THREADS} threads, OMP_WAIT_POLICY={OMP}, "
          f"{N_GEN} tokens, {REPEAT} interleaved rounds")
    print(f"{'path':45} {'median tok/s':>12} {'min':>7} {'max':>7} {'ratio':>7}")
    for name in names:
        v = speeds[name]
        print(f"{labels[name]:45} {statistics.median(v):12.1f} {min(v):7.1f} {max(v):7.1f} "
              f"{ratio(name):7.3f}")
    print("(ratio: median over rounds of path / llama-bench of the same round)")
    print(f"\nllama-bench prompt processing pp512: {pp512:.1f} tokens/s")
    print(f"generation starts after the same {depth}-token chat prompt on every path "
          f"(llama-bench -d {depth}); llama-bench decodes without sampling")
    print(f"time to first token over HTTP (uncached {depth}-token prompt): "
          f"{statistics.median(ttfts) * 1000:.1f} ms")
    in_process = statistics.median(engine_one)
    print(f"max_tokens=1 request: HTTP {tail['one_token_s'] * 1000:.2f} ms, in-process "
          f"{in_process * 1000:.2f} ms, HTTP overhead "
          f"{(tail['one_token_s'] - in_process) * 1000:.2f} ms")
    print(f"peak RSS of the server (VmHWM): {tail['peak_rss_mb']:.1f} MiB")
    print(f"ledger: mean wait of a request for its durable record (slm_ledger_append_seconds):"
          f" {tail['ledger_wait_s'] * 1000:.2f} ms")
    print(f"HTTP / llama-bench generation ratio: {ratio('http'):.3f} (target >= 0.95)")
    return 0


def _rendered_prompt(model: Path) -> str:
    from slm.tier_a.engine import Engine, quiet_llama_logs

    quiet_llama_logs()
    engine = Engine(open_model_file(model, None), n_ctx=256, n_threads=1, n_batch=64)
    try:
        return engine.template.render(MESSAGES)
    finally:
        engine.close()


def prompt_depth(model: Path) -> int:
    from slm.tier_a.engine import Engine, quiet_llama_logs

    quiet_llama_logs()
    engine = Engine(open_model_file(model, None), n_ctx=256, n_threads=1, n_batch=64)
    try:
        return len(engine.chat_prompt(MESSAGES))
    finally:
        engine.close()


def eog_ids_for(model: Path) -> list[int]:
    from slm.tier_a.engine import Engine, quiet_llama_logs

    quiet_llama_logs()
    engine = Engine(open_model_file(model, None), n_ctx=64, n_threads=1, n_batch=64)
    try:
        return eog_ids(engine)
    finally:
        engine.close()


if __name__ == "__main__":
    raise SystemExit(main())
