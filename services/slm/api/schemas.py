"""OpenAI request bodies: typed decoding and validation into engine parameters.

Unknown fields are ignored (clients send many); known fields of the wrong type, values out
of range and features we do not provide are refused with a 400 naming the parameter.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

import msgspec

from slm.errors import InvalidRequest
from slm.errors import Unsupported as Unsupported  # re-exported: the API raises schemas.Unsupported

MAX_STOP_SEQUENCES = 16
CHAT_ROLES = {"system", "developer", "user", "assistant"}


class ContentPart(msgspec.Struct, kw_only=True):
    type: str
    text: str | None = None


class Message(msgspec.Struct, kw_only=True):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class JsonSchemaSpec(msgspec.Struct, kw_only=True):
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(msgspec.Struct, kw_only=True):
    type: str
    json_schema: JsonSchemaSpec | None = None


class _Sampling(msgspec.Struct, kw_only=True):
    """Fields shared by chat and text completions."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | int | None = None
    user: str | None = None


class ChatCompletionRequest(_Sampling, kw_only=True):
    messages: list[Message]
    max_completion_tokens: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    top_logprobs: int | None = None


class CompletionRequest(_Sampling, kw_only=True):
    prompt: str | list[str]
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    model: str
    input: str | list[str | int | list[int]]
    encoding_format: str | None = None
    dimensions: int | None = None
    user: str | None = None


S = TypeVar("S", bound=msgspec.Struct)

_PATH = re.compile(r"at `\$\.?([^`]*)`")


def decode_object(body: bytes) -> dict[str, Any]:
    """The body as a plain JSON object, decoded once: what is sanitised and forwarded to
    tier B / C (unknown fields included) and what :func:`validate` types."""
    try:
        obj = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise InvalidRequest("request body is not valid UTF-8") from None
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply") from None
    if not isinstance(obj, dict):
        raise InvalidRequest("request body must be a JSON object")
    return obj


def validate(obj: dict[str, Any], kind: type[S]) -> S:
    """``obj`` as the typed request ``kind``, or InvalidRequest naming the bad field."""
    try:
        return msgspec.convert(obj, type=kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH.search(text)
        param = match.group(1) if match else None
        raise InvalidRequest(f"invalid request body: {text}", param=param or None) from None
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply") from None


def _range(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not (low <= value <= high):
        raise InvalidRequest(f"{name} must be between {low} and {high}, got {value}", param=name)


def check_sampling(req: _Sampling) -> None:
    """Refuse out-of-range sampling values and features we do not implement."""
    _range("temperature", req.temperature, 0.0, 2.0)
    _range("top_p", req.top_p, 0.0, 1.0)
    _range("frequency_penalty", req.frequency_penalty, -2.0, 2.0)
    _range("presence_penalty", req.presence_penalty, -2.0, 2.0)
    if req.top_p is not None and req.top_p <= 0:
        raise InvalidRequest("top_p must be greater than 0", param="top_p")
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, name, None)
        if value is not None and value < 1:
            raise InvalidRequest(f"{name} must be at least 1", param=name)
    if req.n not in (None, 1):
        raise Unsupported("only n=1 is supported", param="n")
    if req.logprobs:
        raise Unsupported("logprobs are not supported", param="logprobs")
    if req.stream_options is not None and not req.stream:
        raise InvalidRequest("stream_options is only allowed with stream=true",
                             param="stream_options")


def stop_sequences(stop: str | list[str] | None) -> tuple[str, ...]:
    """The request's stop strings as a tuple, checked."""
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if len(items) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"at most {MAX_STOP_SEQUENCES} stop sequences", param="stop")
    if any(not s for s in items):
        raise InvalidRequest("stop sequences must not be empty", param="stop")
    return tuple(items)


def logit_bias(bias: dict[str, float] | None, n_vocab: int) -> tuple[tuple[int, float], ...]:
    """``{"token id": bias}`` as pairs, with ids in the vocabulary and bias in [-100, 100]."""
    if not bias:
        return ()
    out = []
    for key, value in bias.items():
        try:
            token = int(key)
        except ValueError:
            raise InvalidRequest(f"logit_bias key {key!r} is not a token id",
                                 param="logit_bias") from None
        if not 0 <= token < n_vocab:
            raise InvalidRequest(f"logit_bias token {token} is not in the vocabulary",
                                 param="logit_bias")
        _range("logit_bias", value, -100.0, 100.0)
        out.append((token, float(value)))
    return tuple(out)


def chat_messages(messages: list[Message]) -> list[dict[str, str]]:
    """Messages as plain dicts for the chat template; text content only."""
    if not messages:
        raise InvalidRequest("messages must not be empty", param="messages")
    out = []
    for i, msg in enumerate(messages):
        if msg.role not in CHAT_ROLES:
            raise InvalidRequest(
                f"messages[{i}].role {msg.role!r} is not one of "
                f"{', '.join(sorted(CHAT_ROLES))}",
                param=f"messages[{i}].role",
            )
        content = msg.content
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.type != "text" or part.text is None:
                    raise Unsupported(
                        f"messages[{i}]: content parts of type {part.type!r} are not supported",
                        param=f"messages[{i}].content",
                    )
                texts.append(part.text)
            content = "".join(texts)
        if content is None:
            raise InvalidRequest(f"messages[{i}].content is required",
                                 param=f"messages[{i}].content")
        role = "system" if msg.role == "developer" else msg.role
        out.append({"role": role, "content": content})
    return out


def grammar_for(fmt: ResponseFormat | None) -> str | None:
    """The GBNF grammar that enforces ``response_format`` (None for plain text)."""
    if fmt is None or fmt.type == "text":
        return None
    from llama_cpp import llama_grammar  # pure Python; imported late, with the engine

    if fmt.type == "json_object":
        return llama_grammar.JSON_GBNF
    if fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema is None:
            raise InvalidRequest("response_format.json_schema.schema is required",
                                 param="response_format.json_schema")
        try:
            # unannotated in llama-cpp-python; it returns the grammar's text
            grammar: str = llama_grammar.json_schema_to_gbnf(json.dumps(fmt.json_schema.schema))
        except Exception as exc:  # noqa: BLE001 - the converter raises many kinds
            raise InvalidRequest(
                f"response_format.json_schema.schema cannot be enforced: {exc}",
                param="response_format.json_schema.schema",
            ) from None
        return grammar
    raise InvalidRequest(
        f"response_format.type {fmt.type!r} is not one of text, json_object, json_schema",
        param="response_format.type",
    )
