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
import time
from pathlib import Path

THREADS = int(os.environ.get("SLM_BENCH_THREADS", "2"))
OMP = os.environ.get("SLM_BENCH_OMP", "default")
N_GEN = int(os.environ.get("SLM_BENCH_TOKENS", "256"))
REPEAT = int(os.environ.get("SLM_BENCH_REPEAT", "5"))
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
CACHE = Path(os.environ.get("SLM_CACHE", Path.home() / ".cache" / "service-slm"))
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."

# Before llama_cpp loads, for every anchor (inherited by llama-bench and the server).
if OMP == "default":
    os.environ.pop("OMP_WAIT_POLICY", None)
else:
    os.environ["OMP_WAIT_POLICY"] = OMP.upper()

from slm.model_file import DEFAULT_MODEL_SHA256, open_model_file  # noqa: E402


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


def run_llama_bench(model: Path) -> dict[str, float]:
    binary = llama_bench_binary()
    res = subprocess.run(
        [str(binary), "-m", str(model), "-t", str(THREADS), "-p", "512", "-n", str(N_GEN),
         "-r", str(REPEAT), "-o", "json"],
        check=True, capture_output=True, text=True,
    )
    rows = json.loads(res.stdout)
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0)
    return {"pp512": pp, "tg": tg}


# -- in-process anchors -----------------------------------------------------------------


def run_llama_cpp_python(model: Path) -> dict[str, float]:
    """High-level `Llama`, streaming, greedy, EOS banned: time between first and last token."""
    from llama_cpp import Llama

    llm = Llama(str(model), n_ctx=2048, n_threads=THREADS, n_threads_batch=THREADS,
                verbose=False)
    eos = llm.token_eos()
    speeds = []
    for _ in range(REPEAT):
        llm.reset()
        stamps = []
        for _chunk in llm.create_completion(PROMPT, max_tokens=N_GEN, temperature=0,
                                            logit_bias={eos: -1e9}, stream=True):
            stamps.append(time.perf_counter())
        speeds.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    del llm
    return {"tg": statistics.median(speeds)}


def run_engine(model: Path) -> dict[str, float]:
    """Our engine in-process: same loop as the server, without HTTP."""
    from slm.engine import Engine, SamplingParams, quiet_llama_logs

    quiet_llama_logs()
    engine = Engine(open_model_file(model, None), n_ctx=2048, n_threads=THREADS, n_batch=512)
    engine.warm_up()
    eos_ids = eog_ids(engine)
    prompt = engine.tokenize(PROMPT)
    speeds, one_token = [], []
    for _ in range(REPEAT):
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
    for _ in range(10):
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


def run_http(model: Path, model_id: str, eos_ids: list[int]) -> dict[str, float]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "slm", "serve", "--model", str(model), "--port", str(port),
         "--threads", str(THREADS), "--omp-wait-policy", OMP, "--ctx", "2048",
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("server did not become ready")
            time.sleep(0.1)
        messages = [{"role": "user", "content": PROMPT}]
        bias = {str(t): -100 for t in eos_ids}
        speeds, server_speeds, ttfts = [], [], []
        for i in range(REPEAT + 1):
            body = {"model": model_id, "messages": messages, "max_tokens": N_GEN,
                    "temperature": 0, "logit_bias": bias, "stream": True,
                    "stream_options": {"include_usage": True},
                    # a different first word each time: no prompt-cache hit in TTFT
                    }
            body["messages"] = [{"role": "user", "content": f"({i}) {PROMPT}"}]
            sent = time.perf_counter()
            resp = post(port, body)
            stamps, usage = [], None
            for raw in resp:  # a light client: it shares the 2 cores with the server
                if raw.startswith(b'data: {"id"') and b'"delta":{"content":"' in raw:
                    stamps.append(time.perf_counter())
                elif b'"usage"' in raw:
                    usage = json.loads(raw[6:])
            if i == 0:
                continue  # warm-up
            ttfts.append(stamps[0] - sent)
            speeds.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
            server_speeds.append(usage["timings"]["predicted_per_second"])
        one = []
        for _ in range(10):
            began = time.perf_counter()
            resp = post(port, {"model": model_id, "messages": messages, "max_tokens": 1,
                               "temperature": 0})
            resp.read()
            one.append(time.perf_counter() - began)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        hwm_kb = int(next(x for x in status.splitlines() if x.startswith("VmHWM")).split()[1])
        return {
            "tg": statistics.median(speeds),
            "tg_server": statistics.median(server_speeds),
            "ttft_s": statistics.median(ttfts),
            "one_token_s": statistics.median(one),
            "peak_rss_mb": hwm_kb / 1024,
        }
    finally:
        proc.terminate()
        proc.wait(30)


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
        else:
            print(json.dumps(PARTS[sys.argv[2]](Path(sys.argv[3]))))
        return 0
    model_file = open_model_file(None, DEFAULT_MODEL_SHA256)
    model, model_id = model_file.path, model_file.default_id
    log(f"model {model.name}, threads {THREADS}, OMP_WAIT_POLICY {OMP}, {N_GEN} tokens")
    anchor = run_llama_bench(model)
    log(f"llama-bench: {anchor}")
    lcp = in_own_process("llama-cpp-python", model)
    log(f"llama-cpp-python: {lcp}")
    eng = in_own_process("engine", model)
    log(f"engine: {eng}")
    eos_ids = in_own_process("eog", model)
    web = run_http(model, model_id, eos_ids)
    log(f"http: {web}")

    tg = anchor["tg"]
    rows = [
        ("llama-bench (llama.cpp, anchor)", tg, 1.0),
        ("llama-cpp-python Llama, in-process", lcp["tg"], lcp["tg"] / tg),
        ("Doorman engine, in-process", eng["tg"], eng["tg"] / tg),
        ("Doorman HTTP streaming (client-measured)", web["tg"], web["tg"] / tg),
        ("Doorman HTTP streaming (server timings)", web["tg_server"], web["tg_server"] / tg),
    ]
    print(f"\nGeneration, {model.name}, {THREADS} threads, OMP_WAIT_POLICY={OMP}, "
          f"{N_GEN} tokens, median of {REPEAT}")
    print(f"{'path':45} {'tokens/s':>9} {'ratio':>7}")
    for name, speed, ratio in rows:
        print(f"{name:45} {speed:9.1f} {ratio:7.3f}")
    print(f"\nllama-bench prompt processing pp512: {anchor['pp512']:.1f} tokens/s")
    print(f"time to first token over HTTP (uncached {len(PROMPT.split())}-word prompt): "
          f"{web['ttft_s'] * 1000:.1f} ms")
    overhead = web["one_token_s"] - eng["one_token_s"]
    print(f"max_tokens=1 request: HTTP {web['one_token_s'] * 1000:.2f} ms, in-process "
          f"{eng['one_token_s'] * 1000:.2f} ms, HTTP overhead {overhead * 1000:.2f} ms")
    print(f"peak RSS of the server (VmHWM): {web['peak_rss_mb']:.1f} MiB")
    print(f"HTTP / llama-bench generation ratio: {web['tg'] / tg:.3f} (target >= 0.95)")
    return 0


def eog_ids_for(model: Path) -> list[int]:
    from slm.engine import Engine, quiet_llama_logs

    quiet_llama_logs()
    engine = Engine(open_model_file(model, None), n_ctx=64, n_threads=1, n_batch=64)
    try:
        return eog_ids(engine)
    finally:
        engine.close()


if __name__ == "__main__":
    raise SystemExit(main())
