"""The REST client: pacing in exact virtual time, and every scripted fault of the simulator
over real loopback (500, 510, 429, hang, garbage, a venue refusal)."""

from __future__ import annotations

from screener.mexc.client import (
    TokenBucket,
)


def test_bucket_paces_requests_evenly() -> None:
    bucket = TokenBucket(4.0)
    assert [bucket.reserve(0.0) for _ in range(4)] == [0.0, 0.25, 0.5, 0.75]
    # Idle time refills at most one token (capacity 1): no burst after a pause.
    assert bucket.reserve(10.0) == 0.0
    assert bucket.reserve(10.0) == 0.25


def test_bucket_capacity_allows_a_burst_then_paces() -> None:
    bucket = TokenBucket(2.0, capacity=3.0)
    assert [bucket.reserve(0.0) for _ in range(5)] == [0.0, 0.0, 0.0, 0.5, 1.0]


def test_default_rate_keeps_any_two_seconds_within_twenty_requests() -> None:
    bucket = TokenBucket(10.0)
    sends = [bucket.reserve(0.0) for _ in range(100)]
    for start in sends:
        assert sum(start <= s < start + 2.0 for s in sends) <= 20


def test_slow_down_halves_the_rate_for_a_while_then_restores_it() -> None:
    bucket = TokenBucket(4.0, slow_for_s=30.0)
    assert bucket.reserve(0.0) == 0.0
    bucket.slow_down(0.0)
    assert bucket.rate == 2.0
    assert bucket.reserve(0.0) == 0.5  # one token of debt at 2/s
    bucket.slow_down(1.0)  # a second rate-limit answer: halved again, spell restarts
    assert bucket.rate_at(1.0) == 1.0
    assert bucket.reserve(1.0) == 0.0  # the debt was paid by 0.5; one token earned since
    assert bucket.reserve(1.0) == 1.0
    assert bucket.rate_at(30.9) == 1.0
    assert bucket.rate_at(31.0) == 4.0
    assert bucket.reserve(40.0) == 0.0
    assert bucket.rate == 4.0
    assert bucket.reserve(40.0) == 0.25


def test_slow_down_has_a_floor() -> None:
    bucket = TokenBucket(16.0, min_factor=1 / 16)
    for _ in range(10):
        bucket.slow_down(0.0)
    assert bucket.rate == 1.0
