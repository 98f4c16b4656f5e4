"""Publisher actor: the one place that talks to Redis.

Input: batches of `MarketData` (from the window actor) and `Ranking`s (from the ranking
actor), fanned in on one channel. The collector moves them at once into a bounded
`PublishBuffer`, so ingest never waits for Redis; the flusher sends everything pending as one
pipeline per batch through `trio.to_thread.run_sync` (redis-py is synchronous), one thread
call in flight. When Redis fails: one warning, `status` down, retry with backoff, and the
buffer keeps at most `capacity` events by keeping only the newest per symbol, counting what
it dropped. It closes nothing but its inbox. On cancel, what is pending is flushed under a
shielded deadline and the outcome logged.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

import redis
import trio
from loguru import logger

from screener.config import RedisSettings
from screener.logs import RateLimited
from screener.metrics import Metrics
from screener.models import MarketData, PublisherInbox, Ranking, RedisStatus
from screener.periodic import Pulse
from screener.redis_client import REDIS_ERRORS, BatchResult, make_client, publish_batch
from screener.snapshot import Latest
from screener.supervise import Backoff, failure_text

FINAL_FLUSH_S: Final = 2.0

WriteBatch = Callable[[redis.Redis, RedisSettings, list[MarketData], Ranking | None], BatchResult]
"""`publish_batch`, run in a worker thread; tests pass their own."""


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


class Publisher:
    """The actor's state and its two tasks: `collect` (inbox -> buffer) and `flush`."""

    def __init__(
        self,
        settings: RedisSettings,
        *,
        status: Latest[RedisStatus],
        metrics: Metrics,
        rand: Callable[[], float] = random.random,
        write: WriteBatch = publish_batch,
    ) -> None:
        self.settings = settings
        self.status = status
        self.metrics = metrics
        self.write = write
        self.buffer = PublishBuffer(settings.buffer)
        self.backoff = Backoff(first_s=0.5, cap_s=30.0, rand=rand)
        self.arrived = Pulse()
        self.inbox_closed = False
        self.peak = 0  # most events ever pending, for screener_queue_peak
        self.quiet = RateLimited(10.0)
        self.log = logger.bind(actor="publisher")

    async def collect(self, inbox: trio.MemoryReceiveChannel[PublisherInbox]) -> None:
        async with inbox:
            async for item in inbox:
                if type(item) is Ranking:
                    self.buffer.ranking = item
                else:
                    self._dropped(self.buffer.add(item))  # type: ignore[arg-type]
                self._gauge_backlog()
                self.arrived.fire()
        self.inbox_closed = True
        self.arrived.fire()

    async def flush(self, client: redis.Redis) -> None:
        """Send what is pending, batch after batch; returns once the inbox ended and the
        buffer is empty."""
        while True:
            if not self.status.value.up and not await self._reconnect(client):
                continue
            if not len(self.buffer):
                if self.inbox_closed:
                    return
                await self.arrived.wait()
                continue
            events, ranking = self.buffer.take()
            try:
                result = await trio.to_thread.run_sync(
                    self.write, client, self.settings, events, ranking, abandon_on_cancel=True
                )
            except REDIS_ERRORS as exc:
                self._dropped(self.buffer.put_back(events, ranking))
                self._gauge_backlog()
                await trio.sleep(self._went_down(exc))
                continue
            self._published(events, ranking, result)

    async def final_flush(self, events: list[MarketData], ranking: Ranking | None) -> None:
        """On shutdown: one last pipeline with a fresh client (an abandoned call may still
        hold the old one). The caller bounds it with a deadline; a refusal is logged here."""
        client = make_client(self.settings)
        try:
            await trio.to_thread.run_sync(
                self.write, client, self.settings, events, ranking, abandon_on_cancel=True
            )
            self.log.info("flushed {n} pending events", n=len(events))
        except REDIS_ERRORS as exc:
            self.report_unflushed(len(events), failure_text(exc))
        finally:
            client.close()

    def report_unflushed(self, n: int, reason: str) -> None:
        self.log.warning(
            "final flush failed, {n} events not published ({reason})", n=n, reason=reason
        )

    async def _reconnect(self, client: redis.Redis) -> bool:
        try:
            await trio.to_thread.run_sync(client.ping, abandon_on_cancel=True)
        except REDIS_ERRORS as exc:
            await trio.sleep(self._went_down(exc))
            return False
        self.log.info("redis up at {target}", target=self.settings.safe_target())
        self.status.set(RedisStatus(up=True, error=None))
        self.metrics.redis_up.set(1)
        self.backoff.reset()
        return True

    def _went_down(self, exc: BaseException) -> float:
        """Record the outage (one warning per outage); returns the delay before a retry."""
        reason = failure_text(exc)
        if self.status.value.up or self.status.value.error is None:
            self.log.warning(
                "redis unavailable at {target} ({reason}); buffering, newest event per symbol kept",
                target=self.settings.safe_target(),
                reason=reason,
            )
        self.status.set(RedisStatus(up=False, error=reason))
        self.metrics.redis_up.set(0)
        return self.backoff.next_delay()

    def _published(
        self, events: list[MarketData], ranking: Ranking | None, result: BatchResult
    ) -> None:
        metrics = self.metrics
        if result.unencodable:
            metrics.rejected.labels("unencodable").inc(result.unencodable)
            self.log.error("{n} events could not be serialized; skipped", n=result.unencodable)
        if result.refused:
            metrics.dropped.inc(result.refused)
            if (n := self.quiet.allow("refused")) is not None:
                self.log.error(
                    "redis refused {r} commands: {why} (+{n} similar suppressed)",
                    r=result.refused,
                    why=result.refusal,
                    n=n,
                )
        metrics.published.labels(self.settings.market_data_channel).inc(
            len(events) - result.unencodable
        )
        if ranking is not None:
            metrics.published.labels(self.settings.top_movers_channel).inc()
        self._gauge_backlog()

    def _dropped(self, n: int) -> None:
        if n:
            self.metrics.dropped.inc(n)

    def _gauge_backlog(self) -> None:
        backlog = len(self.buffer.events)
        self.metrics.publish_backlog.set(backlog)
        if backlog > self.peak:
            self.peak = backlog
            self.metrics.queue_peak.labels("publish_buffer").set(backlog)


async def run_publisher(
    inbox: trio.MemoryReceiveChannel[PublisherInbox],
    *,
    settings: RedisSettings,
    status: Latest[RedisStatus],
    metrics: Metrics,
    rand: Callable[[], float] = random.random,
    write: WriteBatch = publish_batch,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    publisher = Publisher(settings, status=status, metrics=metrics, rand=rand, write=write)
    client = make_client(settings)
    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher.collect, inbox)
            nursery.start_soon(publisher.flush, client)
    finally:
        client.close()
        events, ranking = publisher.buffer.take()
        if events or ranking is not None:
            deadline = trio.current_time() + FINAL_FLUSH_S
            with trio.CancelScope(shield=True, deadline=deadline) as final:
                await publisher.final_flush(events, ranking)
            if final.cancelled_caught:  # Redis hangs: say what is lost, never wait longer
                publisher.report_unflushed(len(events), f"no answer within {FINAL_FLUSH_S:g}s")
