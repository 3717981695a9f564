"""Per-key token budgets: tokens per UTC calendar day and month, which outlive a restart.

The ledger is the record of what each key used: at start the budgets are seeded from its
records of the current month (:func:`slm.audit.ledger.tokens_by_key_and_day`), and from
then on every request's tokens are added as it ends, the same tokens its record carries.
A request is admitted while its key has used less than its ``tokens_per_day`` today and its
``tokens_per_month`` this month; otherwise it gets 429 ``insufficient_quota`` with the
seconds until the period ends. As with ``tpm``, tokens are charged when a request ends, so
the request that crosses a budget finishes and the next one is refused.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from slm.access.keys import ApiKey
from slm.errors import KeyBudgetExhausted


def _utc_now() -> datetime:
    return datetime.now(UTC)


def day_of(moment: datetime) -> str:
    """``2026-12-03``: the UTC day, as the ledger's ``ts`` begins."""
    return moment.strftime("%Y-%m-%d")


def month_start(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)


def next_month(moment: datetime) -> datetime:
    start = month_start(moment)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else \
        start.replace(month=start.month + 1)


@dataclasses.dataclass
class _Used:
    day: str
    month: str
    day_tokens: int = 0
    month_tokens: int = 0


class TokenBudgets:
    """What each key used today and this month, and whether it may go on."""

    def __init__(
        self, used_by_day: Mapping[str, Mapping[str, int]] | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """``used_by_day``: key name → UTC day (``YYYY-MM-DD``) → tokens, for the days of
        the current month (older days are ignored)."""
        self._clock = clock
        self._lock = threading.Lock()
        self._used: dict[str, _Used] = {}
        now = clock()
        today, month = day_of(now), day_of(now)[:7]
        for name, days in (used_by_day or {}).items():
            used = _Used(today, month)
            for day, tokens in days.items():
                if day[:7] == month:
                    used.month_tokens += tokens
                    if day == today:
                        used.day_tokens += tokens
            self._used[name] = used

    def _current(self, name: str, now: datetime) -> _Used:
        """The counts of ``name`` for the day and month of ``now`` (a new period: zero)."""
        today = day_of(now)
        used = self._used.get(name)
        if used is None:
            used = self._used[name] = _Used(today, today[:7])
        if used.month != today[:7]:
            used.month, used.month_tokens = today[:7], 0
        if used.day != today:
            used.day, used.day_tokens = today, 0
        return used

    def admit(self, key: ApiKey) -> None:
        """Raise KeyBudgetExhausted (429) when ``key`` used up its day's or month's tokens."""
        if key.tokens_per_day is None and key.tokens_per_month is None:
            return
        now = self._clock()
        with self._lock:
            used = self._current(key.name, now)
            if key.tokens_per_month is not None and used.month_tokens >= key.tokens_per_month:
                raise KeyBudgetExhausted(
                    f"key {key.name!r} used {used.month_tokens} of its {key.tokens_per_month} "
                    f"tokens this month (UTC)", retry_after_s=_seconds(next_month(now) - now))
            if key.tokens_per_day is not None and used.day_tokens >= key.tokens_per_day:
                raise KeyBudgetExhausted(
                    f"key {key.name!r} used {used.day_tokens} of its {key.tokens_per_day} "
                    f"tokens today (UTC)", retry_after_s=_seconds(next_day(now) - now))

    def charge(self, name: str, n_tokens: int) -> None:
        """Count ``n_tokens`` that a request of key ``name`` used."""
        if n_tokens > 0:
            now = self._clock()
            with self._lock:
                used = self._current(name, now)
                used.day_tokens += n_tokens
                used.month_tokens += n_tokens

    def usage(self, key: ApiKey) -> dict[str, Any]:
        """``key``'s tokens of the day and the month, its budgets, what is left, and when
        each period ends (unix seconds), for ``GET /v1/usage``."""
        now = self._clock()
        with self._lock:
            used = self._current(key.name, now)
            periods = (("day", used.day, used.day_tokens, key.tokens_per_day, next_day(now)),
                       ("month", used.month, used.month_tokens, key.tokens_per_month,
                        next_month(now)))
            return {
                period: {"period": label, "tokens": tokens, "budget": budget,
                         "remaining": None if budget is None else max(0, budget - tokens),
                         "resets_at": int(ends.timestamp())}
                for period, label, tokens, budget, ends in periods
            }


def _seconds(delta: timedelta) -> int:
    return max(1, math.ceil(delta.total_seconds()))
