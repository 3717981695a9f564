"""Token budgets per UTC day and month, on a clock the test moves, seeded as the ledger
would seed them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from slm.access.budgets import TokenBudgets, next_month
from slm.access.keys import ApiKey, Scope
from slm.errors import KeyBudgetExhausted


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def key(per_day: int | None = None, per_month: int | None = None) -> ApiKey:
    return ApiKey(name="app", sha256="0" * 64, scopes=frozenset({Scope.INFERENCE}),
                  tokens_per_day=per_day, tokens_per_month=per_month)


def test_a_day_budget_refuses_until_the_next_utc_day() -> None:
    clock = Clock(datetime(2026, 12, 3, 23, 0, tzinfo=UTC))
    budgets = TokenBudgets(clock=clock)
    budgets.admit(key(per_day=100))
    budgets.charge("app", 60)
    budgets.admit(key(per_day=100))  # 60 < 100: the request that crosses it may run
    budgets.charge("app", 60)
    with pytest.raises(KeyBudgetExhausted) as refused:
        budgets.admit(key(per_day=100))
    assert refused.value.status == 429 and refused.value.code == "insufficient_quota"
    assert refused.value.retry_after_s == 3600  # until midnight UTC
    assert "120 of its 100 tokens today" in refused.value.message
    clock.now += timedelta(hours=1, seconds=1)
    budgets.admit(key(per_day=100))  # a new day
    assert budgets.usage(key(per_day=100))["day"]["tokens"] == 0
    assert budgets.usage(key(per_day=100))["month"]["tokens"] == 120


def test_a_month_budget_counts_every_day_of_the_month_and_resets_with_it() -> None:
    clock = Clock(datetime(2026, 12, 31, 12, 0, tzinfo=UTC))
    seeded = {"app": {"2026-12-01": 500, "2026-12-31": 400, "2026-11-30": 10_000},
              "other": {"2026-12-31": 5}}
    budgets = TokenBudgets(seeded, clock=clock)
    usage = budgets.usage(key(per_day=1000, per_month=1000))
    assert usage["day"] | {"resets_at": 0} == {
        "period": "2026-12-31", "tokens": 400, "budget": 1000, "remaining": 600,
        "resets_at": 0}
    assert usage["month"]["tokens"] == 900  # November's 10,000 are not this month's
    assert usage["month"]["resets_at"] == int(datetime(2027, 1, 1, tzinfo=UTC).timestamp())
    budgets.charge("app", 100)
    with pytest.raises(KeyBudgetExhausted) as refused:
        budgets.admit(key(per_day=10_000, per_month=1000))
    assert "this month" in refused.value.message
    assert refused.value.retry_after_s == 12 * 3600
    clock.now = datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)
    budgets.admit(key(per_day=10_000, per_month=1000))
    assert budgets.usage(key())["month"] == {
        "period": "2027-01", "tokens": 0, "budget": None, "remaining": None,
        "resets_at": int(datetime(2027, 2, 1, tzinfo=UTC).timestamp())}


def test_a_key_without_budgets_is_never_refused() -> None:
    budgets = TokenBudgets()
    budgets.charge("app", 10**9)
    budgets.admit(key())


def test_next_month_rolls_over_the_year() -> None:
    assert next_month(datetime(2026, 12, 15, 8, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)
    assert next_month(datetime(2026, 2, 28, tzinfo=UTC)) == datetime(2026, 3, 1, tzinfo=UTC)
