"""``GET /openapi.json``: the Doorman's API as an OpenAPI 3.1 document.

Request bodies are described by the msgspec types that validate them (:mod:`slm.api.schemas`),
so the document cannot drift from what is accepted; responses by the shapes below, which
the fuzz test (schemathesis, ``tests/integration/test_openapi_fuzz.py``) holds the replies
to. Every operation lists the error statuses it can answer, each in OpenAI's error shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from slm import __version__
from slm.access.keys import Scope
from slm.api import schemas


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | int | None


class ErrorResponse(msgspec.Struct):
    """OpenAI's error shape, for every status from 400 up."""

    error: ErrorDetail


class Status(msgspec.Struct):
    status: str


class ModelCard(msgspec.Struct):
    id: str
    object: str
    created: int
    owned_by: str


class ModelList(msgspec.Struct):
    object: str
    data: list[ModelCard]


class AdapterList(msgspec.Struct):
    object: str
    model: str
    model_sha256: str
    data: list[dict[str, Any]]


class Usage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int | None = None


class ChatMessageOut(msgspec.Struct):
    role: str
    content: str | None


class ChatChoice(msgspec.Struct):
    index: int
    message: ChatMessageOut
    finish_reason: str | None


class ChatCompletion(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class TextChoice(msgspec.Struct):
    index: int
    text: str
    finish_reason: str | None


class TextCompletion(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


class Embedding(msgspec.Struct):
    object: str
    index: int
    embedding: list[float]


class EmbeddingList(msgspec.Struct):
    object: str
    data: list[Embedding]
    model: str
    usage: Usage


class DocumentCard(msgspec.Struct):
    id: str
    object: str
    filename: str
    kind: str
    bytes: int
    sha256: str
    created_at: int
    expires_at: int
    chunks: int
    tokens: int
    characters: int
    sanitised: dict[str, int]


class DocumentList(msgspec.Struct):
    object: str
    data: list[DocumentCard]


class Deleted(msgspec.Struct):
    id: str
    object: str
    deleted: bool


class KeyCard(msgspec.Struct):
    object: str
    name: str
    scopes: list[str]
    rpm: int | None
    tpm: int | None
    tokens_per_day: int | None
    tokens_per_month: int | None
    created: str
    revoked: str | None


class NewKey(KeyCard):
    """A key as made: the only response that carries the key itself."""

    key: str


class KeyList(msgspec.Struct):
    object: str
    data: list[KeyCard]


class Period(msgspec.Struct):
    period: str
    tokens: int
    budget: int | None
    remaining: int | None
    resets_at: int


class Minute(msgspec.Struct):
    requests: int
    tokens: int
    rpm: int | None
    tpm: int | None


class UsageReport(msgspec.Struct):
    """``GET /v1/usage``: what the calling key used and has left."""

    object: str
    key: str | None
    scopes: list[str]
    minute: Minute
    day: Period
    month: Period


# What each status means here; an operation lists those it can answer.
STATUS_MEANING = {
    400: "invalid request (the message names the parameter)",
    401: "no API key, or one that is unknown or revoked",
    403: "the key lacks this endpoint's scope, or an upstream is not allowed",
    404: "unknown model, document, key or route",
    405: "method not allowed",
    409: "the key name is taken (names are never reused), or the key was revoked already",
    413: "request or document too large",
    429: "rate limit, token budget or queue full (Retry-After)",
    499: "the client closed the connection",
    500: "internal error",
    502: "an upstream failed",
    503: "not ready, ledger or key store unavailable, over the memory budget, "
         "shutting down, or an upstream unavailable",
    504: "deadline exceeded, or an upstream timed out",
}
AUTH = (401, 403, 429, 503)  # what the endpoint wrapper itself can answer
INFERENCE = (*AUTH, 400, 404, 413, 500, 502, 504)


@dataclasses.dataclass(frozen=True)
class Operation:
    """One route: what the document says of it, and what the app routes
    (:func:`slm.api.app.create_app` serves exactly these)."""

    path: str
    method: str
    operation_id: str
    endpoint: str  # its name in metrics, logs and the ledger (one name may serve several)
    summary: str
    scope: Scope | None | bool  # False: no key needed; None: any key
    ok_status: int = 200
    ok: type | None = None  # the 2xx body's shape (None: see ok_media)
    ok_media: str = "application/json"
    body: type | None = None  # the JSON request body's type
    errors: tuple[int, ...] = AUTH
    streams: bool = False  # ``stream: true`` answers text/event-stream
    path_params: tuple[str, ...] = ()
    route_path: str | None = None  # Starlette's path, where it differs (a converter)

    @property
    def route(self) -> str:
        return self.route_path or self.path


OPERATIONS = (
    Operation("/health", "get", "health", "health", "Liveness: the process answers", False,
              ok=Status, errors=()),
    Operation("/ready", "get", "ready", "ready", "Readiness: the model is warm and the "
              "ledger writable", False, ok=Status, errors=(503,)),
    Operation("/openapi.json", "get", "openapi", "openapi", "This document", None,
              ok=dict[str, Any]),
    Operation("/metrics", "get", "metrics", "metrics", "Prometheus metrics", Scope.ADMIN,
              ok_media="text/plain"),
    Operation("/v1/models", "get", "listModels", "models", "The models this Doorman serves",
              Scope.INFERENCE, ok=ModelList),
    Operation("/v1/models/{model}", "get", "getModel", "models", "One model's card",
              Scope.INFERENCE, ok=ModelCard, errors=(*AUTH, 400, 404),
              path_params=("model",), route_path="/v1/models/{model:path}"),
    Operation("/v1/adapters", "get", "listAdapters", "models", "LoRA adapters and whether "
              "each is usable", Scope.ADMIN, ok=AdapterList),
    Operation("/v1/usage", "get", "getUsage", "usage", "What the calling key used and has "
              "left", None, ok=UsageReport),
    Operation("/v1/chat/completions", "post", "createChatCompletion", "chat",
              "A chat completion", Scope.INFERENCE, ok=ChatCompletion,
              body=schemas.ChatCompletionRequest, errors=INFERENCE, streams=True),
    Operation("/v1/completions", "post", "createCompletion", "completions",
              "A text completion", Scope.INFERENCE, ok=TextCompletion,
              body=schemas.CompletionRequest, errors=INFERENCE, streams=True),
    Operation("/v1/embeddings", "post", "createEmbedding", "embeddings",
              "Embeddings of the input", Scope.INFERENCE, ok=EmbeddingList,
              body=schemas.EmbeddingRequest, errors=(*AUTH, 400, 404, 413, 500, 504)),
    Operation("/v1/documents", "post", "uploadDocument", "documents", "Ingest a document "
              "(multipart field `file`, or the raw file as the body)", Scope.DOCUMENTS,
              ok_status=201, ok=DocumentCard, errors=(*AUTH, 400, 404, 413, 500, 504)),
    Operation("/v1/documents", "get", "listDocuments", "documents_read",
              "The calling key's documents", Scope.DOCUMENTS, ok=DocumentList,
              errors=(*AUTH, 404)),
    Operation("/v1/documents/{doc_id}", "get", "getDocument", "documents_read",
              "One document's card", Scope.DOCUMENTS, ok=DocumentCard, errors=(*AUTH, 404),
              path_params=("doc_id",)),
    Operation("/v1/documents/{doc_id}", "delete", "deleteDocument", "documents_delete",
              "Forget a document", Scope.DOCUMENTS, ok=Deleted, errors=(*AUTH, 404),
              path_params=("doc_id",)),
    Operation("/v1/keys", "get", "listKeys", "keys", "Every API key (never a key itself)",
              Scope.ADMIN, ok=KeyList),
    Operation("/v1/keys", "post", "createKey", "keys_create", "Make a named key: the "
              "response shows it, once", Scope.ADMIN, ok_status=201, ok=NewKey,
              body=schemas.KeyCreateRequest, errors=(*AUTH, 400, 409, 413)),
    Operation("/v1/keys/{name}", "delete", "revokeKey", "keys_revoke", "Revoke a key (from "
              "its next request on)", Scope.ADMIN, ok=KeyCard, errors=(*AUTH, 400, 404, 409),
              path_params=("name",)),
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def document(model_ids: list[str] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every operation in :data:`OPERATIONS`; ``model_ids``
    (the models this Doorman serves) are the examples of each request's ``model``."""
    types: list[Any] = [ErrorResponse]
    for op in OPERATIONS:
        types += [t for t in (op.ok, op.body) if t is not None]
    refs, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}")
    schema_of = dict(zip(map(id, types), refs, strict=True))
    for op in OPERATIONS:
        properties = components[op.body.__name__]["properties"] if op.body else {}
        if "model" in properties and model_ids:
            properties["model"]["examples"] = model_ids
    error = {"description": "", "content": {"application/json": {
        "schema": schema_of[id(ErrorResponse)]}}}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        ok_content: dict[str, Any] = {op.ok_media: {
            "schema": schema_of[id(op.ok)] if op.ok is not None else {"type": "string"}}}
        if op.streams:
            ok_content["text/event-stream"] = {"schema": {"type": "string"}}
        responses: dict[str, Any] = {str(op.ok_status): {"description": op.summary,
                                                         "content": ok_content}}
        statuses = set(op.errors) | ({400} if op.body is not None else set())
        for status in sorted(statuses):
            responses[str(status)] = {**error, "description": STATUS_MEANING[status]}
        operation: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary,
                                     "responses": responses}
        if op.scope is False:
            operation["security"] = []
        elif op.scope is not None:
            operation["description"] = f"Needs a key with the `{op.scope}` scope."
        if op.body is not None:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": schema_of[id(op.body)]}}}
        if op.operation_id == "uploadDocument":
            operation["requestBody"] = {"required": True, "content": {
                "multipart/form-data": {"schema": {
                    "type": "object", "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}}}}}}
        if op.path_params:
            operation["parameters"] = [{"name": p, "in": "path", "required": True,
                                        "schema": {"type": "string"}} for p in op.path_params]
        paths.setdefault(op.path, {})[op.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "service-slm, the Doorman", "version": __version__,
                 "description": "OpenAI-compatible gateway: every call sanitised, routed "
                                "and recorded in a tamper-evident ledger."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer",
                       "description": "`Authorization: Bearer slm-…` (see `slm keys`)"}}},
        "security": [{"apiKey": []}],
    }
