"""Per-key rates over a sliding minute, on a clock the test moves."""

from __future__ import annotations

import pytest
from slm.access.keys import ApiKey, Scope
from slm.access.limits import KeyLimits
from slm.errors import KeyRateLimited


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(rpm: int | None = None, tpm: int | None = None) -> ApiKey:
    return ApiKey(name="app", sha256="0" * 64, scopes=frozenset({Scope.INFERENCE}),
                  rpm=rpm, tpm=tpm)


def test_requests_per_minute_slide_with_the_window() -> None:
    clock = Clock()
    limits = KeyLimits(clock)
    for _ in range(3):
        limits.admit(key(rpm=3))
        clock.now += 10
    with pytest.raises(KeyRateLimited) as refused:
        limits.admit(key(rpm=3))
    assert refused.value.status == 429 and refused.value.retry_after_s == 30
    clock.now += 30  # the first request leaves the window
    limits.admit(key(rpm=3))


def test_tokens_per_minute_are_charged_when_a_request_ends() -> None:
    clock = Clock()
    limits = KeyLimits(clock)
    limits.admit(key(tpm=100))
    limits.charge("app", 120)  # one request may overshoot; the next waits
    clock.now += 15
    with pytest.raises(KeyRateLimited, match="used 120 of its 100 tokens") as refused:
        limits.admit(key(tpm=100))
    assert refused.value.retry_after_s == 45
    clock.now += 45
    limits.admit(key(tpm=100))


def test_a_key_without_limits_is_never_refused_and_keys_count_apart() -> None:
    limits = KeyLimits(Clock())
    for _ in range(1000):
        limits.admit(key())
    other = ApiKey(name="other", sha256="1" * 64, scopes=frozenset(Scope), rpm=1)
    limits.admit(other)
    limits.admit(key(rpm=1001))
