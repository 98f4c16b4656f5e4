"""Helpers shared by actor tests.

The HTTP tests (test_health_semantics.py, test_http_routes.py): `tracking`, views as after
the universe's first read; `client_for`, a test client of the app over them; `get`, a
route's status and JSON body.

`start_window`: the window actor started in a nursery (test_backfill.py,
test_health_semantics.py, test_health_timing.py, test_window_actor.py,
test_failover_actor.py).

The connection tests (test_connection.py, test_connection_frames.py,
test_connection_recovery.py): `start_connection`, one connection actor started over
`MemoryExchange`.

The publisher tests (tests/actors/test_publisher.py,
tests/actors/test_publisher_faults.py, tests/system/test_redis_faults.py): the MockClock jumper
that waits for worker threads (`threads_hold_clock`), the publisher's log lines
(`publisher_lines`), their fake Redis (`FakeRedis`, the writes it saw as `Write`), a
`MarketData` builder and `run_publisher` in its own cancel scope
(`PublisherActor`). No processes, no sockets."""

from __future__ import annotations

import math
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any, NamedTuple, Protocol

import redis
import trio
import trio.testing
from loguru import logger
from quart import typing as quart_typing

from actors.connection import run_connection
from actors.publisher import run_publisher
from actors.window import run_window
from screener.config import ExchangeSettings, RedisSettings
from screener.http import create_app
from screener.metrics import Metrics
from screener.models import (
    ConnStatus,
    FeedStatus,
    Kline,
    MarketData,
    PublisherInbox,
    Ranking,
    RedisStatus,
    UniverseStatus,
    WindowInbox,
)
from screener.redis_batch import BatchResult
from screener.snapshot import Latest, Views
from screener.supervise import Reachability
from tests.actors.memory_exchange import MemoryExchange

M = 1_770_330_480  # a minute boundary, unix seconds


def tracking(symbols: int = 3) -> Views:
    """Views as after the universe's first successful read: no feed is fresh while no symbol
    is tracked."""
    views = Views.empty()
    views.universe.set(UniverseStatus(symbols=symbols, chunks=1, error=None))
    return views


def client_for(
    views: Views,
    stale_after_s: float = 60.0,
    *,
    rest_mode: bool = False,
    metrics: Metrics | None = None,
) -> quart_typing.TestClientProtocol:
    app = create_app(views, metrics or Metrics(), stale_after_s=stale_after_s, rest_mode=rest_mode)
    return app.test_client()


async def get(client: quart_typing.TestClientProtocol, path: str) -> tuple[int, Any]:
    response = await client.get(path)
    return response.status_code, await response.get_json()


async def start_window(
    nursery: trio.Nursery,
    inbox: trio.MemoryReceiveChannel[WindowInbox],
    outbox: trio.MemorySendChannel[list[MarketData]],
    *,
    lookback_min: int,
    feed: Latest[FeedStatus],
    metrics: Metrics | None = None,
    batch_wait_s: float = 0.0,
) -> None:
    """Start `run_window` in `nursery` (with its own `Metrics` unless given one)."""
    await nursery.start(
        partial(
            run_window,
            inbox,
            outbox,
            lookback_min=lookback_min,
            feed=feed,
            metrics=Metrics() if metrics is None else metrics,
            batch_wait_s=batch_wait_s,
        )
    )


async def start_connection(
    nursery: trio.Nursery,
    exchange: MemoryExchange,
    symbols: frozenset[str],
    *,
    settings: ExchangeSettings,
    metrics: Metrics,
    rand: float = 0.5,
    conn_id: int = 7,
    outbox: int = 100,
    reachability: Reachability | None = None,
) -> tuple[trio.MemorySendChannel[frozenset[str]], trio.MemoryReceiveChannel[WindowInbox]]:
    """Start one connection actor for `symbols`; returns its control channel and its outbox
    once the initial "down" (the chunk counted at once, for /health) is taken from it."""
    control_send, control_recv = trio.open_memory_channel[frozenset[str]](4)
    out_send, out_recv = trio.open_memory_channel[WindowInbox](outbox)
    control_send.send_nowait(symbols)
    await nursery.start(
        partial(
            run_connection,
            control_recv,
            out_send,
            conn_id=conn_id,
            settings=settings,
            metrics=metrics,
            rand=lambda: rand,
            connect=exchange.connect,
            reachability=reachability,
        )
    )
    assert out_recv.receive_nowait() == ConnStatus(conn_id, up=False)
    return control_send, out_recv


class Writes(Protocol):
    """A fake Redis: its `write` stands in for `publish_batch`."""

    def write(
        self,
        client: Any,
        settings: RedisSettings,
        events: list[MarketData],
        ranking: Ranking | None,
    ) -> BatchResult: ...


def market_data(
    symbol: str, close: float, ts_ms: int, *, t: int = M, volume: float = 10.0, window_min: int = 15
) -> MarketData:
    """An event for `symbol` in the candle opening at `t`: open 1.0, closing at `close`,
    `amount` = volume * close, `change_pct` from the open."""
    return MarketData(
        kline=Kline(
            symbol=symbol,
            t=t,
            open=1.0,
            high=max(1.0, close),
            low=min(1.0, close),
            close=close,
            volume=volume,
            amount=volume * close,
            ts_ms=ts_ms,
        ),
        change_pct=(close - 1.0) * 100,
        window_min=window_min,
    )


class Write(NamedTuple):
    """One write the fake Redis saw: its virtual time, the publish mode, what it carried."""

    at: float
    mode: str
    events: list[MarketData]
    ranking: Ranking | None


Respond = Callable[[RedisSettings, list[MarketData], Ranking | None], BatchResult]


def accept(
    settings: RedisSettings, events: list[MarketData], ranking: Ranking | None
) -> BatchResult:
    return BatchResult(unencodable=0, refused=0, refusal=None)


class FakeRedis:
    """Redis as the publisher sees it: `write` stands in for `publish_batch`, `ping` for the
    client's. Both run in worker threads (see `threads_hold_clock`); the virtual time of each
    call is recorded.

    `link`: "up"; "down" (connections refused); "paused" (`CLIENT PAUSE WRITE`: PING answers,
    every write times out). `respond`: what Redis answers to a write while up. `hold`: the
    next write waits for it (Redis stalls), `stalled` set once it does."""

    def __init__(self, clock: trio.testing.MockClock) -> None:
        self.clock = clock
        self.link = "up"
        self.respond: Respond = accept
        self.hold: threading.Event | None = None
        self.stalled = threading.Event()
        self.pings: list[float] = []
        self.writes: list[Write] = []  # every attempt, failed ones included
        self.delivered: list[Write] = []  # the writes Redis took whole (nothing held)
        # Every write Redis answered, whatever the answer, in order (see `answered`).
        self._sent, self.sent = trio.open_memory_channel[Write](math.inf)

    def write(
        self,
        client: redis.Redis,
        settings: RedisSettings,
        events: list[MarketData],
        ranking: Ranking | None,
    ) -> BatchResult:
        # The clock is frozen while a thread runs (see threads_hold_clock).
        attempt = Write(self.clock.current_time(), settings.mode, list(events), ranking)
        self.writes.append(attempt)
        self.wait_if_held()
        if self.link == "down":
            raise redis.ConnectionError("Connection refused")
        if self.link == "paused":
            raise redis.TimeoutError("Timeout reading from socket")
        trio.from_thread.run_sync(self._sent.send_nowait, attempt)
        result = self.respond(settings, events, ranking)
        if not result.held:
            self.delivered.append(attempt)
        return result

    def wait_if_held(self) -> None:
        """In a write: wait for `hold` if one is set (it serves one write)."""
        hold, self.hold = self.hold, None
        if hold is not None:
            self.stalled.set()
            if not hold.wait(timeout=30):
                raise AssertionError("the stalled write was never released")

    def ping(self) -> bool:
        self.pings.append(self.clock.current_time())
        if self.link == "down":
            raise redis.ConnectionError("Connection refused")
        return True

    async def answered(self) -> Write:
        """The next write Redis answered, once the publisher has accounted for its answer."""
        write = await self.sent.receive()
        await trio.testing.wait_all_threads_completed()
        return write


@asynccontextmanager
async def threads_hold_clock(clock: trio.testing.MockClock) -> AsyncIterator[None]:
    """Autojump, except while a worker thread runs.

    MockClock's own autojump sees a task waiting for `trio.to_thread` as idle and jumps to the
    next deadline before the thread is done (then even `fail_after` fires). This jumper
    waits for threads to finish first, so a write takes no virtual time, as an instant Redis.
    """

    async def jumper() -> None:
        while True:
            # A real-time cushion above 0, so a test's own wait_all_tasks_blocked() wakes
            # first and sees the virtual time it expects.
            await trio.testing.wait_all_tasks_blocked(cushion=0.0001)
            if trio.testing.active_thread_count():
                await trio.testing.wait_all_threads_completed()
                continue
            gap = trio.lowlevel.current_statistics().seconds_to_next_deadline
            if 0 < gap < math.inf:
                clock.jump(gap)

    clock.autojump_threshold = math.inf
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(jumper)
            yield
            nursery.cancel_scope.cancel()
    finally:
        clock.autojump_threshold = 0


@contextmanager
def publisher_lines() -> Iterator[list[tuple[str, str]]]:
    """The publisher's log lines as (level, message)."""
    lines: list[tuple[str, str]] = []

    def sink(message: Any) -> None:
        record = message.record
        if record["extra"].get("actor") == "publisher":
            lines.append((record["level"].name, record["message"]))

    sink_id = logger.add(sink, level="DEBUG", format="{message}")
    try:
        yield lines
    finally:
        logger.remove(sink_id)


class PublisherActor:
    """`run_publisher` in its own cancel scope, with the time it returned. Redis starts up,
    so the real client `run_publisher` makes is never used (no PING, no socket)."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.scope = trio.CancelScope()
        self.ended = trio.Event()
        self.ended_at: float | None = None
        self.status: Latest[RedisStatus] = Latest(RedisStatus(up=True, error=None))
        self.metrics = Metrics()

    async def run(self, inbox: trio.MemoryReceiveChannel[PublisherInbox], fake: Writes) -> None:
        with self.scope:
            await run_publisher(
                inbox,
                settings=self.settings,
                status=self.status,
                metrics=self.metrics,
                rand=lambda: 0.5,
                write=fake.write,
                writer_thread=False,  # trio.testing must see the thread (threads_hold_clock)
            )
        self.ended_at = trio.current_time()
        self.ended.set()
