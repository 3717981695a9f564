"""The document routes (``POST /v1/documents``, ``GET``/``DELETE /v1/documents/{id}``,
``GET /v1/documents``) and the chat side: a chat request's ``documents`` ids become a
system message of numbered excerpts, and its answer names them in ``citations``.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import json
from collections.abc import Callable
from typing import Any, cast

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from slm.api.context import RequestContext
from slm.api.streaming import read_body
from slm.documents.extract import detect_kind, rejected
from slm.documents.isolated import extract_isolated
from slm.documents.store import Citation, Document, make_chunks, select_context
from slm.errors import ContextLengthExceeded, InvalidRequest
from slm.sanitise.vault import Vault
from slm.server.state import Doorman

MULTIPART_OVERHEAD = 64 * 1024
ANSWER_RESERVE_TOKENS = 512  # room kept for the answer when max_tokens is not given


class DocumentRoutes:
    """Handlers for the documents endpoints of one Doorman."""

    def __init__(self, doorman: Doorman) -> None:
        self.d = doorman
        self._reading = asyncio.Semaphore(1)

    def _enabled(self) -> None:
        if not self.d.settings.documents_enabled:
            raise InvalidRequest("documents are disabled on this server (documents.enabled)",
                                 param="documents", code="documents_disabled")

    async def _upload(self, request: Request) -> tuple[str, str | None, bytes]:
        """The upload's file name, content type and bytes: multipart (field ``file``) or
        the raw body with ``?filename=``."""
        limit = self.d.settings.documents_max_bytes
        body = await read_body(request, limit + MULTIPART_OVERHEAD)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            sent = False

            async def replay() -> dict[str, Any]:
                nonlocal sent
                if sent:
                    return {"type": "http.disconnect"}
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            try:
                form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
            except Exception as exc:  # noqa: BLE001 - multipart raises several kinds
                raise InvalidRequest(f"malformed multipart body: {exc}", param="file") from None
            try:  # closing the form removes the spooled copy of a large upload
                upload = form.get("file")
                if not isinstance(upload, UploadFile):
                    raise InvalidRequest("the multipart body has no 'file' part",
                                         param="file")
                data = await upload.read()
                name, kind = upload.filename or "document", upload.content_type
            finally:
                await form.close()
        else:
            data = body
            name = request.query_params.get("filename", "document")
            kind = content_type or None
        name = _clean_name(name)
        if len(data) > limit:
            raise rejected(f"the document is {len(data)} bytes, over the {limit}-byte limit "
                           "(documents.max_bytes)", "document_too_large", 413)
        if not data:
            raise InvalidRequest("the document is empty", param="file")
        return name, kind, data

    async def ingest(self, request: Request, ctx: RequestContext) -> Response:
        """Read, sanitise, chunk and keep one document; 201 with its description."""
        self._enabled()
        settings = self.d.settings
        name, content_type, data = await self._upload(request)
        engine, _ = self.d.require_engine()  # its tokenizer sizes the chunks
        kind = detect_kind(name, content_type, data)
        timeout = settings.documents_extract_timeout_s
        try:  # one parser at a time: each may take documents.extract_memory_mb
            await asyncio.wait_for(self._reading.acquire(), timeout)
        except TimeoutError:
            raise rejected("another document is being read; try again shortly",
                           "document_reader_busy", 429) from None
        try:
            sections = await extract_isolated(
                kind, data, max_chars=settings.documents_max_chars,
                max_unpacked_bytes=20 * settings.documents_max_bytes, timeout_s=timeout,
                memory_mb=settings.documents_extract_memory_mb)
        finally:
            self._reading.release()

        vault = Vault(self.d.detector)  # one for the document: one placeholder per value

        def prepare() -> tuple[Document, str]:
            clean = [type(s)(vault.redact(s.where), vault.redact(s.text)) for s in sections]
            chunks = make_chunks(clean, lambda t: engine.tokenize(t, add_special=False),
                                 settings.documents_chunk_tokens)
            doc = Document(id=self.d.documents.new_id(), filename=vault.redact(name),
                           kind=kind, size_bytes=len(data),
                           sha256=hashlib.sha256(data).hexdigest(), chunks=chunks,
                           entities=dict(vault.counts),
                           owner=ctx.api_key_id)
            return doc, "\n\n".join(s.text for s in clean)

        doc, text = await asyncio.to_thread(prepare)
        ctx.note_prompt(text)
        ctx.entities = tuple(vault.entity_types)
        for entity, count in doc.entities.items():
            self.d.metrics.entities.labels(entity).inc(count)
        self.d.documents.add(doc)
        ctx.extra_log["document"] = doc.id
        return JSONResponse(doc.card(), status_code=201)

    async def get(self, request: Request, ctx: RequestContext) -> Response:
        self._enabled()
        return JSONResponse(self.d.documents.get(request.path_params["doc_id"],
                                                 ctx.api_key_id).card())

    async def list(self, request: Request, ctx: RequestContext) -> Response:
        self._enabled()
        docs = self.d.documents.all(ctx.api_key_id)  # a key sees only its own documents
        return JSONResponse({"object": "list", "data": [d.card() for d in docs]})

    async def delete(self, request: Request, ctx: RequestContext) -> Response:
        self._enabled()
        doc_id = request.path_params["doc_id"]
        self.d.documents.delete(doc_id, ctx.api_key_id)
        return JSONResponse({"id": doc_id, "object": "document", "deleted": True})

    # builtins.list: in this class, ``list`` is the GET /v1/documents handler
    def expand(self, ctx: RequestContext, raw: dict[str, Any]) -> builtins.list[Citation]:
        """A chat body naming ``documents`` gets, in place, their best excerpts as a
        system message (and loses ``documents``); returns what the excerpts' numbers cite.
        Bodies without ``documents`` are left as they are.

        With the local model loaded, the excerpts fill what its context leaves beside the
        messages and the answer; otherwise (the request may still go to tier B)
        ``documents.context_tokens``. Such requests never enter the prompt cache: the
        documents' text must not outlive their time-to-live."""
        if "documents" not in raw:
            return []
        self._enabled()
        ids = raw.pop("documents")
        if not (isinstance(ids, list) and ids and all(isinstance(i, str) for i in ids)):
            raise InvalidRequest("documents must be a non-empty list of document ids",
                                 param="documents")
        docs = [self.d.documents.get(i, ctx.api_key_id) for i in dict.fromkeys(ids)]
        messages = raw.get("messages")
        if not isinstance(messages, list) or not messages:
            return []  # the schema validation names the problem
        ctx.with_documents = True
        question = next((m.get("content") for m in reversed(messages)
                         if isinstance(m, dict) and m.get("role") == "user"), "")
        budget = self.d.settings.documents_context_tokens
        engine = self.d.engine if self.d.ready.is_set() else None
        count: Callable[[str], int] = lambda text: len(text) // 3 + 1  # noqa: E731
        if engine is not None:
            wanted = raw.get("max_completion_tokens") or raw.get("max_tokens")
            used = len(engine.chat_prompt(_text_messages(messages)))
            room = engine.n_ctx - used - (wanted if isinstance(wanted, int)
                                          else ANSWER_RESERVE_TOKENS) - 64
            budget = min(budget, room)
            count = lambda text: len(engine.tokenize(text, add_special=False))  # noqa: E731
        context, cites = select_context(docs, question if isinstance(question, str) else "",
                                        budget, count)
        if not cites:
            raise ContextLengthExceeded(
                f"no room for document excerpts in the {budget}-token share of the context "
                "left beside the messages and the answer", param="documents")
        first = messages[0] if isinstance(messages[0], dict) else {}
        if first.get("role") == "system" and isinstance(first.get("content"), str):
            messages[0] = {**first, "content": f"{first['content']}\n\n{context}"}
        else:
            messages.insert(0, {"role": "system", "content": context})
        return cites


def _clean_name(name: str) -> str:
    """A file name fit for the card and the model's context: its last path component,
    without control characters, at most 120 characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:120].strip()
    return base or "document"


def _text_messages(messages: list[Any]) -> list[dict[str, str]]:
    """Messages as role/content strings, for counting their tokens."""
    out = []
    for m in messages:
        if isinstance(m, dict):
            content = m.get("content")
            out.append({"role": str(m.get("role", "user")),
                        "content": content if isinstance(content, str) else ""})
    return out


def cite(response: Response, cites: list[Citation]) -> Response:
    """Name the excerpts in the answer: the ``X-Slm-Citations`` header (an ASCII JSON list,
    streamed or not), and a ``citations`` list in a non-streamed JSON answer."""
    if not cites or response.status_code >= 400:
        return response
    response.headers["X-Slm-Citations"] = json.dumps([c.as_dict() for c in cites],
                                                     ensure_ascii=True, separators=(",", ":"))
    # at most MAX_EXCERPTS citations whose labels are capped: a few kB at most
    if isinstance(response, JSONResponse):
        obj = json.loads(cast(bytes, response.body))  # a JSONResponse renders bytes
        obj["citations"] = [c.as_dict() for c in cites]
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return JSONResponse(obj, status_code=response.status_code, headers=headers)
    return response
