"""Fleet actor: this replica's shard lease, and the global ranking.

Two tasks. `hold_lease` asks Redis every lease/3 to acquire or renew the shard's lease and
sends the answer to the publisher as a `Leadership` fence (the publisher alone decides, by
its own clock, whether a write may go). `merge` receives this shard's ranking from the
ranking actor, writes it to Redis while this replica leads, reads the other shards'
rankings, and replaces the snapshot /top5 reads with the merge; on shard 0 it also sends the
merge to the publisher as the `top_movers` document (published by shard 0's leader only).

With one shard the merge is this shard's ranking and no ranking key is written or read.
Redis unreachable: the lease is not confirmed, so the publisher holds; /top5 serves this
shard alone, naming the others missing; the fleet re-forms at the first answer. On shutdown
the lease is released, so a standby takes over at its next request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import redis
import trio
from loguru import logger

from screener.core.config import FleetSettings
from screener.core.metrics import Metrics
from screener.core.models import FleetStatus, PublisherInbox, Ranking
from screener.core.periodic import Ticker
from screener.core.snapshot import Latest
from screener.core.supervise import failure_text
from screener.fleet.lease import (
    RANKING_TTL_INTERVALS,
    acquire_or_renew,
    read_shard_rankings,
    release,
    write_shard_ranking,
)
from screener.fleet.shards import Grant, Lease, merge_rankings
from screener.redis.client import REDIS_ERRORS

RELEASE_S = 1.0
"""Most time spent giving the lease up on shutdown; a standby otherwise waits one lease."""


class Fleet:
    """The actor's state: the lease, the last shard rankings read, and the log."""

    def __init__(
        self,
        settings: FleetSettings,
        client: redis.Redis,
        *,
        status: Latest[FleetStatus | None],
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.client = client
        self.lease = Lease(
            settings.replica_id,
            settings.lease_s,
            keys=(settings.key(settings.shard, "lease"), settings.key(settings.shard, "term")),
        )
        self.status = status
        self.metrics = metrics
        self.log = logger.bind(actor="fleet")
        self.renewing: threading.Event | None = None  # set once the last request ended
        self._publish_status()

    async def renew(self, outbox: trio.MemorySendChannel[PublisherInbox]) -> None:
        """One acquire-or-renew; the answer goes to the publisher as the fence."""
        lease, metrics = self.lease, self.metrics
        was = (lease.role, lease.leader, lease.error)
        sent_at = trio.current_time()
        done = self.renewing = threading.Event()

        def request() -> Grant:
            try:
                return acquire_or_renew(self.client, self.settings)
            finally:
                done.set()

        try:
            with trio.fail_after(lease.renew_every_s):
                grant = await trio.to_thread.run_sync(request, abandon_on_cancel=True)
        except trio.TooSlowError:
            self._failed("no answer in time", refused=False, was_error=was[2])
            return
        except REDIS_ERRORS as exc:
            refused = isinstance(exc, redis.ResponseError)
            self._failed(failure_text(exc), refused=refused, was_error=was[2])
            return
        fence = lease.answered(grant, sent_at=sent_at)
        metrics.fleet_renewals.labels("granted" if lease.role == "leader" else "standby").inc()
        if lease.took_over:
            metrics.fleet_takeovers.inc()
        if (lease.role, lease.leader, lease.error) != was:
            self._log_change()
        self._publish_status()
        await outbox.send(fence)

    def _failed(self, reason: str, *, refused: bool, was_error: str | None) -> None:
        """No grant; one warning when the failures begin (the fence simply runs out)."""
        self.lease.failed(reason, refused=refused, now=trio.current_time())
        self.metrics.fleet_renewals.labels("failed").inc()
        if was_error is None:
            self.log.warning(
                "fleet: no lease for shard {shard} ({reason}); publishing held until redis answers",
                shard=self.settings.shard,
                reason=reason,
            )
        self._publish_status()

    def _log_change(self) -> None:
        lease = self.lease
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
            )
        )
        shard = str(self.settings.shard)
        self.metrics.fleet_leader.labels(shard).set(1 if lease.role == "leader" else 0)
        self.metrics.fleet_term.labels(shard).set(lease.term)

    async def give_up(self) -> None:
        """Release the lease if held, within RELEASE_S whatever Redis does. A request still
        in flight (abandoned by the cancel, its thread runs on) may take or extend the lease
        after a release, so it is waited for first; a standby stays one if it ends first."""
        renewing = self.renewing
        if self.lease.role != "leader" and (renewing is None or renewing.is_set()):
            return
        with trio.move_on_after(RELEASE_S) as scope:
            scope.shield = True
            if renewing is not None and not renewing.is_set():
                await trio.to_thread.run_sync(renewing.wait, RELEASE_S, abandon_on_cancel=True)
            try:
                await trio.to_thread.run_sync(
                    release, self.client, self.settings, abandon_on_cancel=True
                )
            except REDIS_ERRORS as exc:
                self.log.warning("fleet: lease not released ({why})", why=failure_text(exc))
                return
        if not scope.cancelled_caught:
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
    client: Callable[[], redis.Redis],
    snapshot: Latest[Ranking | None],
    status: Latest[FleetStatus | None],
    metrics: Metrics,
    top_n: int,
    rank_interval_s: float,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`rankings`: this shard's, from the ranking actor; `outbox`: the publisher's inbox
    (fences, and the global ranking on shard 0). Owns and closes both."""
    redis_client = client()
    fleet = Fleet(settings, redis_client, status=status, metrics=metrics)

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
            await fleet.give_up()
        finally:
            redis_client.close()
