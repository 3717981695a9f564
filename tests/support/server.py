"""Real `slm serve` processes and `slm` CLI runs on loopback, for the integration suites."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

# SLM_BINARY runs every server and CLI test against the compiled binary (`just test-binary`)
SLM = [os.environ["SLM_BINARY"]] if os.environ.get("SLM_BINARY") else [sys.executable, "-m", "slm"]
TINY_ID = "tiny"
EOG_BIAS = {"2": -100, "4": -100}  # bans </s> and <|im_end|>: generation runs to max_tokens


def bearer(key: str) -> dict[str, str]:
    """The header that presents API key ``key``."""
    return {"Authorization": f"Bearer {key}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real `slm serve` subprocess on a loopback port."""

    def __init__(self, tmp: Path, model: Path | None, config: str = "", *extra: str,
                 env: dict[str, str] | None = None, ready_port: int | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # where /ready is asked: the port itself, or a plain loopback port beside HTTPS
        self.ready_base = f"http://127.0.0.1:{ready_port or self.port}"
        self.config = tmp / f"slm-{self.port}.toml"
        self.config.write_text(config)
        self.log_path = tmp / f"slm-{self.port}.log"
        self.ledger = tmp / f"ledger-{self.port}.db"
        args = [*SLM, "serve", "--config", str(self.config), "--port", str(self.port),
                "--threads", "2", "--ledger-path", str(self.ledger), "--log-format", "json",
                *extra]
        if model is not None:
            args += ["--model", str(model), "--model-id", TINY_ID]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.ready_base + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str, headers: dict[str, str] | None = None) -> float:
        text = httpx.get(self.base + "/metrics", headers=headers, timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def run_slm(*args: str, timeout: float = 60, env: dict[str, str] | None = None):
    """Run the `slm` CLI to completion; returns the CompletedProcess."""
    return subprocess.run(
        [*SLM, *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
