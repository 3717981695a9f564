"""The Doorman's state: settings, the model, the engine and its scheduler, metrics.

Created by ``slm serve`` before the HTTP server starts; the model loads in the background
so that /health answers at once and /ready says 503 until a warm-up token was decoded.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from slm.access.budgets import TokenBudgets, day_of, month_start
from slm.access.keys import KeyStore
from slm.access.limits import KeyLimits
from slm.audit.ledger import Ledger, tokens_by_key_and_day
from slm.config.settings import Settings, environment_threads
from slm.documents.store import DocumentStore
from slm.errors import (
    LedgerUnavailable,
    MemoryBudgetExceeded,
    NotReady,
    SlmError,
)
from slm.model.file import ModelFile
from slm.ops.metrics import Metrics
from slm.ops.systemd import notify_status, notify_stopping
from slm.server.listeners import keys_required
from slm.tier_a.adapters import Adapter, AdapterRegistry
from slm.tier_a.engine import Engine, GenerationResult
from slm.tier_a.errors import Stopping
from slm.tier_a.prompt_cache import PromptCache
from slm.tier_a.scheduler import DoneEvent, ErrorEvent, Event, Job, Scheduler
from slm.upstream.router import Router

log = logging.getLogger("slm.service")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """This process's resident set size now."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


class Doorman:
    """Everything one running service holds, shared by the HTTP handlers."""

    def __init__(
        self, settings: Settings, model_file: ModelFile, api_keys: list[str], ledger: Ledger,
        *, n_ctx: int | None = None, adapters: tuple[Adapter, ...] = (),
        prompt_cache_bytes: int = 0,
    ) -> None:
        self.settings = settings
        self.n_ctx = n_ctx or (settings.ctx if isinstance(settings.ctx, int) else 4096)
        self.memory_budget = int(settings.memory_budget_mb * 1_000_000)
        self.model_file = model_file
        self.model_id = settings.model_id or model_file.default_id
        self.adapters = AdapterRegistry(adapters, self.model_id, model_file.sha256)
        self.prompt_cache_bytes = prompt_cache_bytes
        # (key bytes, key id): the id names a key in the ledger without revealing it
        self.api_keys = [(k.encode(), "key-" + hashlib.sha256(k.encode()).hexdigest()[:12])
                         for k in api_keys]
        self.key_store = KeyStore(Path(settings.key_store))  # named keys with scopes
        self.key_limits = KeyLimits()
        # beyond loopback, no key means nobody gets in (not: everybody does)
        self.keys_required = keys_required(settings)
        # tokens per day and month, from this month's ledger records on
        this_month = day_of(month_start(datetime.now(UTC)))
        self.token_budgets = TokenBudgets(tokens_by_key_and_day(ledger.path, this_month))
        self.ledger = ledger
        self.metrics = Metrics()
        self.metrics.memory_rss.set_function(resident_bytes)
        self.metrics.memory_budget.set(self.memory_budget)
        self.detector = settings.detector()
        self.router = Router(settings, self.model_id, self.metrics)
        self.documents = DocumentStore(settings.documents_ttl_s,
                                       settings.documents_max_stored_chars)
        self.metrics.documents.set_function(lambda: len(self.documents))
        self.engine: Engine | None = None
        self.scheduler: Scheduler | None = None
        self.load_error: SlmError | None = None
        self.ready = threading.Event()
        self.started_at = time.time()
        self._shutdown_timer: threading.Timer | None = None

    @property
    def threads(self) -> int:
        """Decode threads: the setting, or every CPU this process may use."""
        return self.settings.threads or environment_threads()

    def load(self) -> None:
        """Load the model, decode a warm-up token, start the worker; then mark ready."""
        began = time.monotonic()
        notify_status(f"loading model {self.model_file.path.name} (context {self.n_ctx})")
        try:
            engine = Engine(
                self.model_file, n_ctx=self.n_ctx, n_threads=self.threads,
                n_batch=self.settings.batch, kv_type=self.settings.kv_type,
            )
            for adapter in self.adapters.adapters:
                if adapter.usable:
                    engine.load_adapter(adapter.name, str(adapter.path), adapter.config.scale,
                                        adapter.config.sha256)
            engine.warm_up()
            engine.prompt_cache = self._prompt_cache()
        except SlmError as exc:
            self.load_error = exc
            raise
        self.engine = engine
        self.scheduler = Scheduler(
            engine, queue_depth=self.settings.queue_depth,
            coalesce_s=self.settings.stream_coalesce_ms / 1000, on_finished=self._record,
        )
        self.metrics.track_queue(
            lambda: self.scheduler.waiting if self.scheduler else 0,
            lambda: 1 if self.scheduler and self.scheduler.running else 0,
        )
        self.scheduler.start()
        self.ready.set()
        self.metrics.ready.set(1)
        log.info(
            "model ready",
            extra={
                "model_id": self.model_id, "model_sha256": self.model_file.sha256,
                "n_ctx": engine.n_ctx, "threads": self.threads,
                "load_seconds": round(time.monotonic() - began, 3),
                "embeddings": engine.info.supports_embeddings,
            },
        )

    def begin_shutdown(self) -> None:
        """Let in-flight requests run for the grace period, then end them with a 503."""
        if self._shutdown_timer is not None:
            return
        notify_stopping()
        self.ready.clear()
        self.metrics.ready.set(0)
        log.info("shutting down", extra={"grace_s": self.settings.shutdown_grace_s})

        def expire() -> None:
            if self.scheduler:
                self.scheduler.abort_all(Stopping("the server is shutting down"))

        self._shutdown_timer = threading.Timer(self.settings.shutdown_grace_s, expire)
        self._shutdown_timer.daemon = True
        self._shutdown_timer.start()

    def _prompt_cache(self) -> PromptCache | None:
        settings = self.settings
        if self.prompt_cache_bytes <= 0:
            return None
        cache = PromptCache(
            self.model_file.sha256, context=f"kv {settings.kv_type}",
            memory_bytes=self.prompt_cache_bytes,
            min_tokens=settings.prompt_cache_min_tokens,
            directory=Path(settings.prompt_cache_dir) if settings.prompt_cache_dir else None,
            disk_bytes=int(settings.prompt_cache_disk_mb * 1_000_000))
        self.metrics.prompt_cache_bytes.set_function(lambda: cache.memory_used)
        self.metrics.prompt_cache_restores.set_function(lambda: cache.hits)
        return cache

    def close(self) -> None:
        """Stop the worker, keep the prompt cache's snapshots, and free the model."""
        if self._shutdown_timer is not None:
            self._shutdown_timer.cancel()
        self.ready.clear()
        self.metrics.ready.set(0)
        stopped = self.scheduler.stop() if self.scheduler else True
        if self.engine and stopped:  # never free the model under a running decode
            if self.engine.prompt_cache is not None:
                written = self.engine.prompt_cache.persist()
                if written:
                    log.info("prompt cache: %d snapshots kept on disk", written)
            self.engine.close()

    def engine_stalled(self, limit_s: float) -> bool:
        """Whether the engine's worker has hung on a job for more than ``limit_s`` (for the
        systemd watchdog; loading is bounded by the unit's start timeout instead)."""
        return self.scheduler is not None and self.scheduler.stalled(limit_s)

    def require_ledger(self) -> Ledger:
        """The ledger, or LedgerUnavailable (503) once it could not be written."""
        if not self.ledger.writable:
            why = self.ledger.error.message if self.ledger.error else "its writer stopped"
            raise LedgerUnavailable(
                f"the audit ledger cannot be written, so no inference is served: {why}")
        return self.ledger

    def check_memory(self) -> None:
        """MemoryBudgetExceeded (503) while the process is over its memory budget."""
        rss = resident_bytes()
        if rss > self.memory_budget:
            raise MemoryBudgetExceeded(
                f"the service uses {rss / 1e6:.0f} MB, over its budget of "
                f"{self.memory_budget / 1e6:.0f} MB; retry later")

    def require_engine(self) -> tuple[Engine, Scheduler]:
        """The engine and scheduler, or NotReady (503) while loading."""
        if not self.ready.is_set() or self.engine is None or self.scheduler is None:
            raise NotReady("the model is still loading")
        return self.engine, self.scheduler

    def new_job(self, request_id: str | None = None) -> Job:
        """A job for the current request, with its deadline starting now."""
        return Job(
            request_id=request_id or uuid.uuid4().hex,
            deadline=time.monotonic() + self.settings.request_timeout_s,
            loop=asyncio.get_running_loop(),
        )

    def _record(self, job: Job, event: Event) -> None:
        """Account a finished job in the metrics (runs on the worker thread)."""
        if isinstance(event, ErrorEvent) and job.cancel.is_set():
            self.metrics.cancelled.inc()
        if isinstance(event, DoneEvent) and isinstance(event.result, GenerationResult):
            r = event.result
            m = self.metrics
            m.prompt_tokens.inc(r.prompt_tokens)
            m.completion_tokens.inc(r.completion_tokens)
            m.prompt_seconds.inc(r.prompt_seconds)
            m.generation_seconds.inc(r.generation_seconds)
            m.prompt_tps.set(r.prompt_tokens_per_second)
            m.generation_tps.set(r.generation_tokens_per_second)
            if r.first_token_seconds is not None and job.started_at is not None:
                m.ttft.observe(job.started_at - job.enqueued_at + r.first_token_seconds)
