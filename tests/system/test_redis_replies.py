"""`read_refusals` reads a pipeline's replies in bulk through hiredis, against a real
redis-server: the same refusals at the same places as redis-py's `read_response` one reply
at a time, across many socket reads, and the errors of a failing link as redis-py raises
them."""

from __future__ import annotations

import pytest
import redis

from devtools.devredis import RedisServer
from screener.redis.batch import _read_one_by_one, read_refusals


def _pipeline(n: int) -> bytes:
    """`n` commands: PUBLISHes of 200-byte payloads, and at every index 3 modulo 7 an XADD
    to a string key (refused: WRONGTYPE); many enough that the replies take several reads."""
    commands = []
    for i in range(n):
        if i % 7 == 3:
            commands.append(b"*5\r\n$4\r\nXADD\r\n$3\r\nstr\r\n$1\r\n*\r\n$1\r\nk\r\n$1\r\nv\r\n")
        else:
            payload = b"x" * 200
            commands.append(
                b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$%d\r\n%s\r\n" % (len(payload), payload)
            )
    return b"".join(commands)


@pytest.mark.parametrize("read", [read_refusals, _read_one_by_one])
def test_refusals_come_back_in_place_across_many_reads(
    redis_server: RedisServer, read: object
) -> None:
    client = redis.Redis(port=redis_server.port, socket_timeout=5, protocol=2)
    try:
        client.set("str", "not a stream")
        conn = client.connection_pool.get_connection()
        try:
            n = 5000
            conn.send_packed_command([_pipeline(n)])  # type: ignore[no-untyped-call]
            refusals = read(conn, n)  # type: ignore[operator]
            assert [i for i, _ in refusals] == [i for i in range(n) if i % 7 == 3]
            assert all(why.startswith("WRONGTYPE ") for _, why in refusals)
            assert conn.send_packed_command([b"*1\r\n$4\r\nPING\r\n"]) is None  # type: ignore[no-untyped-call]
            assert conn.read_response() == b"PONG"  # the stream is still in step
        finally:
            client.connection_pool.release(conn)
    finally:
        client.close()


def test_a_paused_redis_times_out_as_redis_py_says(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port, socket_timeout=0.3, protocol=2)
    admin = redis_server.client()
    try:
        conn = client.connection_pool.get_connection()
        admin.client_pause(2000, all=True)
        conn.send_packed_command([b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$1\r\nx\r\n"])  # type: ignore[no-untyped-call]
        with pytest.raises(redis.TimeoutError):
            read_refusals(conn, 1)
        conn.disconnect()  # type: ignore[no-untyped-call]
        client.connection_pool.release(conn)
    finally:
        admin.client_unpause()
        admin.close()
        client.close()
