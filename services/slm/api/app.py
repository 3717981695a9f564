"""The HTTP routes: OpenAI-compatible endpoints plus health, readiness and metrics.

A completion request reads top to bottom: authenticate → read the body (size-limited) →
decode and validate → check the model name → tokenize and check the context → admit to the
queue → wait for the first event (so errors before any output keep their HTTP status) →
stream or collect. A client that disconnects cancels its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from slm import __version__
from slm.api import schemas
from slm.api.documents import DocumentRoutes, cite
from slm.api.errors import error_body, error_response, http_error_response
from slm.engine import Engine, GenerationResult, SamplingParams
from slm.errors import (
    AuthenticationFailed,
    BodyTooLarge,
    Cancelled,
    ContextLengthExceeded,
    InternalError,
    InvalidRequest,
    LedgerUnavailable,
    MemoryBudgetExceeded,
    NotFound,
    NotReady,
    QueueFull,
    RequestError,
    UpstreamError,
)
from slm.ledger import LedgerError
from slm.router import LocalTarget, RemoteTarget, Target
from slm.sanitise.payload import (
    StreamedResponseRehydrator,
    redact_request,
    rehydrate_response,
)
from slm.sanitise.vault import Vault
from slm.scheduler import DoneEvent, ErrorEvent, Event, Job, Scheduler, TextEvent
from slm.service import Doorman
from slm.systemd_notify import Watchdog, watchdog_interval_s
from slm.tiers import Tier

log = logging.getLogger("slm.api")

Handler = Callable[[Request], Awaitable[Response]]

# Endpoints whose every request leaves a record in the audit ledger.
AUDITED = frozenset({"chat", "completions", "embeddings", "documents", "documents_delete"})
# Tier A failures that mean "not now" rather than "not this request": tier B may take over.
TIER_A_BUSY = (QueueFull, NotReady, MemoryBudgetExceeded)
# Bodies above this size are sanitised on a worker thread, off the event loop.
SANITISE_INLINE_BYTES = 16 * 1024


class ClientGone(Exception):
    """The client disconnected while its request waited."""


def _request_id() -> str:
    """Ours, always: unique in the ledger and never a client's text (CSV formulas...)."""
    return uuid.uuid4().hex


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body of {declared} bytes is over the {limit}-byte limit")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"request body is over the {limit}-byte limit")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone() from None
    return b"".join(chunks)


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientGone.
    However this ends (also when this task itself is cancelled), ``work`` is finished
    before returning, so an upstream connection it holds is closed."""
    task = asyncio.ensure_future(work)
    disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, disconnected},
                                     return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        disconnected.cancel()
        if not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(task, return_exceptions=True)
    if task in done:
        return task.result()
    raise ClientGone()


async def _next_event(job: Job, disconnected: asyncio.Task[None]) -> Event:
    """The job's next event, or ClientGone (and the job cancelled) if the client left."""
    getter = asyncio.ensure_future(job.events.get())
    done, _ = await asyncio.wait({getter, disconnected}, return_when=asyncio.FIRST_COMPLETED)
    if getter in done:
        return getter.result()
    getter.cancel()
    job.cancel.set()
    raise ClientGone()


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _error_event(exc: RequestError, message: str | None = None) -> bytes:
    """An error after the stream started: one SSE event in OpenAI's error shape."""
    return _sse(error_body(message or exc.message, exc.type, param=exc.param, code=exc.code))


def _usage(result: GenerationResult) -> dict[str, Any]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_prompt_tokens},
    }


def _timings(result: GenerationResult) -> dict[str, Any]:
    """llama-server-style timings, so clients can see the speed of each request."""
    return {
        "prompt_n": result.prompt_tokens - result.cached_prompt_tokens,
        "prompt_ms": round(result.prompt_seconds * 1000, 3),
        "prompt_per_second": round(result.prompt_tokens_per_second, 2),
        "predicted_n": result.completion_tokens,
        "predicted_ms": round(result.generation_seconds * 1000, 3),
        "predicted_per_second": round(result.generation_tokens_per_second, 2),
    }


class DoormanAPI:
    """Route handlers bound to one Doorman."""

    def __init__(self, doorman: Doorman) -> None:
        self.d = doorman
        self.documents = DocumentRoutes(doorman, _read_body, self._note_prompt)

    # -- plumbing -----------------------------------------------------------------------

    def _authenticate(self, request: Request) -> str | None:
        """Check the bearer key; return the key's id (for the ledger), None without keys."""
        keys = self.d.api_keys
        if not keys:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        presented = token.strip().encode() if scheme.lower() == "bearer" else b""
        # Compare against every key, always, in constant time per key.
        matched = None
        for key, key_id in keys:
            if hmac.compare_digest(presented, key):
                matched = key_id
        if matched is None:
            raise AuthenticationFailed(
                "missing or invalid API key: send 'Authorization: Bearer <key>'"
            )
        return matched

    # -- the audit ledger ---------------------------------------------------------------

    def _audit_entry(
        self, request: Request, endpoint: str, status: int, error_code: str | None
    ) -> dict[str, Any]:
        state, fields = request.state, request.state.log
        store_prompt = self.d.settings.ledger_store_prompt
        return {
            "request_id": state.request_id, "endpoint": endpoint,
            "tier": state.audit.get("tier", str(Tier.A)),
            "model": state.audit.get("model", self.d.model_id),
            "model_sha256": state.audit.get("model_sha256", self.d.model_file.sha256),
            "status": status, "error_code": error_code,
            "finish_reason": fields.get("finish_reason"),
            "prompt_tokens": fields.get("prompt_tokens"),
            "completion_tokens": fields.get("completion_tokens"),
            "latency_us": int((time.monotonic() - state.started) * 1_000_000),
            "prompt_sha256": state.audit.get("prompt_sha256"),
            "prompt_text": state.audit.get("prompt_text") if store_prompt else None,
            "entities": state.audit.get("entities", []),
            "api_key_id": state.audit.get("api_key_id"),
        }

    async def _audit(
        self, request: Request, endpoint: str, status: int, error_code: str | None = None
    ) -> None:
        """Write the request's record and wait until it is durable (one record a request)."""
        if request.state.recorded:
            return
        request.state.recorded = True
        began = time.monotonic()
        future = self.d.ledger.append(self._audit_entry(request, endpoint, status, error_code))
        try:
            await asyncio.wrap_future(future)
        except LedgerError as exc:
            raise LedgerUnavailable(
                f"the audit ledger cannot be written: {exc.message}") from None
        finally:
            self.d.metrics.ledger_wait.observe(time.monotonic() - began)

    def _audit_nowait(
        self, request: Request, endpoint: str, status: int, error_code: str | None
    ) -> None:
        """Record a request that ends without an answer (error, client gone)."""
        if request.state.recorded:
            return
        request.state.recorded = True
        self.d.ledger.append(self._audit_entry(request, endpoint, status, error_code))

    @staticmethod
    def _note_prompt(request: Request, prompt: Any) -> None:
        """Keep the prompt's sha256 (and text, for the ledger setting) on the request."""
        text = prompt if isinstance(prompt, str) else json.dumps(
            prompt, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        request.state.audit["prompt_sha256"] = hashlib.sha256(text.encode()).hexdigest()
        request.state.audit["prompt_text"] = text

    def _check_model(self, name: str) -> None:
        if name != self.d.model_id:
            raise NotFound(
                f"model {name!r} does not exist; this server serves {self.d.model_id!r}",
                param="model", code="model_not_found",
            )

    def endpoint(self, name: str, handler: Handler, *, auth: bool = True) -> Handler:
        """Wrap a handler: request id, auth, ledger record, error rendering, metrics and
        one log line. Inference endpoints answer only once their record is durable."""
        audited = name in AUDITED

        async def wrapped(request: Request) -> Response:
            request_id = _request_id()
            request.state.request_id = request_id
            request.state.log = {}
            request.state.audit = {}
            request.state.recorded = False
            request.state.started = started = time.monotonic()
            status = 500
            try:
                if auth:
                    request.state.audit["api_key_id"] = self._authenticate(request)
                if audited:
                    self.d.require_ledger()
                response = await handler(request)
                if audited and not request.state.log.get("streaming"):
                    await self._audit(request, name, response.status_code)
                response.headers.setdefault("X-Request-Id", request_id)
                status = response.status_code
                return response
            except ClientGone:
                status = 499
                if audited:
                    self._audit_nowait(request, name, 499, "client_closed_request")
                return Response(status_code=499)
            except RequestError as exc:
                status = exc.status
                if audited and not isinstance(exc, LedgerUnavailable):
                    self._audit_nowait(request, name, exc.status, exc.code)
                if isinstance(exc, Cancelled):
                    return Response(status_code=499)
                return error_response(exc, request_id)
            except Exception:  # noqa: BLE001 - never a traceback to the client
                log.exception("unhandled error", extra={"request_id": request_id})
                if audited:
                    self._audit_nowait(request, name, 500, "internal_error")
                return error_response(InternalError("internal server error"), request_id)
            except asyncio.CancelledError:  # uvicorn's shutdown backstop ended the request
                status = 503
                if audited:
                    self._audit_nowait(request, name, 503, "shutting_down")
                raise
            finally:
                self.d.metrics.requests.labels(name, str(status)).inc()
                if name not in ("health", "ready", "metrics") and not request.state.log.get(
                    "streaming"
                ):
                    log.info(
                        "request",
                        extra={
                            "request_id": request_id, "endpoint": name, "status": status,
                            "ms": round((time.monotonic() - started) * 1000, 1),
                            **request.state.log,
                        },
                    )

        return wrapped

    # -- health, readiness, metrics, models --------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        self.d.require_engine()
        self.d.require_ledger()
        return JSONResponse({"status": "ready", "model": self.d.model_id})

    async def metrics(self, request: Request) -> Response:
        return Response(self.d.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    def _model_card(self) -> dict[str, Any]:
        info = self.d.engine.info if self.d.engine else None
        return {
            "id": self.d.model_id,
            "object": "model",
            "created": int(self.d.model_file.path.stat().st_mtime),
            "owned_by": "service-slm",
            "context_length": info.n_ctx if info else self.d.n_ctx,
            "sha256": self.d.model_file.sha256,
            "meta": {
                "size": self.d.model_file.size,
                "n_ctx": info.n_ctx if info else self.d.n_ctx,
                "n_ctx_train": info.n_ctx_train if info else None,
                "n_params": info.n_params if info else None,
                "n_embd": info.n_embd if info else None,
                "n_vocab": info.n_vocab if info else None,
                "architecture": info.architecture if info else None,
                "embeddings": info.supports_embeddings if info else None,
                "ready": self.d.ready.is_set(),
            },
        }

    def _upstream_card(self, name: str) -> dict[str, Any]:
        up = self.d.router.by_model[name]
        return {"id": name, "object": "model", "created": int(self.d.started_at),
                "owned_by": f"tier-{up.tier.lower()}:{up.name}"}

    def _adapter_card(self, model: str) -> dict[str, Any]:
        return {**self._model_card(), "id": model, "parent": self.d.model_id,
                "adapter": model.split(":", 1)[1]}

    async def models(self, request: Request) -> Response:
        cards = ([self._model_card()]
                 + [self._adapter_card(m) for m in self.d.adapters.model_ids()]
                 + [self._upstream_card(n) for n in self.d.router.by_model])
        return JSONResponse({"object": "list", "data": cards})

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name in self.d.router.by_model:
            return JSONResponse(self._upstream_card(name))
        if self.d.adapters.owns(name):
            self.d.adapters.select(name)  # 404 unknown, 400 made for another model
            return JSONResponse(self._adapter_card(name))
        self._check_model(name)
        return JSONResponse(self._model_card())

    async def adapters(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "model": self.d.model_id,
                             "model_sha256": self.d.model_file.sha256,
                             "data": [a.card() for a in self.d.adapters.adapters]})

    # -- completions --------------------------------------------------------------------

    def _context_check(self, engine: Engine, prompt: list[int], max_tokens: int | None) -> int:
        """Refuse prompts that do not fit; return the completion budget."""
        n_ctx = engine.n_ctx
        if len(prompt) >= n_ctx:
            raise ContextLengthExceeded(
                f"this model's maximum context length is {n_ctx} tokens, but the prompt "
                f"has {len(prompt)} tokens", param="messages",
            )
        room = n_ctx - len(prompt)
        if max_tokens is not None and max_tokens > room:
            raise ContextLengthExceeded(
                f"this model's maximum context length is {n_ctx} tokens; you requested "
                f"{len(prompt) + max_tokens} tokens ({len(prompt)} in the prompt, "
                f"{max_tokens} for the completion)", param="max_tokens",
            )
        return max_tokens if max_tokens is not None else room

    def _sampling(
        self, engine: Engine, req: schemas._Sampling, max_tokens: int, grammar: str | None
    ) -> SamplingParams:
        adapters = self.d.adapters
        return SamplingParams(
            adapter=adapters.select(req.model) if adapters.owns(req.model) else None,
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            seed=req.seed,
            stop=schemas.stop_sequences(req.stop),
            grammar=grammar,
            frequency_penalty=req.frequency_penalty or 0.0,
            presence_penalty=req.presence_penalty or 0.0,
            logit_bias=schemas.logit_bias(req.logit_bias, engine.n_vocab),
        )

    async def chat_completions(self, request: Request) -> Response:
        body = await _read_body(request, self.d.settings.max_body_bytes)
        body, cites = self.documents.expand(request, body)
        return cite(await self._chat(request, body), cites)

    async def _chat(self, request: Request, body: bytes) -> Response:
        req = schemas.decode(body, schemas.ChatCompletionRequest)
        targets = self.d.router.targets(req.model)
        messages = schemas.chat_messages(req.messages)
        redacted, vault = await self._sanitise(request, body, "messages")

        async def tier_a() -> Response:
            schemas.check_sampling(req)
            if req.tools:
                raise schemas.Unsupported("tools are not supported by this model server",
                                          param="tools")
            engine, _ = self.d.require_engine()
            grammar = schemas.grammar_for(req.response_format)
            if grammar is not None:
                engine.check_grammar(grammar)
            prompt = engine.chat_prompt(messages)
            wanted = req.max_completion_tokens if req.max_completion_tokens is not None else (
                req.max_tokens)
            max_tokens = self._context_check(engine, prompt, wanted)
            params = self._sampling(engine, req, max_tokens, grammar)
            if getattr(request.state, "documents", False):
                params = dataclasses.replace(params, snapshot=False)
            return await self._run(request, req, prompt, params, chat=True)

        return await self._route(request, targets, tier_a, redacted, vault,
                                 chat=True, stream=bool(req.stream))

    async def completions(self, request: Request) -> Response:
        body = await _read_body(request, self.d.settings.max_body_bytes)
        req = schemas.decode(body, schemas.CompletionRequest)
        targets = self.d.router.targets(req.model)
        redacted, vault = await self._sanitise(request, body, "prompt")

        async def tier_a() -> Response:
            schemas.check_sampling(req)
            if req.echo:
                raise schemas.Unsupported("echo is not supported", param="echo")
            if req.suffix:
                raise schemas.Unsupported("suffix is not supported", param="suffix")
            if req.best_of not in (None, 1):
                raise schemas.Unsupported("only best_of=1 is supported", param="best_of")
            engine, _ = self.d.require_engine()
            prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
            if len(prompts) != 1:
                raise schemas.Unsupported("exactly one prompt per request is supported",
                                          param="prompt")
            prompt = engine.tokenize(prompts[0], add_special=True)
            if not prompt:
                raise InvalidRequest("prompt must not be empty", param="prompt")
            max_tokens = self._context_check(engine, prompt, req.max_tokens or 16)
            params = self._sampling(engine, req, max_tokens, None)
            return await self._run(request, req, prompt, params, chat=False)

        return await self._route(request, targets, tier_a, redacted, vault,
                                 chat=False, stream=bool(req.stream))

    # -- sanitise → route → rehydrate -------------------------------------------------------

    async def _sanitise(
        self, request: Request, body: bytes, field: str
    ) -> tuple[dict[str, Any], Vault]:
        """The request body with its PII and secrets replaced by placeholders, and the
        request's own vault (which never leaves this request). The ledger gets the
        sanitised prompt's hash (and text, if stored) and the entity types found."""
        raw = schemas.decode_object(body)
        vault = Vault(self.d.detector)
        if len(body) > SANITISE_INLINE_BYTES:
            redacted = await asyncio.to_thread(redact_request, raw, vault)
        else:
            redacted = redact_request(raw, vault)
        prompt = redacted.get(field)
        if field == "prompt" and isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        self._note_prompt(request, prompt)
        request.state.audit["entities"] = vault.entity_types
        for kind, count in vault.counts.items():
            self.d.metrics.entities.labels(kind).inc(count)
        return redacted, vault

    async def _route(
        self, request: Request, targets: list[Target], tier_a: Callable[[], Awaitable[Response]],
        redacted: dict[str, Any], vault: Vault, *, chat: bool, stream: bool,
    ) -> Response:
        """Serve from the first target that can; tier A hands over to tier B on overflow
        or when busy (per the router settings), upstreams to their fallbacks. When every
        target fails, the first target's error is raised (naming the others')."""
        first_error: RequestError | None = None
        for i, target in enumerate(targets):
            more = i + 1 < len(targets)
            self._answering(request, target)
            try:
                if isinstance(target, LocalTarget):
                    response = await tier_a()
                else:
                    response = await self._remote(request, target, redacted, vault,
                                                  chat=chat, stream=stream)
            except RequestError as exc:
                if first_error is None:
                    first_error = exc
                else:
                    first_error.message += f"; {target.label} failed too: {exc.message}"
                if not (more and self._may_hand_over(exc, first=i == 0)):
                    self._answering(request, targets[0])
                    raise first_error from None
                log.info("handing over", extra={
                    "request_id": request.state.request_id, "from": target.label,
                    "to": targets[i + 1].label, "error": exc.code})
                continue
            response.headers["X-Slm-Tier"] = str(target.tier)
            if isinstance(target, RemoteTarget):
                response.headers["X-Slm-Upstream"] = target.upstream.name
            if response.status_code < 400:
                self.d.metrics.answered_by.labels(target.tier).inc()
            return response
        raise AssertionError("a route always has a target")

    def _may_hand_over(self, exc: RequestError, *, first: bool) -> bool:
        """Whether the next target may try after ``exc``. Tier A as first choice hands
        over on overflow / when busy (per the router settings); an upstream, and tier A as
        a fallback, when the failure was not the request's own fault."""
        settings = self.d.settings
        if first and not isinstance(exc, UpstreamError):
            return ((isinstance(exc, ContextLengthExceeded) and settings.overflow_to_b)
                    or (isinstance(exc, TIER_A_BUSY) and settings.fallback_to_b))
        return isinstance(exc, TIER_A_BUSY) or (
            isinstance(exc, UpstreamError) and exc.retryable)

    def _answering(self, request: Request, target: Target) -> None:
        """Record (for the ledger and log) which tier is serving the request now."""
        audit = request.state.audit
        audit["tier"] = str(target.tier)
        audit["model"] = target.model
        audit["model_sha256"] = (self.d.model_file.sha256 if isinstance(target, LocalTarget)
                                 else None)
        request.state.log["tier"] = target.label

    async def _remote(
        self, request: Request, target: RemoteTarget, redacted: dict[str, Any], vault: Vault,
        *, chat: bool, stream: bool,
    ) -> Response:
        """Forward the sanitised request to a tier B / C upstream; rehydrate its answer."""
        up = target.upstream
        state = request.state
        deadline = min(state.started + self.d.settings.request_timeout_s,
                       time.monotonic() + up.config.total_timeout_s)
        path = "/chat/completions" if chat else "/completions"
        opened = await _unless_disconnected(request, self.d.router.open(
            target, path, redacted, deadline=deadline, request_id=state.request_id,
            stream=stream))
        if not stream:
            obj = await _unless_disconnected(request, up.read_json(opened, deadline=deadline))
            if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
                raise UpstreamError(
                    f"upstream {up.name!r} answered 200 without choices: "
                    f"{_error_text(obj)}", retryable=False)
            self._note_usage(request, obj)
            return JSONResponse(rehydrate_response(obj, vault))
        events = up.events(opened, deadline=deadline)
        try:  # the first event before the status line: a failure can still fall back
            first = await _unless_disconnected(request, anext(events))
            if "error" in first and not first.get("choices"):
                raise UpstreamError(f"upstream {up.name!r} answered with an error event: "
                                    f"{_error_text(first)}", retryable=False)
        except StopAsyncIteration:
            raise UpstreamError(f"upstream {up.name!r} ended its stream at once") from None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await events.aclose()
            raise
        state.log["streaming"] = True
        endpoint = "chat" if chat else "completions"

        async def cleanup() -> None:
            await events.aclose()
            self._audit_nowait(request, endpoint, 499, "client_closed_request")

        return _RelayStreamingResponse(
            cleanup, self._relay(request, endpoint, events, first, vault, chat=chat),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @staticmethod
    def _note_usage(request: Request, obj: dict[str, Any]) -> None:
        usage = obj.get("usage")
        if isinstance(usage, dict):
            request.state.log.update(prompt_tokens=usage.get("prompt_tokens"),
                                     completion_tokens=usage.get("completion_tokens"))
        choices = obj.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            reason = choices[0].get("finish_reason")
            if reason is not None:
                request.state.log["finish_reason"] = reason

    async def _relay(
        self, request: Request, endpoint: str, events: AsyncIterator[dict[str, Any]],
        first: dict[str, Any], vault: Vault, *, chat: bool,
    ) -> AsyncIterator[bytes]:
        """Pass an upstream's stream through, one chunk out per chunk in, rehydrated."""
        log_fields = request.state.log
        log_fields.update(request_id=request.state.request_id, status=200)
        rehydrator = StreamedResponseRehydrator(vault, chat=chat)
        ended = False
        obj: dict[str, Any] | None = first
        try:
            try:
                while obj is not None:
                    if "error" in obj and not obj.get("choices"):
                        raise UpstreamError(f"upstream failed mid-stream: {_error_text(obj)}")
                    self._note_usage(request, obj)
                    yield _sse(rehydrator.chunk(obj))
                    obj = await anext(events, None)
            except Exception as exc:  # noqa: BLE001 - the client gets an error event
                if not isinstance(exc, UpstreamError):
                    log.exception("relay failed", extra={"request_id": request.state.request_id})
                    exc = UpstreamError("the upstream's stream could not be relayed")
                log_fields["error"] = exc.code
                self._audit_nowait(request, endpoint, exc.status, exc.code)
                ended = True
                yield _error_event(exc, vault.rehydrate(exc.message))
                return
            leftovers = rehydrator.leftovers()  # the stream ended without a finish_reason
            if leftovers:
                yield _sse({"object": "chat.completion.chunk" if chat else "text_completion",
                            "choices": leftovers})
            try:  # [DONE] acknowledges the answer: only once its record is durable
                await self._audit(request, endpoint, 200)
            except LedgerUnavailable as exc:
                ended = True
                yield _error_event(exc)
                return
            ended = True
            yield b"data: [DONE]\n\n"
        finally:
            if not ended:
                log_fields["cancelled"] = True
                self._audit_nowait(request, endpoint, 499, "client_closed_request")
            with anyio.CancelScope(shield=True):
                await events.aclose()  # type: ignore[attr-defined]
            log_fields.pop("streaming", None)
            log.info("request", extra={
                "endpoint": endpoint,
                "ms": round((time.monotonic() - request.state.started) * 1000, 1),
                **log_fields,
            })

    async def _run(
        self, request: Request, req: schemas._Sampling, prompt: list[int],
        params: SamplingParams, *, chat: bool,
    ) -> Response:
        _, scheduler = self.d.require_engine()
        job = self.d.new_job(request.state.request_id)
        job.prompt, job.params = prompt, params
        first = await self._admit(request, scheduler, job)
        model = f"{self.d.model_id}:{params.adapter}" if params.adapter else self.d.model_id
        reply = _Reply(model, chat=chat, request_id=request.state.request_id)
        request.state.log.update(prompt_tokens=len(prompt))
        if req.stream:
            request.state.log["streaming"] = True
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            endpoint = "chat" if chat else "completions"
            return _JobStreamingResponse(
                job,
                # if the body never starts (client gone first), the request is still recorded
                lambda: self._audit_nowait(request, endpoint, 499, "client_closed_request"),
                self._stream(request, job, first, reply, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        texts: list[str] = []
        event: Event = first
        disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            while isinstance(event, TextEvent):
                texts.append(event.text)
                event = await _next_event(job, disconnected)
        finally:
            disconnected.cancel()
        if isinstance(event, ErrorEvent):
            raise event.error
        assert isinstance(event, DoneEvent)
        result: GenerationResult = event.result
        request.state.log.update(completion_tokens=result.completion_tokens,
                                 finish_reason=result.finish_reason)
        return JSONResponse(reply.whole("".join(texts), result))

    async def _admit(self, request: Request, scheduler: Scheduler, job: Job) -> Event:
        """Queue ``job`` (429 when full, 503 over the memory budget) and wait for its first
        event; a failure before any output is raised, so it keeps its HTTP status."""
        self.d.check_memory()
        scheduler.submit(job)
        disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            first = await _next_event(job, disconnected)
        finally:
            disconnected.cancel()
        if isinstance(first, ErrorEvent):
            raise first.error
        return first

    async def _stream(
        self, request: Request, job: Job, first: Event, reply: _Reply, include_usage: bool
    ) -> AsyncIterator[bytes]:
        endpoint = "chat" if reply.chat else "completions"
        log_fields = request.state.log
        log_fields.update(request_id=job.request_id, status=200)
        ended = False
        try:
            if reply.chat:
                yield _sse(reply.chunk({"role": "assistant", "content": ""}))
            event = first
            while isinstance(event, TextEvent):
                frames = [reply.text_frame(event.text)]
                following: Event | None = None
                while following is None and not job.events.empty():
                    queued = job.events.get_nowait()  # catch up in one write
                    if isinstance(queued, TextEvent):
                        frames.append(reply.text_frame(queued.text))
                    else:
                        following = queued
                yield b"".join(frames)
                event = following or await job.events.get()
            if isinstance(event, DoneEvent):
                result: GenerationResult = event.result
                log_fields.update(completion_tokens=result.completion_tokens,
                                  finish_reason=result.finish_reason)
                yield _sse(reply.chunk({} if reply.chat else "", finish=result.finish_reason))
                if include_usage:
                    yield _sse(reply.usage_chunk(result))
                try:  # [DONE] acknowledges the answer: only once its record is durable
                    await self._audit(request, endpoint, 200)
                except LedgerUnavailable as exc:
                    event = ErrorEvent(exc)
                else:
                    ended = True
                    yield b"data: [DONE]\n\n"
                    return
            assert isinstance(event, ErrorEvent)
            err = event.error
            log_fields["error"] = err.code
            if not isinstance(err, LedgerUnavailable):
                self._audit_nowait(request, endpoint, err.status, err.code)
            ended = True
            yield _error_event(err)
        finally:
            if not ended:
                log_fields["cancelled"] = True
                self._audit_nowait(request, endpoint, 499, "client_closed_request")
            job.cancel.set()  # no-op after the end; stops the decode if the client left
            log_fields.pop("streaming", None)
            log.info("request", extra={
                "endpoint": endpoint,
                "ms": round((time.monotonic() - request.state.started) * 1000, 1),
                **log_fields,
            })

    # -- embeddings ---------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        body = await _read_body(request, self.d.settings.max_body_bytes)
        req = schemas.decode(body, schemas.EmbeddingRequest)
        self._check_model(req.model)
        engine, scheduler = self.d.require_engine()
        if not engine.info.supports_embeddings:
            raise schemas.Unsupported(
                f"model {self.d.model_id!r} does not produce embeddings",
                param="model", code="embeddings_not_supported",
            )
        if req.dimensions is not None:
            raise schemas.Unsupported("dimensions is not supported", param="dimensions")
        if req.encoding_format not in (None, "float"):
            raise schemas.Unsupported("only encoding_format 'float' is supported",
                                      param="encoding_format")
        raw = req.input
        self._note_prompt(request, raw)
        if isinstance(raw, str):
            inputs = [engine.tokenize(raw)]
        elif raw and all(isinstance(x, int) for x in raw):
            inputs = [list(raw)]  # type: ignore[arg-type]
        elif raw and all(isinstance(x, str) for x in raw):
            inputs = [engine.tokenize(s) for s in raw]  # type: ignore[arg-type]
        elif raw and all(isinstance(x, list) for x in raw):
            inputs = [list(x) for x in raw]  # type: ignore[arg-type]
        else:
            raise InvalidRequest("input must not be empty", param="input")
        for i, tokens in enumerate(inputs):
            if not tokens:
                raise InvalidRequest(f"input[{i}] is empty", param="input")
            if any(not engine.token_id_valid(t) for t in tokens):
                raise InvalidRequest(f"input[{i}] has token ids outside the vocabulary",
                                     param="input")
            if len(tokens) > engine.n_ctx:
                raise ContextLengthExceeded(
                    f"input[{i}] has {len(tokens)} tokens; the maximum is {engine.n_ctx}",
                    param="input",
                )
        job = self.d.new_job(request.state.request_id)
        job.embed_inputs = inputs
        event = await self._admit(request, scheduler, job)
        assert isinstance(event, DoneEvent)
        n_tokens = sum(len(t) for t in inputs)
        return JSONResponse({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": vec}
                     for i, vec in enumerate(event.result)],
            "model": self.d.model_id,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        })


class _JobStreamingResponse(StreamingResponse):
    """A stream that cancels its job however it ends, even if the client left before the
    first chunk (when the body generator never starts, its own ``finally`` cannot run)."""

    def __init__(
        self, job: Job, on_end: Callable[[], None], *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._job = job
        self._on_end = on_end

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            # Only uvicorn's shutdown backstop cancels a response (a client that stopped
            # reading past our grace period): the stream is over, nothing to report.
            log.info("stream cut at shutdown", extra={"request_id": self._job.request_id})
        finally:
            self._job.cancel.set()
            self._on_end()  # records the request unless the stream already did


def _error_text(obj: Any) -> str:
    """The message of an upstream's ``{"error": ...}`` object, short."""
    error = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(error, dict):
        error = error.get("message", error)
    return str(error if error is not None else obj)[:300]


class _RelayStreamingResponse(StreamingResponse):
    """A relayed upstream stream whose upstream connection is closed however it ends, even
    if the client left before the first chunk."""

    def __init__(
        self, cleanup: Callable[[], Awaitable[None]], *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._cleanup = cleanup

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            log.info("relayed stream cut at shutdown")
        finally:
            with anyio.CancelScope(shield=True):
                await self._cleanup()


class _Reply:
    """Builds the response objects of one completion (ids and timestamps fixed once)."""

    def __init__(self, model_id: str, *, chat: bool, request_id: str) -> None:
        self.chat = chat
        self.model = model_id
        self.id = ("chatcmpl-" if chat else "cmpl-") + request_id
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self.fingerprint = f"slm-{__version__}"
        # Streamed text frames differ only in their text: encode the frame around it once.
        marker = "\u0000slm\u0000"
        frame = _sse(self.chunk({"content": marker} if chat else marker))
        self._frame_head, self._frame_tail = frame.split(json.dumps(marker).encode())

    def text_frame(self, text: str) -> bytes:
        """One SSE frame carrying streamed text (the hot path: one JSON string encode)."""
        return self._frame_head + json.dumps(text).encode() + self._frame_tail

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": self.fingerprint}

    def chunk(self, delta: dict[str, Any] | str, finish: str | None = None) -> dict[str, Any]:
        """One streamed chunk (chat: a delta; completions: text)."""
        if self.chat:
            out = self._base("chat.completion.chunk")
            out["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish,
                               "logprobs": None}]
        else:
            out = self._base("text_completion")
            out["choices"] = [{"index": 0, "text": delta, "finish_reason": finish,
                               "logprobs": None}]
        return out

    def usage_chunk(self, result: GenerationResult) -> dict[str, Any]:
        """The last chunk when ``stream_options.include_usage`` is set."""
        out = self._base("chat.completion.chunk" if self.chat else "text_completion")
        out["choices"] = []
        out["usage"] = _usage(result)
        out["timings"] = _timings(result)
        return out

    def whole(self, text: str, result: GenerationResult) -> dict[str, Any]:
        """The non-streamed response."""
        out = self._base(self.object)
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": result.finish_reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": result.finish_reason,
                      "logprobs": None}
        out["choices"] = [choice]
        out["usage"] = _usage(result)
        out["timings"] = _timings(result)
        return out


async def _purge_documents(doorman: Doorman) -> None:
    """Forget documents as their time-to-live ends (within a quarter of it, 5 s at most),
    not only when the store is next used."""
    interval = min(5.0, doorman.settings.documents_ttl_s / 4)
    while True:
        await asyncio.sleep(interval)
        doorman.documents.purge()


def create_app(doorman: Doorman) -> Starlette:
    """The Starlette application serving ``doorman``."""
    api = DoormanAPI(doorman)
    e = api.endpoint
    routes = [
        Route("/health", e("health", api.health, auth=False), methods=["GET"]),
        Route("/ready", e("ready", api.ready, auth=False), methods=["GET"]),
        Route("/metrics", e("metrics", api.metrics), methods=["GET"]),
        Route("/v1/models", e("models", api.models), methods=["GET"]),
        Route("/v1/models/{model:path}", e("models", api.model), methods=["GET"]),
        Route("/v1/adapters", e("models", api.adapters), methods=["GET"]),
        Route("/v1/chat/completions", e("chat", api.chat_completions), methods=["POST"]),
        Route("/v1/completions", e("completions", api.completions), methods=["POST"]),
        Route("/v1/embeddings", e("embeddings", api.embeddings), methods=["POST"]),
        Route("/v1/documents", e("documents", api.documents.ingest), methods=["POST"]),
        Route("/v1/documents", e("documents_read", api.documents.list), methods=["GET"]),
        Route("/v1/documents/{doc_id}", e("documents_read", api.documents.get),
              methods=["GET"]),
        Route("/v1/documents/{doc_id}", e("documents_delete", api.documents.delete),
              methods=["DELETE"]),
    ]

    async def http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return http_error_response(404, f"no route for {request.url.path}")
        if exc.status_code == 405:
            return http_error_response(405, f"method {request.method} not allowed here")
        return http_error_response(exc.status_code, str(exc.detail))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return http_error_response(500, "internal server error")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        doorman.router.start()
        interval = watchdog_interval_s()
        watchdog = (Watchdog(asyncio.get_running_loop(), doorman.engine_stalled, interval)
                    if interval else None)
        if watchdog:
            watchdog.start()
        purger = asyncio.create_task(_purge_documents(doorman))
        try:
            yield
        finally:
            purger.cancel()
            if watchdog:
                watchdog.stop()
            await doorman.router.aclose()

    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_exception, Exception: server_error},
        lifespan=lifespan,
    )
