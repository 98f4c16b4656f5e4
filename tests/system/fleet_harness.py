"""A fleet of real `python -m screener` processes for the system tests: the simulator in the
test's loop, one redis-server, a subscriber, and optionally a fault proxy
(devtools/faultproxy.py) in front of Redis for each replica.

Every push the simulator sends is recorded (`on_push`, once per push whatever the number of
subscribers); an event is identified by (symbol, push time in ms), which the window actor
carries over unchanged, so `Fleet.verdict` can hold every push against every event
(devtools/delivery.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from devtools.delivery import Key, Verdict, check, settle
from devtools.devredis import free_port
from devtools.faultproxy import FaultProxy
from devtools.simulator import FakeExchange, SimConfig
from tests.system.service_harness import Subscriber, eventually, simulator

ROOT = Path(__file__).resolve().parents[2]
# Ceilings on waits for state the processes report, far above what a quiet machine needs
# (a second or two): four Python processes starting on a loaded machine took over 30 s.
START_S = 120.0
SETTLE_S = 30.0


@dataclass(frozen=True)
class Shape:
    """What to run: shards x replicas, the market, the lease, extra environment."""

    shards: int = 2
    replicas: int = 2
    symbols: int = 24
    rate_per_s: float = 200.0
    lease_s: float | None = 2.0  # None: the service's default
    proxied: bool = False  # one FaultProxy per replica in front of Redis
    env: Mapping[str, str] = field(default_factory=dict)


class Replica:
    def __init__(self, shard: int, index: int, log: Path, host: str = "127.0.0.1") -> None:
        self.shard = shard
        self.name = f"s{shard}r{index}"
        self.host = host  # where its HTTP listens (its namespace's address, across hosts)
        self.port = free_port()
        self.log = log
        self.proc: trio.Process | None = None
        self.proxy: FaultProxy | None = None

    async def health(self, http: httpx.AsyncClient) -> dict[str, Any] | None:
        try:
            r = await http.get(f"http://{self.host}:{self.port}/health", timeout=2)
        except httpx.TransportError:
            return None
        doc: dict[str, Any] = r.json()
        return doc

    async def role(self, http: httpx.AsyncClient) -> str | None:
        doc = await self.health(http)
        return None if doc is None else doc["fleet"]["role"]

    async def top5(self, http: httpx.AsyncClient) -> dict[str, Any]:
        r = await http.get(f"http://{self.host}:{self.port}/top5", timeout=2)
        doc: dict[str, Any] = r.json()
        return doc

    async def metric(self, http: httpx.AsyncClient, name: str) -> float:
        """One sample of /metrics by its full name with labels (0 when absent)."""
        text = (await http.get(f"http://{self.host}:{self.port}/metrics", timeout=2)).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.rpartition(" ")[2])
        return 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class Fleet:
    """The replicas, their HTTP client, and what each pushed and published."""

    def __init__(self, ex: FakeExchange, sub: Subscriber, http: httpx.AsyncClient) -> None:
        self.ex = ex
        self.sub = sub
        self.http = http
        self.replicas: list[Replica] = []  # the ones a test expects to answer
        self.started: list[Replica] = []  # every one, for the clean-up
        self.pushes: list[Key] = []
        ex.on_push = lambda payload: self.pushes.append((payload["symbol"], payload["ts"]))

    async def roles(self) -> dict[str, str | None]:
        return {r.name: await r.role(self.http) for r in self.replicas}

    async def leader_of(self, shard: int, *, within_s: float = SETTLE_S) -> Replica:
        """The one replica of `shard` that says it leads, once exactly one does."""
        with trio.fail_after(within_s):
            while True:
                roles = await self.roles()
                leaders = [
                    r for r in self.replicas if r.shard == shard and roles[r.name] == "leader"
                ]
                if len(leaders) == 1:
                    return leaders[0]
                await trio.sleep(0.1)

    async def formed(self, shards: int) -> None:
        """Until every replica answers ok and each of `shards` has one leader."""

        async def all_ok() -> bool:
            docs = [await r.health(self.http) for r in self.replicas]
            return all(d is not None and d["status"] == "ok" for d in docs)

        await eventually(all_ok, within_s=START_S, what="every replica ok")
        for shard in range(shards):
            await self.leader_of(shard)

    def events(self) -> list[Key]:
        return [(e["symbol"], e["ts"]) for e in self.sub.get("market_data")]

    async def publishing(self, what: str = "events flowing") -> int:
        """Wait until an event arrives for a push made from now on; returns now in ms (a
        window start for `verdict`: the fleet publishes what is pushed from then on)."""
        now_ms = int(time.time() * 1000)
        await eventually(
            lambda: any(ts > now_ms for _, ts in self.events()), within_s=SETTLE_S, what=what
        )
        return now_ms

    async def verdict(self, since_ms: int, *, quiet_s: float = 3.0) -> Verdict:
        """Stop the market, wait until every push arrived or none arrives for `quiet_s`,
        and hold every push since `since_ms` against every event."""
        self.ex.pushing = False
        pushes = [k for k in self.pushes if k[1] >= since_ms]
        assert len(pushes) > 20, "the simulator pushed too little to tell"
        await settle(pushes, self.events, quiet_s=quiet_s, within_s=SETTLE_S)
        return check(self.pushes, self.events(), since_ms=since_ms)

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


def replica_env(
    shape: Shape, r: Replica, sim_rest: str, sim_ws: str, redis_port: int
) -> dict[str, str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MEXC_", "FLEET_"))},
        "MEXC_BASE": sim_rest,
        "MEXC_WS_URL": sim_ws,
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(redis_port),
        "HTTP_HOST": "127.0.0.1",
        "WS_SCREENER_PORT": str(r.port),
        "LOG_FORMAT": "text",
        "BACKFILL": "off",
        "RANK_INTERVAL_S": "0.5",
        "TOP_N": "3",
        "SUBSCRIBE_PAUSE_S": "0.001",
        "FLEET_SHARDS": str(shape.shards),
        "FLEET_SHARD": str(r.shard),
        "FLEET_REPLICA_ID": r.name,
    }
    if shape.lease_s is not None:
        env["FLEET_LEASE_S"] = f"{shape.lease_s:g}"
    env.update(shape.env)
    return env


@asynccontextmanager
async def open_fleet(redis_port: int, tmp: Path, shape: Shape) -> AsyncIterator[Fleet]:
    """The fleet of `shape`, every replica ok and one leader per shard, for the block."""
    config = SimConfig(symbols=shape.symbols, rate_per_s=shape.rate_per_s, extra_contracts=False)
    sub = Subscriber(redis_port, "market_data", "top_movers", "candles")
    async with (
        simulator(config) as (ex, sim),
        httpx.AsyncClient() as http,
        trio.open_nursery() as nursery,
    ):
        f = Fleet(ex, sub, http)
        f.replicas = [
            Replica(s, i, tmp / f"s{s}r{i}.log")
            for s in range(shape.shards)
            for i in range(shape.replicas)
        ]
        f.started = list(f.replicas)
        for r in f.replicas:
            port = redis_port
            if shape.proxied:
                r.proxy = FaultProxy(redis_port)
                port = await nursery.start(r.proxy.serve)
            env = replica_env(shape, r, sim.rest_url, sim.ws_url, port)
            with r.log.open("wb") as log:  # the child keeps its own descriptor
                r.proc = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "screener"],
                    cwd=ROOT,
                    env=env,
                    stderr=log,
                    stdout=subprocess.DEVNULL,
                )
        async with reporting(f):
            for r in f.replicas:
                await eventually(
                    lambda r=r: r.proc is not None and r.proc.returncode is None,
                    what=f"{r.name} running",
                )
            await f.formed(shape.shards)
            yield f
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def reporting(f: Fleet) -> AsyncIterator[None]:
    """The block's failure prints what each replica logged; after it, every replica is
    stopped (shielded, with a deadline: a failure may have cancelled the test already) and
    the subscriber closed."""
    try:
        yield
    except BaseException:
        for r in f.started:  # what each replica logged, for the failure report
            print(f"--- {r.name}\n{r.log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + 20):
            await stop_all(f)
        f.sub.close()


async def stop_all(f: Fleet) -> None:
    """SIGTERM every replica (continued first, its link healed), then SIGKILL the late."""
    for r in f.started:
        if r.proxy is not None:
            r.proxy.forward()  # let a held shutdown through
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
