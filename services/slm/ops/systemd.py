"""systemd integration: readiness, status and watchdog notifications (``Type=notify``).

Everything here is a no-op outside systemd (no ``NOTIFY_SOCKET``). Notifications go through
``systemd-python``'s ``sd_notify``. The watchdog thread pings (``WATCHDOG=1``) at half of
``WATCHDOG_USEC`` only while the service is healthy: the event loop answers and the engine
is either idle or making progress. A hung decode or a blocked loop stops the pings, and
systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("slm.systemd")


def _sd_notify(state: str) -> bool:
    """Send one notification; False when not under systemd or the library is missing."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    try:
        from systemd import daemon
    except ImportError:  # pragma: no cover - systemd-python is a runtime dependency
        log.warning("NOTIFY_SOCKET is set but systemd-python is not installed")
        return False
    return bool(daemon.notify(state))


def notify_status(text: str) -> None:
    """``STATUS=`` line shown by ``systemctl status``."""
    _sd_notify(f"STATUS={text}")


def notify_ready(text: str) -> None:
    """``READY=1``: the model is loaded and a warm-up decode succeeded."""
    _sd_notify(f"READY=1\nSTATUS={text}")


def notify_stopping() -> None:
    """``STOPPING=1``: SIGTERM received, in-flight requests are finishing."""
    _sd_notify("STOPPING=1\nSTATUS=stopping: finishing in-flight requests")


def watchdog_interval_s() -> float | None:
    """Half of ``WATCHDOG_USEC`` when the watchdog is on for this process, else None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    # under the one-file binary, systemd's main PID is the launcher that runs us as its child
    ours = {str(os.getpid()), os.environ.get("NUITKA_ONEFILE_PARENT", "")}
    if not usec.isdigit() or int(usec) == 0 or (pid and pid not in ours):
        return None
    return int(usec) / 2_000_000


class Watchdog:
    """Pings systemd's watchdog while ``engine_stalled()`` is false and the event loop runs
    callbacks. ``engine_stalled`` is given the stall limit (the full watchdog interval)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, engine_stalled: Callable[[float], bool],
        interval_s: float,
    ) -> None:
        self._loop = loop
        self._engine_stalled = engine_stalled
        self._interval = interval_s
        self._loop_seen = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slm-watchdog", daemon=True)
        self.pings = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop_alive(self) -> None:
        self._loop_seen = time.monotonic()

    def _healthy(self) -> tuple[bool, str]:
        limit = 2 * self._interval
        if time.monotonic() - self._loop_seen > limit:
            return False, "the event loop has not run for a watchdog interval"
        if self._engine_stalled(limit):
            return False, "the engine made no progress for a watchdog interval"
        return True, ""

    def _run(self) -> None:
        reported = False
        while not self._stop.wait(self._interval):
            try:
                self._loop.call_soon_threadsafe(self._loop_alive)
            except RuntimeError:  # the loop is closed: we are exiting
                return
            healthy, why = self._healthy()
            if healthy:
                _sd_notify("WATCHDOG=1")
                self.pings += 1
                reported = False
            elif not reported:  # say it once; systemd acts when the pings stay away
                log.error("watchdog pings withheld: %s", why)
                notify_status(f"unhealthy: {why}")
                reported = True
