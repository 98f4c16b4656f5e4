"""The fleet's promise under faults, counted: every push published once, none back in time.

Real processes: two replicas of one shard (and, last, a single service), each talking to
one redis-server through its own fault proxy (devtools/faultproxy.py), the simulator pushing
at a steady rate in the test's loop. Each test makes one fault, checks that the fleet felt
it and recovered (a takeover or a Redis outage seen on /health and /metrics), then stops the
market and holds every push since the fleet formed against every `market_data` event
(devtools/delivery.py): 0 lost, 0 duplicated, 0 back in time.

The faults: a partition of the leader shorter than its lease (its writes time out and are
retried while the first ones are still on their way) and one longer than its lease (a
deposed leader's late writes arrive after its successor's); a black hole; redis-server
frozen (SIGSTOP) past the write timeout; the leader SIGKILLed, or frozen for three leases; a
1 s delay on the leader's link; a single service behind a partition longer than
REDIS_TIMEOUT_S."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from devtools.devredis import RedisServer
from devtools.faultproxy import FaultProxy
from screener.redis.client import REDIS_TIMEOUT_S
from tests.system.fleet_harness import SETTLE_S, Fleet, Replica, Shape, open_fleet

PAIR = Shape(shards=1, replicas=2, symbols=12, rate_per_s=200.0, lease_s=2.0, proxied=True)
TAKEOVERS = "screener_fleet_takeovers_total"
POLL_S = 0.1


def renewal_s(lease_s: float) -> float:
    """The fleet actor asks for the lease every lease/3 (actors/fleet.py)."""
    return lease_s / 3


def proxy_of(r: Replica) -> FaultProxy:
    assert r.proxy is not None
    return r.proxy


@asynccontextmanager
async def watching(f: Fleet, *replicas: Replica) -> AsyncIterator[dict[str, list[Any]]]:
    """Every /health answer of `replicas` (None: no answer) every POLL_S while the block
    runs: what each reported during a fault, which a later look could no longer see."""
    seen: dict[str, list[Any]] = {r.name: [] for r in replicas}
    async with trio.open_nursery() as nursery:

        async def poll() -> None:
            while True:
                for r in replicas:
                    seen[r.name].append(await r.health(f.http))
                await trio.sleep(POLL_S)

        nursery.start_soon(poll)
        yield seen
        nursery.cancel_scope.cancel()


def felt_redis(docs: list[Any]) -> bool:
    """Some answer said Redis was not reachable in time (writes or the lease)."""
    return any(
        d is not None and (d["redis"] != "up" or any("fleet" in p for p in d.get("problems", [])))
        for d in docs
    )


async def pair(f: Fleet) -> tuple[Replica, Replica, int]:
    """(leader, standby, the term the standby sees) once the shard has its leader."""
    leader = await f.leader_of(0)
    standby = next(r for r in f.replicas if r is not leader)
    doc = await standby.health(f.http)
    assert doc is not None
    return leader, standby, int(doc["fleet"]["term"])


async def took_over(f: Fleet, standby: Replica, term: int, *, within_s: float) -> float:
    """Seconds until `standby` says it leads in a later term; asserts its takeover counter."""
    start = trio.current_time()
    with trio.fail_after(within_s):
        while True:
            doc = await standby.health(f.http)
            if doc is not None and doc["fleet"]["role"] == "leader":
                break
            await trio.sleep(POLL_S / 2)
    elapsed = trio.current_time() - start
    assert doc["fleet"]["term"] > term
    assert await standby.metric(f.http, TAKEOVERS) >= 1
    return elapsed


async def back_as_standby(f: Fleet, r: Replica, *, within_s: float) -> None:
    with trio.fail_after(within_s):
        while await r.role(f.http) != "standby":  # noqa: ASYNC110 - another process
            await trio.sleep(POLL_S)


async def assert_exact(f: Fleet, since_ms: int, *, quiet_s: float = 3.0) -> None:
    verdict = await f.verdict(since_ms, quiet_s=quiet_s)
    assert verdict.counts == (0, 0, 0), verdict.summary()


async def test_a_partition_of_the_leader_within_its_lease_publishes_each_push_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """3.5 s, lease 5 s: the leader's writes time out (REDIS_TIMEOUT_S) and are sent again
    while the first copies wait in the partition; at the heal both arrive."""
    lease_s, partition_s = 5.0, 3.5
    async with open_fleet(redis_server.port, tmp_path, replace(PAIR, lease_s=lease_s)) as f:
        leader, _, _ = await pair(f)
        since = await f.publishing()
        await trio.sleep(1.0)
        async with watching(f, leader) as seen:
            proxy_of(leader).stall()
            await trio.sleep(partition_s)
            proxy_of(leader).forward()
            await f.publishing("events pushed after the heal")
        assert felt_redis(seen[leader.name]), "the leader never saw the partition"
        await f.leader_of(0)
        await assert_exact(f, since)


async def test_a_deposed_leaders_late_writes_are_refused(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A partition of three leases: the standby takes over; at the heal the old leader's
    held writes and lease requests arrive after its successor's events."""
    lease_s = PAIR.lease_s or 0.0
    async with open_fleet(redis_server.port, tmp_path, PAIR) as f:
        leader, standby, term = await pair(f)
        since = await f.publishing()
        await trio.sleep(1.0)
        proxy_of(leader).stall()
        await took_over(f, standby, term, within_s=lease_s + renewal_s(lease_s) + SETTLE_S)
        await trio.sleep(lease_s)  # its successor publishes meanwhile
        proxy_of(leader).forward()
        await back_as_standby(f, leader, within_s=SETTLE_S)
        await f.publishing("the new leader publishes after the heal")
        await assert_exact(f, since)


async def test_a_black_hole_under_the_leader_hands_its_shard_over_and_loses_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    lease_s = PAIR.lease_s or 0.0
    async with open_fleet(redis_server.port, tmp_path, PAIR) as f:
        leader, standby, term = await pair(f)
        since = await f.publishing()
        await trio.sleep(1.0)
        proxy_of(leader).blackhole()
        await took_over(f, standby, term, within_s=lease_s + renewal_s(lease_s) + SETTLE_S)
        await trio.sleep(lease_s)
        proxy_of(leader).forward()  # its damaged connections are closed: it reconnects
        assert proxy_of(leader).stats.dropped > 0
        await back_as_standby(f, leader, within_s=SETTLE_S)
        await assert_exact(f, since)


async def test_redis_frozen_past_the_write_timeout_delivers_each_push_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """redis-server SIGSTOPped 3.5 s, lease 5 s: every write in flight times out and is
    retried; at SIGCONT Redis runs the first copies, then the retries."""
    lease_s, frozen_s = 5.0, 3.5
    assert redis_server.proc is not None
    async with open_fleet(redis_server.port, tmp_path, replace(PAIR, lease_s=lease_s)) as f:
        leader, standby, _ = await pair(f)
        since = await f.publishing()
        await trio.sleep(1.0)
        async with watching(f, leader, standby) as seen:
            redis_server.proc.send_signal(signal.SIGSTOP)
            try:
                await trio.sleep(frozen_s)
            finally:
                redis_server.proc.send_signal(signal.SIGCONT)
            await f.publishing("events pushed after SIGCONT")
        assert felt_redis(seen[leader.name]), "the leader never saw Redis frozen"
        await f.leader_of(0)
        await assert_exact(f, since)


async def test_sigkill_of_the_leader_loses_no_push(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The standby held every event of the gap: it publishes them once it leads."""
    lease_s = PAIR.lease_s or 0.0
    async with open_fleet(redis_server.port, tmp_path, PAIR) as f:
        leader, standby, term = await pair(f)
        since = await f.publishing()
        await trio.sleep(1.0)
        assert leader.proc is not None
        leader.proc.kill()
        f.replicas.remove(leader)
        await took_over(f, standby, term, within_s=lease_s + renewal_s(lease_s) + SETTLE_S)
        await f.publishing("the new leader publishes")
        await assert_exact(f, since)


async def test_sigstop_of_the_leader_then_sigcont_loses_and_repeats_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    lease_s = PAIR.lease_s or 0.0
    async with open_fleet(redis_server.port, tmp_path, PAIR) as f:
        leader, standby, term = await pair(f)
        since = await f.publishing()
        await trio.sleep(1.0)
        assert leader.proc is not None
        leader.proc.send_signal(signal.SIGSTOP)
        f.replicas.remove(leader)  # it answers no HTTP while frozen
        try:
            await took_over(f, standby, term, within_s=lease_s + renewal_s(lease_s) + SETTLE_S)
            await trio.sleep(lease_s)
        finally:
            leader.proc.send_signal(signal.SIGCONT)
        f.replicas.append(leader)
        await back_as_standby(f, leader, within_s=SETTLE_S)
        await f.publishing("the new leader publishes after the wake")
        await assert_exact(f, since)


async def test_a_slow_link_under_the_leader_hands_its_shard_to_the_standby(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """1 s each way on the leader's link (2 s RTT, longer than a renewal period): the leader
    cannot hold its lease in time, so the standby must lead within a lease plus a renewal
    period (and the one delay for the request already on its way), and the shard keeps
    publishing; the old leader's slow writes are refused."""
    lease_s, delay_s = PAIR.lease_s or 0.0, 1.0
    bound_s = lease_s + renewal_s(lease_s) + delay_s
    async with open_fleet(redis_server.port, tmp_path, PAIR) as f:
        leader, standby, term = await pair(f)
        since = await f.publishing()
        await trio.sleep(1.0)
        proxy_of(leader).delay(delay_s)
        elapsed = await took_over(f, standby, term, within_s=bound_s + SETTLE_S)
        # A margin of one second for the polling and a loaded machine.
        assert elapsed <= bound_s + 1.0, f"took over after {elapsed:.1f} s"
        await f.publishing("the shard keeps publishing")
        await trio.sleep(2 * lease_s)  # the old leader's slow writes arrive meanwhile
        await assert_exact(f, since)


async def test_a_single_service_partitioned_past_the_redis_timeout_publishes_each_push_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Default settings (lease included): writes time out after REDIS_TIMEOUT_S and are
    retried while the first copies wait; after the heal nothing arrives twice."""
    shape = replace(PAIR, replicas=1, lease_s=None)
    async with open_fleet(redis_server.port, tmp_path, shape) as f:
        (service,) = f.replicas
        since = await f.publishing()
        await trio.sleep(1.0)
        async with watching(f, service) as seen:
            proxy_of(service).stall()
            await trio.sleep(REDIS_TIMEOUT_S + 1.5)
            proxy_of(service).forward()
            await f.publishing("events pushed after the heal")
        assert felt_redis(seen[service.name]), "the service never saw the partition"
        doc = await service.health(f.http)
        assert doc is not None
        assert (doc["redis"], doc["fleet"]["role"]) == ("up", "leader")
        await assert_exact(f, since)
