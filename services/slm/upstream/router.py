"""Which tier serves a request, and the one retry loop for tier B / C calls.

Routing is by model name: tier A's own name is served locally (with tier B behind it for
prompts that overflow tier A's context and for moments tier A cannot take work); a name an
``[[upstream]]`` lists goes to that upstream, then to its configured ``fallback`` targets.
A model name that is a URL is refused (403): upstreams come from the config, never from a
request. Retries (honouring ``Retry-After``) and the circuit breakers are applied here only;
the HTTP client makes exactly one attempt per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from typing import Any, ClassVar

import httpx

from slm.config.settings import Settings
from slm.errors import (
    ConfigError,
    NotFound,
    UpstreamError,
    UpstreamNotAllowed,
)
from slm.ops.metrics import Metrics
from slm.tiers import Tier
from slm.upstream.client import Upstream

log = logging.getLogger("slm.router")

BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 8.0


@dataclasses.dataclass(frozen=True)
class LocalTarget:
    """Tier A: this box's engine, with the model name the client asked for (the base
    model or ``<model>:<adapter>``)."""

    model: str
    tier: ClassVar[Tier] = Tier.A
    label: ClassVar[str] = "A"


@dataclasses.dataclass(frozen=True)
class RemoteTarget:
    """A tier B / C upstream, with the model name to send it."""

    upstream: Upstream
    model: str

    @property
    def tier(self) -> Tier:
        return self.upstream.tier

    @property
    def label(self) -> str:
        return self.upstream.name


Target = LocalTarget | RemoteTarget


class Router:
    """The tiers of one Doorman and the state of their upstreams."""

    def __init__(self, settings: Settings, tier_a_model: str, metrics: Metrics) -> None:
        self.settings = settings
        self.tier_a_model = tier_a_model
        self.metrics = metrics
        hosts = frozenset(u.host for u in settings.upstreams)
        self.upstreams = {u.name: Upstream(u, hosts) for u in settings.upstreams}
        self.by_model: dict[str, Upstream] = {}
        for up in self.upstreams.values():
            for model in up.config.models:
                if model == tier_a_model:
                    raise ConfigError(f"upstream {up.name!r}: model {model!r} is tier A's "
                                      "own name")
                self.by_model[model] = up
        self.tier_b = next((u for u in self.upstreams.values() if u.tier is Tier.B), None)
        self._health_task: asyncio.Task[None] | None = None
        for up in self.upstreams.values():
            def breaker_state(up: Upstream = up) -> int:
                return int(up.breaker.state)

            def healthy(up: Upstream = up) -> int:
                return 1 if up.healthy else 0

            metrics.breaker_state.labels(up.name).set_function(breaker_state)
            metrics.upstream_healthy.labels(up.name).set_function(healthy)

    # -- routing -------------------------------------------------------------------------

    def model_names(self) -> list[tuple[str, Tier]]:
        """(model name, tier) of every model clients may ask for."""
        return [(self.tier_a_model, Tier.A)] + [(m, u.tier) for m, u in self.by_model.items()]

    def targets(self, model: str) -> list[Target]:
        """The targets for ``model``, first choice first (NotFound for unknown names)."""
        if "://" in model:
            raise UpstreamNotAllowed(
                "model names select a configured upstream; URLs are not accepted")
        if model == self.tier_a_model:
            chain: list[Target] = [LocalTarget(model)]
            if self.tier_b is not None:
                chain.append(self._target(self.tier_b, None))
            return chain
        up = self.by_model.get(model)
        if up is None and model.startswith(self.tier_a_model + ":"):
            return [LocalTarget(model)]  # a LoRA adapter: only tier A can apply it
        if up is None:
            names = ", ".join(repr(m) for m, _ in self.model_names())
            raise NotFound(f"model {model!r} does not exist; this server serves {names}",
                           param="model", code="model_not_found")
        chain = [self._target(up, model)]
        for name in up.config.fallback:
            if name == Tier.A:
                chain.append(LocalTarget(self.tier_a_model))
            else:
                chain.append(self._target(self.upstreams[name], None))
        return chain

    @staticmethod
    def _target(up: Upstream, requested: str | None) -> RemoteTarget:
        model = up.config.model or requested or up.config.models[0]
        return RemoteTarget(up, model)

    # -- calls ---------------------------------------------------------------------------

    async def open(
        self, target: RemoteTarget, path: str, body: dict[str, Any], *, deadline: float,
        request_id: str, stream: bool,
    ) -> httpx.Response:
        """Call ``target``'s upstream with retries until ``deadline``; the open 2xx
        response."""
        up = target.upstream
        body = {**body, "model": target.model}
        attempt = 0
        while True:
            up.check_available()
            try:
                response = await up.open(path, body, deadline=deadline,
                                         request_id=request_id, stream=stream)
            except asyncio.CancelledError:
                up.breaker.release()  # a probe whose client left proves nothing
                raise
            except UpstreamError as exc:
                self._account(up, exc)
                attempt += 1
                wait = self._retry_wait(exc, attempt)
                if (not exc.retryable or attempt > up.config.max_retries or wait is None
                        or time.monotonic() + wait >= deadline):
                    raise
                self.metrics.upstream_retries.labels(up.name).inc()
                log.info("upstream retry", extra={
                    "request_id": request_id, "upstream": up.name, "attempt": attempt,
                    "wait_s": round(wait, 3), "error": exc.code})
                await asyncio.sleep(wait)
                continue
            up.breaker.record_success()
            self.metrics.upstream_requests.labels(up.name, "ok").inc()
            return response

    def _account(self, up: Upstream, exc: UpstreamError) -> None:
        self.metrics.upstream_requests.labels(up.name, exc.code or "error").inc()
        if not exc.upstream_fault:
            up.breaker.release()
        elif exc.retryable:
            up.breaker.record_failure()
        else:  # the upstream answered: it is alive, the request was the problem
            up.breaker.record_success()

    def _retry_wait(self, exc: UpstreamError, attempt: int) -> float | None:
        """Seconds before the next attempt: the upstream's Retry-After when it sent one
        (None when that is over ``max_retry_after_s``), else backoff with full jitter."""
        if exc.retry_after_s is not None:
            return exc.retry_after_s if exc.retry_after_s <= self.settings.max_retry_after_s \
                else None
        return random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start probing the upstreams that have a health path (in the serving loop)."""
        if any(u.config.health_path for u in self.upstreams.values()):
            self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

    async def _health_loop(self) -> None:
        probed = [u for u in self.upstreams.values() if u.config.health_path]
        while True:
            for up, outcome in zip(probed, await asyncio.gather(
                    *(u.probe() for u in probed), return_exceptions=True), strict=True):
                if isinstance(outcome, Exception):
                    log.error("health probe failed", exc_info=outcome,
                              extra={"upstream": up.name})
            await asyncio.sleep(self.settings.router_health_interval_s)

    async def aclose(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        for up in self.upstreams.values():
            await up.aclose()

