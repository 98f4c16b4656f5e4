"""The lease scripts of screener/fleet/lease.py run by a real redis-server: tokens, the
replica id registration, the registered configuration, the deadline checked against Redis's
own clock, and what a replica that missed its previous answer may do. Expiry is asserted
as the TTL Redis holds (Redis expires keys itself), never by waiting for it. Last, the
fleet actor itself over that server in real time (its timing rules are tested on MockClock
in tests/actors/test_fleet.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
import trio

from actors.fleet import run_fleet
from devtools.devredis import RedisServer
from screener.core.config import FleetSettings, load_settings
from screener.core.metrics import Metrics
from screener.core.models import FleetStatus, PublisherInbox, Ranking
from screener.core.snapshot import Latest
from screener.fleet.agreement import Agreement
from screener.fleet.lease import acquire_or_renew, config_key, release, replica_key
from screener.fleet.shards import Answer, Grant, Late, Refusal
from tests.system.service_harness import eventually

LEASE_S = 6.0
LEASE_KEY = "screener:fleet:1:0:lease"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        yield c
    finally:
        c.close()


def fleet(replica: str, env: dict[str, str] | None = None) -> tuple[FleetSettings, Agreement]:
    settings = load_settings({"FLEET_REPLICA_ID": replica, "FLEET_LEASE_S": "6", **(env or {})})
    return settings.fleet, Agreement.of(settings)


def ask(
    client: redis.Redis,
    replica: str,
    token: str,
    *,
    heard: bool = True,
    late: bool = False,
    env: dict[str, str] | None = None,
) -> Answer:
    settings, agreement = fleet(replica, env)
    sent_ms = round((time.time() - (62 if late else 0)) * 1000)
    return acquire_or_renew(
        client,
        settings,
        agreement,
        token=token,
        sent_ms=sent_ms,
        deadline_ms=sent_ms + 2000,
        heard=heard,
    )


def test_a_free_lease_is_taken_with_the_processs_token_and_everything_registered(
    client: redis.Redis,
) -> None:
    assert ask(client, "a", "a#1") == Grant("a#1", term=1, previous=None)
    assert client.get(LEASE_KEY) == b"a#1"
    assert client.get("screener:fleet:replica:a") == b"a#1"
    assert 0 < client.pttl(LEASE_KEY) <= 6000
    assert 0 < client.pttl("screener:fleet:replica:a") <= 6000
    _, agreement = fleet("a")
    for key in ("screener:channel:market_data", "screener:fleet:config"):
        assert client.get(key) == agreement.document()
        assert 12_000 < client.pttl(key) <= 18_000  # three leases
    assert ask(client, "a", "a#1") == Grant("a#1", term=1, previous="a#1")
    assert ask(client, "b", "b#1") == Grant("a#1", term=1, previous="a#1", renewed=False)


def test_a_second_live_process_with_the_same_replica_id_is_refused(client: redis.Redis) -> None:
    ask(client, "a", "a#1")
    answer = ask(client, "a", "a#2")
    assert isinstance(answer, Refusal)
    assert answer.reason == "replica_id"
    assert answer.problem.startswith("FLEET_REPLICA_ID=a is in use by another live process")
    assert client.get(LEASE_KEY) == b"a#1"  # untouched
    # The first stops cleanly: its lease and its id go at once, and the second leads.
    settings, _ = fleet("a")
    assert release(client, settings, "a#1")
    assert client.get(replica_key(settings)) is None
    assert ask(client, "a", "a#2") == Grant("a#2", term=2, previous="a#1")


def test_the_release_of_a_standby_frees_its_replica_id_and_leaves_the_lease(
    client: redis.Redis,
) -> None:
    ask(client, "a", "a#1")
    ask(client, "b", "b#1")
    settings, _ = fleet("b")
    assert not release(client, settings, "b#1")
    assert client.get(replica_key(settings)) is None
    assert client.get(LEASE_KEY) == b"a#1"


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"FLEET_SHARDS": "2"},
            "FLEET_SHARDS=2 here, but the fleet on channel market_data runs FLEET_SHARDS=1",
        ),
        (
            {"FLEET_KEY_PREFIX": "other"},
            "FLEET_KEY_PREFIX=other here, but the fleet on channel market_data runs "
            "FLEET_KEY_PREFIX=screener",
        ),
        (
            {"MAX_SYMBOLS": "10"},
            "MAX_SYMBOLS=10 here, but the fleet on channel market_data runs MAX_SYMBOLS=3000",
        ),
        (
            {"MARKET_DATA_CHANNEL": "md2"},
            "MARKET_DATA_CHANNEL=md2 here, but the fleet under FLEET_KEY_PREFIX=screener "
            "publishes to MARKET_DATA_CHANNEL=market_data",
        ),
    ],
)
def test_a_replica_that_disagrees_with_its_fleet_is_refused(
    client: redis.Redis, env: dict[str, str], line: str
) -> None:
    ask(client, "a", "a#1")
    answer = ask(client, "b", "b#1", env=env)
    assert answer == Refusal("config", line)
    assert client.get("screener:fleet:replica:b") is None  # a refused replica registers nothing
    _, agreement = fleet("a")
    assert client.get("screener:channel:market_data") == agreement.document()


def test_a_leader_whose_fleet_was_reconfigured_gives_its_lease_up(client: redis.Redis) -> None:
    """Its registration expired (every replica cut off for three leases) and replicas of
    another configuration registered theirs: the old leader is refused and its lease goes
    at once, so one of theirs leads at its next request."""
    ask(client, "a", "a#1")
    settings, _ = fleet("a")
    client.delete("screener:channel:market_data", config_key(settings))
    ask(client, "b", "b#1", env={"MAX_SYMBOLS": "10"})
    answer = ask(client, "a", "a#1")
    assert isinstance(answer, Refusal)
    assert client.get(LEASE_KEY) is None


def test_a_request_that_reaches_redis_after_its_deadline_changes_nothing(
    client: redis.Redis,
) -> None:
    answer = ask(client, "a", "a#1", late=True)
    assert isinstance(answer, Late)
    assert abs(answer.redis_ms - time.time() * 1000) < 5_000  # Redis's clock, in ms
    assert client.get(LEASE_KEY) is None
    assert client.get("screener:fleet:replica:a") is None
    ask(client, "a", "a#1")
    client.pexpire(LEASE_KEY, 1000)
    assert isinstance(ask(client, "a", "a#1", late=True), Late)
    assert client.pttl(LEASE_KEY) <= 1000  # not extended


def test_a_lease_ends_one_lease_after_the_request_was_sent_not_after_it_arrived(
    client: redis.Redis,
) -> None:
    """Sent 1.5 s ago (within its 2 s deadline): the lease it takes ends 4.5 s from now,
    as its sender reckons it, not 6 s."""
    settings, agreement = fleet("a")
    sent_ms = round(time.time() * 1000) - 1500
    answer = acquire_or_renew(
        client,
        settings,
        agreement,
        token="a#1",
        sent_ms=sent_ms,
        deadline_ms=sent_ms + 2000,
        heard=True,
    )
    assert answer == Grant("a#1", term=1, previous=None)
    assert 4000 < client.pttl(LEASE_KEY) <= 4500


def test_a_replica_that_missed_its_previous_answer_neither_takes_nor_extends(
    client: redis.Redis,
) -> None:
    assert ask(client, "a", "a#1", heard=False) == Grant("", term=0, previous=None, renewed=False)
    assert client.get(LEASE_KEY) is None
    assert client.get("screener:fleet:replica:a") == b"a#1"  # still a live member
    ask(client, "a", "a#1")
    client.pexpire(LEASE_KEY, 1000)
    assert ask(client, "a", "a#1", heard=False) == Grant(
        "a#1", term=1, previous="a#1", renewed=False
    )
    assert client.pttl(LEASE_KEY) <= 1000
    assert ask(client, "a", "a#1") == Grant("a#1", term=1, previous="a#1")
    assert client.pttl(LEASE_KEY) > 1000


# --- the fleet actor over a real redis-server, in real time ------------------------------


class Process:
    """`run_fleet` as one process would run it, with its own Redis client and cancel scope."""

    def __init__(self, port: int, replica: str, **env: str) -> None:
        settings = load_settings({"FLEET_REPLICA_ID": replica, "FLEET_LEASE_S": "1", **env})
        self.settings = settings
        self.port = port
        self.status: Latest[FleetStatus | None] = Latest(None)
        self.scope = trio.CancelScope()

    async def run(self) -> None:
        rankings_send, rankings = trio.open_memory_channel[Ranking](1)
        outbox, fences = trio.open_memory_channel[PublisherInbox](64)
        with self.scope:
            async with rankings_send, fences, trio.open_nursery() as nursery:
                nursery.start_soon(self._drain, fences)
                await run_fleet(
                    rankings,
                    outbox,
                    settings=self.settings.fleet,
                    agreement=Agreement.of(self.settings),
                    client=lambda: redis.Redis(host="127.0.0.1", port=self.port),
                    snapshot=Latest(None),
                    status=self.status,
                    metrics=Metrics(),
                    top_n=5,
                    rank_interval_s=1.0,
                )

    @staticmethod
    async def _drain(fences: trio.MemoryReceiveChannel[PublisherInbox]) -> None:
        async for _ in fences:
            pass

    def state(self) -> tuple[str, str | None] | None:
        status = self.status.value
        if status is None or status.error is not None:
            return None
        return status.role, status.refused


async def test_two_processes_with_one_replica_id_over_a_real_redis(
    redis_server: RedisServer,
) -> None:
    """The scripts as the actor sends them (deadline from the wall clock, Redis's TIME): the
    second process named "a" is refused while the first runs, and leads once it stops."""
    first, second = Process(redis_server.port, "a"), Process(redis_server.port, "a")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first.run)
            await eventually(lambda: first.state() == ("leader", None), what="first leads")
            nursery.start_soon(second.run)

            def refused() -> bool:
                state = second.state()
                return state is not None and (state[1] or "").startswith("FLEET_REPLICA_ID=a")

            await eventually(refused, what="second refused")
            assert first.state() == ("leader", None)
            first.scope.cancel()  # a clean stop: the lease and the name are released
            await eventually(lambda: second.state() == ("leader", None), what="second leads")
            nursery.cancel_scope.cancel()
