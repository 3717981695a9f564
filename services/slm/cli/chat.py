"""``slm chat``: a terminal chat with a Doorman, interactive or one-shot.

Interactive: answers stream as they are generated; Ctrl-C cancels the current answer (the
connection closes, so the Doorman stops generating) and the chat goes on; ``/reset``
forgets the conversation; Ctrl-D or ``/exit`` leaves. One-shot (``-p``, or stdin when it
is not a terminal): one answer on stdout, exit 1 with one line on stderr on any error.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from slm.cli.chat_client import Answer, DoormanClient
from slm.errors import ClientError, ConfigError

HELP = """commands:
  /reset          forget the conversation (the system prompt stays)
  /system TEXT    set the system prompt and forget the conversation
  /help           this text
  /exit, Ctrl-D   leave
Ctrl-C cancels the answer being written."""


@dataclass
class ChatOptions:
    """What every request of one chat session carries besides its messages."""

    model: str
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    documents: list[str] = field(default_factory=list)

    def body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        body: dict[str, Any] = {"model": self.model, "messages": head + messages}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.documents:
            body["documents"] = self.documents
        return body


def stream_answer(client: DoormanClient, body: dict[str, Any], out: TextIO) -> Answer:
    """Write one streamed answer to ``out`` as it arrives; return it when it ends."""
    for item in client.stream_chat(body):
        if isinstance(item, Answer):
            return item
        out.write(item)
        out.flush()
    raise ClientError("the answer ended without a result")  # stream_chat never does this


def stats_line(answer: Answer) -> str:
    """``[12 prompt (8 cached) + 30 completion tokens, stop]`` from the answer's usage."""
    usage = answer.usage
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    prompt = f"{usage.get('prompt_tokens', '?')} prompt"
    if cached:
        prompt += f" ({cached} cached)"
    return (f"[{prompt} + {usage.get('completion_tokens', '?')} completion tokens, "
            f"{answer.finish_reason or 'cancelled'}]")


def sources_lines(answer: Answer) -> str:
    """``[1] report.pdf, page 2`` for each document excerpt the answer was given."""
    return "".join(f"[{c['ref']}] {c['filename']}, {c['where']}\n" for c in answer.citations)


def one_shot(client: DoormanClient, options: ChatOptions, question: str, *,
             stats: bool) -> int:
    """Answer one question on stdout."""
    answer = stream_answer(client, options.body([{"role": "user", "content": question}]),
                           sys.stdout)
    sys.stdout.write("\n" + sources_lines(answer))
    if stats:
        print(stats_line(answer), file=sys.stderr)
    return 0


@dataclass
class Session:
    """One interactive conversation: the messages so far and the commands."""

    client: DoormanClient
    options: ChatOptions
    out: TextIO
    stats: bool = False
    history: list[dict[str, str]] = field(default_factory=list)

    def command(self, line: str) -> bool:
        """Run a ``/command``; False when the chat should end."""
        name, _, arg = line.partition(" ")
        if name in ("/exit", "/quit", "/bye"):
            return False
        if name == "/reset":
            self.history.clear()
            self.out.write("(conversation forgotten)\n")
        elif name == "/system":
            self.options.system = arg.strip() or None
            self.history.clear()
            self.out.write("(system prompt set, conversation forgotten)\n")
        elif name == "/help":
            self.out.write(HELP + "\n")
        else:
            self.out.write(f"unknown command {name}; /help lists them\n")
        return True

    def ask(self, text: str) -> None:
        """Send ``text`` with the history; Ctrl-C cancels the answer, not the chat."""
        shown: list[str] = []
        answer: Answer | None = None
        try:
            stream = self.client.stream_chat(
                self.options.body([*self.history, {"role": "user", "content": text}]))
            try:
                for item in stream:
                    if isinstance(item, Answer):
                        answer = item
                        break
                    shown.append(item)
                    self.out.write(item)
                    self.out.flush()
            finally:
                stream.close()  # closes the connection: the Doorman cancels the request
        except KeyboardInterrupt:
            self.out.write("\n(cancelled)")
        except ClientError as exc:
            self.out.write(f"\nerror: {exc.one_line()}\n")
            return
        self.out.write("\n")
        # What was shown is what the model said, cancelled or not: it stays in the history
        # (a question cancelled before any answer does not).
        if shown or answer is not None:
            self.history += [{"role": "user", "content": text},
                             {"role": "assistant", "content": "".join(shown)}]
        if answer is not None:
            self.out.write(sources_lines(answer))
        if self.stats and answer is not None:
            self.out.write(stats_line(answer) + "\n")

    def run(self, read_line: Callable[[str], str]) -> int:
        """The loop: read, answer, until Ctrl-D or /exit."""
        while True:
            try:
                line = read_line(">>> ").strip()
            except EOFError:
                self.out.write("\n")
                return 0
            except KeyboardInterrupt:
                self.out.write("\n(Ctrl-D or /exit leaves)\n")
                continue
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return 0
                continue
            try:
                self.ask(line)
            except KeyboardInterrupt:  # a second Ctrl-C while the first was handled
                self.out.write("\n(cancelled)\n")


def api_key(path: Path | None) -> str | None:
    if path is not None:
        try:
            lines = path.read_text(encoding="utf-8").split()
        except OSError as exc:
            raise ConfigError(f"--api-key-file: cannot read {path}: {exc.strerror}") from None
        if not lines:
            raise ConfigError(f"--api-key-file: {path} holds no key")
        return lines[0]
    return os.environ.get("SLM_API_KEY") or None


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _doorman(url: str, model_file: Path | None, ledger: Path | None) -> Iterator[str]:
    if model_file is None:
        yield url
        return
    from slm.cli.private_doorman import private_doorman

    with private_doorman(model_file, ledger) as base:
        yield base


def _stdin_is_data(with_prompt: bool) -> bool:
    """Whether stdin carries input: not a terminal; with ``-p``, only a pipe or a file (an
    inherited stdin under cron or ssh must not make ``-p`` wait forever)."""
    if sys.stdin is None or sys.stdin.isatty():
        return False
    if not with_prompt:
        return True
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _question(prompt: str | None) -> str | None:
    """The one-shot question: ``-p`` and/or piped stdin (stdin follows ``-p``)."""
    piped = sys.stdin.read() if _stdin_is_data(prompt is not None) else None
    parts = [p for p in (prompt, piped) if p and p.strip()]
    if prompt is None and piped is None:
        return None
    if not parts:
        raise ConfigError("nothing to ask: -p and stdin are empty")
    return "\n\n".join(parts)


def run_chat(url: str, *, model: str | None, model_file: Path | None, ledger: Path | None,
             api_key_file: Path | None, system: str | None, prompt: str | None,
             max_tokens: int | None, temperature: float | None, documents: list[str],
             stats: bool) -> int:
    """``slm chat``: one-shot when a question is given or piped, else interactive."""
    question = _question(prompt)
    key = api_key(api_key_file)
    for sig in (signal.SIGHUP, signal.SIGTERM):  # a closed terminal still stops the
        signal.signal(sig, _exit_on_signal)      # private Doorman (the finally blocks run)
    with _doorman(url, model_file, ledger) as base, DoormanClient(base, key) as client:
        options = ChatOptions(model=model or client.first_model(), system=system,
                              max_tokens=max_tokens, temperature=temperature,
                              documents=documents)
        if question is not None:
            return one_shot(client, options, question, stats=stats)
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and input history for input())
        print(f"chatting with {options.model} at {base}; /help for commands",
              file=sys.stderr)
        return Session(client, options, sys.stdout, stats=stats).run(input)
