"""The one REST client of a process: paced, bounded, retrying.

A resource, not an actor: the app opens it with `open_rest_client` and lends it to the
universe, backfill and failover actors, so all of them spend one request budget (MEXC counts
requests per client: 20 per 2 s on the kline endpoint, docs/exchange.md).

- Pacing: a token bucket (`TokenBucket`, pure) releases at most `rate_per_s` requests per
  second; code 510 or HTTP 429 halves the rate for `SLOW_FOR_S` (again on each repeat, down
  to 1/16), then it returns to full speed. At most `MAX_IN_FLIGHT` requests are open at once.
- Each attempt runs under `trio.move_on_after(timeout_s)`; httpx carries the same timeout as
  a backstop.
- Retried, with `Backoff` (full jitter): timeouts, transport errors, HTTP 5xx, 429 and code
  510. Not retried: other venue codes (logged with code and message), other HTTP statuses, and
  a body that is not the documented envelope (counted as `malformed`). After the last attempt
  the call raises `RestFailed`, which callers log and skip: nothing here may crash the service.
On cancel an open request is abandoned with its connection; nothing else needs cleaning.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, TypeVar

import httpx
import trio
from loguru import logger

from screener.core.logs import RateLimited
from screener.core.metrics import Metrics
from screener.core.models import Kline
from screener.core.supervise import Backoff
from screener.mexc.rest import (
    CONTRACT_DETAIL_PATH,
    KLINE_PATH,
    TICKER_PATH,
    Contract,
    Tick,
    VenueError,
    contracts,
    envelope_data,
    kline_rows,
    ticker_prices,
)
from screener.mexc.values import DecodeError

T = TypeVar("T")

SLOW_FOR_S = 30.0
"""How long a rate-limit answer halves the request rate."""
MIN_FACTOR = 1 / 16
"""Repeated rate-limit answers halve the rate down to this fraction of `rate_per_s`."""
MAX_IN_FLIGHT = 4
"""Open requests at most: with ~0.1-0.3 s round trips, 4 keep 10 req/s busy without a
queue of sockets forming behind a slow exchange."""
ATTEMPTS = 4
"""Tries per call; with backoff from 0.5 s the last one starts within about 3.5 s."""
RATE_LIMIT_CODES = frozenset({510})
"""Venue codes that mean "too fast" (510: "Excessive frequency of requests")."""
BUSY_CODES = frozenset({500, 501, 9999})
"""Venue codes in an HTTP 200 answer that mean a passing failure: retried like a 5xx."""


class RestFailed(Exception):
    """A REST call gave no usable data; `reason` is the metric label of the last failure."""

    def __init__(self, endpoint: str, reason: str, detail: str) -> None:
        super().__init__(f"{endpoint}: {reason}: {detail}"[:300])
        self.endpoint = endpoint
        self.reason = reason


class _Retry(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class TokenBucket:
    """Pure core of the rate limiter: `reserve(now)` books the next request slot.

    Capacity 1 by default, so requests are paced evenly `1 / rate` apart and any 2 s hold at
    most `2 x rate` of them (20 at the default 10/s); a bigger bucket would allow a burst on
    top of the venue's budget. A reservation may run the bucket negative: the debt is the
    queue of callers already booked, each told how long to wait.
    """

    base_rate: float  # requests per second at full speed
    _: KW_ONLY
    capacity: float = 1.0
    slow_for_s: float = SLOW_FOR_S
    min_factor: float = MIN_FACTOR
    tokens: float = field(init=False)
    factor: float = field(init=False, default=1.0)
    slow_until: float = field(init=False, default=-math.inf)
    updated: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.tokens = self.capacity

    @property
    def rate(self) -> float:
        return self.base_rate * self.factor

    def _refill(self, now: float) -> None:
        if self.updated is None:
            self.updated = now
            return
        if now <= self.updated:
            return
        if self.factor < 1.0 and now >= self.slow_until:
            # Earn at the slow rate until the slow spell ended, at full rate since.
            ended = max(self.updated, self.slow_until)
            self.tokens += (ended - self.updated) * self.rate
            self.factor = 1.0
            self.tokens += (now - ended) * self.rate
        else:
            self.tokens += (now - self.updated) * self.rate
        self.tokens = min(self.capacity, self.tokens)
        self.updated = now

    def reserve(self, now: float) -> float:
        """Book one request; returns the seconds to wait before sending it (0: now)."""
        self._refill(now)
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def slow_down(self, now: float) -> None:
        """A rate-limit answer: halve the rate (down to `min_factor`) for `slow_for_s`."""
        self._refill(now)
        self.factor = max(self.min_factor, self.factor / 2)
        self.slow_until = now + self.slow_for_s

    def rate_at(self, now: float) -> float:
        """The rate in force at `now` (for metrics and logs)."""
        return self.base_rate if now >= self.slow_until else self.rate


class RateLimiter:
    """The bucket on trio's clock: `wait()` returns when the caller may send."""

    def __init__(self, rate_per_s: float, *, capacity: float = 1.0) -> None:
        self.bucket = TokenBucket(rate_per_s, capacity=capacity)

    async def wait(self) -> None:
        now = trio.current_time()
        delay = self.bucket.reserve(now)
        if delay > 0:
            await trio.sleep_until(now + delay)
        else:
            await trio.lowlevel.checkpoint()

    def slow_down(self) -> None:
        self.bucket.slow_down(trio.current_time())

    @property
    def rate(self) -> float:
        return self.bucket.rate_at(trio.current_time())


@dataclass
class RestClient:
    """GET with pacing, a bounded number of open requests, retries and envelope decoding."""

    http: httpx.AsyncClient
    base: str
    _: KW_ONLY
    limiter: RateLimiter
    metrics: Metrics
    timeout_s: float
    attempts: int = ATTEMPTS
    retry_first_s: float = 0.5
    rand: Callable[[], float] = random.random
    slots: trio.CapacityLimiter = field(init=False)
    quiet: RateLimited = field(init=False)

    def __post_init__(self) -> None:
        self.slots = trio.CapacityLimiter(MAX_IN_FLIGHT)
        self.quiet = RateLimited(10.0)
        self.log = logger.bind(actor="rest")
        self.metrics.rest_rate.set(self.limiter.bucket.base_rate)

    async def get(
        self,
        endpoint: str,
        path: str,
        decode: Callable[[Any], T],
        params: dict[str, str | int] | None = None,
    ) -> T:
        """The decoded `data` of `GET base+path`, or `RestFailed` once retries are spent."""
        backoff = Backoff(first_s=self.retry_first_s, cap_s=8.0, rand=self.rand)
        for attempt in range(1, self.attempts + 1):
            try:
                return await self._once(endpoint, path, decode, params)
            except _Retry as exc:
                self._failed(endpoint, exc.reason, str(exc))
                if attempt == self.attempts:
                    self.metrics.rest_errors.labels(endpoint).inc()
                    raise RestFailed(endpoint, exc.reason, str(exc)) from None
                delay = backoff.next_delay()
                self._warn(
                    endpoint,
                    exc.reason,
                    "REST {endpoint} failed ({reason}: {detail}); retry {n} in {delay:.2f}s",
                    reason=exc.reason,
                    detail=str(exc),
                    n=attempt,
                    delay=delay,
                )
                await trio.sleep(delay)
            except RestFailed as exc:
                self.metrics.rest_errors.labels(endpoint).inc()
                self._failed(endpoint, exc.reason, str(exc))
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self,
        endpoint: str,
        path: str,
        decode: Callable[[Any], T],
        params: dict[str, str | int] | None,
    ) -> T:
        async with self.slots:
            await self.limiter.wait()
            self.metrics.rest_rate.set(self.limiter.rate)  # back to full after a slow spell
            self.metrics.rest_requests.labels(endpoint).inc()
            response: httpx.Response | None = None
            with trio.move_on_after(self.timeout_s):
                try:
                    response = await self.http.get(self.base + path, params=params)
                except httpx.TimeoutException as exc:
                    raise _Retry("timeout", type(exc).__name__) from None
                except httpx.HTTPError as exc:
                    raise _Retry("transport", f"{type(exc).__name__}: {exc}"[:200]) from None
            if response is None:
                raise _Retry("timeout", f"no answer within {self.timeout_s:g}s")
        status = response.status_code
        if status == 429:
            self._slow_down(endpoint)
            raise _Retry("rate_limited", "HTTP 429")
        if status >= 500:
            raise _Retry("server", f"HTTP {status}")
        try:
            data = envelope_data(response.content)
        except VenueError as exc:
            if exc.code in RATE_LIMIT_CODES:
                self._slow_down(endpoint)
                raise _Retry("rate_limited", str(exc)) from None
            if exc.code in BUSY_CODES:
                raise _Retry("server", str(exc)) from None
            self._warn(
                endpoint,
                "envelope",
                "REST {endpoint} refused: code {code}: {message}",
                code=exc.code,
                message=exc.message,
            )
            raise RestFailed(endpoint, "envelope", str(exc)) from None
        except DecodeError as exc:
            if status != 200:
                raise RestFailed(endpoint, "status", f"HTTP {status}") from None
            self._warn(endpoint, "malformed", "REST {endpoint}: malformed body ({why})", why=exc)
            raise RestFailed(endpoint, "malformed", str(exc)) from None
        if status != 200:
            raise RestFailed(endpoint, "status", f"HTTP {status}")
        try:
            return decode(data)
        except DecodeError as exc:
            self._warn(endpoint, "malformed", "REST {endpoint}: malformed data ({why})", why=exc)
            raise RestFailed(endpoint, "malformed", str(exc)) from None

    def _slow_down(self, endpoint: str) -> None:
        self.limiter.slow_down()
        rate = self.limiter.rate
        self.metrics.rest_rate.set(rate)
        self._warn(
            endpoint,
            "slow_down",
            "REST rate limited on {endpoint}: {rate:g} requests/s for {s:g}s",
            rate=rate,
            s=self.limiter.bucket.slow_for_s,
        )

    def _failed(self, endpoint: str, reason: str, detail: str) -> None:
        self.metrics.rest_failures.labels(endpoint, reason).inc()
        if reason not in ("envelope", "malformed"):  # those two were logged where raised
            self.log.debug(
                "REST {endpoint} {reason}: {detail}",
                endpoint=endpoint,
                reason=reason,
                detail=detail,
            )

    def _warn(self, endpoint: str, key: str, text: str, **fields: object) -> None:
        if (n := self.quiet.allow(f"{endpoint}:{key}")) is not None:
            self.log.warning(
                text + (" (+{suppressed} suppressed)" if n else ""),
                endpoint=endpoint,
                suppressed=n,
                **fields,
            )


@asynccontextmanager
async def open_rest_client(
    base: str,
    *,
    rate_per_s: float,
    timeout_s: float,
    metrics: Metrics,
    rand: Callable[[], float] = random.random,
) -> AsyncIterator[RestClient]:
    """Own the HTTP connection pool for as long as the caller runs."""
    timeout = httpx.Timeout(timeout_s)
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        yield RestClient(
            http,
            base,
            limiter=RateLimiter(rate_per_s),
            metrics=metrics,
            timeout_s=timeout_s,
            rand=rand,
        )


# --- the calls the actors make -------------------------------------------------------------


async def fetch_contracts(client: RestClient) -> list[Contract]:
    """Every listed contract (`contract/detail`), for the universe's filter."""
    return await client.get("contract_detail", CONTRACT_DETAIL_PATH, contracts)


async def fetch_klines(
    client: RestClient, symbol: str, interval: str, start_s: int, end_s: int
) -> list[Kline]:
    """History candles of `symbol` whose windows hold `start_s .. end_s` (seconds)."""
    return await client.get(
        "kline",
        KLINE_PATH.format(symbol=symbol),
        lambda data: kline_rows(data, symbol),
        {"interval": interval, "start": start_s, "end": end_s},
    )


async def fetch_tickers(client: RestClient) -> dict[str, Tick]:
    """Every contract's last price, in one call."""
    return await client.get("ticker", TICKER_PATH, ticker_prices)
