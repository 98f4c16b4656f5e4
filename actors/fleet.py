"""Fleet actor: this replica's shard lease, and the global ranking.

Two tasks. `hold_lease` asks Redis every lease/3 to acquire or renew the shard's lease and
sends the answer to the publisher as a `Leadership` fence (the publisher alone decides, by
its own clock, whether a write may go). `merge` receives this shard's ranking from the
ranking actor, writes it to Redis while this replica leads, reads the other shards'
rankings, and replaces the snapshot /top5 reads with the merge; on shard 0 it also sends the
merge to the publisher as the `top_movers` document (published by shard 0's leader only).

The lease key holds this process's token (`<FLEET_REPLICA_ID>#<nonce>`), which no other
process shares. Each request carries its deadline (wall clock) and whether the previous
answer came in time; Redis refuses a late request, and refuses to let this replica lead
while another live process holds its replica id or the fleet on its channel runs another
configuration: then it stands by, says why once in the log, in /health and in
`screener_fleet_refused`.

With one shard the merge is this shard's ranking and no ranking key is written or read.
Redis unreachable: the lease is not confirmed, so the publisher holds; /top5 serves this
shard alone, naming the others missing; the fleet re-forms at the first answer. On shutdown
the lease and the replica id are released, so a standby takes over at its next request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import redis
import trio
from loguru import logger

from screener.core.config import FleetSettings
from screener.core.metrics import Metrics
from screener.core.models import FleetStatus, Leadership, PublisherInbox, Ranking
from screener.core.periodic import Ticker
from screener.core.snapshot import Latest
from screener.core.supervise import failure_text
from screener.fleet.agreement import Agreement
from screener.fleet.lease import (
    RANKING_TTL_INTERVALS,
    acquire_or_renew,
    read_shard_rankings,
    release,
    write_shard_ranking,
)
from screener.fleet.shards import (
    REFUSAL_REASONS,
    Answer,
    Grant,
    Late,
    Lease,
    Refusal,
    merge_rankings,
    new_token,
)
from screener.redis.client import REDIS_ERRORS

RELEASE_S = 1.0
"""Most time spent giving the lease up on shutdown; a standby otherwise waits one lease."""
FLUSH_WAIT_S = 2.5
"""Most time the release waits for the publisher's final flush (FINAL_FLUSH_S, 2 s, and a
margin)."""


class Fleet:
    """The actor's state: the lease, the last shard rankings read, and the log. `wall`:
    Unix time, for the deadline each request carries (Redis compares it with its own)."""

    def __init__(
        self,
        settings: FleetSettings,
        client: redis.Redis,
        *,
        agreement: Agreement,
        status: Latest[FleetStatus | None],
        metrics: Metrics,
        token: str | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.client = client
        self.agreement = agreement
        self.lease = Lease(
            settings.replica_id,
            settings.lease_s,
            keys=(settings.key(settings.shard, "lease"), settings.key(settings.shard, "term")),
            token=new_token(settings.replica_id) if token is None else token,
        )
        self.status = status
        self.metrics = metrics
        self.wall = wall
        self.log = logger.bind(actor="fleet")
        self.renewing: threading.Event | None = None  # set once the last request ended
        # Read at each scrape: 1 only while this replica may publish now, by its own clock.
        metrics.fleet_leader.labels(str(settings.shard)).set_function(self._leads_now)
        self._publish_status()

    def _leads_now(self) -> float:
        try:
            now = trio.current_time()
        except RuntimeError:  # scraped outside the service's trio run: it has ended
            return 0.0
        return 1.0 if self.lease.may_publish(now) else 0.0

    async def renew(self, outbox: trio.MemorySendChannel[PublisherInbox]) -> None:
        """One acquire-or-renew; the answer goes to the publisher as the fence."""
        lease, metrics = self.lease, self.metrics
        was = (lease.role, lease.leader, lease.error, lease.refusal)
        sent_at = trio.current_time()
        sent_ms = round(self.wall() * 1000)
        deadline_ms = sent_ms + round(lease.timeout_s * 1000)
        heard = lease.heard
        done = self.renewing = threading.Event()

        def request() -> Answer:
            try:
                answer = acquire_or_renew(
                    self.client,
                    self.settings,
                    self.agreement,
                    token=lease.token,
                    sent_ms=sent_ms,
                    deadline_ms=deadline_ms,
                    heard=heard,
                )
            finally:
                done.set()
            if isinstance(answer, Late):  # counted here: its sender has usually given up
                metrics.fleet_renewals.labels("late").inc()
            return answer

        try:
            with trio.fail_after(lease.timeout_s):
                answer = await trio.to_thread.run_sync(request, abandon_on_cancel=True)
        except trio.TooSlowError:
            self._failed("no answer in time", refused=False, heard=False, was_error=was[2])
            return
        except REDIS_ERRORS as exc:
            refused = isinstance(exc, redis.ResponseError)
            # A socket timeout may come after Redis ran the script: the answer was missed.
            heard = not isinstance(exc, redis.TimeoutError)
            self._failed(failure_text(exc), refused=refused, heard=heard, was_error=was[2])
            return
        if isinstance(answer, Late):
            self._failed("reached redis after its deadline", refused=False, was_error=was[2])
            return
        fence = self._record(answer, sent_at)
        if (lease.role, lease.leader, lease.error, lease.refusal) != was:
            self._log_change(was[3])
        self._publish_status()
        await outbox.send(fence)

    def _record(self, answer: Grant | Refusal, sent_at: float) -> Leadership:
        lease, renewals = self.lease, self.metrics.fleet_renewals
        if isinstance(answer, Refusal):
            renewals.labels("refused").inc()
            return lease.refused(answer)
        fence = lease.answered(answer, sent_at=sent_at)
        if lease.role != "leader":
            renewals.labels("standby").inc()
        else:
            renewals.labels("granted" if answer.renewed else "unconfirmed").inc()
        if lease.took_over:
            self.metrics.fleet_takeovers.inc()
        return fence

    def _failed(
        self, reason: str, *, refused: bool, was_error: str | None, heard: bool = True
    ) -> None:
        """No grant; one warning when the failures begin (the fence simply runs out)."""
        self.lease.failed(reason, refused=refused, now=trio.current_time(), heard=heard)
        self.metrics.fleet_renewals.labels("failed").inc()
        if was_error is None:
            self.log.warning(
                "fleet: no lease for shard {shard} ({reason}); publishing held until redis answers",
                shard=self.settings.shard,
                reason=reason,
            )
        self._publish_status()

    def _log_change(self, was_refused: Refusal | None) -> None:
        lease = self.lease
        refusal = lease.refusal
        if refusal is not None:
            if was_refused is None or was_refused.problem != refusal.problem:
                self.log.error(
                    "fleet: refused to lead shard {shard}: {problem}",
                    shard=self.settings.shard,
                    problem=refusal.problem,
                )
            return
        if was_refused is not None:
            self.log.info("fleet: no longer refused ({problem})", problem=was_refused.problem)
        if lease.role == "leader":
            self.log.info(
                "fleet: leader of shard {shard}/{shards} (term {term}{how})",
                shard=self.settings.shard,
                shards=self.settings.shards,
                term=lease.term,
                how=", took over" if lease.took_over else "",
            )
        else:
            self.log.info(
                "fleet: standby for shard {shard}/{shards}; leader {leader} (term {term})",
                shard=self.settings.shard,
                shards=self.settings.shards,
                leader=lease.leader,
                term=lease.term,
            )

    def _publish_status(self) -> None:
        lease = self.lease
        refusal = lease.refusal
        self.status.set(
            FleetStatus(
                shard=self.settings.shard,
                shards=self.settings.shards,
                replica=self.settings.replica_id,
                lease_s=self.settings.lease_s,
                role=lease.role,
                leader=lease.leader,
                term=lease.term,
                error=lease.error,
                leaderless_since=lease.leaderless_since,
                valid_until=lease.valid_until,
                refused=None if refusal is None else refusal.problem,
            )
        )
        self.metrics.fleet_term.labels(str(self.settings.shard)).set(lease.term)
        for reason in REFUSAL_REASONS:
            on = refusal is not None and refusal.reason == reason
            self.metrics.fleet_refused.labels(reason).set(1 if on else 0)

    async def give_up(self) -> None:
        """Release the lease and the replica id, within RELEASE_S whatever Redis does. A
        request still in flight (abandoned by the cancel, its thread runs on) may take or
        extend the lease after a release, so it is waited for first."""
        renewing = self.renewing
        if renewing is None:
            return  # never asked: nothing registered
        with trio.move_on_after(RELEASE_S) as scope:
            scope.shield = True
            if not renewing.is_set():
                await trio.to_thread.run_sync(renewing.wait, RELEASE_S, abandon_on_cancel=True)
            try:
                released = await trio.to_thread.run_sync(
                    release, self.client, self.settings, self.lease.token, abandon_on_cancel=True
                )
            except REDIS_ERRORS as exc:
                self.log.warning("fleet: lease not released ({why})", why=failure_text(exc))
                return
        if scope.cancelled_caught:
            return
        self.lease.role, self.lease.valid_until = "standby", float("-inf")
        self._publish_status()
        if released:
            self.log.info("fleet: lease of shard {shard} released", shard=self.settings.shard)

    async def others(self, own: Ranking, rank_interval_s: float) -> Mapping[int, Ranking]:
        """Write this shard's ranking (as its leader) and read every shard's; nothing on
        failure (the merge then names the other shards missing)."""
        settings = self.settings
        ttl = RANKING_TTL_INTERVALS * rank_interval_s
        leads = self.lease.may_publish(trio.current_time())

        def exchange() -> Mapping[int, Ranking]:
            if leads:
                write_shard_ranking(self.client, settings, own, ttl)
            return read_shard_rankings(self.client, settings)

        try:
            with trio.fail_after(min(rank_interval_s, 2.0)):
                return await trio.to_thread.run_sync(exchange, abandon_on_cancel=True)
        except trio.TooSlowError:
            return {}
        except REDIS_ERRORS:
            return {}  # the lease task says why Redis fails, once


async def run_fleet(
    rankings: trio.MemoryReceiveChannel[Ranking],
    outbox: trio.MemorySendChannel[PublisherInbox],
    *,
    settings: FleetSettings,
    agreement: Agreement,
    client: Callable[[], redis.Redis],
    snapshot: Latest[Ranking | None],
    status: Latest[FleetStatus | None],
    metrics: Metrics,
    top_n: int,
    rank_interval_s: float,
    wall: Callable[[], float] = time.time,
    flushed: trio.Event | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`rankings`: this shard's, from the ranking actor; `outbox`: the publisher's inbox
    (fences, and the global ranking on shard 0). Owns and closes both. `agreement`: what
    every replica on this channel must share (`Agreement.of(settings)`). `flushed`: set by
    the publisher once its final flush ended; on shutdown the lease is released only then
    (at most FLUSH_WAIT_S later), as Redis refuses the flush of a replica that released it."""
    redis_client = client()
    fleet = Fleet(
        settings, redis_client, agreement=agreement, status=status, metrics=metrics, wall=wall
    )

    async def hold_lease() -> None:
        ticker = Ticker(fleet.lease.renew_every_s)
        while True:
            await fleet.renew(outbox)
            await ticker.wait()

    async def merge() -> None:
        async for own in rankings:
            others: Mapping[int, Ranking] = {}
            if settings.shards > 1:
                others = await fleet.others(own, rank_interval_s)
            merged = merge_rankings(
                own, others, shard=settings.shard, shards=settings.shards, top_n=top_n
            )
            snapshot.set(merged)
            if settings.shard == 0:
                await outbox.send(merged)

    try:
        async with rankings, outbox, trio.open_nursery() as nursery:
            nursery.start_soon(hold_lease)
            task_status.started()
            nursery.start_soon(merge)
    finally:
        try:
            if flushed is not None:
                with trio.move_on_after(FLUSH_WAIT_S) as waiting:
                    waiting.shield = True
                    await flushed.wait()
            await fleet.give_up()
        finally:
            redis_client.close()
