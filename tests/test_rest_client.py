"""The REST client: pacing in exact virtual time, and every scripted fault of the simulator
over real loopback (500, 510, 429, hang, garbage, a venue refusal)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from actors.mexc import DecodeError, VenueError, envelope_data, kline_rows, ticker_prices
from actors.rest_client import (
    RateLimiter,
    RestClient,
    RestFailed,
    TokenBucket,
    fetch_klines,
    fetch_tickers,
    open_rest_client,
)
from screener.metrics import Metrics
from screener.models import HISTORY_SOURCE
from screener.simulator import FakeExchange, SimConfig

T0 = 1_770_330_485.0  # a fixed simulator wall clock, mid-minute
MINUTE = int(T0) // 60 * 60


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


# --- the pure bucket ---------------------------------------------------------------------


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


# --- the limiter in virtual time ---------------------------------------------------------


async def test_limiter_releases_callers_at_exact_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter(4.0)
    sent: list[float] = []

    async def caller() -> None:
        await limiter.wait()
        sent.append(trio.current_time())

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(caller)
        assert sent == [0.0, 0.25, 0.5, 0.75, 1.0]
        limiter.slow_down()  # at t=1.0, with the bucket one token in debt until 1.25
        assert limiter.rate == 2.0
        await limiter.wait()
        assert trio.current_time() == 1.5  # the debt of 1.25 paid at 2/s, then one more
        await trio.sleep_until(31.0)
        assert limiter.rate == 4.0
        await limiter.wait()
        await limiter.wait()
        assert trio.current_time() == 31.25


# --- decoding ----------------------------------------------------------------------------


def test_envelope_and_columns_decode() -> None:
    data = envelope_data(
        b'{"success":true,"code":0,"data":{"time":[60,120],"open":[1,2],"close":[2,3],'
        b'"high":[2,3.5],"low":[1,2],"vol":[5,6],"amount":[7,8]}}'
    )
    rows = kline_rows(data, "A_USDT")
    assert [(k.t, k.open, k.close, k.high, k.ts_ms) for k in rows] == [
        (60, 1.0, 2.0, 2.0, 60_000),
        (120, 2.0, 3.0, 3.5, 120_000),
    ]
    assert {k.source for k in rows} == {HISTORY_SOURCE}
    with pytest.raises(VenueError) as refused:
        envelope_data(b'{"success":false,"code":1001,"message":"contract does not exist"}')
    assert (refused.value.code, refused.value.message) == (1001, "contract does not exist")
    with pytest.raises(DecodeError):
        envelope_data(b"<html>")
    with pytest.raises(DecodeError):
        kline_rows({"time": [60], "open": [1]}, "A_USDT")
    with pytest.raises(DecodeError):
        kline_rows(
            {c: [1, 2] for c in ("time", "open", "close", "high", "low", "vol")} | {"amount": [1]},
            "A_USDT",
        )


def test_ticker_rows_skip_junk_but_not_everything() -> None:
    ticks = ticker_prices(
        [
            {"symbol": "A_USDT", "lastPrice": 1.5, "timestamp": 1_770_000_000_000},
            {"symbol": "B_USDT", "lastPrice": "nope", "timestamp": 1},
            {"symbol": 7},
            "junk",
        ]
    )
    assert ticks == {"A_USDT": (1.5, 1_770_000_000_000)}
    with pytest.raises(DecodeError):
        ticker_prices([{"symbol": "B_USDT", "lastPrice": -1, "timestamp": 1}])


# --- against the simulator ---------------------------------------------------------------


@asynccontextmanager
async def client_for(
    symbols: int = 3, *, timeout_s: float = 2.0, rate_per_s: float = 1000.0
) -> AsyncIterator[tuple[FakeExchange, RestClient, Metrics]]:
    exchange = FakeExchange(
        SimConfig(symbols=symbols, rate_per_s=0, extra_contracts=False), clock=lambda: T0
    )
    metrics = Metrics()
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(exchange.serve)
        async with open_rest_client(
            sim.rest_url,
            rate_per_s=rate_per_s,
            timeout_s=timeout_s,
            metrics=metrics,
            rand=lambda: 0.0,  # retry at once: the schedule itself is Backoff's own test
        ) as client:
            yield exchange, client, metrics
        nursery.cancel_scope.cancel()


async def test_klines_and_tickers_from_the_simulator() -> None:
    with trio.fail_after(10):
        async with client_for() as (ex, client, metrics):
            rows = await fetch_klines(client, "BTC_USDT", "Min1", MINUTE - 14 * 60, MINUTE)
            ticks = await fetch_tickers(client)
    assert [k.t for k in rows] == list(range(MINUTE - 14 * 60, MINUTE + 1, 60))
    for earlier, later in itertools.pairwise(rows):
        assert later.open == earlier.close  # MEXC's carry-forward, kept
    assert set(ticks) == set(ex.live_symbols)
    assert ticks["BTC_USDT"].ts_ms == int(T0 * 1000)
    assert sample(metrics, "screener_rest_requests_total", endpoint="kline") == 1
    assert sample(metrics, "screener_rest_requests_total", endpoint="ticker") == 1


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("500", "server"), ("510", "rate_limited"), ("429", "rate_limited"), ("hang", "timeout")],
)
async def test_passing_faults_are_retried_then_given_up(fault: str, reason: str) -> None:
    with trio.fail_after(10):
        async with client_for(timeout_s=0.3) as (ex, client, metrics):
            ex.rest_fault = fault
            with pytest.raises(RestFailed) as failed:
                await fetch_tickers(client)
            assert failed.value.reason == reason
            assert ex.rest_requests == client.attempts == 4
            assert sample(metrics, "screener_rest_failures_total", endpoint="ticker", reason=reason)
            assert sample(metrics, "screener_rest_errors_total", endpoint="ticker") == 1
            slowed = reason == "rate_limited"
            # Four rate-limit answers: 1000/s halved four times.
            assert client.limiter.rate == (1000.0 / 16 if slowed else 1000.0)
            assert sample(metrics, "screener_rest_rate_per_s") == client.limiter.rate
            ex.rest_fault = None
            assert "BTC_USDT" in await fetch_tickers(client)  # the client carries on


async def test_a_passing_fault_then_success_returns_the_data() -> None:
    with trio.fail_after(10):
        async with client_for() as (ex, client, metrics):
            ex.rest_fault = "500"
            client.rand = lambda: 1.0
            client.retry_first_s = 0.2  # retries at most 0.2, 0.4, 0.8 s after the failures

            async def heal() -> None:
                while ex.rest_requests < 2:  # noqa: ASYNC110 - a real server, no event
                    await trio.sleep(0.01)
                ex.rest_fault = None

            async with trio.open_nursery() as nursery:
                nursery.start_soon(heal)
                ticks = await fetch_tickers(client)
    assert "BTC_USDT" in ticks
    assert sample(metrics, "screener_rest_failures_total", endpoint="ticker", reason="server") >= 2
    assert sample(metrics, "screener_rest_errors_total", endpoint="ticker") == 0


@pytest.mark.parametrize(("fault", "reason"), [("garbage", "malformed"), (None, "envelope")])
async def test_bad_answers_are_counted_and_not_retried(fault: str | None, reason: str) -> None:
    with trio.fail_after(10):
        async with client_for() as (ex, client, metrics):
            ex.rest_fault = fault
            with pytest.raises(RestFailed) as failed:
                # an unknown contract: the venue refuses with code 1001
                await fetch_klines(client, "NOPE_USDT", "Min1", MINUTE - 60, MINUTE)
            assert failed.value.reason == reason
            assert ex.rest_requests == 1
            assert sample(metrics, "screener_rest_failures_total", endpoint="kline", reason=reason)
            assert sample(metrics, "screener_rest_errors_total", endpoint="kline") == 1
