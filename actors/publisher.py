"""Publisher actor: the one place that writes to Redis.

Input: batches of `MarketData` and `CandleBatch`es of closed candles (from the window
actor), `Ranking`s (from the ranking actor) and, in a fleet, the shard lease's `Leadership`,
fanned in on one channel. The collector moves them at once into the lanes
(screener/redis/lanes.py), so ingest never waits for Redis; the flusher sends what is
pending in slices of at most PIPELINE_EVENTS events and as many candles, each encoded once
and written in one round trip over the `RedisLink` (screener/redis/link.py), the lease
checked once more right before the send. One write is in flight: what arrives meanwhile
goes in the next. What Redis did with a write sets the status (screener/redis/status.py): a
failed slice goes back in front and is retried with backoff (in a fleet cut short by the
next lease answer: Redis answers again); what Redis refuses for now (OOM, READONLY, ...) is
kept and retried; what it refuses for its own content (WRONGTYPE) is dropped and counted.
Closed candles are never coalesced: each waits, in either role, until Redis took it (the
script publishes each (symbol, minute) once, whoever sends it) or until it is `candle_hold_s`
older than the newest (dropped, counted as expired); a standby sends none until it leads.
`candle_lag` shows how many wait. It closes nothing but its inbox.

On cancel, under one shielded deadline (FINAL_FLUSH_S): the write in flight is finished first
(the link shields it until answered), so it is neither lost nor sent twice (a write that got
no answer is counted as not published, never sent again); then what is pending, candles
included, goes in slices; the log says `flushed N pending events` or `final flush failed, N
events not published (REASON)` (with `and M candles` when there are any).
"""

from __future__ import annotations

import functools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Final

import redis
import trio
from loguru import logger

from screener.core.compat import observe_many
from screener.core.config import RedisSettings
from screener.core.logs import RateLimited
from screener.core.metrics import Metrics
from screener.core.models import (
    LIVE_SOURCE,
    CandleBatch,
    CandleLag,
    Leadership,
    PublisherInbox,
    Ranking,
    RedisStatus,
)
from screener.core.periodic import Pulse
from screener.core.snapshot import Latest
from screener.core.supervise import failure_text
from screener.redis.batch import BatchResult, prepare_batch, send
from screener.redis.client import REDIS_ERRORS, REDIS_TIMEOUT_S, make_client
from screener.redis.lanes import CANDLE_HOLD_S, PIPELINE_EVENTS, Lanes, PublishBuffer, Slice
from screener.redis.link import RedisLink
from screener.redis.script import CANDLE_TTL_S, Answer
from screener.redis.status import RedisHealth

__all__ = ("FINAL_FLUSH_S", "PIPELINE_EVENTS", "PublishBuffer", "Publisher", "run_publisher")

FINAL_FLUSH_S: Final = 2.0

Ping = Callable[[], Awaitable[object]]
"""PING through redis-py's client (the control path), raising a redis-py error when down."""


class FencedOut(Exception):
    """The lease ran out, by this process's clock, before a slice reached Redis."""


class Publisher:
    """The actor's state and its two tasks: `collect` (inbox -> lanes) and `flush`."""

    def __init__(
        self,
        settings: RedisSettings,
        link: RedisLink,
        *,
        status: Latest[RedisStatus],
        metrics: Metrics,
        rand: Callable[[], float] = random.random,
        fenced: bool = False,
        hold_s: float = 0.0,
        candle_ttl_s: float = CANDLE_TTL_S,
        candle_hold_s: float = CANDLE_HOLD_S,
        candle_lag: Latest[CandleLag] | None = None,
    ) -> None:
        self.settings = settings
        self.link = link
        self.lanes = Lanes(settings, fenced=fenced, hold_s=hold_s, candle_hold_s=candle_hold_s)
        self.candle_ttl_ms = round(candle_ttl_s * 1000)
        self.candle_lag = candle_lag
        self.flying = CandleLag()  # the candles of the write in flight
        self.health = RedisHealth(settings, status, metrics, rand)
        self.status = status
        self.metrics = metrics
        self.arrived = Pulse()
        self.lease_answered = trio.Event()  # set by each lease answer; see `_back_off`
        self.inbox_closed = False
        # A write that failed as the flusher was cancelled: its outcome is unknown.
        self.unsure: tuple[Slice, BaseException] | None = None
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
            self._refence(item)
        elif isinstance(item, CandleBatch):  # in both roles: a standby's wait for a takeover
            self._expired(self.lanes.add_candles(item.candles))
        elif self.lanes.standby():
            if not isinstance(item, Ranking):
                self.metrics.fleet_standby_events.inc(len(item))
                self.lanes.keep_for_takeover(trio.current_time(), item)
            return
        elif isinstance(item, Ranking):
            self.lanes.buffer.ranking = item
        else:
            self._dropped(self.lanes.buffer.add(item))
        self._gauge_backlog()
        self.arrived.fire()

    def _refence(self, fence: Leadership) -> None:
        """A lease answer: a leader that became a standby keeps its unpublished events for a
        takeover, a standby that became leader sends what it held first (Redis skips what
        the last leader published; the fleet actor's log line says who leads). The answer
        also proves Redis answers: a standby, which never writes, takes its Redis status
        from it."""
        self._dropped(self.lanes.refence(fence, trio.current_time()))
        self.lease_answered.set()
        if fence.role == "standby":
            self.health.lease_answered()

    def may_publish_now(self) -> bool:
        return self.lanes.may_publish(trio.current_time())

    async def flush(self, ping: Ping) -> None:
        """Send what is pending, slice after slice; returns once the inbox ended and nothing
        is pending."""
        while True:
            if self.health.probe and not await self._probe(ping):
                continue
            sent = self.lanes.next_slice(trio.current_time())
            if sent is None:
                if self.inbox_closed and not (self.lanes.has_pending() and self.may_publish_now()):
                    return
                await self._wait()
                continue
            try:
                result = await self._send(sent)
            except FencedOut:
                self._put_back(sent)
                continue
            except REDIS_ERRORS as exc:
                self.unsure = (sent, exc)
                await trio.lowlevel.checkpoint_if_cancelled()  # shutdown: `finish` decides
                self.unsure = None
                self._put_back(sent)
                await self._back_off(self.health.went_down(exc))
                continue
            self._settle(sent, result)

    async def _probe(self, ping: Ping) -> bool:
        """PING before writing again: a dead link fails here without encoding a slice."""
        try:
            await ping()
        except REDIS_ERRORS as exc:
            await self._back_off(self.health.went_down(exc))
            return False
        self.health.pinged()
        return True

    async def _back_off(self, delay_s: float) -> None:
        """Wait out the delay before a retry after a Redis failure, or less: in a fleet, a
        lease answer proves Redis answers again, so the retry (a PING first) goes at once.
        Without it a fleet re-formed after a Redis restart waited up to a whole backoff
        (up to 30 s) before publishing. The backoff itself grows on: only a write resets it."""
        self.lease_answered = trio.Event()
        with trio.move_on_after(delay_s):
            await self.lease_answered.wait()

    async def _wait(self) -> None:
        """Until something arrives, or a held lane's backoff ends."""
        retry_at = self.lanes.retry_at
        if retry_at is None:
            await self.arrived.wait()
            return
        with trio.move_on_at(retry_at):
            await self.arrived.wait()

    async def _send(self, sent: Slice, *, check: bool = True) -> BatchResult:
        """Encode, check the lease once more by this process's clock (`check`; encoding
        takes time), then one call of the publish script, which Redis runs only while this
        writer's fence holds, and which cancellation cannot cut (`RedisLink.request`).
        Cancelled before it started, the slice was not sent: it goes back to its lane."""
        fence = self.lanes.fence
        token = fence.fence if fence is not None else None
        if fence is not None and token is None:
            raise FencedOut()  # no lease answer made this replica a leader yet
        batch = prepare_batch(
            self.settings, sent.events, sent.ranking, token, sent.candles, self.candle_ttl_ms
        )
        if check and not self.may_publish_now():
            raise FencedOut()
        if not batch.messages:
            return batch.result(Answer("OK"))
        if sent.candles:
            self.flying = CandleLag(len(sent.candles), min(c.t for c in sent.candles))
        try:
            return await send(self.link, batch)
        except trio.Cancelled:
            self.flying = CandleLag()
            self._put_back(sent)
            raise
        finally:
            self.flying = CandleLag()

    async def finish(self) -> None:
        """On shutdown: account for everything pending in one line, within FINAL_FLUSH_S
        whatever Redis does."""
        unsure, self.unsure = self.unsure, None
        lost = len(unsure[0].events) if unsure is not None else 0
        lost_candles = len(unsure[0].candles) if unsure is not None else 0
        if not self.lanes.has_pending() and unsure is None:
            return
        pending, candles = self.lanes.backlog(), self._pending_candles()
        if unsure is not None and isinstance(unsure[1], redis.TimeoutError):
            # Redis did not answer the write in flight: trying more only costs the deadline.
            self.report_unflushed(
                pending + lost,
                f"no answer within {REDIS_TIMEOUT_S:g}s",
                candles + lost_candles,
            )
            return
        reason = failure_text(unsure[1]) if unsure is not None else None
        fence = self.lanes.fence
        if fence is not None and fence.fence is None:  # never led: nothing to write with
            why = self.status.value.error or "redis has not confirmed this replica's lease"
            self.report_unflushed(pending + lost, why, candles + lost_candles)
            return
        with trio.CancelScope(shield=True, deadline=trio.current_time() + FINAL_FLUSH_S) as final:
            reason = await self.final_flush() or reason
        if final.cancelled_caught:  # Redis hangs: say what is lost, never wait longer
            reason = f"no answer within {FINAL_FLUSH_S:g}s"
        if reason is None:
            self.log.info("flushed {n} pending events{c}", n=pending, c=_and_candles(candles))
        else:
            self.report_unflushed(
                self.lanes.backlog() + lost, reason, self._pending_candles() + lost_candles
            )

    def _pending_candles(self) -> int:
        """Candles this replica owes Redis (a standby's are its leader's)."""
        return 0 if self.lanes.standby() else len(self.lanes.candles)

    async def final_flush(self) -> str | None:
        """Send each lane slice by slice until Redis fails or holds it. Returns why
        something is left, None when nothing is. The lease is not checked by this process's
        clock: Redis checks it, so a lease that ran out here but still holds there (Redis
        slow, not gone) loses nothing."""
        for sent in self.lanes.slices():
            try:
                result = await self._send(sent, check=False)
            except FencedOut:
                self._put_back(sent)
                return "redis has not confirmed this replica's lease"
            except redis.TimeoutError:  # as the deadline of the whole flush words it
                self._put_back(sent)
                return f"no answer within {REDIS_TIMEOUT_S:g}s"
            except REDIS_ERRORS as exc:
                self._put_back(sent)
                return failure_text(exc)
            self._settle(sent, result, final=True)
            if result.held:
                return result.hold
            if result.fenced:
                return f"redis says {result.holder or 'nobody'} leads this shard now"
        return None

    def report_unflushed(self, n: int, reason: str, candles: int = 0) -> None:
        self.log.warning(
            "final flush failed, {n} events{c} not published ({reason})",
            n=n,
            c=_and_candles(candles),
            reason=reason,
        )

    def _settle(self, sent: Slice, result: BatchResult, *, final: bool = False) -> None:
        """Account for a slice Redis answered (published, skipped, dropped or held, or
        refused whole as fenced), then the status."""
        metrics = self.metrics
        if result.fenced:
            self._fenced(sent, result.holder)
            if not final:
                self.health.answered(result)
            return
        if result.unencodable:
            metrics.rejected.labels("unencodable").inc(result.unencodable)
            self.log.error("{n} events could not be serialized; skipped", n=result.unencodable)
        if result.refused:
            metrics.dropped.inc(result.refused)
        if result.candles_unencodable:
            self.log.error(
                "{n} candles could not be serialized; dropped", n=result.candles_unencodable
            )
        refused = result.refused + result.candles_refused
        if refused and (n := self.quiet.allow("refused")) is not None:
            self.log.error(
                "redis refused {r} commands: {why} (+{n} similar suppressed)",
                r=refused,
                why=result.refusal,
                n=n,
            )
        if sent.candles:
            self._settle_candles(result)
        if result.held is not None:  # in front again, without what could not be encoded
            held = result.held
            self._put_back(Slice(held.events, held.ranking, held.candles))
            if self.lanes.retry_at is None:
                delay = self.health.held_backoff.next_delay()
                self.lanes.retry_at = trio.current_time() + delay
        refused_events = result.refused - result.ranking_refused
        published = (
            len(sent.events)
            - result.unencodable
            - refused_events
            - result.held_events
            - result.skipped
        )
        metrics.published.labels(self.settings.market_data_channel).inc(published)
        if result.skipped:
            metrics.skipped.inc(result.skipped)
        if published == len(sent.events):  # the usual case: every event is in Redis now
            written_ms = time.time() * 1000
            observe_many(
                metrics.publish_latency,
                (max(0.0, written_ms - event.kline.ts_ms) / 1000 for event in sent.events),
            )
        ranking_held = result.held is not None and result.held.ranking is not None
        ranking_out = not (result.ranking_refused or ranking_held or result.ranking_skipped)
        if sent.ranking is not None and ranking_out:
            metrics.published.labels(self.settings.top_movers_channel).inc()
        if not final and self.health.answered(result):  # on shutdown the final line says it
            self.lanes.retry_at = None  # what was held goes now, not after its backoff
        self._gauge_backlog()

    def _settle_candles(self, result: BatchResult) -> None:
        """Count the candles of a write Redis answered: published (by source; the delay of
        live-closed ones from their close), skipped (published before), dropped (refused
        for good, or unencodable: nothing would ever take them). Held ones went back (`_settle`)."""
        metrics = self.metrics
        published = result.candles_published
        if published:
            for source, n in Counter(c.source for c in published).items():
                metrics.candles_published.labels(source).inc(n)
            written_ms = time.time() * 1000
            observe_many(
                metrics.candle_delay,
                [
                    max(0.0, written_ms - c.closed_ms) / 1000
                    for c in published
                    if c.source == LIVE_SOURCE
                ],
            )
        if result.candles_skipped:
            metrics.candles_skipped.inc(result.candles_skipped)
        if dropped := result.candles_refused + result.candles_unencodable:
            metrics.candles_dropped.labels("refused").inc(dropped)

    def _fenced(self, sent: Slice, holder: str | None) -> None:
        """Redis refused the slice: this writer's token does not hold the shard's lease
        there (it ran out, or another replica took over). Nothing was published; the slice
        waits, with everything else, for the next lease answer, which says what becomes of
        it (a standby keeps it for a takeover)."""
        self.metrics.fleet_fenced_writes.inc()
        self.lanes.unconfirmed()
        self._put_back(sent)
        if (n := self.quiet.allow("fenced")) is not None:
            self.log.warning(
                "redis refused a write: this replica does not hold its shard's lease there "
                "(holder: {holder}); holding until the next lease answer (+{n} similar suppressed)",
                holder=holder or "none",
                n=n,
            )

    def _put_back(self, sent: Slice) -> None:
        self._dropped(self.lanes.put_back(sent))
        self._expired(self.lanes.put_back_candles(sent.candles))
        self._gauge_backlog()

    def _expired(self, n: int) -> None:
        """Candles dropped for their age: Redis did not take them within the hold."""
        if n:
            self.metrics.candles_dropped.labels("expired").inc(n)
            if (k := self.quiet.allow("expired")) is not None:
                self.log.warning(
                    "{n} closed candles dropped: not taken by redis within {hold:g}s "
                    "(+{k} similar suppressed)",
                    n=n,
                    hold=self.lanes.candles.hold_s,
                    k=k,
                )

    def _dropped(self, n: int) -> None:
        if n:
            self.metrics.dropped.inc(n)

    def _gauge_backlog(self) -> None:
        backlog = self.lanes.backlog()
        self.metrics.publish_backlog.set(backlog)
        if backlog > self.peak:
            self.peak = backlog
            self.metrics.queue_peak.labels("publish_buffer").set(backlog)
        if self.candle_lag is not None:
            lag = self.lanes.candle_lag(self.flying)
            if lag != self.candle_lag.value:
                self.candle_lag.set(lag)


def _and_candles(n: int) -> str:
    return f" and {n} candles" if n else ""


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
    link: RedisLink | None = None,
    ping: Ping | None = None,
    fenced: bool = False,
    hold_s: float = 0.0,
    candle_ttl_s: float = CANDLE_TTL_S,
    candle_hold_s: float = CANDLE_HOLD_S,
    candle_lag: Latest[CandleLag] | None = None,
    flushed: trio.Event | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Writes go over `link` (by default the service's own link to the Redis of `settings`),
    PINGs through redis-py (`ping`: tests pass their own). `fenced`: a fleet replica,
    publishing only while its shard lease says so (the `Leadership` items of the inbox);
    as a standby it keeps what it receives for `hold_s` seconds, for a takeover. Closed
    candles wait until Redis takes them or are `candle_hold_s` older than the newest; each
    candle's key in Redis lives `candle_ttl_s` (longer than any writer holds a candle);
    `candle_lag` (if given) shows how many wait. `flushed` is set once the final flush ended
    (the fleet actor releases the lease only then)."""
    client = make_client(settings)
    if link is None:
        link = RedisLink.of(client)
    if ping is None:
        ping = functools.partial(trio.to_thread.run_sync, client.ping, abandon_on_cancel=True)
    publisher = Publisher(
        settings,
        link,
        status=status,
        metrics=metrics,
        rand=rand,
        fenced=fenced,
        hold_s=hold_s,
        candle_ttl_s=candle_ttl_s,
        candle_hold_s=candle_hold_s,
        candle_lag=candle_lag,
    )
    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher.collect, inbox)
            nursery.start_soon(publisher.flush, ping)
    finally:
        try:
            await publisher.finish()
        finally:
            if flushed is not None:
                flushed.set()
            await link.close()
            client.close()
