"""A fleet of real processes: 2 shards x 2 replicas against one real redis-server and the
simulator over loopback (tests/system/fleet_harness.py). Real processes because what is
tested is what happens to a process: SIGKILL, SIGSTOP/SIGCONT, and a Redis restart under it.
The faults of the network and the exact counts of every push: test_fleet_faults.py."""

from __future__ import annotations

import signal
import time
from collections import Counter
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import trio

from actors.ranking import rank
from devtools.devredis import RedisServer
from devtools.simulator import FakeExchange
from screener.core.models import SymbolStat
from screener.fleet.shards import shard_of
from tests.system.fleet_harness import SETTLE_S, Fleet, Shape, open_fleet
from tests.system.service_harness import Subscriber, eventually

LEASE_S = 2.0
SHARDS = 2
TOP_N = 3
SHAPE = Shape(shards=SHARDS, replicas=2, lease_s=LEASE_S)


def fleet(redis_port: int, tmp: Path) -> AbstractAsyncContextManager[Fleet]:
    return open_fleet(redis_port, tmp, SHAPE)


def whole_ranking(ex: FakeExchange, events: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The top movers of the whole universe, computed here from the newest event per
    symbol (each carries the symbol's window change), not by any replica."""
    newest = {e["symbol"]: e for e in events}
    stats = [SymbolStat(s, e["change_pct"], e["price"]) for s, e in newest.items()]
    assert len(stats) == len(ex.live_symbols)
    r = rank(stats, top_n=TOP_N, lookback_min=15, wall_ts=0.0)
    return [s.symbol for s in r.gainers], [s.symbol for s in r.losers]


async def test_two_shards_of_two_split_the_universe_and_publish_each_push_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with fleet(redis_server.port, tmp_path) as f:
        # Each symbol is subscribed by exactly the two replicas of its shard: two connections
        # per shard, holding exactly that shard's symbols.
        await eventually(lambda: len(f.ex.subscriptions) == 4, what="four connections")
        groups = Counter(frozenset(s) for s in f.ex.subscriptions.values())
        expected = {
            frozenset(s for s in f.ex.live_symbols if shard_of(s, SHARDS) == i): 2
            for i in range(SHARDS)
        }
        assert groups == expected
        await f.exactly_once(3.0)

        # /top5 from every replica is the whole universe's ranking: freeze the market, let
        # every shard rank the frozen state, then compare.
        f.ex.pushing = False
        await trio.sleep(2.0)
        gainers, losers = whole_ranking(f.ex, f.sub.get("market_data"))
        for r in f.replicas:
            top = await r.top5(f.http)
            assert [g["symbol"] for g in top["top5_gainers"]] == gainers, r.name
            assert [g["symbol"] for g in top["top5_losers"]] == losers, r.name
            assert top["shards"] == {"reporting": 2, "total": 2, "missing": []}
        movers = f.sub.get("top_movers")
        assert movers, "shard 0's leader publishes the global ranking"
        assert [g["symbol"] for g in movers[-1]["top5_gainers"]] == gainers


async def test_sigkill_of_a_leader_hands_its_shard_to_the_standby_within_a_lease(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with fleet(redis_server.port, tmp_path) as f:
        leader = await f.leader_of(0)
        standby = next(r for r in f.replicas if r.shard == 0 and r is not leader)
        await trio.sleep(1.0)
        assert leader.proc is not None
        leader.proc.kill()
        killed_ms = time.time() * 1000
        killed_at = trio.current_time()

        def shard0_after_kill() -> bool:
            return any(shard_of(s, SHARDS) == 0 and ts > killed_ms for s, ts in f.events())

        # Events of shard 0 for pushes after the kill: only the standby can publish them.
        await eventually(shard0_after_kill, within_s=LEASE_S + 2, what="shard 0 published")
        assert trio.current_time() - killed_at <= LEASE_S + 2
        assert (await f.leader_of(0)) is standby
        doc = await standby.health(f.http)
        assert doc is not None
        assert doc["fleet"]["term"] >= 2
        f.replicas.remove(leader)
        await f.exactly_once(2.0)


async def test_a_frozen_leader_wakes_as_a_standby_and_publishes_nothing_stale(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with fleet(redis_server.port, tmp_path) as f:
        leader = await f.leader_of(1)
        standby = next(r for r in f.replicas if r.shard == 1 and r is not leader)
        assert leader.proc is not None
        await trio.sleep(1.0)
        frozen_at_ms = max(ts for _, ts in f.pushes)
        leader.proc.send_signal(signal.SIGSTOP)
        f.replicas.remove(leader)  # it answers no HTTP while frozen
        await trio.sleep(3 * LEASE_S)
        assert (await f.leader_of(1)) is standby
        woken_at = len(f.events())
        leader.proc.send_signal(signal.SIGCONT)
        f.replicas.append(leader)
        await f.exactly_once(3.0)
        with trio.fail_after(LEASE_S + 2):
            while (await leader.health(f.http) or {}).get("fleet", {}).get("role") != "standby":  # noqa: ASYNC110 - another process
                await trio.sleep(0.1)
        # Nothing pushed before the freeze was published after the wake.
        stale = [
            (s, ts)
            for s, ts in f.events()[woken_at:]
            if ts <= frozen_at_ms and shard_of(s, SHARDS) == 1
        ]
        assert stale == []


async def test_a_redis_restart_under_the_fleet_re_forms_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with fleet(redis_server.port, tmp_path) as f:
        await trio.sleep(1.0)
        f.sub.close()
        redis_server.stop()
        await trio.sleep(LEASE_S * 2)
        redis_server.start()  # empty: every lease and ranking is gone
        f.sub = Subscriber(redis_server.port, "market_data", "top_movers")
        for shard in range(SHARDS):
            await f.leader_of(shard)
        # The publishers retry at the first lease answer (the leaders above), not at the end
        # of a backoff grown through the outage (up to 30 s): a ceiling, not the expected time.
        await eventually(lambda: len(f.events()) > 20, within_s=SETTLE_S, what="events resume")
        assert all(r.proc is not None and r.proc.returncode is None for r in f.replicas)
