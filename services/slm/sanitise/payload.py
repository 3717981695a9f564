"""Sanitising OpenAI request bodies and rehydrating OpenAI responses (whole or streamed).

What is redacted on the way out: every string of the request except protocol fields (model,
role, names, ids...): messages, tool results, earlier tool-call arguments, prompt, suffix,
user, tool descriptions. What is rehydrated on the way back: message content and
``reasoning_content``, ``tool_calls[].function.arguments`` and the legacy
``function_call.arguments`` (values JSON-escaped, since they sit inside a JSON document) and
completion text.
"""

from __future__ import annotations

from typing import Any

from slm.sanitise.vault import StreamRehydrator, Vault

# Keys whose string values are protocol, not content: never redacted (a tool's name must
# stay exact). Every other string anywhere in the body is redacted.
STRUCTURAL_KEYS = frozenset({
    "model", "role", "type", "name", "id", "tool_call_id", "tool_choice", "finish_reason",
    "service_tier", "reasoning_effort", "encoding_format", "modalities", "object",
})


def redact_request(body: dict[str, Any], vault: Vault) -> dict[str, Any]:
    """A copy of a request body with every content string redacted (messages, prompt,
    suffix, user, tool descriptions, ...). Tool-call arguments are JSON in a string: they are
    scanned as text (so ``"password": "..."`` is still seen as an assignment) and the vault
    keeps the unescaped values."""
    redacted: dict[str, Any] = _redact(body, vault)  # a dict comes back as a dict
    return redacted


def _redact(node: Any, vault: Vault, key: str | None = None) -> Any:
    if isinstance(node, str):
        if key in STRUCTURAL_KEYS:
            return node
        if key == "arguments":
            return vault.redact(node, json_text=True)
        return vault.redact(node)
    if isinstance(node, dict):
        return {k: _redact(v, vault, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_redact(v, vault, key) for v in node]
    return node


TEXT_FIELDS = ("content", "reasoning_content")


def rehydrate_response(obj: dict[str, Any], vault: Vault) -> dict[str, Any]:
    """A whole (non-streamed) chat or completions response with the originals restored."""
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            choice["text"] = vault.rehydrate(choice["text"])
        message = choice.get("message")
        if isinstance(message, dict):
            for field in TEXT_FIELDS:
                if isinstance(message.get(field), str):
                    message[field] = vault.rehydrate(message[field])
            calls = message.get("tool_calls")
            if not isinstance(calls, list):
                calls = []
            for function in [c.get("function") for c in calls if isinstance(c, dict)] + [
                    message.get("function_call")]:
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    function["arguments"] = vault.rehydrate(function["arguments"],
                                                            json_escape=True)
    return obj


class StreamedResponseRehydrator:
    """Rehydrates the chunks of one streamed response, one chunk out per chunk in.

    Each text field (a choice's content, reasoning or text, each tool call's arguments) has
    its own :class:`StreamRehydrator`; what one holds back goes out in a later chunk of the
    same field, at the latest in the chunk carrying the choice's ``finish_reason`` (or in
    :meth:`leftovers` when the stream ends without one).
    """

    def __init__(self, vault: Vault, *, chat: bool) -> None:
        self._vault = vault
        self._chat = chat
        self._fields: dict[tuple[int, str, int], StreamRehydrator] = {}

    def _field(self, choice: int, name: str, call: int = 0) -> StreamRehydrator:
        key = (choice, name, call)
        if key not in self._fields:
            self._fields[key] = self._vault.stream(json_escape=name == "arguments")
        return self._fields[key]

    def chunk(self, obj: dict[str, Any]) -> dict[str, Any]:
        """One upstream chunk, rehydrated (text held back may be missing from it)."""
        choices = obj.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            index = index if isinstance(index, int) else 0
            if not self._chat:
                if isinstance(choice.get("text"), str):
                    choice["text"] = self._field(index, "text").feed(choice["text"])
            else:
                delta = choice.get("delta")
                if not isinstance(delta, dict):
                    delta = choice["delta"] = {}
                self._chat_delta(index, delta)
            if choice.get("finish_reason") is not None:
                self._flush_into(choice, index)
        return obj

    def _chat_delta(self, index: int, delta: dict[str, Any]) -> None:
        for name in TEXT_FIELDS:
            if isinstance(delta.get(name), str):
                delta[name] = self._field(index, name).feed(delta[name])
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                number = call.get("index", 0)
                field = self._field(index, "arguments", number if isinstance(number, int) else 0)
                function["arguments"] = field.feed(function["arguments"])
        legacy = delta.get("function_call")
        if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
            legacy["arguments"] = self._field(index, "arguments", -1).feed(legacy["arguments"])

    def _flush_into(self, choice: dict[str, Any], index: int) -> None:
        """Put what choice ``index`` still holds back into its (finishing) chunk."""
        for (c, name, call), field in self._fields.items():
            rest = field.flush() if c == index else ""
            if not rest:
                continue
            if not self._chat:
                choice["text"] = (choice.get("text") or "") + rest
                continue
            delta = choice["delta"]
            if name != "arguments":
                delta[name] = (delta.get(name) or "") + rest
            elif call == -1:
                delta.setdefault("function_call", {})
                delta["function_call"]["arguments"] = (
                    delta["function_call"].get("arguments") or "") + rest
            else:
                _append_arguments(delta, call, rest)

    def leftovers(self) -> list[dict[str, Any]]:
        """Choices carrying what is still held back, for a stream that ended without a
        finish_reason (empty when nothing is)."""
        out = []
        for index in sorted({c for c, _, _ in self._fields}):
            choice: dict[str, Any] = {"index": index, "finish_reason": None}
            if self._chat:
                choice["delta"] = {}
            else:
                choice["text"] = ""
            self._flush_into(choice, index)
            if choice.get("text") or choice.get("delta"):
                out.append(choice)
        return out


def _append_arguments(delta: dict[str, Any], call: int, rest: str) -> None:
    calls = delta.setdefault("tool_calls", [])
    for entry in calls:
        if isinstance(entry, dict) and entry.get("index", 0) == call:
            function = entry.setdefault("function", {})
            function["arguments"] = (function.get("arguments") or "") + rest
            return
    calls.append({"index": call, "function": {"arguments": rest}})
