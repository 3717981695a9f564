"""A private Doorman for ``slm chat --model-file``: the same ``slm serve`` in a child
process on a free loopback port, with its ledger in a temporary directory (or where the
``--ledger`` puts it), stopped with SIGTERM when the chat ends. Chatting "in-process" thus still
goes through the whole service: sanitising, scheduling, the audit ledger.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from slm.errors import ClientError
from slm.ops.self_exec import slm_command

PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """In the child before exec: SIGTERM when ``slm chat`` dies, however it dies (Linux
    PR_SET_PDEATHSIG; ``slm chat`` is single-threaded, so preexec_fn is safe here)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def private_doorman(model: Path, ledger: Path | None = None, *,
                    ready_timeout_s: float = 300.0) -> Iterator[str]:
    """Start ``slm serve`` on ``model``; yield its base URL once ``/ready`` says 200.

    It reads no config file (the appliance's belongs to its own service: its ledger, its
    replica); the ledger is ``ledger``, else a temporary file that goes with the chat."""
    if not model.is_file():
        raise ClientError(f"no model file {model}")
    with tempfile.TemporaryDirectory(prefix="slm-chat-") as tmp:
        log_path = Path(tmp) / "serve.log"
        port = _free_port()
        args = [*slm_command(), "serve", "--model", str(model), "--host", "127.0.0.1",
                "--port", str(port), "--config", os.devnull,
                "--ledger-path", str(ledger or Path(tmp) / "ledger.db")]
        # SIGINT is the chat's (Ctrl-C cancels an answer): the child gets its own session.
        with log_path.open("wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=_stop_with_parent)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(proc, base, log_path, ready_timeout_s)
            yield base
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], base: str, log_path: Path,
                timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            lines = log_path.read_text(errors="replace").strip().splitlines()
            last = lines[-1] if lines else "no output"
            raise ClientError(f"the private Doorman exited {proc.returncode}: {last}")
        try:
            if httpx.get(base + "/ready", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise ClientError(f"the private Doorman was not ready within {timeout_s:g} s")
