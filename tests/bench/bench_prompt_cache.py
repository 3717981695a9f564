"""`just bench` (prompt-cache part): time to first token on the default model when two
conversations with long system prompts take turns, and after a restart.

Anchor measured in the same run: the same Doorman with `prompt_cache.memory_mb = 0`, which
keeps only the live prefix of the last request (so each turn of the other conversation
decodes its whole system prompt again). Figures: median time to first token (streamed, by
a client on loopback) per turn, and the ratio to the anchor. Nothing is asserted.

Environment: SLM_BENCH_THREADS (default 2), SLM_BENCH_REPEAT (turns per conversation,
default 4), SLM_BENCH_SYSTEM_WORDS (default 450: about 600 tokens per system prompt).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

THREADS = os.environ.get("SLM_BENCH_THREADS", "2")
REPEAT = int(os.environ.get("SLM_BENCH_REPEAT", "4"))
WORDS = int(os.environ.get("SLM_BENCH_SYSTEM_WORDS", "450"))
TOPICS = ["a lighthouse on a northern island", "a bakery in an old mountain town"]


def system_prompt(topic: str) -> str:
    words = (f"You are the archivist of {topic}. Answer from the records kept there, in "
             "plain words, one short paragraph, never inventing names or dates. ").split()
    return " ".join((words * (WORDS // len(words) + 1))[:WORDS])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Doorman:
    """`slm serve` on the default model with extra TOML."""

    def __init__(self, work: Path, config: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        conf = work / f"slm-{self.port}.toml"
        conf.write_text(config)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "slm", "serve", "--config", str(conf), "--port",
             str(self.port), "--threads", THREADS, "--ledger-path",
             str(work / f"ledger-{self.port}.db"), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                if httpx.get(self.base + "/ready", timeout=2).status_code == 200:
                    self.model = httpx.get(self.base + "/v1/models").json()["data"][0]["id"]
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the Doorman did not get ready")

    def ttft(self, system: str, question: str) -> tuple[float, int]:
        """Seconds to the first streamed token, and the cached prompt tokens."""
        body = {"model": self.model, "stream": True, "max_tokens": 16, "temperature": 0,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "system", "content": system},
                             {"role": "user", "content": question}]}
        began = time.perf_counter()
        first, cached = None, 0
        with httpx.stream("POST", self.base + "/v1/chat/completions", json=body,
                          timeout=300) as response:
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if first is None and any(c["delta"].get("content")
                                         for c in event.get("choices", [])):
                    first = time.perf_counter() - began
                if event.get("usage"):
                    cached = event["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert first is not None
        return first, cached

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def take_turns(doorman: Doorman) -> tuple[list[float], list[int]]:
    times, cached = [], []
    prompts = [system_prompt(t) for t in TOPICS]
    for turn in range(REPEAT):
        for prompt in prompts:
            seconds, hit = doorman.ttft(prompt, f"Question {turn}: what is recorded first?")
            if turn > 0:  # the first turn of each conversation has nothing to reuse
                times.append(seconds)
                cached.append(hit)
    return times, cached


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="slm-bench-cache-") as tmp:
        work = Path(tmp)
        print(f"prompt cache: two conversations take turns, {WORDS}-word system prompts, "
              f"{REPEAT} turns each, threads {THREADS}")
        rows = []
        for label, config in (("anchor: live prefix only", "[prompt_cache]\nmemory_mb = 0\n"),
                              ("prompt cache in memory", "")):
            doorman = Doorman(work, config)
            try:
                times, cached = take_turns(doorman)
            finally:
                doorman.stop()
            rows.append((label, statistics.median(times), statistics.median(cached)))
        cache_dir = work / "prompt-cache"
        first = Doorman(work, f'[prompt_cache]\ndir = "{cache_dir}"\n')
        first.ttft(system_prompt(TOPICS[0]), "Question 0: what is recorded first?")
        first.stop()
        again = Doorman(work, f'[prompt_cache]\ndir = "{cache_dir}"\n')
        try:
            seconds, hit = again.ttft(system_prompt(TOPICS[0]),
                                      "Question 1: what is recorded first?")
        finally:
            again.stop()
        cold = Doorman(work, "")
        try:
            cold_seconds, cold_hit = cold.ttft(system_prompt(TOPICS[0]),
                                               "Question 1: what is recorded first?")
        finally:
            cold.stop()
        anchor = rows[0][1]
        print(f"  {'case':40} {'TTFT median':>12} {'cached tokens':>14} {'vs anchor':>10}")
        for label, ttft, hit in rows:
            print(f"  {label:40} {ttft * 1000:>9.1f} ms {hit:>14.0f} {ttft / anchor:>9.2f}x")
        print(f"  {'after a restart, no snapshot (anchor)':40} {cold_seconds * 1000:>9.1f} ms "
              f"{cold_hit:>14}")
        print(f"  {'after a restart, snapshot on disk':40} {seconds * 1000:>9.1f} ms "
              f"{hit:>14} {seconds / cold_seconds:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
