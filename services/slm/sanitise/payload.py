"""Sanitising OpenAI request bodies and rehydrating OpenAI responses (whole or streamed).

What is redacted on the way out: message text (string or text parts), the arguments of
earlier tool calls, tool results, and a text completion's prompt. What is rehydrated on the
way back: message text, ``tool_calls[].function.arguments`` (values JSON-escaped, since they
sit inside a JSON document) and completion text. Everything else passes through untouched.
"""

from __future__ import annotations

import copy
from typing import Any

from slm.sanitise.vault import StreamRehydrator, Vault


def redact_request(body: dict[str, Any], vault: Vault) -> dict[str, Any]:
    """A copy of a chat or completions request body with its text redacted."""
    out = copy.deepcopy(body)
    for message in out.get("messages") or ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = vault.redact(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part["text"] = vault.redact(part["text"])
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                function["arguments"] = vault.redact(function["arguments"])
    prompt = out.get("prompt")
    if isinstance(prompt, str):
        out["prompt"] = vault.redact(prompt)
    elif isinstance(prompt, list):
        out["prompt"] = [vault.redact(p) if isinstance(p, str) else p for p in prompt]
    return out


def rehydrate_response(obj: dict[str, Any], vault: Vault) -> dict[str, Any]:
    """A whole (non-streamed) chat or completions response with the originals restored."""
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            choice["text"] = vault.rehydrate(choice["text"])
        message = choice.get("message")
        if isinstance(message, dict):
            if isinstance(message.get("content"), str):
                message["content"] = vault.rehydrate(message["content"])
            _rehydrate_tool_calls(message, vault)
    return obj


def _rehydrate_tool_calls(message: dict[str, Any], vault: Vault) -> None:
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            function["arguments"] = vault.rehydrate(function["arguments"], json_escape=True)


class StreamedResponseRehydrator:
    """Rehydrates the chunks of one streamed response, one chunk out per chunk in.

    Each text field (a choice's content or text, each tool call's arguments) has its own
    :class:`StreamRehydrator`; what one holds back goes out in a later chunk of the same
    field, at the latest in the chunk that carries the choice's ``finish_reason``.
    """

    def __init__(self, vault: Vault) -> None:
        self._vault = vault
        self._text: dict[int, StreamRehydrator] = {}
        self._args: dict[tuple[int, int], StreamRehydrator] = {}

    def _text_field(self, choice: int) -> StreamRehydrator:
        if choice not in self._text:
            self._text[choice] = self._vault.stream()
        return self._text[choice]

    def _args_field(self, choice: int, call: int) -> StreamRehydrator:
        if (choice, call) not in self._args:
            self._args[(choice, call)] = self._vault.stream(json_escape=True)
        return self._args[(choice, call)]

    def chunk(self, obj: dict[str, Any]) -> dict[str, Any]:
        """One upstream chunk, rehydrated (text held back may be missing from it)."""
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            finished = choice.get("finish_reason") is not None
            if "text" in choice or (finished and "delta" not in choice):
                choice["text"] = self._feed(self._text_field(index), choice.get("text"),
                                            finished)
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            if isinstance(delta.get("content"), str) or (finished and index in self._text):
                delta["content"] = self._feed(self._text_field(index), delta.get("content"),
                                              finished)
            calls = delta.get("tool_calls") or []
            seen = set()
            for call in calls:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    number = call.get("index", 0)
                    seen.add(number)
                    field = self._args_field(index, number)
                    function["arguments"] = self._feed(field, function["arguments"], finished)
            if finished:  # held-back arguments of calls this chunk does not mention
                for (c, number), field in self._args.items():
                    rest = field.flush() if c == index and number not in seen else ""
                    if rest:
                        calls.append({"index": number, "function": {"arguments": rest}})
                if calls:
                    delta["tool_calls"] = calls
        return obj

    @staticmethod
    def _feed(field: StreamRehydrator, piece: str | None, finished: bool) -> str:
        out = field.feed(piece or "")
        return out + field.flush() if finished else out

    def leftovers(self) -> dict[int, str]:
        """Text still held back when a stream ended without a finish_reason."""
        return {i: rest for i, f in self._text.items() if (rest := f.flush())}
