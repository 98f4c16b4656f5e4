"""A fleet of real processes: 2 shards x 2 replicas against one real redis-server and the
simulator over loopback. Real processes because what is tested is what happens to a
process: SIGKILL, SIGSTOP/SIGCONT, and a Redis restart under it.

Every push the simulator sends is recorded (`on_push`, once per push whatever the number of
subscribers); an event is identified by (symbol, push time in ms), which the window actor
carries over unchanged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from actors.ranking import rank
from devtools.devredis import RedisServer, free_port
from devtools.simulator import FakeExchange, SimConfig
from screener.core.models import SymbolStat
from screener.fleet.shards import shard_of
from tests.system.service_harness import Subscriber, eventually, simulator

ROOT = Path(__file__).resolve().parents[2]
LEASE_S = 2.0
SHARDS = 2
SYMBOLS = 24
TOP_N = 3
# Ceilings on waits for state the processes report, far above what a quiet machine needs
# (a second or two): four Python processes starting on a loaded machine took over 30 s.
START_S = 120.0
SETTLE_S = 30.0


class Replica:
    def __init__(self, shard: int, index: int, log: Path) -> None:
        self.shard = shard
        self.name = f"s{shard}r{index}"
        self.port = free_port()
        self.log = log
        self.proc: trio.Process | None = None

    async def health(self, http: httpx.AsyncClient) -> dict[str, Any] | None:
        try:
            r = await http.get(f"http://127.0.0.1:{self.port}/health", timeout=2)
        except httpx.TransportError:
            return None
        doc: dict[str, Any] = r.json()
        return doc

    async def top5(self, http: httpx.AsyncClient) -> dict[str, Any]:
        r = await http.get(f"http://127.0.0.1:{self.port}/top5", timeout=2)
        doc: dict[str, Any] = r.json()
        return doc


class Fleet:
    """The replicas, their HTTP client, and what each pushed and published."""

    def __init__(self, ex: FakeExchange, sub: Subscriber, http: httpx.AsyncClient) -> None:
        self.ex = ex
        self.sub = sub
        self.http = http
        self.replicas: list[Replica] = []  # the ones a test expects to answer
        self.started: list[Replica] = []  # every one, for the clean-up
        self.pushes: list[tuple[str, int]] = []
        ex.on_push = lambda payload: self.pushes.append((payload["symbol"], payload["ts"]))

    async def roles(self) -> dict[str, str | None]:
        roles: dict[str, str | None] = {}
        for r in self.replicas:
            doc = await r.health(self.http)
            roles[r.name] = None if doc is None else doc["fleet"]["role"]
        return roles

    async def leader_of(self, shard: int) -> Replica:
        """The one replica of `shard` that says it leads, once exactly one does."""
        with trio.fail_after(SETTLE_S):
            while True:
                roles = await self.roles()
                leaders = [
                    r for r in self.replicas if r.shard == shard and roles[r.name] == "leader"
                ]
                if len(leaders) == 1:
                    return leaders[0]
                await trio.sleep(0.1)

    def events(self) -> list[tuple[str, int]]:
        return [(e["symbol"], e["ts"]) for e in self.sub.get("market_data")]

    async def exactly_once(self, seconds: float) -> None:
        """Pushes over `seconds` each yield exactly one event, and no event comes twice. A
        simulator catching up after a stall can push one symbol twice within a millisecond,
        so keys are counted: as many events as pushes, for every key."""
        start = len(self.pushes)
        await trio.sleep(seconds)
        window = self.pushes[start:]
        assert len(window) > 20, "the simulator pushed too little to tell"
        await eventually(
            lambda: set(window) <= set(self.events()),
            within_s=SETTLE_S,
            what="every push published",
        )
        pushed, published = Counter(self.pushes), Counter(self.events())
        assert [k for k in window if published[k] != pushed[k]] == []
        assert [k for k, n in published.items() if n > pushed[k]] == []


@asynccontextmanager
async def fleet(redis_port: int, tmp: Path) -> AsyncIterator[Fleet]:
    config = SimConfig(symbols=SYMBOLS, rate_per_s=200, extra_contracts=False)
    sub = Subscriber(redis_port, "market_data", "top_movers")
    async with (
        simulator(config) as (ex, sim),
        httpx.AsyncClient() as http,
        trio.open_nursery() as nursery,
    ):
        f = Fleet(ex, sub, http)
        f.replicas = [Replica(s, i, tmp / f"s{s}r{i}.log") for s in range(SHARDS) for i in (0, 1)]
        f.started = list(f.replicas)
        for r in f.replicas:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("MEXC_", "FLEET_"))},
                "MEXC_BASE": sim.rest_url,
                "MEXC_WS_URL": sim.ws_url,
                "REDIS_HOST": "127.0.0.1",
                "REDIS_PORT": str(redis_port),
                "HTTP_HOST": "127.0.0.1",
                "WS_SCREENER_PORT": str(r.port),
                "LOG_FORMAT": "text",
                "BACKFILL": "off",
                "RANK_INTERVAL_S": "0.5",
                "TOP_N": str(TOP_N),
                "SUBSCRIBE_PAUSE_S": "0.001",
                "FLEET_SHARDS": str(SHARDS),
                "FLEET_SHARD": str(r.shard),
                "FLEET_REPLICA_ID": r.name,
                "FLEET_LEASE_S": str(LEASE_S),
            }
            with r.log.open("wb") as log:  # the child keeps its own descriptor
                r.proc = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "screener"],
                    cwd=ROOT,
                    env=env,
                    stderr=log,
                    stdout=subprocess.DEVNULL,
                )
        try:
            for r in f.replicas:
                await eventually(
                    lambda r=r: r.proc is not None and r.proc.returncode is None,
                    what=f"{r.name} running",
                )

            async def all_ok() -> bool:
                docs = [await r.health(http) for r in f.replicas]
                return all(d is not None and d["status"] == "ok" for d in docs)

            await eventually(all_ok, within_s=START_S, what="every replica ok")
            for shard in range(SHARDS):
                await f.leader_of(shard)
            yield f
        except BaseException:
            for r in f.started:  # what each replica logged, for the failure report
                print(f"--- {r.name}\n{r.log.read_text(errors='replace')[-3000:]}")
            raise
        finally:
            for r in f.started:
                if r.proc is not None and r.proc.returncode is None:
                    r.proc.send_signal(signal.SIGCONT)
                    r.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                for r in f.started:
                    if r.proc is not None:
                        await r.proc.wait()
            for r in f.started:
                if r.proc is not None and r.proc.returncode is None:
                    r.proc.kill()
                    await r.proc.wait()
            f.sub.close()
            nursery.cancel_scope.cancel()


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
