"""Per-key rate limits: requests and tokens per minute, over a sliding minute, in memory.

A request is admitted when its key has made fewer than ``rpm`` requests and used fewer than
``tpm`` tokens (prompt and completion) in the last 60 s; otherwise it gets 429 with the
seconds until the oldest counted use leaves the window. Tokens are charged when a request
ends, so one request may overshoot ``tpm``; the next waits for it. The counts restart with
the service.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from slm.access.keys import ApiKey
from slm.errors import KeyRateLimited

WINDOW_S = 60.0


class KeyLimits:
    """The sliding-minute counts of every named key."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._requests: dict[str, deque[float]] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}

    def admit(self, key: ApiKey) -> None:
        """Count a request of ``key``, or raise KeyRateLimited (429) when it is over."""
        now = self._clock()
        with self._lock:
            requests = self._requests.setdefault(key.name, deque())
            tokens = self._tokens.setdefault(key.name, deque())
            while requests and requests[0] <= now - WINDOW_S:
                requests.popleft()
            while tokens and tokens[0][0] <= now - WINDOW_S:
                tokens.popleft()
            if key.rpm is not None and len(requests) >= key.rpm:
                raise KeyRateLimited(
                    f"key {key.name!r} is over its limit of {key.rpm} requests per minute",
                    retry_after_s=self._wait(requests[0], now))
            used = sum(n for _, n in tokens)
            if key.tpm is not None and used >= key.tpm:
                raise KeyRateLimited(
                    f"key {key.name!r} used {used} of its {key.tpm} tokens per minute",
                    retry_after_s=self._wait(tokens[0][0], now))
            requests.append(now)

    def charge(self, name: str, n_tokens: int) -> None:
        """Count ``n_tokens`` that a request of key ``name`` used."""
        if n_tokens > 0:
            with self._lock:
                self._tokens.setdefault(name, deque()).append((self._clock(), n_tokens))

    def usage(self, name: str) -> tuple[int, int]:
        """Requests and tokens of key ``name`` in the last minute."""
        since = self._clock() - WINDOW_S
        with self._lock:
            requests = sum(1 for t in self._requests.get(name, ()) if t > since)
            tokens = sum(n for t, n in self._tokens.get(name, ()) if t > since)
        return requests, tokens

    @staticmethod
    def _wait(oldest: float, now: float) -> int:
        return max(1, math.ceil(oldest + WINDOW_S - now))
