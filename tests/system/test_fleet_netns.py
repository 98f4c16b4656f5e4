"""The rehearsal across hosts: the fleet's promise over a real network cut, counted.

Each process on a host of its own, as on separate machines: two replicas of one shard in
two network namespaces, redis-server in a third, joined by veth pairs to a bridge whose
address in the root namespace is the test's host (the simulator listens there, the
subscriber reads from there); tests/system/netns.py makes and removes them. Every address
is a real one on the bridge, no loopback: what a replica reaches, it reaches over its link.

The fault is the network's, not a proxy's: iptables in the leader's namespace drops every
segment to and from Redis's address and port, both ways, until a lease after the standby
leads. The standby must take over (its /health fleet role `leader`, a higher term, its
takeover counter) and the cut-off leader must feel it; at the heal the old leader must stand
by again and the standby keep the lease; and every push since the fleet formed must yield
exactly one `market_data` event (devtools/delivery.py: 0 lost, 0 duplicated, 0 back in
time).

Needs root, iproute2 and iptables (CI runs as root); skipped otherwise, with the reason.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from devtools.devredis import RedisServer
from devtools.simulator import SimConfig
from tests.system.fleet_harness import (
    SETTLE_S,
    Fleet,
    Replica,
    Shape,
    replica_env,
    reporting,
)
from tests.system.netns import Net, leftovers, open_hosts, run, unavailable
from tests.system.service_harness import Subscriber, simulator
from tests.system.test_fleet_faults import (
    assert_exact,
    back_as_standby,
    felt_redis,
    pair,
    renewal_s,
    took_over,
    watching,
)

ROOT = Path(__file__).resolve().parents[2]
SHAPE = Shape(shards=1, replicas=2, symbols=12, rate_per_s=200.0, lease_s=2.0)
HOSTS = ("redis", "s0r0", "s0r1")


@pytest.fixture
def net() -> Iterator[Net]:
    """The three hosts and the bridge, removed afterwards whatever the test did."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    with open_hosts(*HOSTS) as made:
        yield made
    assert leftovers(made) == []


@pytest.fixture
def redis_host(net: Net, tmp_path: Path) -> Iterator[RedisServer]:
    """redis-server on its own host, killed afterwards (before the namespaces go)."""
    host = net.hosts["redis"]
    server = RedisServer(tmp_path, host=host.ip, launcher=host.launcher)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def open_fleet_across(net: Net, redis: RedisServer, tmp: Path) -> AsyncIterator[Fleet]:
    """SHAPE's replicas each on its host, every one ok and the shard led, for the block."""
    config = SimConfig(
        symbols=SHAPE.symbols,
        rate_per_s=SHAPE.rate_per_s,
        extra_contracts=False,
        host=net.gateway,
    )
    sub = Subscriber(redis.port, "market_data", host=redis.host)
    async with simulator(config) as (ex, sim), httpx.AsyncClient() as http:
        f = Fleet(ex, sub, http)
        async with reporting(f):
            for i in range(SHAPE.replicas):
                name = f"s0r{i}"
                r = Replica(0, i, tmp / f"{name}.log", host=net.hosts[name].ip)
                env = replica_env(SHAPE, r, sim.rest_url, sim.ws_url, redis.port)
                env.update(REDIS_HOST=redis.host, HTTP_HOST=r.host)
                with r.log.open("wb") as log:  # the child keeps its own descriptor
                    r.proc = await trio.lowlevel.open_process(
                        [*net.hosts[name].launcher, sys.executable, "-m", "screener"],
                        cwd=ROOT,
                        env=env,
                        stderr=log,
                        stdout=subprocess.DEVNULL,
                    )
                f.started.append(r)
            f.replicas = list(f.started)
            await f.formed(1)
            yield f


def client_hosts(redis: RedisServer) -> set[str]:
    """The addresses Redis's clients connect from."""
    client = redis.client()
    try:
        return {c["addr"].rpartition(":")[0] for c in client.client_list()}
    finally:
        client.close()


async def test_a_leader_cut_from_redis_by_the_network_hands_over_and_rejoins(
    net: Net, redis_host: RedisServer, tmp_path: Path
) -> None:
    lease_s = SHAPE.lease_s or 0.0
    redis = (redis_host.host, redis_host.port)
    async with open_fleet_across(net, redis_host, tmp_path) as f:
        leader, standby, term = await pair(f)
        assert {leader.host, standby.host} <= client_hosts(redis_host), "not over the links"
        cut = net.hosts[leader.name]
        since = await f.publishing()
        await trio.sleep(1.0)
        async with watching(f, leader) as seen:
            await cut.partition(*redis)
            try:
                await took_over(f, standby, term, within_s=lease_s + renewal_s(lease_s) + SETTLE_S)
                await trio.sleep(lease_s)  # its successor publishes meanwhile
            finally:
                dropped = await cut.heal(*redis)
        assert dropped > 0, "the partition dropped nothing"
        assert felt_redis(seen[leader.name]), "the cut-off leader never saw the partition"
        await back_as_standby(f, leader, within_s=SETTLE_S)
        await f.publishing("the new leader publishes after the heal")
        assert await f.leader_of(0) is standby
        await assert_exact(f, since)


def test_the_hosts_leave_nothing_behind_when_the_block_fails() -> None:
    """Namespaces, veth pairs, the bridge and the root's FORWARD rule all go on an error."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    made: list[tuple[Net, subprocess.Popen[bytes]]] = []
    with pytest.raises(RuntimeError, match="a failing test"):
        fail_with_a_process_left(made)
    (net, stray) = made[0]
    assert stray.wait(10) == -signal.SIGKILL
    assert leftovers(net) == []


def fail_with_a_process_left(made: list[tuple[Net, subprocess.Popen[bytes]]]) -> None:
    with open_hosts(*HOSTS) as net:
        host = net.hosts["s0r0"]
        stray = subprocess.Popen([*host.launcher, "sleep", "600"])  # a replica left running
        made.append((net, stray))
        inside(host.namespace, stray.pid)
        raise RuntimeError("a failing test")


def inside(namespace: str, pid: int, within_s: float = 10.0) -> None:
    """Until `pid` runs in `namespace` (`ip netns exec` has joined it and exec'd)."""
    deadline = time.monotonic() + within_s
    while str(pid) not in run("ip", "netns", "pids", namespace).split():
        assert time.monotonic() < deadline, f"{pid} never ran in {namespace}"
        time.sleep(0.02)
