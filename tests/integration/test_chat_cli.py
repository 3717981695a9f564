"""`slm chat`: one-shot and interactive (under a real pseudo-terminal) against real
Doormen on loopback: the shared tiny-model server, and a private Doorman on the default
model started by `--model-file`."""

import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from slm.model.file import default_model_path
from support.server import SLM, TINY_ID, run_slm

STATS = re.compile(rb"\[(\d+) prompt(?: \(\d+ cached\))? \+ (\d+) completion tokens, (\w+)\]")


def prompt_tokens(stderr: str) -> int:
    found = STATS.search(stderr.encode())
    assert found, stderr
    return int(found.group(1))


def test_one_shot_answers_on_stdout_with_the_apis_token_counts(tiny_server):
    # Greedy: sampled, the tiny model's first token is one of its two end-of-generation
    # tokens about once in 170 runs, and the answer is then rightly empty.
    done = run_slm("chat", "--url", tiny_server.base, "-p", "hello", "--max-tokens", "8",
                   "--temperature", "0", "--stats")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    api = httpx.post(tiny_server.base + "/v1/chat/completions", timeout=60, json={
        "model": TINY_ID, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8})
    assert prompt_tokens(done.stderr) == api.json()["usage"]["prompt_tokens"]


def test_system_prompt_and_piped_stdin_reach_the_model(tiny_server):
    url = ["chat", "--url", tiny_server.base, "--max-tokens", "2", "--stats"]
    alone = run_slm(*url, "-p", "Summarise this.")
    with_system = run_slm(*url, "-p", "Summarise this.", "-s", "You are terse and exact.")
    piped = subprocess.run([*SLM, *url, "-p", "Summarise this."], input="A short text " * 5,
                           capture_output=True, text=True, timeout=60)
    only_stdin = subprocess.run([*SLM, *url], input="A short text " * 5,
                                capture_output=True, text=True, timeout=60)
    for done in (alone, with_system, piped, only_stdin):
        assert done.returncode == 0, done.stderr
    base = prompt_tokens(alone.stderr)
    assert prompt_tokens(with_system.stderr) > base
    assert prompt_tokens(piped.stderr) > prompt_tokens(only_stdin.stderr) > 0
    assert prompt_tokens(piped.stderr) > base


def test_errors_are_one_line_and_non_zero(tiny_server, start_server, tiny_model, tmp_path):
    unknown = run_slm("chat", "--url", tiny_server.base, "--model", "nope", "-p", "hi")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("slm: error: HTTP 404: ")
    assert len(unknown.stderr.strip().splitlines()) == 1

    nobody = run_slm("chat", "--url", "http://127.0.0.1:9", "-p", "hi")
    assert nobody.returncode == 1
    assert "cannot reach the Doorman at http://127.0.0.1:9" in nobody.stderr

    empty = subprocess.run([*SLM, "chat", "--url", tiny_server.base, "-p", " "], input="",
                           capture_output=True, text=True, timeout=60)
    assert empty.returncode == 2
    assert "nothing to ask" in empty.stderr

    locked = start_server(tiny_model, '[server]\napi_keys = ["chat-key-123"]\n')
    refused = run_slm("chat", "--url", locked.base, "--model", TINY_ID, "-p", "hi")
    assert refused.returncode == 1
    assert "HTTP 401" in refused.stderr
    key_file = tmp_path / "key"
    key_file.write_text("chat-key-123\n")
    by_file = run_slm("chat", "--url", locked.base, "-p", "hi", "--max-tokens", "2",
                      "--api-key-file", str(key_file))
    by_env = run_slm("chat", "--url", locked.base, "-p", "hi", "--max-tokens", "2",
                     env={"SLM_API_KEY": "chat-key-123"})
    assert by_file.returncode == 0, by_file.stderr
    assert by_env.returncode == 0, by_env.stderr


class Terminal:
    """`slm chat` on a pseudo-terminal: what a person at a keyboard sees and types."""

    def __init__(self, *args: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become `slm chat` on the terminal
            os.execvp(SLM[0], [*SLM, "chat", *args])
        self.seen = b""

    def expect(self, pattern: bytes, timeout: float = 60) -> re.Match:
        """Read until ``pattern`` appears after what was matched before."""
        end = time.monotonic() + timeout
        while True:
            found = re.compile(pattern).search(self.seen)
            if found:
                self.seen = self.seen[found.end():]
                return found
            left = end - time.monotonic()
            assert left > 0, f"no {pattern!r} in {self.seen[-2000:]!r}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                assert chunk, f"chat ended before {pattern!r}: {self.seen[-2000:]!r}"
                self.seen += chunk

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 30) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            try:
                os.read(self.fd, 4096)
            except OSError:
                time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("chat did not exit")


def test_interactive_history_reset_and_exit(tiny_server):
    term = Terminal("--url", tiny_server.base, "--stats", "--max-tokens", "3")
    term.expect(rb">>> ")
    term.type("hello\r")
    first = int(term.expect(STATS).group(1))
    term.expect(rb">>> ")
    term.type("hello\r")
    second = int(term.expect(STATS).group(1))
    assert second > first  # the first exchange went along as history
    term.type("/reset\r")
    term.expect(rb"conversation forgotten")
    term.type("hello\r")
    assert int(term.expect(STATS).group(1)) == first
    term.type("/nonsense\r")
    term.expect(rb"unknown command /nonsense")
    term.expect(rb">>> ")
    term.type("\x03")  # Ctrl-C at the prompt does not leave
    term.expect(rb"Ctrl-D or /exit leaves")
    term.type("/exit\r")
    assert term.wait() == 0


@pytest.mark.skipif(not default_model_path().is_file(), reason="default model not installed")
def test_ctrl_c_cancels_the_answer_not_the_chat(tmp_path):
    """On the real default model through a private Doorman: Ctrl-C mid-answer stops the
    generation in the Doorman (its ledger records the cancelled request), the chat goes on,
    and Ctrl-D leaves with exit 0."""
    ledger = tmp_path / "ledger.db"
    term = Terminal("--model-file", str(default_model_path()), "--ledger", str(ledger),
                    "--stats", "--max-tokens", "2000", "--temperature", "0")
    term.expect(rb">>> ", timeout=120)
    term.type("Write a very long story about a dragon who learns to bake bread.\r")
    term.expect(rb"bread\.\r\n")  # the echo of what was typed
    term.expect(rb"\S+ \S+ \S+ \S+ \S+ \S+")  # the answer is streaming
    term.type("\x03")
    term.expect(rb"\(cancelled\)")
    term.expect(rb">>> ")
    term.type("What is the capital of France? Answer in one word.\r")
    found = term.expect(STATS)
    assert found.group(3) == b"stop"
    assert b"Paris" in term.seen or b"Paris" in found.string
    term.expect(rb">>> ")
    term.type("\x04")  # Ctrl-D
    assert term.wait() == 0
    rows = [json.loads(line) for line in run_slm(
        "ledger", "export", "--db", str(ledger), "--format", "jsonl").stdout.splitlines()]
    assert [r["status"] for r in rows if r["endpoint"] == "chat"] == [499, 200], rows
    assert rows[0]["error_code"] == "client_closed_request"


def test_a_killed_chat_takes_its_private_doorman_along(tiny_model):
    term = Terminal("--model-file", str(tiny_model))
    term.expect(rb">>> ", timeout=120)
    children = Path(f"/proc/{term.pid}/task/{term.pid}/children").read_text().split()
    assert len(children) == 1
    server = int(children[0])
    os.kill(term.pid, signal.SIGKILL)
    os.waitpid(term.pid, 0)
    end = time.monotonic() + 30
    while Path(f"/proc/{server}").exists() and time.monotonic() < end:
        try:  # reap nothing (not our child); a zombie shows state Z
            if Path(f"/proc/{server}/stat").read_text().split(") ")[1].startswith("Z"):
                break
        except OSError:
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{server}").exists() or Path(
        f"/proc/{server}/stat").read_text().split(") ")[1].startswith("Z")
