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
tests/actors/test_publisher_faults.py, test_publisher_candles.py, test_fleet.py,
tests/system/test_redis_faults.py): an in-memory Redis behind the real link (`MemoryRedis`,
the publish script's events, candles and ranking in Python), the MockClock jumper that
waits for worker threads (`threads_hold_clock`), the publisher's log lines
(`publisher_lines`), a `MarketData` builder and `run_publisher` in its own cancel scope
(`PublisherActor`). No processes, no sockets."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any, NamedTuple

import hiredis
import orjson
import redis
import trio
import trio.testing
from loguru import logger
from quart import typing as quart_typing

from actors.connection import run_connection
from actors.publisher import run_publisher
from actors.window import run_window
from screener.core.config import ExchangeSettings, RedisSettings
from screener.core.metrics import Metrics
from screener.core.models import (
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
from screener.core.snapshot import Latest, Views
from screener.core.supervise import Reachability
from screener.http.routes import create_app
from screener.redis.batch import is_held
from screener.redis.link import Opened, RedisLink
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
    """One write as Redis received it: when, to which targets (`mode`), the events (decoded
    back from their JSON), the ranking's document and the closed candles' documents (those
    whose keys were new: the ones published)."""

    at: float
    mode: str
    events: list[MarketData]
    ranking: dict[str, Any] | None
    candles: tuple[dict[str, Any], ...] = ()


def doc(ranking: Ranking) -> dict[str, Any]:
    """A ranking's `top_movers` document, as a `Write` holds it."""
    loaded: dict[str, Any] = orjson.loads(orjson.dumps(ranking.as_dict()))
    return loaded


def event_of(raw: bytes) -> MarketData:
    d = orjson.loads(raw)
    kline = Kline(
        symbol=d["symbol"],
        t=d["candle_ts"],
        open=d["open"],
        high=d["high"],
        low=d["low"],
        close=d["close"],
        volume=d["volume"],
        amount=d["amount"],
        ts_ms=d["ts"],
        source=d["source"],
    )
    return MarketData(kline=kline, change_pct=d["change_pct"], window_min=d["window_min"])


class MemoryRedis:
    """Redis as the publisher's link sees it, in memory (the real `RedisLink`, encoding and
    reply parsing; no socket, no thread, so MockClock's autojump is exact). `state`: "up";
    "down" (connections refused, an open link fails); "paused" (`CLIENT PAUSE WRITE`: PING
    answers, writes never do). `refuse(command)`: Redis's error words for a command, or None.
    `hold`: the next write waits for it before it is answered (`stalled` set then)."""

    def __init__(self, clock: trio.testing.MockClock) -> None:
        self.clock = clock
        self.state = "up"
        self.refuse: Callable[[list[bytes]], str | None] = lambda command: None
        self.hold: trio.Event | None = None
        self.stalled = trio.Event()
        self.pings: list[float] = []
        self.attempts: list[float] = []  # every write tried, failed ones included
        self.writes: list[Write] = []  # every write Redis received
        self.delivered: list[Write] = []  # ... and took whole
        self._sent, self.sent = trio.open_memory_channel[Write](math.inf)
        self.answers: list[tuple[Write | None, bool]] = []  # received, not yet answered
        self.scripts_loaded = True  # False: EVALSHA answers NOSCRIPT until an EVAL
        self.data: dict[bytes, bytes] = {}  # plain keys: the lease and term a fence names
        self.published: dict[bytes, dict[bytes, int]] = {}  # the newest push time per symbol
        self.candle_keys: dict[bytes, float] = {}  # a published candle's key -> its expiry
        self.fenced: list[float] = []  # writes refused for their fence
        self.held_writes: list[float] = []  # writes refused for now (OOM, READONLY, ...)

    @property
    def up(self) -> bool:
        return self.state != "down"

    @up.setter
    def up(self, value: bool) -> None:
        self.state = "up" if value else "down"

    def link(self) -> RedisLink:
        return RedisLink(self.open)

    async def open(self) -> Opened:
        await trio.lowlevel.checkpoint()
        if self.state == "down":
            self.attempts.append(self.clock.current_time())
            raise redis.ConnectionError("Connection refused")
        return Opened(_MemoryConnection(self), "memory:6379", None)

    async def ping(self) -> bool:
        await trio.lowlevel.checkpoint()
        self.pings.append(self.clock.current_time())
        if self.state == "down":
            raise redis.ConnectionError("Connection refused")
        return True

    async def answered(self) -> Write:
        """The next write Redis answered, once the publisher has accounted for its answer."""
        write = await self.sent.receive()
        await trio.testing.wait_all_tasks_blocked()
        return write

    def received(self, payload: bytes) -> bytes:
        """Redis's reply to a call of the publish script, run by `run_script`, the
        script's rules in Python (tests/system/test_publish_script.py holds the Lua to the
        same cases on a real redis-server)."""
        at = self.clock.current_time()
        self.attempts.append(at)
        reader = hiredis.Reader()
        reader.feed(payload)
        command = reader.gets()
        assert command is not False
        assert reader.gets() is False, "one call per write"
        if command[0] == b"EVALSHA" and not self.scripts_loaded:
            return b"-NOSCRIPT No matching script. Please use EVAL.\r\n"
        self.scripts_loaded = True
        # A paused Redis (CLIENT PAUSE WRITE) runs nothing: it frees a client that gives up.
        write, reply = self.run_script(at, command[3:6], command[6:], apply=self.state != "paused")
        if write is not None:
            self.writes.append(write)
        if self.state != "paused" and not reply.startswith(b"*2\r\n$4\r\nHELD"):
            # A paused Redis never answers; what it held never reaches `sent`.
            self.answers.append((write, reply.startswith(b"*6\r\n$2\r\nOK\r\n")))
        return reply

    def run_script(
        self, at: float, keys: list[bytes], argv: list[bytes], *, apply: bool = True
    ) -> tuple[Write | None, bytes]:
        """The script's answer, and the write as Redis received it (None: refused for its
        fence). `apply`: False for a Redis that receives without running (paused). Candle
        keys expire by `at`, the fake's clock."""
        lease_key, term_key, published_key = keys
        token, term, _ttl, targets, _maxlen, channel, count = argv[:7]
        if token and (self.data.get(lease_key) != token or self.data.get(term_key) != term):
            self.fenced.append(at)
            holder = self.data.get(lease_key)
            return None, _resp([b"FENCED"] + ([holder] if holder else []))
        n = int(count)
        items = [(channel, *argv[7 + 3 * k : 10 + 3 * k]) for k in range(n)]
        c = 7 + 3 * n
        candles_channel, prefix, candle_ttl, candle_count = argv[c : c + 4]
        m = int(candle_count)
        candles = [argv[c + 4 + 3 * k : c + 7 + 3 * k] for k in range(m)]
        items += [(candles_channel, symbol, t, document) for symbol, t, document in candles]
        r = c + 4 + 3 * m
        if len(argv) > r:
            items.append(tuple(argv[r : r + 4]))
        seen = self.published.setdefault(published_key, {})
        newest: dict[bytes, int] = {}
        passed: list[int] = []  # message indexes, in order
        for index, (_, field, ts, _) in enumerate(items):
            if n <= index < n + m:
                continue
            if int(ts) > newest.get(field, seen.get(field, -1)):
                newest[field] = int(ts)
                passed.append(index)
        set_refusals: list[str] = []
        new_keys: list[bytes] = []
        candles_skipped: list[int] = []
        for k, (symbol, t, _) in enumerate(candles):
            key = prefix + symbol + b":" + t
            if (why := self.refuse([b"SET", key])) is not None:
                set_refusals.append(why)
            if self.candle_keys.get(key, -math.inf) > at or key in new_keys:
                candles_skipped.append(n + k)
            else:
                new_keys.append(key)
                passed.append(n + k)
        passed.sort()
        names = [name for t, name in ((b"p", b"PUBLISH"), (b"s", b"XADD")) if t in targets]
        mode = {b"p": "pubsub", b"s": "stream", b"ps": "both"}[targets]
        events = [event_of(items[i][3]) for i in passed if i < n]
        published_candles = tuple(orjson.loads(items[i][3]) for i in passed if n <= i < n + m)
        ranking = orjson.loads(items[n + m][3]) if n + m in passed else None
        write = Write(at, mode, events, ranking, published_candles)
        refusals = [
            (i, name, why)
            for i in passed
            for name in names
            if (why := self.refuse([name, items[i][0], items[i][3]])) is not None
        ]
        held = next(
            (why for why in [*set_refusals, *(w for _, _, w in refusals)] if is_held(why)), None
        )
        if held is not None:  # Redis's memory limit (or a replica): the first write fails
            self.held_writes.append(at)
            return write, _resp([b"HELD", held.encode()])
        if apply:
            seen.update(newest)
            expiry = at + int(candle_ttl) / 1000
            self.candle_keys.update(dict.fromkeys(new_keys, expiry))
        ranking_state = 0 if len(items) == n + m else 1 if n + m in passed else 2
        published = len([i for i in passed if not n <= i < n + m])
        answer: list[bytes | int | list[int]] = [b"OK", published, n - len(events)]
        answer += [ranking_state, len(new_keys), candles_skipped]
        for i, name, why in refusals:
            answer += [i, b"p" if name == b"PUBLISH" else b"s", why.encode()]
        return write, _resp(answer)

    def replied(self) -> None:
        """The replies of the writes received so far reached the publisher."""
        for write, whole in self.answers:
            if write is None:
                continue
            if whole:
                self.delivered.append(write)
            self._sent.send_nowait(write)
        self.answers.clear()


def _resp(values: Sequence[bytes | int | Sequence[int]]) -> bytes:
    """A RESP array of bulk strings, integers and arrays of integers."""
    parts = [b"*%d\r\n" % len(values)]
    for v in values:
        if isinstance(v, int):
            parts.append(b":%d\r\n" % v)
        elif isinstance(v, bytes):
            parts.append(b"$%d\r\n%s\r\n" % (len(v), v))
        else:
            parts.append(_resp(v))
    return b"".join(parts)


class _MemoryConnection(trio.abc.Stream):
    def __init__(self, redis_: MemoryRedis) -> None:
        self.redis = redis_
        self.replies = b""
        self.hold: trio.Event | None = None
        self.paused = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if self.redis.state == "down":
            self.redis.attempts.append(self.redis.clock.current_time())
            raise redis.ConnectionError("Connection refused")
        self.hold, self.redis.hold = self.redis.hold, None
        if self.hold is not None:
            self.redis.stalled.set()
        self.paused = self.redis.state == "paused"
        self.replies += self.redis.received(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.paused:
            await trio.sleep_forever()
        if self.hold is not None:
            await self.hold.wait()
            self.hold = None
            if self.redis.state == "down":  # it went down with the write in flight
                self.redis.answers.clear()
                raise redis.ConnectionError("Connection refused")
        await trio.lowlevel.checkpoint()
        data, self.replies = self.replies, b""
        self.redis.replied()
        return data

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


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
    """`run_publisher` over a `MemoryRedis` in its own cancel scope, with the time it
    returned."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.scope = trio.CancelScope()
        self.ended = trio.Event()
        self.ended_at: float | None = None
        self.status: Latest[RedisStatus] = Latest(RedisStatus(up=True, error=None))
        self.metrics = Metrics()

    async def run(
        self, inbox: trio.MemoryReceiveChannel[PublisherInbox], fake: MemoryRedis
    ) -> None:
        with self.scope:
            await run_publisher(
                inbox,
                settings=self.settings,
                status=self.status,
                metrics=self.metrics,
                rand=lambda: 0.5,
                link=fake.link(),
                ping=fake.ping,
            )
        self.ended_at = trio.current_time()
        self.ended.set()
