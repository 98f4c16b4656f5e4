"""The REST client on MockClock, its HTTP side scripted with `httpx.MockTransport`: pacing,
bounded open requests, retries with exact backoff, slow-down, timeouts, refusals, counters,
and the three fetch calls decoding real-shaped answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import orjson
import pytest
import trio
import trio.testing
from loguru import logger

from screener.core.metrics import Metrics
from screener.core.models import HISTORY_SOURCE, Kline
from screener.mexc.client import (
    ATTEMPTS,
    MAX_IN_FLIGHT,
    RateLimiter,
    RestClient,
    RestFailed,
    fetch_contracts,
    fetch_klines,
    fetch_tickers,
)
from screener.mexc.rest import Contract, Tick
from tests.helpers import sample

FRAMES = Path(__file__).parent.parent / "frames"
BASE = "https://mexc.test"

Answer = Callable[[httpx.Request], Awaitable[httpx.Response]]


def body(payload: object) -> bytes:
    return orjson.dumps(payload)


def reply(status: int, content: bytes, content_type: str = "application/json") -> Answer:
    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers={"content-type": content_type})

    return answer


def ok(data: object) -> Answer:
    return reply(200, body({"success": True, "code": 0, "data": data}))


def refused(code: int, message: str, status: int = 200) -> Answer:
    """A venue-level refusal: MEXC answers HTTP 200 with `success: false`."""
    return reply(status, body({"success": False, "code": code, "message": message}))


def raising(exc_type: type[httpx.TransportError]) -> Answer:
    async def answer(request: httpx.Request) -> httpx.Response:
        raise exc_type("scripted", request=request)

    return answer


def after(seconds: float, then: Answer) -> Answer:
    async def answer(request: httpx.Request) -> httpx.Response:
        await trio.sleep(seconds)
        return await then(request)

    return answer


async def hang(request: httpx.Request) -> httpx.Response:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


# Real-shaped answers (docs/exchange.md, the simulator).
KLINE_DATA = {  # MEXC's documented sample, Min15, two rows
    "time": [1761876000, 1761876900],
    "open": [109573.9, 109006.4],
    "close": [109006.4, 109301.5],
    "high": [109628.1, 109426.2],
    "low": [108953.3, 109006.4],
    "vol": [5587051.0, 5739575.0],
    "amount": [6.106243567181e7, 6.270099147368e7],
    "realOpen": [109574.0, 109010.0],
    "realClose": [109006.4, 109301.5],
    "realHigh": [109628.1, 109426.2],
    "realLow": [108953.3, 109010.0],
}
KLINES = [
    Kline(
        symbol="BTC_USDT",
        t=1761876000,
        open=109573.9,
        high=109628.1,
        low=108953.3,
        close=109006.4,
        volume=5587051.0,
        amount=6.106243567181e7,
        ts_ms=1761876000_000,
        source=HISTORY_SOURCE,
    ),
    Kline(
        symbol="BTC_USDT",
        t=1761876900,
        open=109006.4,
        high=109426.2,
        low=109006.4,
        close=109301.5,
        volume=5739575.0,
        amount=6.270099147368e7,
        ts_ms=1761876900_000,
        source=HISTORY_SOURCE,
    ),
]
TICKER_ROWS = [
    {  # MEXC's documented sample
        "contractId": 10,
        "symbol": "BTC_USDT",
        "lastPrice": 109167.1,
        "bid1": 109167,
        "ask1": 109167.1,
        "volume24": 954830625,
        "amount24": 10374579341.00211,
        "holdVol": 381485808,
        "lower24Price": 106226,
        "high24Price": 111553.8,
        "riseFallRate": 0.014,
        "riseFallValue": 1510.6,
        "indexPrice": 109235,
        "fairPrice": 109168.9,
        "fundingRate": 0,
        "maxBidPrice": 120158.5,
        "minAskPrice": 98311.5,
        "timestamp": 1761883095759,
        "riseFallRates": {"zone": "UTC+8", "r": 0.014, "v": 1510.6, "r7": -0.0061},
        "riseFallRatesOfTimezone": [-0.0157, 0.0083, 0.014],
    },
    {  # real entry (ccxt-pro comment, 2024-09)
        "symbol": "ETH_USDT",
        "lastPrice": 2324.5,
        "riseFallRate": 0.0356,
        "fairPrice": 2324.32,
        "indexPrice": 2325.44,
        "volume24": 25868309,
        "amount24": 591752573.9792,
        "maxBidPrice": 2557.98,
        "minAskPrice": 2092.89,
        "lower24Price": 2239.39,
        "high24Price": 2332.59,
        "timestamp": 1725872514111,
    },
    {"symbol": "DEAD_USDT", "lastPrice": 0, "timestamp": 1725872514111},  # unusable: skipped
]


class Venue:
    """The HTTP side: scripted answers in order (then `then` for ever), recording when each
    request arrived and how many were open at once."""

    def __init__(self, *script: Answer, then: Answer | None = None) -> None:
        self.script = list(script)
        self.then = then if then is not None else ok(KLINE_DATA)
        self.requests: list[tuple[float, httpx.URL]] = []
        self.open = 0
        self.peak = 0

    @property
    def times(self) -> list[float]:
        return [at for at, _ in self.requests]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((trio.current_time(), request.url))
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            answer = self.script.pop(0) if self.script else self.then
            return await answer(request)
        finally:
            self.open -= 1


@asynccontextmanager
async def rest_client(
    venue: Venue, *, rate_per_s: float = 10.0, timeout_s: float = 5.0, attempts: int = ATTEMPTS
) -> AsyncIterator[tuple[RestClient, Metrics]]:
    metrics = Metrics()
    async with httpx.AsyncClient(transport=httpx.MockTransport(venue.handle)) as http:
        yield (
            RestClient(
                http,
                BASE,
                limiter=RateLimiter(rate_per_s),
                metrics=metrics,
                timeout_s=timeout_s,
                attempts=attempts,
                rand=lambda: 1.0,  # backoff at its ceiling: 0.5, 1, 2, 4, 8, 8 ... s
            ),
            metrics,
        )


def failures(metrics: Metrics) -> dict[tuple[str, str], float]:
    """Every non-zero `screener_rest_failures_total` sample, by (endpoint, reason)."""
    return {
        (s.labels["endpoint"], s.labels["reason"]): s.value
        for family in metrics.registry.collect()
        if family.name == "screener_rest_failures"
        for s in family.samples
        if s.name == "screener_rest_failures_total" and s.value
    }


def counters(metrics: Metrics, endpoint: str) -> tuple[float | None, float | None]:
    """(requests sent, calls failed) of one endpoint."""
    return (
        sample(metrics, "screener_rest_requests_total", endpoint=endpoint),
        sample(metrics, "screener_rest_errors_total", endpoint=endpoint),
    )


def rate_gauge(metrics: Metrics) -> float | None:
    return sample(metrics, "screener_rest_request_rate_limit")


async def klines(client: RestClient) -> list[Kline]:
    return await fetch_klines(client, "BTC_USDT", "Min15", 1761876000, 1761876900)


async def test_requests_are_paced_one_over_rate_apart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue(then=ok(TICKER_ROWS))
    with trio.fail_after(30):
        async with (
            rest_client(venue, rate_per_s=4.0) as (client, metrics),
            trio.open_nursery() as nursery,
        ):
            for _ in range(6):
                nursery.start_soon(fetch_tickers, client)
    assert venue.times == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    assert counters(metrics, "ticker") == (6.0, 0.0)
    assert failures(metrics) == {}


async def test_at_most_max_in_flight_requests_are_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue(then=after(10.0, ok(TICKER_ROWS)))
    done: list[float] = []

    async def call(client: RestClient) -> None:
        await fetch_tickers(client)
        done.append(trio.current_time())

    with trio.fail_after(60):
        async with (
            rest_client(venue, rate_per_s=4.0, timeout_s=20.0) as (client, metrics),
            trio.open_nursery() as nursery,
        ):
            for _ in range(2 * MAX_IN_FLIGHT):
                nursery.start_soon(call, client)
    assert MAX_IN_FLIGHT == 4
    assert venue.peak == MAX_IN_FLIGHT
    # The fifth waits for the first to finish at 10 s, not for the pacing at 1 s.
    assert venue.times == [0.0, 0.25, 0.5, 0.75, 10.0, 10.25, 10.5, 10.75]
    assert done == [10.0, 10.25, 10.5, 10.75, 20.0, 20.25, 20.5, 20.75]
    assert counters(metrics, "ticker") == (8.0, 0.0)


@pytest.mark.parametrize(
    ("answer", "reason", "rate_after"),
    [
        pytest.param(
            reply(503, b"Service Unavailable", "text/plain"), "server", 10.0, id="http-503"
        ),
        pytest.param(
            reply(429, b"Too Many Requests", "text/plain"), "rate_limited", 0.625, id="429"
        ),
        pytest.param(
            refused(510, "Excessive frequency of requests"), "rate_limited", 0.625, id="code-510"
        ),
        pytest.param(
            reply(200, (FRAMES / "error_envelope.json").read_bytes()), "server", 10.0, id="code-500"
        ),
        pytest.param(refused(9999, "public abnormal"), "server", 10.0, id="code-9999"),
        pytest.param(raising(httpx.ConnectError), "transport", 10.0, id="connect-error"),
    ],
)
async def test_passing_failures_are_retried_with_exact_backoff_then_fail(
    autojump_clock: trio.testing.MockClock, answer: Answer, reason: str, rate_after: float
) -> None:
    venue = Venue(then=answer)
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        with trio.fail_after(60):
            async with rest_client(venue, rate_per_s=10.0) as (client, metrics):
                with pytest.raises(RestFailed) as failed:
                    await klines(client)
                assert trio.current_time() == 3.5
    finally:
        logger.remove(sink)
    assert (failed.value.endpoint, failed.value.reason) == ("kline", reason)
    assert venue.times == [0.0, 0.5, 1.5, 3.5]  # backoff 0.5, 1, 2 s with rand 1.0
    assert counters(metrics, "kline") == (4.0, 1.0)
    assert failures(metrics) == {("kline", reason): 4.0}
    # Four rate-limit answers halve the rate four times: 10 / 16.
    assert rate_gauge(metrics) == rate_after
    retries = [w for w in warnings if w.startswith("REST kline failed")]
    assert len(retries) == 1  # rate-limited to one line per 10 s
    assert retries[0].startswith(f"REST kline failed ({reason}: ")
    assert retries[0].endswith("retry 1 in 0.50s")


async def test_rate_limit_answers_halve_down_to_a_sixteenth_and_backoff_caps_at_8s(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue(*[reply(429, b"", "text/plain")] * 7, then=ok(TICKER_ROWS))
    with trio.fail_after(60):
        async with rest_client(venue, rate_per_s=16.0, attempts=7) as (client, metrics):
            with pytest.raises(RestFailed):
                await fetch_tickers(client)
            assert trio.current_time() == 23.5
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(fetch_tickers, client)
    # 0.5, 1, 2, 4, 8, then capped at 8 s.
    assert venue.times[:7] == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 23.5]
    # Seven halvings stop at 16 / 16 = 1 request/s, and the pacing follows.
    assert rate_gauge(metrics) == 1.0
    assert venue.times[7:] == [24.5, 25.5, 26.5]
    assert failures(metrics) == {("ticker", "rate_limited"): 7.0}


async def test_rate_limit_slows_the_pacing_for_30s_then_full_speed_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue(refused(510, "Excessive frequency of requests"), then=ok(TICKER_ROWS))
    with trio.fail_after(60):
        async with rest_client(venue, rate_per_s=4.0) as (client, metrics):
            await fetch_tickers(client)  # 510 at 0, retried at 0.5
            assert rate_gauge(metrics) == 2.0
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(fetch_tickers, client)
            await trio.sleep_until(30.0)  # SLOW_FOR_S after the 510
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(fetch_tickers, client)
    assert venue.times == [0.0, 0.5, 1.0, 1.5, 2.0, 30.0, 30.25, 30.5]
    assert counters(metrics, "ticker") == (8.0, 0.0)
    assert failures(metrics) == {("ticker", "rate_limited"): 1.0}


async def test_rate_gauge_recovers_after_the_slow_spell(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue(reply(429, b"", "text/plain"), then=ok(TICKER_ROWS))
    with trio.fail_after(60):
        async with rest_client(venue, rate_per_s=4.0) as (client, metrics):
            await fetch_tickers(client)
            assert rate_gauge(metrics) == 2.0
            await trio.sleep_until(30.0)
            await fetch_tickers(client)
            assert client.limiter.rate == 4.0
            assert rate_gauge(metrics) == 4.0


async def test_a_hanging_request_is_cut_at_the_timeout_and_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue(hang)
    with trio.fail_after(60):
        async with rest_client(venue, timeout_s=2.0) as (client, metrics):
            assert await klines(client) == KLINES
            assert trio.current_time() == 2.5  # cut at 2, retried 0.5 s later
    assert venue.times == [0.0, 2.5]
    assert counters(metrics, "kline") == (2.0, 0.0)
    assert failures(metrics) == {("kline", "timeout"): 1.0}


async def test_a_venue_that_always_hangs_fails_the_call_after_the_last_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue(then=hang)
    with trio.fail_after(60):
        async with rest_client(venue, timeout_s=2.0) as (client, metrics):
            with pytest.raises(RestFailed) as failed:
                await klines(client)
            assert trio.current_time() == 11.5  # 4 x 2 s cut + 0.5 + 1 + 2 s backoff
    assert failed.value.reason == "timeout"
    assert venue.times == [0.0, 2.5, 5.5, 9.5]
    assert counters(metrics, "kline") == (4.0, 1.0)
    assert failures(metrics) == {("kline", "timeout"): 4.0}


@pytest.mark.parametrize(
    ("answer", "reason", "warning"),
    [
        pytest.param(
            refused(1001, "contract does not exist"),
            "envelope",
            "REST kline refused: code 1001: contract does not exist",
            id="venue-code-1001",
        ),
        pytest.param(  # the simulator's "garbage" fault: a gateway page sent as JSON
            reply(200, b"<html><body>502 Bad Gateway</body></html\x00"),
            "malformed",
            "REST kline: malformed body (json: body is not JSON)",
            id="body-not-json",
        ),
        pytest.param(
            ok([[1761876000, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]),
            "malformed",
            "REST kline: malformed data (shape: kline data is not an object)",
            id="data-of-another-shape",
        ),
        pytest.param(reply(404, b"Not Found", "text/plain"), "status", None, id="http-404"),
    ],
)
async def test_refusals_and_malformed_answers_are_not_retried(
    autojump_clock: trio.testing.MockClock, answer: Answer, reason: str, warning: str | None
) -> None:
    venue = Venue(then=answer)
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        with trio.fail_after(60):
            async with rest_client(venue) as (client, metrics):
                with pytest.raises(RestFailed) as failed:
                    await klines(client)
                assert trio.current_time() == 0.0
    finally:
        logger.remove(sink)
    assert failed.value.reason == reason
    assert venue.times == [0.0]
    assert counters(metrics, "kline") == (1.0, 1.0)
    assert failures(metrics) == {("kline", reason): 1.0}
    assert warnings == ([] if warning is None else [warning])


async def test_cancel_abandons_open_requests_and_frees_their_slots(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue(*[hang] * MAX_IN_FLIGHT, then=ok(TICKER_ROWS))
    with trio.fail_after(60):
        async with rest_client(venue, rate_per_s=4.0, timeout_s=20.0) as (client, metrics):
            with trio.move_on_after(1.0):
                async with trio.open_nursery() as nursery:
                    for _ in range(MAX_IN_FLIGHT):
                        nursery.start_soon(fetch_tickers, client)
            assert venue.open == 0
            assert await fetch_tickers(client) == {
                "BTC_USDT": Tick(price=109167.1, ts_ms=1761883095759),
                "ETH_USDT": Tick(price=2324.5, ts_ms=1725872514111),
            }
            assert trio.current_time() == 1.0
    assert venue.times == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert counters(metrics, "ticker") == (5.0, 0.0)
    assert failures(metrics) == {}


async def test_fetch_contracts_decodes_the_recorded_detail_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue(then=reply(200, (FRAMES / "contract_detail_object.json").read_bytes()))
    with trio.fail_after(10):
        async with rest_client(venue) as (client, metrics):
            rows = await fetch_contracts(client)
    assert rows == [
        Contract(
            symbol="BTC_USDT",
            quote="USDT",
            settle="USDT",
            future_type=1.0,
            state=0.0,
            hidden=False,
            opening_ms=0.0,
        )
    ]
    [(_, url)] = venue.requests
    assert str(url) == f"{BASE}/api/v1/contract/detail"
    assert counters(metrics, "contract_detail") == (1.0, 0.0)


async def test_fetch_klines_decodes_columnar_history_and_sends_the_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue(then=ok(KLINE_DATA))
    with trio.fail_after(10):
        async with rest_client(venue) as (client, _):
            assert await klines(client) == KLINES
    [(_, url)] = venue.requests
    assert url.path == "/api/v1/contract/kline/BTC_USDT"
    assert dict(url.params) == {"interval": "Min15", "start": "1761876000", "end": "1761876900"}


async def test_fetch_tickers_decodes_every_usable_row(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue(then=ok(TICKER_ROWS))
    with trio.fail_after(10):
        async with rest_client(venue) as (client, _):
            ticks = await fetch_tickers(client)
    assert ticks == {
        "BTC_USDT": Tick(price=109167.1, ts_ms=1761883095759),
        "ETH_USDT": Tick(price=2324.5, ts_ms=1725872514111),
    }
    [(_, url)] = venue.requests
    assert str(url) == f"{BASE}/api/v1/contract/ticker"
