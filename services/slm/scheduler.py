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
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slm.engine import Engine, GenerationResult, Interrupted, SamplingParams
from slm.errors import Cancelled, DeadlineExceeded, InternalError, QueueFull, RequestError

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
    """The job failed; ``error`` is what the client should see."""

    error: RequestError


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

    def interrupted(self) -> bool:
        """True once the client went away or the deadline passed."""
        return self.cancel.is_set() or time.monotonic() > self.deadline

    def interruption(self) -> RequestError:
        """The error that describes why the job stopped early."""
        if self.cancel.is_set():
            return Cancelled("the client closed the connection")
        return DeadlineExceeded("the request did not complete within its deadline")

    def emit(self, event: Event) -> None:
        """Hand an event to the request's event loop (called from the worker thread)."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Scheduler:
    """A bounded admission queue and the single worker thread that runs the engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        queue_depth: int,
        on_finished: Callable[[Job, Event], None] | None = None,
    ) -> None:
        self._engine = engine
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=queue_depth)
        self._on_finished = on_finished
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slm-engine", daemon=True)
        self._avg_job_seconds = 1.0
        self.running: Job | None = None
        self.last_progress = time.monotonic()

    @property
    def waiting(self) -> int:
        """Jobs admitted but not started."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop taking jobs, cancel what waits and what runs; True once the worker ended."""
        self._stop.set()
        if self.running:
            self.running.cancel.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def submit(self, job: Job) -> None:
        """Admit ``job`` or raise QueueFull (with a Retry-After estimate)."""
        if self._stop.is_set():
            raise QueueFull("the server is shutting down", retry_after_s=5)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            estimate = self._avg_job_seconds * (self._queue.qsize() + 1)
            raise QueueFull(
                f"the server is busy: {self._queue.maxsize} requests already wait",
                retry_after_s=max(1, min(60, math.ceil(estimate))),
            ) from None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=0.25)
            except queue.Empty:
                self.last_progress = time.monotonic()
                continue
            self._execute(job)
        while True:  # refuse what still waits
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            self._finish(job, ErrorEvent(Cancelled("the server is shutting down")))

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
        except RequestError as exc:
            event = ErrorEvent(exc)
        except Exception:  # noqa: BLE001 - the worker must survive any engine failure
            log.exception("engine failure", extra={"request_id": job.request_id})
            event = ErrorEvent(InternalError("the model failed to process the request"))
        finally:
            self.running = None
            self.last_progress = time.monotonic()
            took = self.last_progress - job.started_at
            self._avg_job_seconds = 0.8 * self._avg_job_seconds + 0.2 * took
        self._finish(job, event)

    def _work(self, job: Job) -> GenerationResult | list[list[float]]:
        if job.embed_inputs is not None:
            out = []
            for tokens in job.embed_inputs:
                if job.interrupted():
                    raise Interrupted()
                out.append(self._engine.embed(tokens))
            return out
        assert job.params is not None

        def on_text(text: str) -> None:
            self.last_progress = time.monotonic()
            job.emit(TextEvent(text))

        return self._engine.generate(
            job.prompt, job.params, on_text=on_text, interrupted=job.interrupted
        )

    def _finish(self, job: Job, event: Event) -> None:
        if self._on_finished:
            self._on_finished(job, event)
        job.emit(event)
