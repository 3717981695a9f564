"""A circuit breaker per upstream: closed → open after N failures in a row → half-open.

Closed lets every call through. ``failures`` consecutive failures open it: calls are refused
at once for ``cooldown_s``. Then it is half-open: exactly one probe call goes through; its
success closes the breaker, its failure opens it for another cooldown. A probe that never
reports (its client left) frees the slot after a cooldown, so the breaker cannot stick.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable


class BreakerState(enum.IntEnum):
    """The value exported on /metrics as ``slm_upstream_breaker_state``."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """Thread-safe; ``clock`` is injectable for tests of the state machine."""

    def __init__(
        self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_at: float | None = None

    @property
    def state(self) -> BreakerState:
        with self._lock:
            self._advance()
            return self._state

    def _advance(self) -> None:
        if self._state is BreakerState.OPEN and (
            self._clock() - self._opened_at >= self.cooldown_s
        ):
            self._state = BreakerState.HALF_OPEN
            self._probe_at = None

    def allow(self) -> bool:
        """Whether a call may go out now (in half-open: only the one probe)."""
        with self._lock:
            self._advance()
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN:
                return False
            now = self._clock()
            if self._probe_at is None or now - self._probe_at >= self.cooldown_s:
                self._probe_at = now
                return True
            return False

    def retry_in(self) -> float:
        """Seconds until the breaker lets a probe through (0 when it does now)."""
        with self._lock:
            if self._state is not BreakerState.OPEN:
                return 0.0
            return max(0.0, self.cooldown_s - (self._clock() - self._opened_at))

    def release(self) -> None:
        """A call ended without a verdict (cancelled, or failed on our side): in
        half-open, free the probe slot for the next caller."""
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._probe_at = None

    def record_success(self) -> None:
        with self._lock:
            self._state = BreakerState.CLOSED
            self._consecutive = 0
            self._probe_at = None

    def record_failure(self) -> None:
        with self._lock:
            self._consecutive += 1
            if self._state is BreakerState.HALF_OPEN or self._consecutive >= self.failures:
                self._state = BreakerState.OPEN
                self._opened_at = self._clock()
                self._probe_at = None
