"""OpenAI request bodies: typed decoding and validation into engine parameters.

Unknown fields are ignored (clients send many); known fields of the wrong type, values out
of range and features we do not provide are refused with a 400 naming the parameter.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, TypeVar, assert_never

import msgspec
from msgspec import Meta

from slm.errors import InvalidRequest
from slm.errors import Unsupported as Unsupported  # re-exported: the API raises schemas.Unsupported

MAX_STOP_SEQUENCES = 16
Role = Literal["system", "developer", "user", "assistant"]
# The ranges live in the types: msgspec refuses what is out of range (400 naming the field)
# and /openapi.json publishes the same bounds.
Tokens = Annotated[int, Meta(ge=1)]
StopSequence = Annotated[str, Meta(min_length=1)]
TokenId = Annotated[str, Meta(pattern="^[0-9]{1,9}$", description="a token id")]


class ContentPart(msgspec.Struct, kw_only=True):
    type: str
    text: str | None = None


class Message(msgspec.Struct, kw_only=True):
    role: Role
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
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class _Sampling(msgspec.Struct, kw_only=True):
    """Fields shared by chat and text completions."""

    model: str
    max_tokens: Tokens | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(gt=0, le=1)] | None = None
    seed: int | None = None
    stop: (StopSequence | Annotated[list[StopSequence], Meta(max_length=MAX_STOP_SEQUENCES)]
           | None) = None
    n: Annotated[int, Meta(ge=1, le=1, description="only 1 is supported")] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    logit_bias: dict[TokenId, Annotated[float, Meta(ge=-100, le=100)]] | None = None
    logprobs: bool | int | None = None
    user: str | None = None


class ChatCompletionRequest(_Sampling, kw_only=True):
    messages: Annotated[list[Message], Meta(min_length=1)]
    max_completion_tokens: Tokens | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    top_logprobs: int | None = None
    # ids of ingested documents whose excerpts join the prompt (taken out of the body
    # before it is typed: see slm.api.documents.DocumentRoutes.expand)
    documents: Annotated[list[str], Meta(min_length=1)] | None = None


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


Limit = Annotated[int, Meta(ge=1)]


class KeyCreateRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/keys``: a named key (the name as the ledger will record it)."""

    name: Annotated[str, Meta(pattern="^[a-z0-9][a-z0-9_.-]{0,63}$")]
    scopes: Annotated[list[Literal["inference", "documents", "admin"]],
                      Meta(min_length=1)] = msgspec.field(default_factory=lambda: ["inference"])
    rpm: Limit | None = None
    tpm: Limit | None = None
    tokens_per_day: Limit | None = None
    tokens_per_month: Limit | None = None


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


def check_sampling(req: _Sampling) -> None:
    """Refuse what tier A does not implement (the types hold the ranges)."""
    if req.logprobs:
        raise Unsupported("logprobs are not supported", param="logprobs")
    if req.stream_options is not None and not req.stream:
        raise InvalidRequest("stream_options is only allowed with stream=true",
                             param="stream_options")


def stop_sequences(stop: str | list[str] | None) -> tuple[str, ...]:
    """The request's stop strings as a tuple (their count and lengths are typed)."""
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def logit_bias(bias: dict[str, float] | None, n_vocab: int) -> tuple[tuple[int, float], ...]:
    """``{"token id": bias}`` as pairs (ids and biases are typed), ids in the vocabulary."""
    if not bias:
        return ()
    out = []
    for key, value in bias.items():
        token = int(key)
        if token >= n_vocab:
            raise InvalidRequest(f"logit_bias token {token} is not in the vocabulary",
                                 param="logit_bias")
        out.append((token, float(value)))
    return tuple(out)


def chat_messages(messages: list[Message]) -> list[dict[str, str]]:
    """Messages as plain dicts for the chat template; text content only."""
    out = []
    for i, msg in enumerate(messages):  # at least one, each of a known role (typed)
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
    assert_never(fmt.type)
