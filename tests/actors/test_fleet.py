"""The fleet on MockClock: the lease schedule, takeover and fencing between two replicas
sharing one (fake) Redis, the release on shutdown and the ranking merge (the publisher's
side of the fence: tests/actors/test_publisher_fence.py). The Lua scripts themselves run
against a real redis-server in tests/system/test_lease_scripts.py; here a fake answers them
with the same rules on virtual time."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, cast

import pytest
import redis
import trio
import trio.testing
from loguru import logger

from actors.fleet import Fleet, run_fleet
from actors.ranking import rank
from screener.core.config import load_settings
from screener.core.metrics import Metrics
from screener.core.models import (
    FeedStatus,
    Fence,
    FleetStatus,
    Leadership,
    PublisherInbox,
    Ranking,
    RedisStatus,
    SymbolStat,
    UniverseStatus,
)
from screener.core.snapshot import Latest, Views
from screener.fleet.agreement import Agreement
from screener.fleet.lease import ACQUIRE_OR_RENEW, RELEASE
from screener.http.health import health_report
from tests.actors.fakes import M, threads_hold_clock

LEASE_S = 6.0  # renewals every 2 s, fenced end 4.8 s after a request
WALL = 1_700_000_000.0  # Unix time at virtual time 0: the replicas' wall clock and Redis's


class LeaseRedis:
    """One Redis shared by every replica of a test: keys with expiry on the MockClock, the
    two lease scripts answered by the rules of screener/fleet/lease.py, SET PX and MGET.
    `cut` holds the replicas that cannot reach it (a partition, or a killed process);
    `lost`, those whose requests reach it but whose answers never come back in time (a
    slow link back); `late_by`, how much later than sent each replica's requests arrive."""

    def __init__(self, clock: trio.testing.MockClock) -> None:
        self.clock = clock
        self.keys: dict[str, tuple[bytes, float]] = {}
        self.cut: set[str] = set()
        self.lost: set[str] = set()
        self.late_by: dict[str, float] = {}
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

    def ttl(self, key: str) -> float:
        return self.keys[key][1] - self.clock.current_time() if self.get(key) else 0.0

    def acquire(self, replica: str, keys: list[str], argv: list[bytes]) -> list[object]:
        """ACQUIRE_OR_RENEW, step by step as the Lua script does it."""
        lease, term_key, last, identity, by_channel, by_prefix = keys
        token, lease_ms, deadline_ms, heard, doc, config_ms, until_ms = argv
        now_ms = (WALL + self.clock.current_time() + self.late_by.get(replica, 0.0)) * 1000
        if now_ms > int(deadline_ms):
            return [b"late", int(now_ms)]

        def refuse(answer: list[object]) -> list[object]:
            if self.get(lease) == token:
                del self.keys[lease]
            return answer

        for key, where in ((by_channel, b"channel"), (by_prefix, b"prefix")):
            stored = self.get(key)
            if stored is not None and stored != doc:
                return refuse([b"config", where, stored])
        other = self.get(identity)
        if other is not None and other != token:
            return refuse([b"clash", other])
        self.set(by_channel, doc, float(config_ms))
        self.set(by_prefix, doc, float(config_ms))
        self.set(identity, token, float(lease_ms))
        holder, term = self.get(lease), int(self.get(term_key) or b"0")
        if heard != b"1":
            return [b"ok", holder or b"", term, holder or b"", 0]
        # A lease from the sending, not the arrival: the same end whenever the request lands
        # (this fake applies it at the sending, on the clock the keys expire by).
        px = max(1.0, int(until_ms) - (WALL + self.clock.current_time()) * 1000)
        if holder == token:
            self.set(lease, token, px)
            return [b"ok", holder, term, holder, 1]
        if holder is not None:
            return [b"ok", holder, term, holder, 0]
        previous = self.get(last)
        self.set(lease, token, px)
        self.set(last, token)
        self.set(term_key, str(term + 1).encode())
        return [b"ok", token, term + 1, previous or b"", 1]

    def release(self, keys: list[str], token: bytes) -> int:
        released = 0
        for i, key in enumerate(keys):
            if self.get(key) == token:
                del self.keys[key]
                released = released or int(i == 0)
        return released


def raw(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


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
        keys, argv = [str(k) for k in args[:numkeys]], [raw(a) for a in args[numkeys:]]
        if script == RELEASE:
            return r.release(keys, argv[0])
        assert script == ACQUIRE_OR_RENEW
        r.requests.append((self.replica, r.clock.current_time()))
        answer = r.acquire(self.replica, keys, argv)
        if self.replica in r.lost:
            raise redis.TimeoutError("Timeout reading from socket")
        return answer

    def set(self, key: str, value: bytes, px: int) -> None:
        self._reach().set(key, value, px=px)

    def mget(self, keys: list[str]) -> list[bytes | None]:
        r = self._reach()
        return [r.get(k) for k in keys]

    def close(self) -> None:
        pass


def virtual_wall() -> float:
    return WALL + trio.current_time()


class Replica:
    """`run_fleet` for one replica in its own cancel scope, its fences collected. `name`
    is its Redis client's (the process); `replica_id` its FLEET_REPLICA_ID (the name by
    default)."""

    def __init__(
        self,
        server: LeaseRedis,
        name: str,
        *,
        shard: int = 0,
        shards: int = 1,
        replica_id: str | None = None,
        env: dict[str, str] | None = None,
    ):
        self.name = name
        settings = load_settings(
            {
                "FLEET_SHARDS": str(shards),
                "FLEET_SHARD": str(shard),
                "FLEET_LEASE_S": f"{LEASE_S:g}",
                "FLEET_REPLICA_ID": replica_id or name,
                "FLEET_KEY_PREFIX": "t",
                **(env or {}),
            }
        )
        self.settings = settings.fleet
        self.agreement = Agreement.of(settings)
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
                    agreement=self.agreement,
                    client=self.server.client(self.name),
                    snapshot=self.snapshot,
                    status=self.status,
                    metrics=self.metrics,
                    top_n=2,
                    rank_interval_s=15.0,
                    wall=virtual_wall,
                )

    async def _collect(self, inbox: trio.MemoryReceiveChannel[PublisherInbox]) -> None:
        async for item in inbox:
            if isinstance(item, Leadership):
                self.fences.append((trio.current_time(), item))
            elif isinstance(item, Ranking):
                self.published.append(item)

    def last_fence(self) -> Leadership:
        return self.fences[-1][1]

    def fleet(self) -> FleetStatus:
        status = self.status.value
        assert status is not None
        return status

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def leads(self) -> float | None:
        return self.sample("screener_fleet_leader", shard=str(self.settings.shard))


async def test_the_lease_is_renewed_every_third_of_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = LeaseRedis(autojump_clock)
    a = Replica(server, "a")
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        await trio.sleep(9.0)
        status = a.fleet()
        assert (status.role, status.leader, status.term, status.refused) == ("leader", "a", 1, None)
        token = server.get("t:fleet:1:0:lease")
        assert token is not None
        assert token.startswith(b"a#")  # the process's token: the replica id and a nonce
        assert server.get("t:fleet:replica:a") == token
        a.scope.cancel()
    assert [t for _, t in server.requests] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert [(at, f.role, f.term) for at, f in a.fences] == [
        (t, "leader", 1) for t in (0.0, 2.0, 4.0, 6.0, 8.0)
    ]
    assert a.fences[-1][1].valid_until == pytest.approx(8.0 + LEASE_S * 0.8)
    assert a.fences[-1][1].fence == Fence(
        "t:fleet:1:0:lease", "t:fleet:1:0:term", token.decode(), 1
    )
    # Released on the way out: the lease and the replica id, and it no longer leads.
    assert server.get("t:fleet:1:0:lease") is None
    assert server.get("t:fleet:replica:a") is None
    assert a.fleet().role == "standby"


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
        assert b.last_fence().fence is None  # nothing for Redis to check: it writes nothing
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


# --- lease truth: what Redis holds is what the leader knows ------------------------------


def health_of(replica: Replica) -> tuple[int, dict[str, Any]]:
    """/health of a replica whose feed is fresh, as the route computes it now."""
    views = Views.empty()
    views.feed.set(FeedStatus(last_push_at=trio.current_time(), conns_up=1, conns_total=1))
    views.universe.set(UniverseStatus(symbols=3, chunks=1, error=None))
    views.redis.set(RedisStatus(up=True, error=None))
    views.fleet.set(replica.fleet())
    return health_report(views, trio.current_time(), 60.0)


async def test_the_leader_gauge_is_1_only_while_the_lease_is_valid_by_this_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No answer comes after 0.0 (Redis cut off): the gauge, /health and the publisher's
    fence all stop at the lease's fenced end, 4.8, not at the next lease answer."""
    server = LeaseRedis(autojump_clock)
    a = Replica(server, "a")
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        await trio.sleep(1.0)
        server.cut.add("a")
        assert a.leads() == 1
        assert health_of(a)[1]["fleet"]["publishing"] is True
        until = a.last_fence().valid_until
        assert until == pytest.approx(4.8)
        await trio.sleep_until(until - 0.01)
        assert a.leads() == 1
        await trio.sleep_until(until)  # requests at 2.0 and 4.0 failed; the next is at 6.0
        assert a.leads() == 0
        code, doc = health_of(a)
        assert (code, doc["fleet"]["role"], doc["fleet"]["publishing"]) == (200, "leader", False)
        assert doc["problems"] == [
            "fleet: no lease answer (ConnectionError: Connection refused); publishing held"
        ]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("there_s", [0.0, 1.5])
async def test_a_leader_whose_answers_come_back_late_loses_its_lease_in_redis_too(
    autojump_clock: trio.testing.MockClock, there_s: float
) -> None:
    """From 9.0 a's requests reach Redis (at once, or 1.5 s later: within their deadline)
    but their answers never reach a in time. The one sent at 10.0 still extends the lease,
    to 16.0 (a lease after its sending, wherever it arrived); from 12.0 a says it missed its
    answer, so Redis extends nothing more, and b takes the lease at its first request after
    16.0: within a lease and a renewal period of a's first missed answer. (Before, a renewed
    a lease it never knew it held: the shard had no publisher for as long as the link was
    slow.)"""
    server = LeaseRedis(autojump_clock)
    a, b = Replica(server, "a"), Replica(server, "b")
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        await a_then_b(nursery, a, b)
        await trio.sleep_until(9.0)
        server.lost.add("a")
        server.late_by["a"] = there_s
        await trio.sleep_until(13.0)
        assert a.leads() == 0  # fenced at 8.0 + 4.8 by its own clock
        assert server.ttl("t:fleet:1:0:lease") == pytest.approx(3.0)  # 16.0: not extended
        await trio.sleep_until(17.0)
        taken = next(at for at, f in b.fences if f.role == "leader")
        assert taken == 16.5
        assert taken <= 10.0 + LEASE_S + LEASE_S / 3
        assert (b.last_fence().term, b.leads()) == (2, 1)
        assert a.leads() == 0
        server.lost.discard("a")  # the link heals: a's next answer makes it a standby
        await trio.sleep_until(21.0)
        assert (a.fleet().role, a.fleet().leader) == ("standby", "b")
        nursery.cancel_scope.cancel()


async def test_a_request_that_reaches_redis_after_its_deadline_extends_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """From 9.0 a's requests take 3 s to reach Redis, past their 2 s deadline: Redis
    refuses each ("late", counted), the lease extended at 8.0 runs out at 14.0 and b takes
    it at 14.5."""
    server = LeaseRedis(autojump_clock)
    a, b = Replica(server, "a"), Replica(server, "b")
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        await a_then_b(nursery, a, b)
        await trio.sleep_until(9.0)
        server.late_by["a"] = 3.0
        await trio.sleep_until(15.0)
        taken = next(at for at, f in b.fences if f.role == "leader")
        assert taken == 14.5
        assert a.last_fence().valid_until == pytest.approx(8.0 + LEASE_S * 0.8)
        assert a.last_fence().valid_until < taken
        late = a.sample("screener_fleet_lease_requests_total", outcome="late")
        assert late == 3  # 10.0, 12.0, 14.0
        assert a.fleet().error == "reached redis after its deadline"
        nursery.cancel_scope.cancel()


# --- refusals: one process per replica id, one configuration per channel ----------------


class FleetLines:
    """The fleet actor's log lines as (level, message)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __enter__(self) -> list[tuple[str, str]]:
        def sink(message: Any) -> None:
            record = message.record
            if record["extra"].get("actor") == "fleet":
                self.lines.append((record["level"].name, record["message"]))

        self.sink = logger.add(sink, level="DEBUG", format="{message}")
        return self.lines

    def __exit__(self, *_: object) -> None:
        logger.remove(self.sink)


async def test_a_second_process_with_the_same_replica_id_never_leads_and_says_why(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two live processes named "a" (two containers given one FLEET_REPLICA_ID): before,
    both led (one key, one value) and published every event twice. Now the second is
    refused, says so once, and leads when the first stops."""
    server = LeaseRedis(autojump_clock)
    first, second = Replica(server, "p1", replica_id="a"), Replica(server, "p2", replica_id="a")
    with FleetLines() as lines:
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            await a_then_b(nursery, first, second)
            await trio.sleep_until(10.0)
            assert first.last_fence().role == "leader"
            assert {f.role for _, f in second.fences} == {"standby"}
            assert second.leads() == 0
            code, doc = health_of(second)
            assert (code, doc["status"]) == (503, "refused")
            [problem] = doc["problems"]
            assert problem.startswith(
                "fleet: refused to lead: FLEET_REPLICA_ID=a is in use by another live process"
            )
            assert second.sample("screener_fleet_refused", reason="replica_id") == 1
            assert second.sample("screener_fleet_refused", reason="config") == 0
            refusals = [line for line in lines if "refused" in line[1]]
            assert len(refusals) == 1  # five requests refused, one line
            assert refusals[0][0] == "ERROR"
            first.scope.cancel()  # a clean stop releases the lease and the id at 10.0
            await trio.sleep_until(11.0)
            assert (second.last_fence().role, second.last_fence().term) == ("leader", 2)
            assert second.fleet().refused is None
            assert second.sample("screener_fleet_refused", reason="replica_id") == 0
            assert health_of(second)[0] == 200
            nursery.cancel_scope.cancel()
    assert ("INFO", "fleet: leader of shard 0/1 (term 2, took over)") in lines


async def test_a_restarted_process_waits_at_most_a_lease_for_its_old_registration(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """ "a" is killed at 9.0 (no release) and restarted at 9.5 under the same name: its
    previous run's registration (and lease) were last extended at 8.0, so the new process is
    refused at 9.5, 11.5 and 13.5 and leads at 15.5, its first request after 14.0."""
    server = LeaseRedis(autojump_clock)
    old, new = Replica(server, "old", replica_id="a"), Replica(server, "new", replica_id="a")
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        nursery.start_soon(old.run)
        await trio.sleep_until(9.0)
        server.cut.add("old")
        await trio.sleep_until(9.5)
        nursery.start_soon(new.run)
        await trio.sleep_until(16.0)
        assert [(at, f.role) for at, f in new.fences] == [
            (9.5, "standby"),
            (11.5, "standby"),
            (13.5, "standby"),
            (15.5, "leader"),
        ]
        assert new.fleet().refused is None
        assert LEASE_S + LEASE_S / 3 >= 15.5 - 9.5
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"FLEET_SHARDS": "2"},
            "FLEET_SHARDS=2 here, but the fleet on channel market_data runs FLEET_SHARDS=1",
        ),
        (
            {"FLEET_KEY_PREFIX": "u"},
            "FLEET_KEY_PREFIX=u here, but the fleet on channel market_data runs FLEET_KEY_PREFIX=t",
        ),
        (
            {"SYMBOL_WHITELIST": "BTC_USDT"},
            "SYMBOL_WHITELIST=BTC_USDT here, but the fleet on channel market_data runs "
            "SYMBOL_WHITELIST=(empty)",
        ),
    ],
)
async def test_a_replica_configured_unlike_its_fleet_never_leads_and_says_why(
    autojump_clock: trio.testing.MockClock, env: dict[str, str], problem: str
) -> None:
    """Its keys differ (another shard count, another prefix) or its universe does, so
    before it led a fleet of its own on the same channel and published a second time."""
    server = LeaseRedis(autojump_clock)
    a, odd = Replica(server, "a"), Replica(server, "odd", env=env)
    with FleetLines() as lines:
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            await a_then_b(nursery, a, odd)
            await trio.sleep_until(10.0)
            assert a.leads() == 1
            assert {f.role for _, f in odd.fences} == {"standby"}
            code, doc = health_of(odd)
            assert (code, doc["status"], doc["problems"]) == (
                503,
                "refused",
                [f"fleet: refused to lead: {problem}"],
            )
            assert odd.sample("screener_fleet_refused", reason="config") == 1
            nursery.cancel_scope.cancel()
    assert [line for line in lines if "refused" in line[1]] == [
        ("ERROR", f"fleet: refused to lead shard 0: {problem}")
    ]


# --- the release waits for the request in flight ----------------------------------------


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

    settings = load_settings({"FLEET_REPLICA_ID": "a"})
    fleet = Fleet(
        settings.fleet,
        cast(redis.Redis, Client()),
        agreement=Agreement.of(settings),
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
