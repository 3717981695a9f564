"""The circuit breaker's state machine (closed → open → half-open → closed / open)."""

from __future__ import annotations

from slm.upstream.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_n_consecutive_failures_and_refuses_until_the_cooldown():
    clock = Clock()
    b = CircuitBreaker(3, 10.0, clock)
    b.record_failure()
    b.record_failure()
    b.record_success()  # a success resets the count
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED and b.allow()
    b.record_failure()
    assert b.state is BreakerState.OPEN and not b.allow()
    clock.now += 4
    assert b.retry_in() == 6.0 and not b.allow()


def test_half_open_lets_exactly_one_probe_through():
    clock = Clock()
    b = CircuitBreaker(1, 10.0, clock)
    b.record_failure()
    clock.now += 10
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow() and not b.allow()  # the probe, then nobody while it runs
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.allow() and b.allow()


def test_failed_probe_opens_again_and_a_lost_probe_frees_its_slot():
    clock = Clock()
    b = CircuitBreaker(5, 10.0, clock)
    for _ in range(5):
        b.record_failure()
    clock.now += 10
    assert b.allow()
    b.record_failure()  # one failure in half-open is enough
    assert b.state is BreakerState.OPEN
    clock.now += 10
    assert b.allow()  # a probe that never reports...
    clock.now += 10
    assert b.allow()  # ...does not block the breaker forever


def test_a_probe_without_verdict_releases_its_slot_at_once():
    clock = Clock()
    b = CircuitBreaker(1, 10.0, clock)
    b.record_failure()
    clock.now += 10
    assert b.allow() and not b.allow()
    b.release()  # the probe's client went away
    assert b.allow()


def test_retry_after_forms():
    import httpx
    from slm.upstream.client import retry_after_seconds

    assert retry_after_seconds(httpx.Headers({"retry-after": "1.5"})) == 1.5
    assert retry_after_seconds(httpx.Headers({"retry-after-ms": "250",
                                              "retry-after": "9"})) == 0.25
    assert retry_after_seconds(httpx.Headers({"retry-after": "soon"})) is None
    date = retry_after_seconds(httpx.Headers({"retry-after": "Sun, 06 Nov 1994 08:49:37 GMT"}))
    assert date == 0.0
