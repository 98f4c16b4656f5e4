"""Redis behind Sentinel under a running service: real redis-server processes (a master, a
replica, `redis-server --sentinel`), the simulator over loopback, the service in-process. The
service is told only where the Sentinels are (REDIS_HOST, REDIS_PORT and REDIS_URL's host point
nowhere); it must find the master, and the new one after a failover.

Each subscriber is opened on a server that no Sentinel will reconfigure while it listens
(Sentinel disconnects every client of a server it promotes or demotes), and events are told
apart by their exchange time: one pushed after the failover was over and received on the new
master was written to the new master (a master receives nothing from its old one)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import trio
from loguru import logger
from redis.sentinel import MasterNotFoundError

from devtools.devredis import RedisServer, SentinelGroup, wait_for
from devtools.simulator import SimConfig
from screener.core.config import RedisSettings, load_settings
from screener.core.supervise import failure_text
from screener.redis.batch import BatchResult, prepare_batch, send
from screener.redis.client import MASTER_CHECK_FAILED_S, MASTER_CHECK_S, make_client
from screener.redis.link import RedisLink
from tests.actors.fakes import market_data
from tests.system.service_harness import Subscriber, counter, eventually, running, simulator

PASSWORD = "sentinel-test-hunter2"
PUBLISHED = "screener_events_published_total"
NOWHERE = 1  # REDIS_PORT: nothing listens there, so a write that reaches Redis came via Sentinel


@contextmanager
def sentinel_group(workdir: Path, **options: Any) -> Iterator[SentinelGroup]:
    group = SentinelGroup(workdir, **options)
    try:
        group.start()
        yield group
    finally:
        group.stop()


@contextmanager
def log_lines() -> Iterator[list[str]]:
    """The message of every log line, whoever wrote it."""
    lines: list[str] = []
    sink_id = logger.add(lambda message: lines.append(message.record["message"]), level="DEBUG")
    try:
        yield lines
    finally:
        logger.remove(sink_id)


def starting(lines: list[str], text: str) -> list[str]:
    return [line for line in lines if line.startswith(text)]


async def events_on(
    node: RedisServer, password: str | None, count: int, *, within_s: float = 10.0
) -> None:
    """Subscribe on `node` and wait for `count` events pushed after this call."""
    since_ms = time.time() * 1000
    sub = Subscriber(node.port, "market_data", password=password)
    try:
        await eventually(
            lambda: sum(e["ts"] > since_ms for e in sub.get("market_data")) >= count,
            within_s=within_s,
            what=f"{count} new events on redis {node.port}",
        )
    finally:
        sub.close()


async def test_sentinel_failover_moves_publishing_to_the_new_master_without_an_outage(
    tmp_path: Path,
) -> None:
    """SENTINEL FAILOVER: the old master keeps taking writes for about 10 s until Sentinel
    demotes it, so nothing fails; the client's once-a-second check must find the new master.
    Events pushed after the failover reach the new master's subscribers within a few
    seconds, with one log line naming the move and no outage. The master's password comes
    from REDIS_URL and is in no log line."""
    with (
        sentinel_group(tmp_path, sentinels=1, password=PASSWORD) as group,
        log_lines() as lines,
        trio.fail_after(60),
    ):
        old, new = group.master(), group.replica()
        async with (
            simulator(SimConfig(symbols=5, rate_per_s=50)) as (_, sim),
            running(
                sim,
                NOWHERE,
                REDIS_SENTINELS=group.addresses,
                REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{NOWHERE}/0",
            ) as (svc, http),
        ):
            await events_on(old, PASSWORD, 10)
            await trio.to_thread.run_sync(group.failover)
            published = counter(svc, PUBLISHED, channel="market_data")
            with trio.fail_after(5):  # "within a few seconds"
                await events_on(new, PASSWORD, 20)
            assert counter(svc, PUBLISHED, channel="market_data") > published
            assert svc.views.redis.value.up
            assert svc.views.redis.value.refused is None
            health = (await http.get("/health")).json()
    assert health["redis"] == "up"
    target = f"sentinel://{group.addresses}/mymaster"
    assert starting(lines, "redis up at ") == [f"redis up at {target}"]
    assert starting(lines, "redis master ") == [
        f"redis master mymaster moved from 127.0.0.1:{old.port} to 127.0.0.1:{new.port} "
        "(Sentinel failover)"
    ]
    assert starting(lines, "redis unavailable") == []
    assert not any(PASSWORD in line for line in lines)


async def test_a_killed_master_is_an_outage_until_sentinel_promotes_the_replica(
    tmp_path: Path,
) -> None:
    """Three Sentinels (quorum 2), the master SIGKILLed: writes fail (one warning), are
    retried with backoff, and reach the promoted replica once the Sentinels name it; the
    service never stops."""
    with (
        sentinel_group(tmp_path, sentinels=3) as group,
        log_lines() as lines,
        trio.fail_after(60),
    ):
        old, new = group.master(), group.replica()
        async with (
            simulator(SimConfig(symbols=5, rate_per_s=50)) as (_, sim),
            running(sim, NOWHERE, REDIS_SENTINELS=group.addresses) as (svc, http),
        ):
            await events_on(old, None, 10)
            old.stop()
            await trio.to_thread.run_sync(group.wait_master, new)
            # No speed asked here: the publisher's backoff (full jitter, doubling) decides.
            await events_on(new, None, 20, within_s=30)
            await eventually(lambda: svc.views.redis.value.up, what="redis up again")
            health = (await http.get("/health")).json()
    assert health["redis"] == "up"
    assert health["status"] == "ok"
    target = f"sentinel://{group.addresses}/mymaster"
    unavailable = starting(lines, "redis unavailable at ")
    assert len(unavailable) == 1
    assert unavailable[0].startswith(f"redis unavailable at {target} (")
    assert starting(lines, "redis master ") == [
        f"redis master mymaster moved from 127.0.0.1:{old.port} to 127.0.0.1:{new.port} "
        "(Sentinel failover)"
    ]
    assert starting(lines, "redis up at ") == [f"redis up at {target}"] * 2


async def _publish(link: RedisLink, settings: RedisSettings, symbol: str) -> BatchResult:
    batch = prepare_batch(settings, [market_data(symbol, 1.0, 60_000)], None)
    return await send(link, batch)


async def test_readonly_from_a_demoted_master_is_a_broken_link_and_the_retry_finds_the_new_one(
    tmp_path: Path,
) -> None:
    """The client's connection to the old master survives its demotion (Sentinel normally
    cuts it; here the test demotes it with REPLICAOF, and the once-a-second check is put off):
    the XADD is answered READONLY. That must not be a refusal "for now", held and retried on
    the same dead end, but a broken link (redis-py drops it), so the publisher's retry asks
    the Sentinels and writes to the new master."""
    with sentinel_group(tmp_path, sentinels=1) as group:
        old, new = group.master(), group.replica()
        env = {"REDIS_SENTINELS": group.addresses, "PUBLISH_MODE": "stream"}
        settings = load_settings(env).redis
        client = make_client(settings)
        link = RedisLink.of(client)
        try:
            first = await _publish(link, settings, "A_USDT")
            assert first.held is None
            replica = new.client()
            try:  # replication is asynchronous: promoted too early, the replica would lack it
                wait_for(lambda: replica.xlen("market_data") == 1, "A_USDT on the replica")
            finally:
                replica.close()
            client.connection_pool.check_at = float("inf")  # type: ignore[attr-defined]
            group.failover()
            demote = old.client()
            demote.replicaof("127.0.0.1", new.port)
            demote.close()
            with pytest.raises(redis.ConnectionError, match="The previous master is now a slave"):
                await _publish(link, settings, "B_USDT")
            result = await _publish(link, settings, "B_USDT")
        finally:
            await link.close()
            client.close()
        reader = new.client()
        try:
            entries = reader.xrange("market_data")
        finally:
            reader.close()
    assert (result.held, result.refused) == (None, 0)
    symbols = [orjson.loads(fields[b"data"])["symbol"] for _, fields in entries]
    assert symbols == ["A_USDT", "B_USDT"]  # each once: the first via replication


async def test_hung_sentinels_do_not_stop_writes_to_a_master_that_takes_them(
    tmp_path: Path,
) -> None:
    """Every Sentinel SIGSTOPped (connections accepted, nothing answered) while the client
    holds a link to the master: the check due before the next write times out, and that
    write and the following ones go to the master; the Sentinels are asked again only
    after MASTER_CHECK_FAILED_S, so a hung Sentinel does not slow every write."""
    with sentinel_group(tmp_path, sentinels=1) as group:
        settings = load_settings({"REDIS_SENTINELS": group.addresses, "PUBLISH_MODE": "stream"})
        client = make_client(settings.redis)
        link = RedisLink.of(client)
        [sentinel] = group.sentinel_procs
        try:
            await _publish(link, settings.redis, "A_USDT")
            os.kill(sentinel.pid, signal.SIGSTOP)
            try:
                pool = client.connection_pool
                pool.check_at = 0.0  # type: ignore[attr-defined]  # the next write checks
                results = [await _publish(link, settings.redis, s) for s in ("B_USDT", "C_USDT")]
                next_check_in = pool.check_at - time.monotonic()  # type: ignore[attr-defined]
            finally:
                os.kill(sentinel.pid, signal.SIGCONT)
        finally:
            await link.close()
            client.close()
        reader = group.master().client()
        try:
            entries = reader.xrange("market_data")
        finally:
            reader.close()
    assert [result.held for result in results] == [None, None]
    symbols = [orjson.loads(fields[b"data"])["symbol"] for _, fields in entries]
    assert symbols == ["A_USDT", "B_USDT", "C_USDT"]
    assert MASTER_CHECK_S < next_check_in <= MASTER_CHECK_FAILED_S


async def test_sentinels_with_a_password_of_their_own(tmp_path: Path) -> None:
    """REDIS_SENTINEL_PASSWORD reaches the Sentinels (their `requirepass`). With a wrong one,
    or a master name they do not know, no master is found, and the error, which the
    publisher logs and /health shows, says why in a few words, without the password."""
    secret, wrong = "sentinel-only-hunter2", "wrong-hunter2"
    refusals: list[str] = []
    with sentinel_group(tmp_path, sentinels=1, sentinel_password=secret) as group:
        env = {"REDIS_SENTINELS": group.addresses, "PUBLISH_MODE": "stream"}
        for password, name in ((secret, "mymaster"), (wrong, "mymaster"), (secret, "other")):
            settings = load_settings(
                env | {"REDIS_SENTINEL_PASSWORD": password, "REDIS_SENTINEL_MASTER": name}
            ).redis
            client = make_client(settings)
            link = RedisLink.of(client)
            try:
                await _publish(link, settings, "A_USDT")
            except MasterNotFoundError as exc:
                refusals.append(failure_text(exc))
            finally:
                await link.close()
                client.close()
        reader = group.master().client()
        try:
            stored = reader.xlen("market_data")
        finally:
            reader.close()
    assert stored == 1
    [sentinel] = group.sentinel_ports
    assert refusals == [
        f"MasterNotFoundError: no master 'mymaster' (127.0.0.1:{sentinel}: "
        "AuthenticationError: invalid username-password pair or user is disabled.)",
        f"MasterNotFoundError: no master 'other' (127.0.0.1:{sentinel}: does not know 'other')",
    ]


@pytest.mark.parametrize("sentinels", [1, 3])
def test_the_group_names_one_master_and_fails_over_to_the_replica(
    tmp_path: Path, sentinels: int
) -> None:
    """The development helper itself: every Sentinel agrees, before and after."""
    with sentinel_group(tmp_path, sentinels=sentinels) as group:
        first, second = group.master(), group.replica()
        assert (first.role(), second.role()) == ("master", "slave")
        assert group.failover() is second
        assert [group.master_port(i) for i in range(sentinels)] == [second.port] * sentinels
