"""The fault proxy (devtools/faultproxy.py) in front of a real redis-server: each mode does
to a real client's requests what the fault tests rely on. A raw RESP client over a trio
socket, so nothing retries or times out behind the test's back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from devtools.devredis import RedisServer
from devtools.faultproxy import FaultProxy

CEILING_S = 10.0


@asynccontextmanager
async def proxied(redis_server: RedisServer) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(redis_server.port)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        yield proxy
        nursery.cancel_scope.cancel()


def command(*parts: str) -> bytes:
    return b"".join(
        [f"*{len(parts)}\r\n".encode()] + [f"${len(p.encode())}\r\n{p}\r\n".encode() for p in parts]
    )


async def reply(stream: trio.SocketStream) -> bytes:
    """One RESP line (enough for +OK, :n and -ERR)."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = await stream.receive_some(1024)
        if not chunk:
            raise EOFError(data)
        data += chunk
    return data


async def test_forward_carries_commands_and_replies(redis_server: RedisServer) -> None:
    with trio.fail_after(CEILING_S):
        async with (
            proxied(redis_server) as proxy,
            await trio.open_tcp_stream("127.0.0.1", proxy.port) as conn,
        ):
            await conn.send_all(command("INCR", "n"))
            assert await reply(conn) == b":1\r\n"
            assert proxy.stats.accepted == proxy.stats.open == 1
            assert proxy.stats.forwarded > 0


async def test_delay_delivers_each_way_later_and_in_order(redis_server: RedisServer) -> None:
    with trio.fail_after(CEILING_S):
        async with (
            proxied(redis_server) as proxy,
            await trio.open_tcp_stream("127.0.0.1", proxy.port) as conn,
        ):
            proxy.delay(0.3)
            sent_at = trio.current_time()
            for _ in range(3):
                await conn.send_all(command("INCR", "n"))
            got = b""
            while got.count(b"\r\n") < 3:
                got += await reply(conn)
            # 0.3 s to Redis and 0.3 s back; the replies in the order of the commands.
            assert trio.current_time() - sent_at >= 0.6
            assert got == b":1\r\n:2\r\n:3\r\n"


async def test_stall_holds_writes_and_delivers_them_when_healed(
    redis_server: RedisServer,
) -> None:
    """A partition that heals: the held write reaches Redis late, after the heal."""
    admin = redis_server.client()
    with trio.fail_after(CEILING_S):
        async with (
            proxied(redis_server) as proxy,
            await trio.open_tcp_stream("127.0.0.1", proxy.port) as conn,
        ):
            proxy.stall()
            await conn.send_all(command("SET", "late", "1"))
            with trio.move_on_after(0.5) as waited:
                await reply(conn)
            assert waited.cancelled_caught, "no answer through a stalled link"
            assert admin.get("late") is None, "nothing reached Redis"
            assert proxy.stats.open == 1, "the connection is kept"
            proxy.forward()
            assert await reply(conn) == b"+OK\r\n"
            assert admin.get("late") == b"1"
    admin.close()


async def test_blackhole_drops_bytes_and_the_heal_closes_damaged_links(
    redis_server: RedisServer,
) -> None:
    admin = redis_server.client()
    with trio.fail_after(CEILING_S):
        async with (
            proxied(redis_server) as proxy,
            await trio.open_tcp_stream("127.0.0.1", proxy.port) as conn,
        ):
            proxy.blackhole()
            await conn.send_all(command("SET", "lost", "1"))
            with trio.move_on_after(0.5) as waited:
                await reply(conn)
            assert waited.cancelled_caught
            assert proxy.stats.dropped > 0
            assert proxy.stats.open == 1, "the connection looks open"
            proxy.forward()
            assert admin.get("lost") is None, "dropped, never delivered"
            with pytest.raises((EOFError, trio.BrokenResourceError)):
                await reply(conn)  # it lost bytes: closed at the heal
            async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as fresh:
                await fresh.send_all(command("SET", "lost", "2"))
                assert await reply(fresh) == b"+OK\r\n"
    admin.close()


async def test_reset_closes_every_connection_and_accepts_new_ones(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(CEILING_S):
        async with proxied(redis_server) as proxy:
            conns = [await trio.open_tcp_stream("127.0.0.1", proxy.port) for _ in range(2)]
            for conn in conns:
                await conn.send_all(command("PING"))
                assert await reply(conn) == b"+PONG\r\n"
            proxy.reset()
            for conn in conns:
                with pytest.raises((EOFError, trio.BrokenResourceError)):
                    await reply(conn)
                await conn.aclose()
            assert proxy.stats.resets == 2
            async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as fresh:
                await fresh.send_all(command("PING"))
                assert await reply(fresh) == b"+PONG\r\n"
