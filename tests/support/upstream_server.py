"""A small OpenAI-compatible upstream on loopback that can be told to misbehave.

A raw asyncio HTTP/1.1 server (not a web framework) so it can do what real upstreams do
when they fail: drop the connection with no response or in the middle of a stream, stall,
answer 429 with Retry-After, 5xx, or redirect. It runs on its own thread and event loop in
the test process and records every request it receives (to check what left the Doorman).

Answers echo the last user message (or the prompt), so placeholders sent upstream come
back in the answer and rehydration is observable. Streams cut the echo into pieces of
``chunk_chars`` characters, which splits placeholders across chunks.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Received:
    """One request as the upstream saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    disconnected_at: float | None = None


@dataclass
class Upstream:
    """The server's behaviour and what it saw; change attributes from the test."""

    script: deque[str] = field(default_factory=deque)  # one behaviour per request; then echo
    chunk_chars: int = 3
    healthy: bool = True
    tool_call: bool = False
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.Server | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def completions(self) -> list[Received]:
        return [r for r in self.received if r.method == "POST"]

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Upstream:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=run, daemon=True, name="test-upstream").start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def shutdown() -> None:
            server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)

    # -- HTTP ------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip()
                   for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        raw = await reader.readexactly(int(headers.get("content-length", 0)))
        body = json.loads(raw) if raw else None
        seen = Received(method, path, headers, body)
        self.received.append(seen)
        if method == "GET" and path == "/health":
            status = 200 if self.healthy else 503
            await _send(writer, status, {"status": "ok" if self.healthy else "down"})
            return True
        behaviour = self.script.popleft() if self.script else "echo"
        kind, _, arg = behaviour.partition(":")
        if kind == "drop":
            return False
        if kind == "fail":
            await _send(writer, int(arg or 500), {"error": {"message": "upstream broke",
                                                            "type": "server_error"}})
            return True
        if kind == "reject":
            await _send(writer, 400, {"error": {"message": "bad request upstream",
                                                "type": "invalid_request_error"}})
            return True
        if kind == "rate_limit":
            await _send(writer, 429, {"error": {"message": "slow down"}},
                        {"Retry-After": arg or "1"})
            return True
        if kind == "redirect":
            await _send(writer, 307, {}, {"Location": arg})
            return True
        if kind == "error_200":  # an error object inside a success (seen in the wild)
            if body.get("stream"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Connection: close\r\n\r\n"
                             + _event({"error": {"message": "model overloaded"}}))
                await writer.drain()
                return False
            await _send(writer, 200, {"error": {"message": "model overloaded"}})
            return True
        if kind == "stall":
            await _wait_closed(reader)
            seen.disconnected_at = time.monotonic()
            return False
        text = _echo(body)
        if body.get("stream"):
            await self._stream(reader, writer, body, text, seen,
                               drop_after=int(arg) if kind == "stream_drop" else None,
                               stall_after=int(arg) if kind == "stream_stall" else None)
            return False
        await _send(writer, 200, self._whole(body, text))
        return True

    def _whole(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
        if "prompt" in body:
            return {"id": "cmpl-up", "object": "text_completion", "model": body["model"],
                    "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                    "usage": usage}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if self.tool_call:
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "send", "arguments": json.dumps({"to": text})}}]}
        return {"id": "chatcmpl-up", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage}

    async def _stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: dict[str, Any],
        text: str, seen: Received, *, drop_after: int | None, stall_after: int | None,
    ) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Connection: close\r\n\r\n")
        chat = "messages" in body
        pieces = [text[i:i + self.chunk_chars] for i in range(0, len(text), self.chunk_chars)]
        for n, piece in enumerate(pieces):
            if drop_after is not None and n == drop_after:
                return
            if stall_after is not None and n == stall_after:
                await _wait_closed(reader)
                seen.disconnected_at = time.monotonic()
                return
            if chat and self.tool_call:
                delta: dict[str, Any] = {"tool_calls": [{"index": 0, "function": {
                    "arguments": json.dumps(piece)[1:-1]}}]}
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
            elif chat:
                choice = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
            else:
                choice = {"index": 0, "text": piece, "finish_reason": None}
            writer.write(_event({"id": "up", "model": body["model"], "choices": [choice]}))
            await writer.drain()
        last = ({"index": 0, "delta": {}, "finish_reason": "stop"} if chat
                else {"index": 0, "text": "", "finish_reason": "stop"})
        writer.write(_event({"id": "up", "model": body["model"], "choices": [last]}))
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()


def _echo(body: dict[str, Any]) -> str:
    if "prompt" in body:
        prompt = body["prompt"]
        return prompt if isinstance(prompt, str) else prompt[0]
    users = [m for m in body["messages"] if m.get("role") == "user"]
    content = users[-1]["content"] if users else ""
    return content if isinstance(content, str) else "".join(p["text"] for p in content)


def _event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def _send(writer: asyncio.StreamWriter, status: int, obj: Any,
                headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(obj).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\n{extra}\r\n".encode() + payload)
    await writer.drain()


async def _wait_closed(reader: asyncio.StreamReader) -> None:
    """Until the client closes the connection (at most a minute)."""
    try:
        await asyncio.wait_for(reader.read(), 60)
    except TimeoutError:
        pass
