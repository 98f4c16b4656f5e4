"""Publisher actor: the one place that talks to Redis.

Input: batches of `MarketData` (from the window actor) and `Ranking`s (from the ranking
actor), fanned in on one channel. A collector task moves them at once into a bounded
`PublishBuffer`, so ingest never waits for Redis; a flusher task sends everything pending
as one pipeline per batch through `trio.to_thread.run_sync` (redis-py is synchronous), one
thread call in flight. When Redis fails: one warning, `status` down, retry with backoff,
and the buffer keeps at most `capacity` events by keeping only the newest per symbol,
counting what it dropped. On cancel, what is pending is flushed under a shielded deadline.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import NamedTuple

import orjson
import redis
import trio
from loguru import logger
from redis.backoff import NoBackoff
from redis.retry import Retry

from screener.config import RedisSettings
from screener.logs import RateLimited
from screener.metrics import Metrics
from screener.models import MarketData, Ranking, RedisStatus
from screener.snapshot import Latest
from screener.supervise import Backoff, failure_text

PublisherInbox = list[MarketData] | Ranking
FINAL_FLUSH_S = 2.0
REDIS_TIMEOUT_S = 2.0
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, OSError)


class PublishBuffer:
    """Pending events in arrival order, bounded by coalescing to the newest per symbol."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.events: list[MarketData] = []
        self.ranking: Ranking | None = None  # only the newest ranking is worth sending

    def __len__(self) -> int:
        return len(self.events) + (self.ranking is not None)

    def add(self, events: list[MarketData]) -> int:
        """Append; returns how many events were dropped to stay within capacity."""
        self.events.extend(events)
        if len(self.events) <= self.capacity:
            return 0
        before = len(self.events)
        newest = {ev.kline.symbol: ev for ev in self.events}
        kept = [ev for ev in self.events if newest[ev.kline.symbol] is ev]
        if len(kept) > self.capacity:  # more symbols than room: the oldest go
            kept = kept[-self.capacity :]
        self.events = kept
        return before - len(kept)

    def take(self) -> tuple[list[MarketData], Ranking | None]:
        events, ranking = self.events, self.ranking
        self.events, self.ranking = [], None
        return events, ranking

    def put_back(self, events: list[MarketData], ranking: Ranking | None) -> int:
        """Return a failed batch to the front; newer arrivals stay behind it."""
        if ranking is not None and self.ranking is None:
            self.ranking = ranking
        newer = self.events
        self.events = []
        return self.add(events + newer)


def make_client(settings: RedisSettings) -> redis.Redis:
    # Our own backoff does the retrying (and says so once); redis-py's silent internal
    # retries would only delay the first warning. RESP2 keeps auth errors plain.
    if settings.url:
        return redis.Redis.from_url(
            settings.url,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
            protocol=2,
        )
    return redis.Redis(
        host=settings.host,
        port=settings.port,
        password=settings.password or None,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        protocol=2,
    )


def encode_event(event: MarketData) -> bytes:
    return orjson.dumps(event.as_dict())


class BatchResult(NamedTuple):
    unencodable: int
    refused: int
    refusal: str | None  # the first refusal's text, for the log


def _resp(*parts: bytes) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def packed_commands(settings: RedisSettings, messages: list[tuple[str, bytes]]) -> list[bytes]:
    """PUBLISH (and XADD) commands for a batch, packed here rather than by redis-py's
    general-purpose packer, which cost a tenth of the service's CPU under load."""
    commands: list[bytes] = []
    if settings.to_pubsub:
        heads: dict[str, bytes] = {}
        for channel, payload in messages:
            head = heads.get(channel)
            if head is None:
                name = channel.encode()
                head = heads[channel] = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n" % (len(name), name)
            commands.append(b"%s$%d\r\n%s\r\n" % (head, len(payload), payload))
    if settings.to_stream:
        cap = b"%d" % settings.stream_maxlen
        for channel, payload in messages:
            commands.append(
                _resp(b"XADD", channel.encode(), b"MAXLEN", b"~", cap, b"*", b"data", payload)
            )
    return commands


def publish_batch(
    client: redis.Redis,
    settings: RedisSettings,
    events: list[MarketData],
    ranking: Ranking | None,
) -> BatchResult:
    """Runs in a worker thread: serialize and send the whole batch in one round trip.

    Events that cannot be serialized and commands Redis refuses are counted and skipped:
    one bad record must not block, or crash, the rest."""
    messages: list[tuple[str, bytes]] = []
    unencodable = 0
    channel = settings.market_data_channel
    for event in events:
        try:
            messages.append((channel, encode_event(event)))
        except orjson.JSONEncodeError:
            unencodable += 1
    if ranking is not None:
        messages.append((settings.top_movers_channel, orjson.dumps(ranking.as_dict())))
    commands = packed_commands(settings, messages)
    if not commands:
        return BatchResult(unencodable, 0, None)
    pool = client.connection_pool
    conn = pool.get_connection()
    refused: list[str] = []
    try:
        conn.send_packed_command([b"".join(commands)])  # type: ignore[no-untyped-call]
        for _ in commands:
            try:
                conn.read_response()
            except redis.ResponseError as exc:  # one command refused (e.g. WRONGTYPE), not
                refused.append(str(exc))  # the link: retrying it would loop forever
    except BaseException:
        conn.disconnect()  # type: ignore[no-untyped-call]  # a half-read reply stream is useless
        raise
    finally:
        pool.release(conn)
    return BatchResult(unencodable, len(refused), refused[0] if refused else None)


async def run_publisher(
    inbox: trio.MemoryReceiveChannel[PublisherInbox],
    *,
    settings: RedisSettings,
    status: Latest[RedisStatus],
    metrics: Metrics,
    rand: Callable[[], float] = random.random,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    log = logger.bind(actor="publisher")
    buffer = PublishBuffer(settings.buffer)
    wake = trio.Event()
    backoff = Backoff(first_s=0.5, cap_s=30.0, rand=rand)

    def dropped(n: int) -> None:
        if n:
            metrics.dropped.inc(n)

    closed = False
    quiet = RateLimited(10.0)
    peak = 0
    peak_gauge = metrics.queue_peak.labels("publish_buffer")

    async def collect() -> None:
        nonlocal closed, peak
        async with inbox:
            async for item in inbox:
                if type(item) is Ranking:
                    buffer.ranking = item
                else:
                    dropped(buffer.add(item))  # type: ignore[arg-type]
                backlog = len(buffer.events)
                metrics.publish_backlog.set(backlog)
                if backlog > peak:
                    peak = backlog
                    peak_gauge.set(peak)
                wake.set()
        closed = True
        wake.set()

    def went_down(exc: BaseException) -> float:
        reason = failure_text(exc)
        if status.value.up or status.value.error is None:
            log.warning(
                "redis unavailable at {target} ({reason}); buffering, newest event per symbol kept",
                target=settings.safe_target(),
                reason=reason,
            )
        status.set(RedisStatus(up=False, error=reason))
        metrics.redis_up.set(0)
        return backoff.next_delay()

    async def flush_forever(client: redis.Redis) -> None:
        nonlocal wake
        while True:
            if not status.value.up:
                try:
                    await trio.to_thread.run_sync(client.ping, abandon_on_cancel=True)
                except REDIS_ERRORS as exc:
                    await trio.sleep(went_down(exc))
                    continue
                log.info("redis up at {target}", target=settings.safe_target())
                status.set(RedisStatus(up=True, error=None))
                metrics.redis_up.set(1)
                backoff.reset()
            if not len(buffer):
                if closed:
                    return
                await wake.wait()
                wake = trio.Event()
                continue
            events, ranking = buffer.take()
            try:
                result = await trio.to_thread.run_sync(
                    publish_batch, client, settings, events, ranking, abandon_on_cancel=True
                )
            except REDIS_ERRORS as exc:
                dropped(buffer.put_back(events, ranking))
                metrics.publish_backlog.set(len(buffer.events))
                await trio.sleep(went_down(exc))
                continue
            if result.unencodable:
                metrics.rejected.labels("unencodable").inc(result.unencodable)
                log.error("{n} events could not be serialized; skipped", n=result.unencodable)
            if result.refused:
                metrics.dropped.inc(result.refused)
                if (n := quiet.allow("refused")) is not None:
                    log.error(
                        "redis refused {r} commands: {why} (+{n} similar suppressed)",
                        r=result.refused,
                        why=result.refusal,
                        n=n,
                    )
            metrics.published.labels(settings.market_data_channel).inc(
                len(events) - result.unencodable
            )
            if ranking is not None:
                metrics.published.labels(settings.top_movers_channel).inc()
            metrics.publish_backlog.set(len(buffer.events))

    client = make_client(settings)
    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            nursery.start_soon(flush_forever, client)
    finally:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + FINAL_FLUSH_S):
            await _final_flush(buffer, settings)
        client.close()


async def _final_flush(buffer: PublishBuffer, settings: RedisSettings) -> None:
    """On shutdown: one last pipeline with a fresh client (an abandoned call may still hold
    the old one); whatever cannot be sent within the deadline is reported, not waited for."""
    if not len(buffer):
        return
    events, ranking = buffer.take()
    client = make_client(settings)
    try:
        await trio.to_thread.run_sync(
            publish_batch, client, settings, events, ranking, abandon_on_cancel=True
        )
        logger.bind(actor="publisher").info("flushed {n} pending events", n=len(events))
    except REDIS_ERRORS as exc:
        logger.bind(actor="publisher").warning(
            "final flush failed, {n} events not published ({reason})",
            n=len(events),
            reason=failure_text(exc),
        )
    finally:
        client.close()
