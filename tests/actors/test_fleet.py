"""The fleet on MockClock: the lease schedule, takeover and fencing between two replicas
sharing one (fake) Redis, the release on shutdown, the ranking merge, and the publisher
obeying its fence. The Lua scripts themselves run against a real redis-server in
tests/system/test_fleet.py; here a fake answers them with the same rules on virtual time."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, cast

import pytest
import redis
import trio
import trio.testing

from actors.fleet import Fleet, run_fleet
from actors.publisher import FencedOut, Publisher, run_publisher
from actors.ranking import rank
from screener.core.config import FleetSettings, load_settings
from screener.core.metrics import Metrics
from screener.core.models import (
    FleetStatus,
    Leadership,
    MarketData,
    PublisherInbox,
    Ranking,
    RedisStatus,
    SymbolStat,
)
from screener.core.snapshot import Latest
from screener.fleet.lease import ACQUIRE_OR_RENEW, RELEASE
from tests.actors.fakes import M, MemoryRedis, Write, market_data, threads_hold_clock

LEASE_S = 6.0  # renewals every 2 s, fenced end 4.8 s after a request


class LeaseRedis:
    """One Redis shared by every replica of a test: keys with expiry on the MockClock, the
    two lease scripts answered by the rules of screener/fleet/lease.py, SET PX and MGET.
    `cut` holds the replicas that cannot reach it (a partition, or a killed process)."""

    def __init__(self, clock: trio.testing.MockClock) -> None:
        self.clock = clock
        self.keys: dict[str, tuple[bytes, float]] = {}
        self.cut: set[str] = set()
        self.requests: list[tuple[str, float]] = []  # (replica, virtual time)

    def client(self, replica: str) -> Callable[[], redis.Redis]:
        return lambda: cast(redis.Redis, Client(self, replica))

    def get(self, key: str) -> bytes | None:
        value = self.keys.get(key)
        if value is None or value[1] <= self.clock.current_time():
            self.keys.pop(key, None)
            return None
        return value[0]

    def set(self, key: str, value: bytes, px: float | None = None) -> None:
        until = math.inf if px is None else self.clock.current_time() + px / 1000
        self.keys[key] = (value, until)


class Client:
    def __init__(self, server: LeaseRedis, replica: str) -> None:
        self.server = server
        self.replica = replica

    def _reach(self) -> LeaseRedis:
        if self.replica in self.server.cut:
            raise redis.ConnectionError("Connection refused")
        return self.server

    def eval(self, script: str, numkeys: int, *args: Any) -> Any:
        r = self._reach()
        keys, argv = [str(k) for k in args[:numkeys]], [str(a) for a in args[numkeys:]]
        me = argv[0].encode()
        if script == RELEASE:
            if r.get(keys[0]) == me:
                del r.keys[keys[0]]
                return 1
            return 0
        assert script == ACQUIRE_OR_RENEW
        r.requests.append((self.replica, r.clock.current_time()))
        lease, term_key, last_key = keys
        holder = r.get(lease)
        term = int(r.get(term_key) or b"0")
        if holder == me:
            r.set(lease, me, px=float(argv[1]))
            return [holder, term, holder]
        if holder is not None:
            return [holder, term, holder]
        previous = r.get(last_key)
        r.set(lease, me, px=float(argv[1]))
        r.set(last_key, me)
        r.set(term_key, str(term + 1).encode())
        return [me, term + 1] + ([previous] if previous is not None else [])

    def set(self, key: str, value: bytes, px: int) -> None:
        self._reach().set(key, value, px=px)

    def mget(self, keys: list[str]) -> list[bytes | None]:
        r = self._reach()
        return [r.get(k) for k in keys]

    def close(self) -> None:
        pass


class Replica:
    """`run_fleet` for one replica in its own cancel scope, its fences collected."""

    def __init__(self, server: LeaseRedis, name: str, *, shard: int = 0, shards: int = 1):
        self.name = name
        self.settings = FleetSettings(
            shards=shards, shard=shard, lease_s=LEASE_S, replica_id=name, key_prefix="t"
        )
        self.server = server
        self.scope = trio.CancelScope()
        self.metrics = Metrics()
        self.status: Latest[FleetStatus | None] = Latest(None)
        self.snapshot: Latest[Ranking | None] = Latest(None)
        self.fences: list[tuple[float, Leadership]] = []
        self.published: list[Ranking] = []
        self.rankings, self._rankings = trio.open_memory_channel[Ranking](4)

    async def run(self) -> None:
        out_send, out_recv = trio.open_memory_channel[PublisherInbox](64)
        with self.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._collect, out_recv)
                await run_fleet(
                    self._rankings,
                    out_send,
                    settings=self.settings,
                    client=self.server.client(self.name),
                    snapshot=self.snapshot,
                    status=self.status,
                    metrics=self.metrics,
                    top_n=2,
                    rank_interval_s=15.0,
                )

    async def _collect(self, inbox: trio.MemoryReceiveChannel[PublisherInbox]) -> None:
        async for item in inbox:
            if isinstance(item, Leadership):
                self.fences.append((trio.current_time(), item))
            elif isinstance(item, Ranking):
                self.published.append(item)

    def last_fence(self) -> Leadership:
        return self.fences[-1][1]


async def test_the_lease_is_renewed_every_third_of_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = LeaseRedis(autojump_clock)
    a = Replica(server, "a")
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        await trio.sleep(9.0)
        a.scope.cancel()
    assert [t for _, t in server.requests] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert [(at, f.role, f.term) for at, f in a.fences] == [
        (t, "leader", 1) for t in (0.0, 2.0, 4.0, 6.0, 8.0)
    ]
    assert a.fences[-1][1].valid_until == pytest.approx(8.0 + LEASE_S * 0.8)
    assert server.get("t:fleet:1:0:lease") is None  # released on the way out
    status = a.status.value
    assert status is not None
    assert (status.role, status.leader, status.term) == ("leader", "a", 1)


async def a_then_b(nursery: trio.Nursery, a: Replica, b: Replica) -> None:
    """`a` starts at 0 and leads; `b` starts at 0.5 and stands by (requests at 0.5, 2.5, ...)."""
    nursery.start_soon(a.run)
    await trio.sleep(0.5)
    nursery.start_soon(b.run)


async def test_a_standby_takes_over_only_after_the_leader_has_stopped_publishing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = LeaseRedis(autojump_clock)
    a, b = Replica(server, "a"), Replica(server, "b")
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        await a_then_b(nursery, a, b)
        await trio.sleep(9.0)  # a renews at 8.0 for the last time
        assert b.last_fence().role == "standby"
        assert b.last_fence().drop_held
        server.cut.add("a")  # a dies or is cut off: its renewals from 10.0 fail
        await trio.sleep(10.0)
        a_fenced_at = a.last_fence().valid_until
        taken = next(at for at, f in b.fences if f.role == "leader")
        # The fence: a's own clock stopped it before b could hold the lease at all.
        assert a_fenced_at == pytest.approx(8.0 + LEASE_S * 0.8)
        assert a_fenced_at < taken
        assert taken <= 8.0 + LEASE_S + LEASE_S / 3  # within a lease and one renewal period
        took = b.last_fence()
        assert (took.role, took.term) == ("leader", 2)
        assert b.metrics.registry.get_sample_value("screener_fleet_takeovers_total") == 1
        status = a.status.value
        assert status is not None
        assert status.error is not None
        a.scope.cancel()
        b.scope.cancel()


async def test_a_clean_shutdown_hands_the_lease_over_at_the_next_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = LeaseRedis(autojump_clock)
    a, b = Replica(server, "a"), Replica(server, "b")
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        await a_then_b(nursery, a, b)
        await trio.sleep(2.5)
        a.scope.cancel()  # at 3.0, between a's requests and b's (0.5, 2.5, 4.5): released
        await trio.sleep(3.0)
        taken = next(at for at, f in b.fences if f.role == "leader")
        assert taken == pytest.approx(4.5)  # b's next request, not a lease later
        b.scope.cancel()


async def test_the_global_ranking_merges_every_shard_and_names_the_missing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = LeaseRedis(autojump_clock)
    zero = Replica(server, "z", shard=0, shards=3)
    one = Replica(server, "o", shard=1, shards=3)
    own_one = rank(
        [SymbolStat("B_USDT", 9.0, 2.0), SymbolStat("C_USDT", -9.0, 3.0)],
        top_n=2,
        lookback_min=15,
        wall_ts=M,
    )
    own_zero = rank([SymbolStat("A_USDT", 1.0, 1.0)], top_n=2, lookback_min=15, wall_ts=M)
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        nursery.start_soon(zero.run)
        nursery.start_soon(one.run)
        await trio.sleep(1.0)
        await one.rankings.send(own_one)  # shard 1's leader writes its ranking
        await trio.sleep(1.0)
        await zero.rankings.send(own_zero)
        await trio.sleep(1.0)
        merged = zero.snapshot.value
        assert merged is not None
        assert [s.symbol for s in merged.gainers] == ["B_USDT", "A_USDT"]
        assert [s.symbol for s in merged.losers] == ["C_USDT", "A_USDT"]
        assert merged.ranked == 3
        assert merged.as_dict()["shards"] == {"reporting": 2, "total": 3, "missing": [2]}
        assert zero.published == [merged]  # shard 0 hands the global ranking on
        assert one.published == []  # other shards never do
        zero.scope.cancel()
        one.scope.cancel()


# --- the publisher obeys its fence ------------------------------------------------------


class Writes(MemoryRedis):
    """Every write the publisher makes, at its virtual time."""

    @property
    def batches(self) -> list[tuple[float, list[str]]]:
        return [(w.at, [e.kline.symbol for e in w.events]) for w in self.writes]


async def fenced_publisher(
    inbox: trio.MemoryReceiveChannel[PublisherInbox], writes: Writes, metrics: Metrics
) -> None:
    """A fleet replica's publisher over `writes`, Redis up, its thread visible to the clock."""
    await run_publisher(
        inbox,
        settings=load_settings({}).redis,
        status=Latest(RedisStatus(up=True, error=None)),
        metrics=metrics,
        link=writes.link(),
        ping=writes.ping,
        fenced=True,
    )


def ev(symbol: str) -> list[MarketData]:
    return [market_data(symbol, 1.0, M * 1000)]


async def test_a_fenced_publisher_writes_only_within_its_lease(
    autojump_clock: trio.testing.MockClock,
) -> None:
    writes = Writes(autojump_clock)
    metrics = Metrics()
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](16)
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        nursery.start_soon(fenced_publisher, inbox_recv, writes, metrics)
        await inbox_send.send(ev("A"))  # before any lease answer: held
        await trio.sleep(1.0)
        assert writes.batches == []
        await inbox_send.send(Leadership("leader", 5.0, 1, drop_held=False))
        await trio.sleep(1.0)  # t=2
        assert writes.batches == [(1.0, ["A"])]
        await trio.sleep(4.0)  # t=6: the lease ran out by this clock, no renewal came
        await inbox_send.send(ev("B"))
        await trio.sleep(1.0)
        assert writes.batches == [(1.0, ["A"])]
        await inbox_send.send(Leadership("leader", 12.0, 2, drop_held=False))  # renewed
        await trio.sleep(1.0)
        assert writes.batches[-1] == (7.0, ["B"])
        await inbox_send.send(Leadership("standby", -math.inf, 3, drop_held=True))
        await inbox_send.send(ev("C"))
        await trio.sleep(1.0)
        assert writes.batches[-1] == (7.0, ["B"])  # a standby leaves C to its leader
        standby = metrics.registry.get_sample_value("screener_fleet_standby_events_total")
        assert standby == 1
        await inbox_send.send(Leadership("leader", 30.0, 3, drop_held=True))  # took over
        await inbox_send.send(ev("D"))
        await trio.sleep(1.0)
        assert writes.batches[-1] == (9.0, ["D"])
        nursery.cancel_scope.cancel()


async def test_a_leader_that_took_over_drops_what_it_held_from_before(
    autojump_clock: trio.testing.MockClock,
) -> None:
    writes = Writes(autojump_clock)
    metrics = Metrics()
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](16)
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        nursery.start_soon(fenced_publisher, inbox_recv, writes, metrics)
        await inbox_send.send(ev("A"))
        await inbox_send.send(ev("B"))
        await trio.sleep(1.0)
        await inbox_send.send(Leadership("leader", 10.0, 4, drop_held=True))
        await inbox_send.send(ev("C"))
        await trio.sleep(1.0)
        assert writes.batches == [(1.0, ["C"])]
        standby = metrics.registry.get_sample_value("screener_fleet_standby_events_total")
        assert standby == 2
        nursery.cancel_scope.cancel()


async def test_a_lease_answer_ends_the_publishers_backoff_after_a_redis_outage(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis
) -> None:
    """The fleet actor's lease answer proves Redis answers: the publisher's retry goes then,
    not at the end of a backoff grown through the outage (it once waited up to 30 s after a
    Redis restart). An answer while the publisher still cannot reach Redis costs one PING,
    and the backoff grows on."""
    publisher = Publisher(
        load_settings({}).redis,
        fake.link(),
        status=Latest(RedisStatus(up=True, error=None)),
        metrics=Metrics(),
        rand=lambda: 0.5,  # delays 0.25, 0.5, 1, 2, 4, 8, ...
        fenced=True,
    )
    lease = Leadership("leader", 1000.0, 1, drop_held=False)
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](16)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher.collect, inbox_recv)
            nursery.start_soon(publisher.flush, fake.ping)
            await inbox_send.send(lease)
            await trio.sleep_until(1.0)
            fake.state = "down"
            await inbox_send.send(ev("A"))  # fails at 1.0; PINGs at 1.25, 1.75, 2.75, 4.75
            await trio.sleep_until(6.0)
            await inbox_send.send(lease)  # answered, but this link still fails: one PING
            await trio.sleep_until(10.0)
            fake.state = "up"  # the next PING by the backoff alone: 6.0 + 8 = 14.0
            await trio.sleep_until(10.5)
            await inbox_send.send(lease)
            await trio.sleep_until(11.0)
            nursery.cancel_scope.cancel()
    assert fake.pings == [1.25, 1.75, 2.75, 4.75, 6.0, 10.5]
    assert fake.delivered == [Write(10.5, "pubsub", ev("A"), None)]


async def test_a_slice_whose_lease_ran_out_while_it_was_encoded_is_not_written(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The last check, right before the send: a slice taken while the lease was valid
    but sent after it ran out (encoding, or a frozen process) writes nothing and goes back."""
    writes = Writes(autojump_clock)
    publisher = Publisher(
        load_settings({}).redis,
        writes.link(),
        status=Latest(RedisStatus(up=True, error=None)),
        metrics=Metrics(),
        fenced=True,
    )
    publisher.lanes.refence(Leadership("leader", 1.0, 1, drop_held=False))
    publisher.lanes.buffer.add(ev("A"))
    sent = publisher.lanes.next_slice(0.5)
    assert sent is not None
    await trio.sleep_until(1.0)
    with pytest.raises(FencedOut):
        await publisher._send(sent)
    assert writes.writes == []


async def test_a_request_in_flight_at_shutdown_ends_before_the_release() -> None:
    """Cancelled while its request is in Redis (the thread runs on), a replica must not
    release first: the request would then take the lease again after the release, and the
    standby would wait a whole lease. Real time, a few milliseconds: the order is what
    counts, and MockClock cannot pass a thread that waits on purpose."""
    order: list[str] = []

    class Client:
        def eval(self, script: str, numkeys: int, *args: Any) -> int:
            order.append("release")
            return 1

    fleet = Fleet(
        FleetSettings(replica_id="a"),
        cast(redis.Redis, Client()),
        status=Latest(None),
        metrics=Metrics(),
    )
    fleet.renewing = in_flight = threading.Event()  # a request sent, no answer yet

    def answer() -> None:
        order.append("request answered")
        in_flight.set()

    timer = threading.Timer(0.05, answer)
    timer.start()
    await fleet.give_up()
    timer.join()
    assert order == ["request answered", "release"]
