"""Publisher actor: the one place that talks to Redis.

Input: batches of `MarketData` (from the window actor) and `Ranking`s (from the ranking
actor), fanned in on one channel. The collector moves them at once into a bounded
`PublishBuffer`, so ingest never waits for Redis; the flusher sends what is pending in slices
of at most `PIPELINE_EVENTS` events, one pipeline each, the way REDIS_WRITER says: over a
`SocketLink` on the event loop (the default), or through redis-py in a writer thread. One
write is in flight: what arrives meanwhile goes in the next, so writes grow with the load,
and a backlog is never encoded at once.

Only what Redis does with a write decides the status. A failed or timed-out write marks it
down (one warning) until a write succeeds (one `redis up at` line); a PING answer is no
proof (`CLIENT PAUSE WRITE` answers it), it only spares encoding a slice for a dead link.
The failed slice goes back in front and is retried with backoff (in a fleet, cut short by
the next lease answer: Redis answers again). Commands Redis refuses for
now (OOM, READONLY, ...: `HELD_CODES`) make it degraded (`refused`; one warning, then `redis
writes accepted again`): their events stay buffered and are retried with backoff. A command
refused for its own content (WRONGTYPE) is dropped and counted. Nothing refused is counted as
published. The buffer keeps at most `capacity` events by keeping the newest per symbol,
counting what it dropped. It closes nothing but its inbox.

On cancel, under one shielded deadline: the write in flight is finished first (a link's write
is shielded until answered; a thread's records its outcome, which is waited for), so it is
neither lost nor sent twice; then what is pending goes in slices; the log says `flushed N
pending events` or `final flush failed, N events not published (REASON)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Final

import redis
import trio
from loguru import logger

from screener.config import RedisSettings
from screener.logs import RateLimited
from screener.metrics import Metrics, observe_many
from screener.models import Leadership, MarketData, PublisherInbox, Ranking, RedisStatus
from screener.periodic import Pulse
from screener.redis_batch import BatchResult, Held, prepare_batch, publish_batch
from screener.redis_client import REDIS_ERRORS, REDIS_TIMEOUT_S, make_client
from screener.redis_socket import SocketLink, takes_over
from screener.snapshot import Latest
from screener.supervise import Backoff, failure_text
from screener.writer_thread import Hop, WriterThread, to_thread_hop

FINAL_FLUSH_S: Final = 2.0
PIPELINE_EVENTS: Final = 500
"""Most events in one pipeline, so what one round trip holds encoded is bounded. Sending a
backlog at once raised RSS by two thirds after a 30 s outage at 1,000 pushes/s (+40 MB for
10,000 events); slices of 2,000 cost 12 MB, of 500 3 MB, and their round trips still take
a fraction of a second (normal batches, a few ms of pushes, are far smaller)."""

UNCONFIRMED: Final = Leadership("leader", float("-inf"), 0, drop_held=False)
"""A fenced publisher's start: nothing goes out before the first lease answer."""


class FencedOut(Exception):
    """The lease ran out, by this process's clock, before a slice reached Redis."""


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

    def take(self, limit: int | None = None) -> tuple[list[MarketData], Ranking | None]:
        """The oldest `limit` events (all by default) and the ranking."""
        events, ranking = self.events, self.ranking
        self.ranking = None
        if limit is not None and len(events) > limit:
            self.events = events[limit:]
            return events[:limit], ranking
        self.events = []
        return events, ranking

    def put_back(self, events: list[MarketData], ranking: Ranking | None) -> int:
        """Return a failed batch to the front; newer arrivals stay behind it."""
        if ranking is not None and self.ranking is None:
            self.ranking = ranking
        newer = self.events
        self.events = []
        return self.add(events + newer)


class Attempt:
    """One slice on its way to the targets of `mode`. In a writer thread, the thread records
    the outcome here itself: when the flusher is cancelled meanwhile (the call is abandoned,
    the thread runs on), shutdown still learns whether the slice went (`done`). Over the
    socket link the outcome is known when the write returns: no Event is made for it (one
    per write was 2 % of the event loop's time)."""

    __slots__ = ("done", "events", "mode", "ranking", "result", "until")

    def __init__(
        self, mode: str, events: list[MarketData], ranking: Ranking | None, *, threaded: bool
    ) -> None:
        self.mode = mode
        self.events = events
        self.ranking = ranking
        self.done = threading.Event() if threaded else None
        self.result: BatchResult | None = None  # None once done: it failed
        self.until = float("inf")  # time.monotonic() after which the lease may be gone

    def run(self, write: WriteBatch, client: redis.Redis, settings: RedisSettings) -> BatchResult:
        """The writer thread's job."""
        try:
            if time.monotonic() >= self.until:  # frozen since the check: publish nothing
                raise FencedOut()
            result = self.result = write(client, settings, self.events, self.ranking)
        finally:
            if self.done is not None:
                self.done.set()
        return result


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
        hop: Hop = to_thread_hop,
        link: SocketLink | None = None,
        fenced: bool = False,
    ) -> None:
        self.settings = settings
        self.hop = hop
        self.link = link  # REDIS_WRITER=socket: writes on the event loop, `hop` unused
        # The shard lease as last answered (None: no fleet, always publish); see `_fence`.
        self.fence: Leadership | None = UNCONFIRMED if fenced else None
        self.status = status
        self.metrics = metrics
        self.write = write
        self.buffer = PublishBuffer(settings.buffer)  # owed to every target of PUBLISH_MODE
        # PUBLISH_MODE=both: events one target took and the other held, by the target still
        # owed ("stream" or "pubsub"); sent before `buffer`, being older.
        self.owed: dict[str, PublishBuffer] = {}
        self.targets = {settings.mode: settings}  # the settings a lane is written with
        self.retry_at: dict[str, float] = {}  # lane -> not before (a held lane's backoff)
        self.backoff = Backoff(first_s=0.5, cap_s=30.0, rand=rand)
        self.lease_answered = trio.Event()  # set by each lease answer; see `_back_off`
        self.arrived = Pulse()
        self.inbox_closed = False
        self.in_flight: Attempt | None = None
        self.probe = not status.value.up  # PING before the next write: at start, after a failure
        self.holding = False  # Redis refuses for now: warned once, its end will be logged
        self.peak = 0  # most events ever pending, for screener_queue_peak
        self.quiet = RateLimited(10.0)
        self.log = logger.bind(actor="publisher")

    async def collect(self, inbox: trio.MemoryReceiveChannel[PublisherInbox]) -> None:
        async with inbox:
            try:
                async for item in inbox:
                    self._add(item)
            finally:  # on cancel, what was already handed over is pending too (no checkpoint)
                for item in _drained(inbox):
                    self._add(item)
        self.inbox_closed = True
        self.arrived.fire()

    def _add(self, item: PublisherInbox) -> None:
        if isinstance(item, Leadership):
            self._fence(item)
        elif self.fence is not None and self.fence.role == "standby":
            if not isinstance(item, Ranking):
                self.metrics.fleet_standby_events.inc(len(item))
            return
        elif isinstance(item, Ranking):
            self.buffer.ranking = item
        else:
            self._dropped(self.buffer.add(item))
        self._gauge_backlog()
        self.arrived.fire()

    def _fence(self, fence: Leadership) -> None:
        """A lease answer. A standby, or a leader that took over from another replica,
        drops what it holds: those pushes are (or were) published by the other replica."""
        was = self.fence
        self.fence = fence
        self.lease_answered.set()
        if not fence.drop_held:
            return
        held = sum(len(lane.events) for _, lane in self._lanes())
        self.owed.clear()
        self.buffer.take()
        self.retry_at.clear()
        if held:
            self.metrics.fleet_standby_events.inc(held)
            if was is not None and was.role == "leader":
                self.log.info(
                    "not leader of this shard any more: {n} held events left to the leader",
                    n=held,
                )

    def may_publish(self, now: float) -> bool:
        fence = self.fence
        return fence is None or (fence.role == "leader" and now < fence.valid_until)

    async def flush(self, client: redis.Redis) -> None:
        """Send what is pending, slice after slice; returns once the inbox ended and nothing
        is pending."""
        while True:
            if self.probe and not await self._probe(client):
                continue
            attempt = self._next(trio.current_time())
            if attempt is None:
                if self.inbox_closed and not (self.has_pending() and self.may_publish_now()):
                    return
                await self._wait()
                continue
            try:
                result = await self._send(client, attempt)
            except FencedOut:
                self._put_back(attempt)
                continue
            except REDIS_ERRORS as exc:
                self._put_back(attempt)
                await self._back_off(self._went_down(exc))
                continue
            self._settle(attempt, result)

    async def finish(self) -> None:
        """On shutdown: account for everything pending in one line, within FINAL_FLUSH_S
        whatever Redis does (a fresh client: the old one's link may be dead or taken)."""
        if not self.has_pending():
            return
        pending = self.pending_events()
        if not self.may_publish_now() and self.in_flight is None:
            self.report_unflushed(pending, "this replica's shard lease is not confirmed")
            return
        reason: str | None = None
        client = make_client(self.settings)
        if self.link is not None:
            await self.link.close()
            self.link = SocketLink(client)
        try:
            deadline = trio.current_time() + FINAL_FLUSH_S
            with trio.CancelScope(shield=True, deadline=deadline) as final:
                reason = await self.final_flush(client)
        finally:
            if self.link is not None:
                await self.link.close()
            client.close()
        if final.cancelled_caught:  # Redis hangs: say what is lost, never wait longer
            reason = f"no answer within {FINAL_FLUSH_S:g}s"
        if reason is None:
            self.log.info("flushed {n} pending events", n=pending)
        else:
            self.report_unflushed(self.pending_events(), reason)

    async def final_flush(self, client: redis.Redis) -> str | None:
        """Learn how the write in flight went, then send each lane slice by slice until
        Redis fails or holds it. Returns why something is left, None when nothing is."""
        attempt = self.in_flight
        if attempt is not None:
            assert attempt.done is not None  # in flight: a writer thread's (the link's is known)
            done = await trio.to_thread.run_sync(
                attempt.done.wait, FINAL_FLUSH_S, abandon_on_cancel=True
            )
            if not done:  # still unknown: counted as not published, never sent twice
                return f"no answer within {FINAL_FLUSH_S:g}s"
            self.in_flight = None
            if attempt.result is None:
                self._put_back(attempt)
            else:
                self._settle(attempt, attempt.result, final=True)
        reason = None
        for mode, lane in list(self._lanes()):
            while len(lane):
                events, ranking = lane.take(PIPELINE_EVENTS)
                attempt = Attempt(mode, events, ranking, threaded=self.link is None)
                try:
                    result = await self._send(client, attempt)
                except FencedOut:
                    self._put_back(attempt)
                    return "this replica's shard lease ran out"
                except redis.TimeoutError:  # as the deadline of the whole flush words it
                    self._put_back(attempt)
                    return f"no answer within {REDIS_TIMEOUT_S:g}s"
                except REDIS_ERRORS as exc:
                    self._put_back(attempt)
                    return failure_text(exc)
                self._settle(attempt, result, final=True)
                if result.held:
                    reason = result.hold
                    break
        return reason

    def report_unflushed(self, n: int, reason: str) -> None:
        self.log.warning(
            "final flush failed, {n} events not published ({reason})", n=n, reason=reason
        )

    def has_pending(self) -> bool:
        return self.in_flight is not None or any(len(lane) for _, lane in self._lanes())

    def pending_events(self) -> int:
        """Events not yet published: buffered, held, or in a write of unknown outcome."""
        in_flight = self.in_flight
        queued = sum(len(lane.events) for _, lane in self._lanes())
        return queued + (len(in_flight.events) if in_flight is not None else 0)

    # --- the lanes: what each set of targets is owed ------------------------------------

    def _lanes(self) -> Iterator[tuple[str, PublishBuffer]]:
        yield from self.owed.items()
        yield self.settings.mode, self.buffer

    def _lane(self, mode: str) -> PublishBuffer:
        if mode == self.settings.mode:
            return self.buffer
        lane = self.owed.get(mode)
        if lane is None:
            lane = self.owed[mode] = PublishBuffer(self.settings.buffer)
            self.targets[mode] = dataclasses.replace(self.settings, mode=mode)
        return lane

    def may_publish_now(self) -> bool:
        return self.may_publish(trio.current_time())

    def _next(self, now: float) -> Attempt | None:
        """The next slice of the first lane with something to send and no backoff to wait,
        while the lease (if any) is valid by this process's clock."""
        if not self.may_publish(now):
            return None
        for mode, lane in self._lanes():
            if len(lane) and self.retry_at.get(mode, now) <= now:
                self.retry_at.pop(mode, None)
                events, ranking = lane.take(PIPELINE_EVENTS)
                return Attempt(mode, events, ranking, threaded=self.link is None)
        return None

    async def _wait(self) -> None:
        """Until something arrives, or a held lane's backoff ends."""
        if not self.retry_at:
            await self.arrived.wait()
            return
        with trio.move_on_at(min(self.retry_at.values())):
            await self.arrived.wait()

    async def _send(self, client: redis.Redis, attempt: Attempt) -> BatchResult:
        """One slice, over the socket link or in a writer thread. In a thread, on cancel it
        stays `in_flight` for `final_flush`; the link's outcome is always known here."""
        if self.link is not None:
            return await self._send_on_link(self.link, attempt)
        self.in_flight = attempt
        if self.fence is not None:  # the thread checks again just before writing
            attempt.until = time.monotonic() + (self.fence.valid_until - trio.current_time())
        try:
            result = await self.hop(
                functools.partial(attempt.run, self.write, client, self.targets[attempt.mode])
            )
        except FencedOut:
            self.in_flight = None
            raise
        except REDIS_ERRORS:
            self.in_flight = None
            raise
        self.in_flight = None
        return result

    async def _send_on_link(self, link: SocketLink, attempt: Attempt) -> BatchResult:
        """Encode, check the lease once more (encoding takes time), then one round trip that
        cancellation cannot cut (`SocketLink.request`). Cancelled before it started, the
        slice was not sent: it goes back to its lane."""
        batch = prepare_batch(self.targets[attempt.mode], attempt.events, attempt.ranking)
        if not self.may_publish_now():
            raise FencedOut()
        if not batch.commands:
            return batch.result([])
        try:
            refusals = await link.request(batch.payload, batch.commands)
        except trio.Cancelled:
            self._put_back(attempt)
            raise
        return batch.result(refusals)

    def _hold(self, attempt: Attempt, group: Held) -> None:
        """Keep what Redis held in the lane of the targets still owed: in front of that lane
        when it came from there, else behind (a write of `buffer` under PUBLISH_MODE=both
        whose XADDs were held: newer than what the stream lane already owes)."""
        lane = self._lane(group.mode)
        if group.mode == attempt.mode:
            self._dropped(lane.put_back(group.events, group.ranking))
            return
        self._dropped(lane.add(group.events))
        if group.ranking is not None:
            lane.ranking = group.ranking

    def _put_back(self, attempt: Attempt) -> None:
        self._dropped(self._lane(attempt.mode).put_back(attempt.events, attempt.ranking))
        self._gauge_backlog()

    # --- what Redis said ------------------------------------------------------------------

    async def _probe(self, client: redis.Redis) -> bool:
        """PING before writing again: a dead link fails here without encoding a slice. An
        answer proves nothing about writes, so it changes no status, except at start, when
        no write has failed yet."""
        try:
            await trio.to_thread.run_sync(client.ping, abandon_on_cancel=True)
        except REDIS_ERRORS as exc:
            await self._back_off(self._went_down(exc))
            return False
        self.probe = False
        if self.status.value == RedisStatus(up=False, error=None):
            self.log.info("redis up at {target}", target=self.settings.safe_target())
            self._set_status(RedisStatus(up=True, error=None))
        return True

    async def _back_off(self, delay_s: float) -> None:
        """Wait out the delay before a retry after a Redis failure, or less: in a fleet, a
        lease answer proves Redis answers again, so the retry (a PING first) goes at once.
        Without it a fleet re-formed after a Redis restart waited up to a whole backoff
        (up to 30 s) before publishing. The backoff itself grows on: only a write resets it."""
        self.lease_answered = trio.Event()
        with trio.move_on_after(delay_s):
            await self.lease_answered.wait()

    def _went_down(self, exc: BaseException) -> float:
        """Record the outage (one warning per outage); returns the delay before a retry."""
        reason = failure_text(exc)
        if self.status.value.up or self.status.value.error is None:
            self.log.warning(
                "redis unavailable at {target} ({reason}); buffering, newest event per symbol kept",
                target=self.settings.safe_target(),
                reason=reason,
            )
        self.probe = True
        self.holding = False
        self._set_status(RedisStatus(up=False, error=reason))
        return self.backoff.next_delay()

    def _settle(self, attempt: Attempt, result: BatchResult, *, final: bool = False) -> None:
        """Account for a slice Redis answered (published, dropped or held), then the status."""
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
        now = trio.current_time()
        for group in result.held:
            self._hold(attempt, group)
            if group.mode not in self.retry_at:
                self.retry_at[group.mode] = now + self.backoff.next_delay()
        refused_events = result.refused - result.ranking_refused
        sent = len(attempt.events) - result.unencodable - refused_events - result.held_events
        metrics.published.labels(self.settings.market_data_channel).inc(sent)
        if sent == len(attempt.events):  # the usual case: every event is in Redis now
            written_ms = time.time() * 1000
            observe_many(
                metrics.publish_latency,
                (max(0.0, written_ms - event.kline.ts_ms) / 1000 for event in attempt.events),
            )
        ranking_held = any(group.ranking is not None for group in result.held)
        if attempt.ranking is not None and not (result.ranking_refused or ranking_held):
            metrics.published.labels(self.settings.top_movers_channel).inc()
        if not final:  # on shutdown the one final line says it all
            self._answered(result)
        self._gauge_backlog()

    def _answered(self, result: BatchResult) -> None:
        """Redis answered a write: the link works; whatever it refused degrades the status."""
        refused = result.hold or result.refusal
        was = self.status.value
        if refused is None and was.up and was.refused is None:  # the usual case: all is well
            self.backoff.reset()
            return
        target = self.settings.safe_target()
        if not was.up:
            self.log.info("redis up at {target}", target=target)
        if result.held:
            if not self.holding:
                self.holding = True
                self.log.warning(
                    "redis refuses writes at {target} ({reason}); events kept and retried",
                    target=target,
                    reason=result.hold,
                )
        else:
            if self.holding:
                self.holding = False
                self.log.info("redis writes accepted again at {target}", target=target)
            self.backoff.reset()
            self.retry_at.clear()  # what was held goes now, not after its backoff
        self._set_status(RedisStatus(up=True, error=None, refused=refused))

    def _set_status(self, status: RedisStatus) -> None:
        self.status.set(status)
        self.metrics.redis_up.set(1 if status.up and status.refused is None else 0)

    def _dropped(self, n: int) -> None:
        if n:
            self.metrics.dropped.inc(n)

    def _gauge_backlog(self) -> None:
        backlog = sum(len(lane.events) for _, lane in self._lanes())
        self.metrics.publish_backlog.set(backlog)
        if backlog > self.peak:
            self.peak = backlog
            self.metrics.queue_peak.labels("publish_buffer").set(backlog)


def _drained(inbox: trio.MemoryReceiveChannel[PublisherInbox]) -> list[PublisherInbox]:
    """What is already in the channel, without waiting (a cancelled task may not)."""
    items: list[PublisherInbox] = []
    while True:
        try:
            items.append(inbox.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return items


async def run_publisher(
    inbox: trio.MemoryReceiveChannel[PublisherInbox],
    *,
    settings: RedisSettings,
    status: Latest[RedisStatus],
    metrics: Metrics,
    rand: Callable[[], float] = random.random,
    write: WriteBatch = publish_batch,
    writer_thread: bool = True,
    fenced: bool = False,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Writes go the way REDIS_WRITER says: over a `SocketLink` (socket; a TLS link cannot
    be handed to trio and goes through the writer thread), one long-lived `WriterThread`
    (thread) or `to_thread_hop` (to_thread). `writer_thread` False: always `to_thread_hop`
    (MockClock tests passing their own `write`, where trio.testing must see the thread).
    `fenced`: a fleet replica, publishing only while its shard lease says so (the
    `Leadership` items of the inbox)."""
    client = make_client(settings)
    way = settings.writer if writer_thread else "to_thread"
    if way == "socket" and not takes_over(client):
        logger.bind(actor="publisher").info("TLS link to redis: writes go through a thread")
        way = "thread"
    with contextlib.ExitStack() as stack:
        publisher = Publisher(
            settings,
            status=status,
            metrics=metrics,
            rand=rand,
            write=write,
            hop=stack.enter_context(WriterThread.open()).run if way == "thread" else to_thread_hop,
            link=SocketLink(client) if way == "socket" else None,
            fenced=fenced,
        )
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publisher.collect, inbox)
                nursery.start_soon(publisher.flush, client)
        finally:
            try:
                await publisher.finish()
            finally:
                if publisher.link is not None:
                    await publisher.link.close()
                client.close()
