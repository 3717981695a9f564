"""The request pipeline, free of HTTP: sanitise → choose targets → try them in turn under
the hand-over rule. The caller supplies how one target is attempted (tier A or a relay to
B/C) and gets back who answered and the answer; rehydration happens in the relay (only
what left the box comes back with placeholders) and the audit record in the caller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from slm.api.context import RequestContext
from slm.errors import (
    ContextLengthExceeded,
    MemoryBudgetExceeded,
    NotReady,
    QueueFull,
    RequestError,
    UpstreamError,
)
from slm.ops.metrics import Metrics
from slm.sanitise.detectors import Detector
from slm.sanitise.payload import redact_request
from slm.sanitise.vault import Vault
from slm.upstream.router import Target

log = logging.getLogger("slm.api")

T = TypeVar("T")

# Tier A failures that mean "not now" rather than "not this request": tier B may take over.
TIER_A_BUSY = (QueueFull, NotReady, MemoryBudgetExceeded)
# Bodies above this size are sanitised on a worker thread, off the event loop.
SANITISE_INLINE_BYTES = 16 * 1024


@dataclasses.dataclass(frozen=True)
class Sanitised:
    """A request body with its PII and secrets replaced by placeholders, and the vault
    that maps them back (it never leaves this request)."""

    body: dict[str, Any]
    vault: Vault


async def sanitise(
    ctx: RequestContext, raw: dict[str, Any], prompt_field: str, detector: Detector,
    metrics: Metrics, *, body_bytes: int,
) -> Sanitised:
    """Sanitise ``raw``; the context gets the sanitised prompt's hash (and text, for the
    ledger setting) and the entity types found."""
    vault = Vault(detector)
    if body_bytes > SANITISE_INLINE_BYTES:
        redacted = await asyncio.to_thread(redact_request, raw, vault)
    else:
        redacted = redact_request(raw, vault)
    prompt = redacted.get(prompt_field)
    if prompt_field == "prompt" and isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    ctx.note_prompt(prompt)
    ctx.entities = tuple(vault.entity_types)
    for kind, count in vault.counts.items():
        metrics.entities.labels(kind).inc(count)
    return Sanitised(redacted, vault)


@dataclasses.dataclass(frozen=True)
class HandOverRule:
    """When the next target may try after a failure.

    Tier A as first choice hands over on overflow (``overflow_to_b``) or when busy
    (``fallback_to_b``); an upstream, and tier A as a fallback, when the failure was not
    the request's own fault (tier A busy, an upstream error marked retryable)."""

    overflow_to_b: bool
    fallback_to_b: bool

    def allows(self, exc: RequestError, *, first: bool) -> bool:
        if first and not isinstance(exc, UpstreamError):
            return ((isinstance(exc, ContextLengthExceeded) and self.overflow_to_b)
                    or (isinstance(exc, TIER_A_BUSY) and self.fallback_to_b))
        return isinstance(exc, TIER_A_BUSY) or (
            isinstance(exc, UpstreamError) and exc.retryable)


async def serve(
    ctx: RequestContext, targets: list[Target], attempt: Callable[[Target], Awaitable[T]],
    rule: HandOverRule, *, local_sha256: str,
) -> tuple[Target, T]:
    """The first target's answer that succeeds, with that target. When every target
    fails, the first target's error is raised (naming the others') and the context names
    the first target again."""
    if not targets:
        raise ValueError("a route always has a target")
    first_error: RequestError | None = None
    for i, target in enumerate(targets):
        ctx.answering(target, local_sha256)
        try:
            return target, await attempt(target)
        except RequestError as exc:
            if first_error is None:
                first_error = exc
            else:
                first_error.message += f"; {target.label} failed too: {exc.message}"
            if not (i + 1 < len(targets) and rule.allows(exc, first=i == 0)):
                ctx.answering(targets[0], local_sha256)
                raise first_error from None
            log.info("handing over", extra={
                "request_id": ctx.request_id, "from": target.label,
                "to": targets[i + 1].label, "error": exc.code})
    raise AssertionError("unreachable: the last target raises")
