"""The HTTP layer: the route table and the endpoint wrapper around every handler.

A chat request reads top to bottom in :meth:`DoormanAPI.chat_completions`: the wrapper
authenticates and makes the request's :class:`~slm.api.context.RequestContext` → the body
is read (size-limited) and decoded once → document excerpts are added → the body is typed
and validated → sanitised (:mod:`slm.api.pipeline`) → the router's targets are tried in
turn, tier A (:mod:`slm.api.local`) or a relay to B/C (:mod:`slm.api.relay`) → the wrapper
commits the one audit record (:mod:`slm.api.audit`) before the answer leaves; a stream
commits its own before ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from slm.access.keys import ApiKey, KeyStoreError, Scope, find_key
from slm.api import openapi, schemas
from slm.api.audit import Auditor
from slm.api.context import RequestContext, log_request
from slm.api.documents import DocumentRoutes, cite
from slm.api.errors import as_request_error, error_response, http_error_response
from slm.api.keys import KeyRoutes
from slm.api.local import LocalTier
from slm.api.models import ModelRoutes, check_model
from slm.api.pipeline import HandOverRule, Sanitised, sanitise, serve
from slm.api.relay import Relay
from slm.api.streaming import ClientGone, disconnect_waiter, read_body
from slm.errors import (
    AuthenticationFailed,
    Cancelled,
    InternalError,
    KeyStoreUnavailable,
    LedgerUnavailable,
    PermissionDenied,
    RequestError,
)
from slm.ops.systemd import Watchdog, watchdog_interval_s
from slm.server.state import Doorman
from slm.tier_a.errors import TierAError
from slm.upstream.router import LocalTarget, RemoteTarget, Target

log = logging.getLogger("slm.api")

Handler = Callable[[Request, RequestContext], Awaitable[Response]]
UNLOGGED = frozenset({"health", "ready", "metrics", "openapi"})
SPENDS_TOKENS = frozenset({"chat", "completions", "embeddings"})  # under a key's budgets


def _request_id() -> str:
    """Ours, always: unique in the ledger and never a client's text (CSV formulas...)."""
    return uuid.uuid4().hex


class DoormanAPI:
    """Route handlers bound to one Doorman."""

    def __init__(self, doorman: Doorman) -> None:
        self.d = doorman
        settings = doorman.settings
        self.auditor = Auditor(doorman.ledger, doorman.metrics,
                               store_prompt=settings.ledger_store_prompt)
        self.local = LocalTier(doorman, self.auditor)
        self.relay = Relay(doorman.router, self.auditor)
        self.models = ModelRoutes(doorman)
        self.documents = DocumentRoutes(doorman)
        self.keys = KeyRoutes(doorman)
        self.hand_over = HandOverRule(overflow_to_b=settings.overflow_to_b,
                                      fallback_to_b=settings.fallback_to_b)
        models = [doorman.model_id, *doorman.adapters.model_ids(), *doorman.router.by_model]
        self._openapi = json.dumps(openapi.document(models)).encode()

    # -- the endpoint wrapper -----------------------------------------------------------

    def _authenticate(
        self, request: Request, ctx: RequestContext, scope: Scope | None
    ) -> str | None:
        """Check the bearer key and its scope; return the key's id for the ledger (a
        stored key's name), None while no key is configured at all (on loopback, or with
        ``server.allow_keyless_network``; beyond it nobody gets in then). Keys of the config
        file (``server.api_keys``) have every scope and no limits; a stored key's request
        is counted against its rates and budgets. Every request's tokens are counted
        against its key (keyless ones under "") once it ends."""
        try:
            stored = self.d.key_store.keys()
        except KeyStoreError as exc:
            log.error("key store unreadable: %s", exc.one_line())
            raise KeyStoreUnavailable("the key store cannot be read; retry later") from None
        keys = self.d.api_keys
        if not keys and not stored and not self.d.keys_required:
            ctx.on_end.append(self._charger(""))  # the budgets count keyless use too
            return None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        presented = token.strip() if scheme.lower() == "bearer" else ""
        # Compare against every key, always, in constant time per key.
        matched = None
        for key, key_id in keys:
            if hmac.compare_digest(presented.encode(), key):
                matched = key_id
        named = find_key(stored, presented)  # the keys just read: one stat per request
        if named is not None:
            if scope is not None and not named.allows(scope):
                raise PermissionDenied(
                    f"key {named.name!r} may not use this endpoint: it needs the "
                    f"{scope.value!r} scope")
            self.d.key_limits.admit(named)
            if ctx.endpoint in SPENDS_TOKENS:  # /v1/usage still answers a spent key
                self.d.token_budgets.admit(named)
            ctx.api_key = named
            matched = named.name
        if matched is None:
            raise AuthenticationFailed(
                "missing or invalid API key: send 'Authorization: Bearer <key>'"
            )
        ctx.on_end.append(self._charger(matched))
        return matched

    def _charger(self, name: str) -> Callable[[RequestContext], None]:
        """What a request of key ``name`` does as it ends: count its tokens against the
        key's minute and its budgets."""
        limits, budgets = self.d.key_limits, self.d.token_budgets

        def charge(ctx: RequestContext) -> None:
            tokens = (ctx.prompt_tokens or 0) + (ctx.completion_tokens or 0)
            limits.charge(name, tokens)
            budgets.charge(name, tokens)

        return charge

    def _context(self, request: Request, name: str) -> RequestContext:
        started = time.monotonic()
        return RequestContext(
            request_id=_request_id(), endpoint=name, started=started,
            deadline=started + self.d.settings.request_timeout_s,
            client_gone=disconnect_waiter(request),
            model=self.d.model_id, model_sha256=self.d.model_file.sha256,
        )

    def endpoint(self, name: str, handler: Handler, *, auth: bool = True,
                 scope: Scope | None = Scope.INFERENCE
                 ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a handler: request context, auth (a key with ``scope``; None: any key), the
        ledger record, error rendering, metrics and one log line. Inference endpoints
        answer only once their record is durable."""
        auditor = self.auditor

        async def wrapped(request: Request) -> Response:
            ctx = self._context(request, name)
            audited = auditor.audited(ctx)
            status = 500
            try:
                if auth:
                    ctx.api_key_id = self._authenticate(request, ctx, scope)
                if audited:
                    self.d.require_ledger()
                response = await handler(request, ctx)
                if not ctx.streaming:
                    await auditor.commit(ctx, response.status_code)
                response.headers.setdefault("X-Request-Id", ctx.request_id)
                status = response.status_code
                return response
            except ClientGone:
                status = 499
                auditor.client_gone(ctx)
                return Response(status_code=499)
            except (RequestError, TierAError) as raised:
                exc = as_request_error(raised)
                status = exc.status
                if not isinstance(exc, LedgerUnavailable):
                    auditor.commit_nowait(ctx, exc.status, exc.code)
                if isinstance(exc, Cancelled):
                    return Response(status_code=499)
                return error_response(exc, ctx.request_id)
            except Exception:  # noqa: BLE001 - never a traceback to the client
                log.exception("unhandled error", extra={"request_id": ctx.request_id})
                auditor.commit_nowait(ctx, 500, "internal_error")
                return error_response(InternalError("internal server error"), ctx.request_id)
            except asyncio.CancelledError:  # uvicorn's shutdown backstop ended the request
                status = 503
                auditor.commit_nowait(ctx, 503, "shutting_down")
                raise
            finally:
                self.d.metrics.requests.labels(name, str(status)).inc()
                if name not in UNLOGGED and not ctx.streaming:
                    log_request(ctx, status)

        return wrapped

    # -- health, readiness, metrics -----------------------------------------------------

    async def health(self, request: Request, ctx: RequestContext) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request, ctx: RequestContext) -> Response:
        self.d.require_engine()
        self.d.require_ledger()
        return JSONResponse({"status": "ready", "model": self.d.model_id})

    async def openapi(self, request: Request, ctx: RequestContext) -> Response:
        return Response(self._openapi, media_type="application/json")

    async def metrics(self, request: Request, ctx: RequestContext) -> Response:
        return Response(self.d.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    async def usage(self, request: Request, ctx: RequestContext) -> Response:
        """What the calling key used in the last minute, today and this month (UTC), its
        limits and what is left of its budgets."""
        key, name = ctx.api_key, ctx.api_key_id or ""
        requests, tokens = self.d.key_limits.usage(name)
        if key is None:  # a key of the config file, or none configured: no limits
            key = ApiKey(name=name, sha256="", scopes=frozenset(Scope))
        return JSONResponse({
            "object": "usage", "key": ctx.api_key_id,
            "scopes": sorted(s.value for s in key.scopes),
            "minute": {"requests": requests, "tokens": tokens, "rpm": key.rpm,
                       "tpm": key.tpm},
            **self.d.token_budgets.usage(key),
        })

    # -- completions and embeddings -----------------------------------------------------

    async def chat_completions(self, request: Request, ctx: RequestContext) -> Response:
        body = await read_body(request, self.d.settings.max_body_bytes)
        raw = schemas.decode_object(body)
        cites = self.documents.expand(ctx, raw)
        req = schemas.validate(raw, schemas.ChatCompletionRequest)
        targets = self.d.router.targets(req.model)
        messages = schemas.chat_messages(req.messages)
        sanitised = await sanitise(ctx, raw, "messages", self.d.detector, self.d.metrics,
                                   body_bytes=len(body))

        async def attempt(target: Target) -> Response:
            if isinstance(target, LocalTarget):
                return await self.local.chat(ctx, req, messages)
            return await self.relay.forward(ctx, target, sanitised, chat=True,
                                            stream=bool(req.stream))

        return cite(await self._answer(ctx, targets, attempt), cites)

    async def completions(self, request: Request, ctx: RequestContext) -> Response:
        body = await read_body(request, self.d.settings.max_body_bytes)
        raw = schemas.decode_object(body)
        req = schemas.validate(raw, schemas.CompletionRequest)
        targets = self.d.router.targets(req.model)
        sanitised: Sanitised = await sanitise(ctx, raw, "prompt", self.d.detector,
                                              self.d.metrics, body_bytes=len(body))

        async def attempt(target: Target) -> Response:
            if isinstance(target, LocalTarget):
                return await self.local.completion(ctx, req)
            return await self.relay.forward(ctx, target, sanitised, chat=False,
                                            stream=bool(req.stream))

        return await self._answer(ctx, targets, attempt)

    async def _answer(
        self, ctx: RequestContext, targets: list[Target],
        attempt: Callable[[Target], Awaitable[Response]],
    ) -> Response:
        """Serve from the first target that can (the pipeline's hand-over rule); name the
        tier (and upstream) that answered in the headers and the metrics."""
        target, response = await serve(ctx, targets, attempt, self.hand_over,
                                       local_sha256=self.d.model_file.sha256)
        response.headers["X-Slm-Tier"] = str(target.tier)
        if isinstance(target, RemoteTarget):
            response.headers["X-Slm-Upstream"] = target.upstream.name
        if response.status_code < 400:
            self.d.metrics.answered_by.labels(target.tier).inc()
        return response

    async def embeddings(self, request: Request, ctx: RequestContext) -> Response:
        body = await read_body(request, self.d.settings.max_body_bytes)
        req = schemas.validate(schemas.decode_object(body), schemas.EmbeddingRequest)
        check_model(self.d, req.model)
        return await self.local.embeddings(ctx, req)


async def _purge_documents(doorman: Doorman) -> None:
    """Forget documents as their time-to-live ends (within a quarter of it, 5 s at most),
    not only when the store is next used."""
    interval = min(5.0, doorman.settings.documents_ttl_s / 4)
    while True:
        await asyncio.sleep(interval)
        doorman.documents.purge()


def _by_method(path: str, endpoints: dict[str, Callable[[Request], Awaitable[Response]]]
               ) -> Route:
    """One route for ``path`` whose methods go to their own endpoints, so a wrong method
    gets one 405 whose ``Allow`` lists every method of the path."""
    if "GET" in endpoints:
        endpoints = {**endpoints, "HEAD": endpoints["GET"]}

    async def dispatch(request: Request) -> Response:
        return await endpoints[request.method](request)

    return Route(path, dispatch, methods=list(endpoints))


def create_app(doorman: Doorman) -> Starlette:
    """The Starlette application serving ``doorman``."""
    api = DoormanAPI(doorman)
    handlers: dict[str, Handler] = {  # operation id → handler (slm.api.openapi.OPERATIONS)
        "health": api.health, "ready": api.ready, "openapi": api.openapi,
        "metrics": api.metrics, "listModels": api.models.models, "getModel": api.models.model,
        "listAdapters": api.models.adapters, "getUsage": api.usage,
        "createChatCompletion": api.chat_completions, "createCompletion": api.completions,
        "createEmbedding": api.embeddings, "uploadDocument": api.documents.ingest,
        "listDocuments": api.documents.list, "getDocument": api.documents.get,
        "deleteDocument": api.documents.delete, "listKeys": api.keys.list,
        "createKey": api.keys.create, "revokeKey": api.keys.revoke,
    }
    by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    for op in openapi.OPERATIONS:  # the routes are the document's operations, no more
        by_path.setdefault(op.route, {})[op.method.upper()] = api.endpoint(
            op.endpoint, handlers.pop(op.operation_id), auth=op.scope is not False,
            scope=op.scope if isinstance(op.scope, Scope) else None)
    assert not handlers, f"handlers without an operation: {sorted(handlers)}"
    routes = [_by_method(path, endpoints) for path, endpoints in by_path.items()]

    async def http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return http_error_response(404, f"no route for {request.url.path}")
        if exc.status_code == 405:  # Allow: the methods the route has
            return http_error_response(405, f"method {request.method} not allowed here",
                                       headers=exc.headers)
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
