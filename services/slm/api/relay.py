"""Tiers B and C: the sanitised request forwarded to an upstream, its answer rehydrated.

Non-streamed answers come back whole; a stream is passed through one chunk out per chunk
in. The upstream's first event is read before our status line, so a failure there can
still hand over to the next target.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.responses import JSONResponse, Response

from slm.api.audit import Auditor
from slm.api.context import RequestContext, log_request
from slm.api.pipeline import Sanitised
from slm.api.replies import SSE_DONE, SSE_HEADERS, error_event, error_text, sse
from slm.api.streaming import RelayStreamingResponse, unless_disconnected
from slm.errors import LedgerUnavailable, UpstreamError
from slm.sanitise.payload import StreamedResponseRehydrator, rehydrate_response
from slm.sanitise.vault import Vault
from slm.upstream.router import RemoteTarget, Router

log = logging.getLogger("slm.api")


def note_usage(ctx: RequestContext, obj: dict[str, Any]) -> None:
    """Take the token counts and finish reason an upstream reported."""
    usage = obj.get("usage")
    if isinstance(usage, dict):
        ctx.prompt_tokens = usage.get("prompt_tokens")
        ctx.completion_tokens = usage.get("completion_tokens")
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        if reason is not None:
            ctx.finish_reason = reason


class Relay:
    """Forwards requests to the upstreams of one router."""

    def __init__(self, router: Router, auditor: Auditor) -> None:
        self.router = router
        self.auditor = auditor

    async def forward(
        self, ctx: RequestContext, target: RemoteTarget, sanitised: Sanitised,
        *, chat: bool, stream: bool,
    ) -> Response:
        """Forward the sanitised request to ``target``; rehydrate its answer."""
        up = target.upstream
        deadline = min(ctx.deadline, time.monotonic() + up.config.total_timeout_s)
        path = "/chat/completions" if chat else "/completions"
        opened = await unless_disconnected(ctx.client_gone, self.router.open(
            target, path, sanitised.body, deadline=deadline, request_id=ctx.request_id,
            stream=stream))
        if not stream:
            obj = await unless_disconnected(ctx.client_gone,
                                            up.read_json(opened, deadline=deadline))
            if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
                raise UpstreamError(
                    f"upstream {up.name!r} answered 200 without choices: "
                    f"{error_text(obj)}", retryable=False)
            note_usage(ctx, obj)
            return JSONResponse(rehydrate_response(obj, sanitised.vault))
        events = up.events(opened, deadline=deadline)
        try:  # the first event before the status line: a failure can still fall back
            first = await unless_disconnected(ctx.client_gone, anext(events))
            if "error" in first and not first.get("choices"):
                raise UpstreamError(f"upstream {up.name!r} answered with an error event: "
                                    f"{error_text(first)}", retryable=False)
        except StopAsyncIteration:
            raise UpstreamError(f"upstream {up.name!r} ended its stream at once") from None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await events.aclose()
            raise
        ctx.streaming = True

        async def cleanup() -> None:
            await events.aclose()
            self.auditor.client_gone(ctx)

        return RelayStreamingResponse(
            cleanup, self._pass_through(ctx, events, first, sanitised.vault, chat=chat),
            media_type="text/event-stream", headers=SSE_HEADERS,
        )

    async def _pass_through(
        self, ctx: RequestContext, events: AsyncIterator[dict[str, Any]],
        first: dict[str, Any], vault: Vault, *, chat: bool,
    ) -> AsyncIterator[bytes]:
        """Pass an upstream's stream through, one chunk out per chunk in, rehydrated."""
        rehydrator = StreamedResponseRehydrator(vault, chat=chat)
        ended = False
        obj: dict[str, Any] | None = first
        try:
            try:
                while obj is not None:
                    if "error" in obj and not obj.get("choices"):
                        raise UpstreamError(f"upstream failed mid-stream: {error_text(obj)}")
                    note_usage(ctx, obj)
                    yield sse(rehydrator.chunk(obj))
                    obj = await anext(events, None)
            except Exception as exc:  # noqa: BLE001 - the client gets an error event
                if not isinstance(exc, UpstreamError):
                    log.exception("relay failed", extra={"request_id": ctx.request_id})
                    exc = UpstreamError("the upstream's stream could not be relayed")
                ctx.extra_log["error"] = exc.code
                self.auditor.commit_nowait(ctx, exc.status, exc.code)
                ended = True
                yield error_event(exc, vault.rehydrate(exc.message))
                return
            leftovers = rehydrator.leftovers()  # the stream ended without a finish_reason
            if leftovers:
                yield sse({"object": "chat.completion.chunk" if chat else "text_completion",
                           "choices": leftovers})
            try:  # [DONE] acknowledges the answer: only once its record is durable
                await self.auditor.commit(ctx, 200)
            except LedgerUnavailable as exc:
                ended = True
                yield error_event(exc)
                return
            ended = True
            yield SSE_DONE
        finally:
            if not ended:
                ctx.extra_log["cancelled"] = True
                self.auditor.client_gone(ctx)
            with anyio.CancelScope(shield=True):
                await events.aclose()  # type: ignore[attr-defined]
            log_request(ctx, 200)
