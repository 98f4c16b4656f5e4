"""The publisher's socket link (REDIS_WRITER=socket) against a real redis-server: replies
read in bulk and in place, a write never cut in half by cancellation, and a link that
fails, hangs or is closed by the server raising as redis-py would, the next write opening a
new one."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import AsyncIterator

import pytest
import redis
import trio

from actors.publisher import run_publisher
from devtools.devredis import RedisServer, free_port
from screener.core.config import load_settings
from screener.core.metrics import Metrics
from screener.core.models import PublisherInbox, RedisStatus
from screener.core.snapshot import Latest
from screener.redis.client import REDIS_TIMEOUT_S, make_client
from screener.redis.socket import SocketLink, takes_over
from tests.actors.fakes import publisher_lines

PING = b"*1\r\n$4\r\nPING\r\n"


def _xadd(key: bytes) -> bytes:
    return b"*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$1\r\nk\r\n$1\r\nv\r\n" % (len(key), key)


@contextlib.asynccontextmanager
async def open_link(server: RedisServer, **env: str) -> AsyncIterator[SocketLink]:
    """A link through the service's own client for `server` (settings from `env` too)."""
    settings = load_settings({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(server.port)} | env)
    client = make_client(settings.redis)
    link = SocketLink(client)
    try:
        yield link
    finally:
        await link.close()
        client.close()


async def test_refusals_come_back_in_place_across_many_reads(redis_server: RedisServer) -> None:
    """5,000 commands whose replies span many socket reads; every seventh refused
    (WRONGTYPE) at its own index in Redis's words; the link stays in step for the next."""
    admin = redis_server.client()
    admin.set("str", "not a stream")
    payload = b"x" * 200
    publish = b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$%d\r\n%s\r\n" % (len(payload), payload)
    n = 5000
    commands = b"".join(_xadd(b"str") if i % 7 == 3 else publish for i in range(n))
    async with open_link(redis_server) as link:
        refusals = await link.request(commands, n)
        assert [i for i, _ in refusals] == [i for i in range(n) if i % 7 == 3]
        assert all(why.startswith("WRONGTYPE ") for _, why in refusals)
        assert await link.request(_xadd(b"events") + PING, 2) == []
        assert admin.xlen("events") == 1


async def test_a_cancelled_write_is_not_cut_in_half(redis_server: RedisServer) -> None:
    """Writes paused for 0.5 s; the caller is cancelled 0.1 s into the write (SIGTERM): the
    write still completes with its replies read (the publisher then knows how it went), and
    the cancellation reaches the caller at its next checkpoint."""
    admin = redis_server.client()
    refusals: list[tuple[int, str]] | None = None

    async def write(scope: trio.CancelScope) -> None:
        nonlocal refusals
        with scope:
            refusals = await link.request(_xadd(b"events"), 1)
            await trio.sleep(1)  # the next checkpoint raises Cancelled

    async with open_link(redis_server) as link:
        assert await link.request(PING, 1) == []  # the link is open
        admin.client_pause(500, all=False)  # WRITE: XADD waits, the link stays up
        scope = trio.CancelScope()
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, scope)
            await trio.sleep(0.1)
            scope.cancel()
        assert scope.cancelled_caught
        assert refusals == []
        assert 0.4 < trio.current_time() - started < 1  # until the write was answered
        assert admin.xlen("events") == 1


async def test_a_hung_redis_times_out_and_the_next_write_opens_a_new_link(
    redis_server: RedisServer,
) -> None:
    """CLIENT PAUSE longer than REDIS_TIMEOUT_S: TimeoutError after it, the half-read link
    closed; once Redis answers again the next write goes out on a new link. (Whether the
    write that timed out took effect is unknown to the caller, as with redis-py: the
    publisher puts such a slice back.)"""
    admin = redis_server.client()
    async with open_link(redis_server) as link:
        assert await link.request(PING, 1) == []
        first = link.stream
        admin.client_pause(int((REDIS_TIMEOUT_S + 1) * 1000), all=False)
        started = trio.current_time()
        with pytest.raises(redis.TimeoutError, match=f"within {REDIS_TIMEOUT_S:g}s"):
            await link.request(_xadd(b"events"), 1)
        assert REDIS_TIMEOUT_S <= trio.current_time() - started < REDIS_TIMEOUT_S + 1
        assert link.stream is None
        admin.client_unpause()
        assert await link.request(_xadd(b"after"), 1) == []
        assert link.stream is not None
        assert link.stream is not first
        assert admin.xlen("after") == 1


async def test_a_link_closed_by_the_server_is_a_connection_error_then_reopened(
    redis_server: RedisServer,
) -> None:
    admin = redis_server.client()
    async with open_link(redis_server) as link:
        assert await link.request(PING, 1) == []
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        with pytest.raises(redis.ConnectionError, match=f"127.0.0.1:{redis_server.port}"):
            await link.request(PING, 1)
        assert link.stream is None
        assert await link.request(PING, 1) == []


async def test_auth_errors_are_redis_pys_own(redis_server: RedisServer) -> None:
    """The link is opened by redis-py: a wrong password raises its AuthenticationError, with
    no secret in the words."""
    redis_server.client().config_set("requirepass", "right-one")
    async with open_link(redis_server, REDIS_PASSWORD="wrong-one") as link:
        with pytest.raises(redis.AuthenticationError) as caught:
            await link.request(PING, 1)
        assert "wrong-one" not in str(caught.value)


def test_tls_links_are_left_to_redis_py() -> None:
    def client(url: str) -> redis.Redis:
        return make_client(load_settings({"REDIS_URL": url}).redis)

    assert takes_over(client("redis://127.0.0.1:6390/0"))
    assert takes_over(client("unix:///tmp/redis.sock"))
    assert not takes_over(client("rediss://127.0.0.1:6390/0"))


async def test_a_tls_url_writes_through_the_writer_thread_and_says_so() -> None:
    """REDIS_URL=rediss://: the default way cannot take the link over; the publisher says so
    once at start and writes through the writer thread (here to a port nobody listens on:
    the usual outage line follows, with no secret in it)."""
    url = f"rediss://reader:hunter2@127.0.0.1:{free_port()}/0"
    settings = load_settings({"REDIS_URL": url}).redis
    status = Latest(RedisStatus(up=False, error=None))
    send, inbox = trio.open_memory_channel[PublisherInbox](10)
    with publisher_lines() as lines, trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(
                    run_publisher, inbox, settings=settings, status=status, metrics=Metrics()
                )
            )
            names = {thread.name for thread in threading.enumerate()}
            while status.value.error is None:  # noqa: ASYNC110 - the status has no event
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        await send.aclose()
    assert "redis-writer" in names
    assert lines[0] == ("INFO", "TLS link to redis: writes go through a thread")
    assert lines[1][0] == "WARNING"
    assert lines[1][1].startswith("redis unavailable at rediss://")
    assert "hunter2" not in " ".join(text for _, text in lines)
