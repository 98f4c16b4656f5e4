"""The REST client against the simulator's real HTTP server over loopback, one scripted fault
at a time (500, 510, 429, hang, garbage, a venue refusal): real sockets prove the client and
the simulator agree on the wire; pacing and retry timing in exact virtual time are in
tests/actors/test_rest_client.py."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from devtools.simulator import FakeExchange, SimConfig
from screener.core.metrics import Metrics
from screener.mexc.client import (
    RestClient,
    RestFailed,
    fetch_klines,
    fetch_tickers,
    open_rest_client,
)
from tests.helpers import sample

T0 = 1_770_330_485.0  # a fixed simulator wall clock, mid-minute


MINUTE = int(T0) // 60 * 60


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
            assert sample(metrics, "screener_rest_request_rate_limit") == client.limiter.rate
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
