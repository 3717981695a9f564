"""Admission and execution: a bounded queue in front of the one thread that owns the model.

Requests become :class:`Job` objects. ``submit`` refuses a job at once when the queue is
full (the API answers 429); the worker thread takes jobs in order, skips those cancelled or
past their deadline while they waited, and runs the rest on the engine. A job's results
flow back to its request's event loop through ``Job.events``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slm.tier_a.engine import Engine, GenerationResult, Interrupted, SamplingParams
from slm.tier_a.errors import (
    GenerationFailed,
    JobCancelled,
    JobTimedOut,
    QueueFull,
    Stopping,
    TierAError,
)

log = logging.getLogger("slm.scheduler")


@dataclass(frozen=True)
class TextEvent:
    """A piece of final (stop-checked) generated text."""

    text: str


@dataclass(frozen=True)
class DoneEvent:
    """The job finished; ``result`` is a GenerationResult or a list of embeddings."""

    result: Any


@dataclass(frozen=True)
class ErrorEvent:
    """The job failed: why it ended early (cancelled, late, stopped, llama.cpp failed) or
    what tier A refused of its input; the API edge renders it."""

    error: TierAError


Event = TextEvent | DoneEvent | ErrorEvent


@dataclass
class Job:
    """One request's work and its state: deadline, cancellation and result channel."""

    request_id: str
    deadline: float  # time.monotonic() seconds
    loop: asyncio.AbstractEventLoop
    prompt: list[int] = field(default_factory=list)
    params: SamplingParams | None = None
    embed_inputs: list[list[int]] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    aborted: TierAError | None = None  # set by the server itself, e.g. at shutdown

    def interrupted(self) -> bool:
        """True once the client went away, the deadline passed or the server aborted it."""
        return (
            self.cancel.is_set()
            or self.aborted is not None
            or time.monotonic() > self.deadline
        )

    def interruption(self) -> TierAError:
        """The error that describes why the job stopped early."""
        if self.aborted is not None:
            return self.aborted
        if self.cancel.is_set():
            return JobCancelled("the client closed the connection")
        return JobTimedOut("the request did not complete within its deadline")

    def emit(self, event: Event) -> None:
        """Hand an event to the request's event loop (called from the worker thread).

        Dropped when the loop is gone (shutdown): nobody is left to receive it.
        """
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # event loop closed
            self.cancel.set()


class Scheduler:
    """A bounded admission queue and the single worker thread that runs the engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        queue_depth: int,
        coalesce_s: float = 0.0,
        on_finished: Callable[[Job, Event], None] | None = None,
    ) -> None:
        self._engine = engine
        self._coalesce_s = coalesce_s
        self._depth = queue_depth
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._on_finished = on_finished
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slm-engine", daemon=True)
        self._avg_job_seconds = 1.0
        self.running: Job | None = None
        self.last_progress = time.monotonic()
        # A fault-injection hook for the watchdog test: the worker hangs this long inside
        # its next job, like a decode that never returns. Never set in production.
        self._test_stall_s = float(os.environ.get("SLM_TEST_STALL_WORKER_S", "0") or 0)

    def stalled(self, limit_s: float) -> bool:
        """Whether a job has been running without progress for more than ``limit_s``, or
        the worker thread died."""
        if self._thread.ident is not None and not self._thread.is_alive() \
                and not self._stop.is_set():
            return True
        return self.running is not None and time.monotonic() - self.last_progress > limit_s

    @property
    def waiting(self) -> int:
        """Jobs admitted, not started, and still wanted."""
        with self._cond:
            return sum(1 for job in self._waiting if not job.interrupted())

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def abort_all(self, reason: TierAError) -> None:
        """End every waiting and running job with ``reason`` (their clients receive it)."""
        with self._cond:
            for job in self._waiting:
                job.aborted = reason
            running = self.running
            if running is not None:
                running.aborted = reason
            self._cond.notify_all()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop taking jobs, end what waits and what runs; True once the worker ended."""
        self._stop.set()
        self.abort_all(Stopping("the server is shutting down"))
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def submit(self, job: Job) -> None:
        """Admit ``job`` or raise QueueFull (with a Retry-After estimate).

        Jobs whose clients left or whose deadline passed while waiting do not hold a place:
        they are dropped here before the queue counts as full.
        """
        if self._stop.is_set():
            raise QueueFull("the server is shutting down", retry_after_s=5)
        with self._cond:
            if len(self._waiting) >= self._depth:
                gone = [j for j in self._waiting if j.interrupted()]
                for j in gone:
                    self._waiting.remove(j)
                    self._finish(j, ErrorEvent(j.interruption()))
            if len(self._waiting) >= self._depth:
                estimate = self._avg_job_seconds * (len(self._waiting) + 1)
                raise QueueFull(
                    f"the server is busy: {self._depth} requests already wait",
                    retry_after_s=max(1, min(60, math.ceil(estimate))),
                )
            self._waiting.append(job)
            self._cond.notify()

    def _next_job(self) -> Job | None:
        with self._cond:
            while not self._waiting and not self._stop.is_set():
                self._cond.wait(timeout=0.25)
                self.last_progress = time.monotonic()
            if self._stop.is_set():
                return None
            return self._waiting.popleft()

    def _run(self) -> None:
        while (job := self._next_job()) is not None:
            self._execute(job)
        with self._cond:  # refuse what still waits
            left, self._waiting = list(self._waiting), deque()
        for job in left:
            self._finish(job, ErrorEvent(Stopping("the server is shutting down")))

    def _execute(self, job: Job) -> None:
        if job.interrupted():
            self._finish(job, ErrorEvent(job.interruption()))
            return
        job.started_at = time.monotonic()
        self.running = job
        try:
            event: Event = DoneEvent(self._work(job))
        except Interrupted:
            event = ErrorEvent(job.interruption())
        except TierAError as exc:
            event = ErrorEvent(exc)
        except Exception:  # noqa: BLE001 - the worker must survive any engine failure
            log.exception("engine failure", extra={"request_id": job.request_id})
            event = ErrorEvent(GenerationFailed("the model failed to process the request"))
        finally:
            self.running = None
            self.last_progress = time.monotonic()
            took = self.last_progress - job.started_at
            self._avg_job_seconds = 0.8 * self._avg_job_seconds + 0.2 * took
        self._finish(job, event)
        # after the answer went out: the prompt-cache snapshot of what the KV now holds
        self._engine.take_pending_snapshot()

    def _work(self, job: Job) -> GenerationResult | list[list[float]]:
        if job.embed_inputs is not None:
            out = []
            for tokens in job.embed_inputs:
                if job.interrupted():
                    raise Interrupted()
                self.last_progress = time.monotonic()
                out.append(self._engine.embed(tokens))
            return out
        assert job.params is not None

        # Text produced within one coalescing window travels as one event: fewer wake-ups
        # of the event loop and the client, which share the CPU with the decode threads.
        pending: list[str] = []
        last_emit = 0.0

        def interrupted() -> bool:
            # called between tokens and by llama.cpp's abort callback during prompt
            # decodes: proof of progress for the watchdog
            self.last_progress = time.monotonic()
            return job.interrupted()

        if self._test_stall_s:
            stall, self._test_stall_s = self._test_stall_s, 0.0
            time.sleep(stall)

        def on_text(text: str) -> None:
            nonlocal last_emit
            now = time.monotonic()
            self.last_progress = now
            pending.append(text)
            if now - last_emit >= self._coalesce_s:
                last_emit = now
                job.emit(TextEvent("".join(pending)))
                pending.clear()

        try:
            return self._engine.generate(
                job.prompt, job.params, on_text=on_text, interrupted=interrupted
            )
        finally:
            if pending:
                job.emit(TextEvent("".join(pending)))

    def _finish(self, job: Job, event: Event) -> None:
        """Account and deliver the job's last event; never lets an error kill the worker."""
        try:
            if self._on_finished:
                self._on_finished(job, event)
        except Exception:  # noqa: BLE001
            log.exception("accounting a finished job failed")
        job.emit(event)
