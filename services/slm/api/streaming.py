"""The HTTP side of waiting: size-limited bodies, client disconnects and streamed
responses that clean up however they end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse

from slm.errors import BodyTooLarge
from slm.tier_a.scheduler import Event, Job

log = logging.getLogger("slm.api")

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected while its request waited."""


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body; BodyTooLarge (413) past ``limit`` bytes, ClientGone if it left."""
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


def disconnect_waiter(request: Request) -> Callable[[], Awaitable[None]]:
    """A function that returns once the client of ``request`` has disconnected."""

    async def wait() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return wait


async def unless_disconnected(
    client_gone: Callable[[], Awaitable[None]], work: Awaitable[T]
) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientGone.
    However this ends (also when this task itself is cancelled), ``work`` is finished
    before returning, so an upstream connection it holds is closed."""
    task = asyncio.ensure_future(work)
    disconnected = asyncio.ensure_future(client_gone())
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


async def next_event(job: Job, disconnected: asyncio.Future[None]) -> Event:
    """The job's next event, or ClientGone (and the job cancelled) if the client left."""
    getter = asyncio.ensure_future(job.events.get())
    waiting: set[asyncio.Future[Any]] = {getter, disconnected}
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if getter in done:
        return getter.result()
    getter.cancel()
    job.cancel.set()
    raise ClientGone()


class JobStreamingResponse(StreamingResponse):
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


class RelayStreamingResponse(StreamingResponse):
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
