"""The publisher's writes over a trio socket (REDIS_WRITER=socket, the default).

redis-py keeps the control path: it opens the connection (TCP or a Unix socket, AUTH,
SELECT, the master the Sentinels name), and its socket is then handed to trio. A batch goes
out in one `send_all` on the event loop and its replies are parsed in bulk by a
`hiredis.Reader` (the C parser redis-py itself uses), so a write costs no thread, no GIL
hand-off and no pass through redis-py's pool (docs/architecture.md, "How the publisher
writes"). A resource of the publisher actor, not an actor.

A write is never cut in half: `request` shields the send and the reading of its replies
from cancellation under a deadline of `REDIS_TIMEOUT_S`, so on shutdown the publisher knows
how the slice went before its final flush. A link that fails, times out or answers garbage
is closed, and the next write opens a new one.
"""

from __future__ import annotations

import socket
from typing import Final

import hiredis
import redis
import trio
from redis.connection import SSLConnection

from screener.redis.client import REDIS_TIMEOUT_S, MasterPool, demoted

RECEIVE_BYTES: Final = 65536


def takes_over(client: redis.Redis) -> bool:
    """Whether this client's links can be handed to trio: plain TCP or a Unix socket. A TLS
    link cannot (its session lives in redis-py's `ssl.SSLSocket`): with REDIS_URL=rediss://
    the writes go through the writer thread instead."""
    return not issubclass(client.connection_pool.connection_class, SSLConnection)


class SocketLink:
    """One Redis connection taken over from redis-py, opened on the first write."""

    def __init__(self, client: redis.Redis) -> None:
        self.pool = client.connection_pool
        # Under Sentinel (`make_client` gives it this pool): whose master the link is.
        self.masters = self.pool if isinstance(self.pool, MasterPool) else None
        self.stream: trio.SocketStream | None = None
        self.address = ""
        self.master: tuple[str, int] | None = None
        self.reader = hiredis.Reader()

    async def request(self, payload: bytes, count: int) -> list[tuple[int, str]]:
        """Send `count` pipelined commands and read their replies; returns the refusals
        among them as (command index, Redis's words). Raises a redis-py error (ConnectionError,
        TimeoutError, InvalidResponse) when the link fails: whether the commands took effect
        is then unknown, as with redis-py."""
        stream = await self._open()
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled before: nothing was sent
        # Within a deadline of the caller's (the final flush's) too, never past it.
        deadline = min(trio.current_time() + REDIS_TIMEOUT_S, trio.current_effective_deadline())
        with trio.CancelScope(shield=True, deadline=deadline) as cut:
            try:
                return await self._round_trip(stream, payload, count)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await self.close()
                raise redis.ConnectionError(f"Error talking to {self.address}: {exc}") from None
            except hiredis.ProtocolError as exc:
                await self.close()
                raise redis.InvalidResponse(f"Protocol error from {self.address}: {exc}") from None
            except BaseException:
                await self.close()
                raise
        await self.close()  # `cut`: the deadline passed; a half-read reply stream is useless
        assert cut.cancelled_caught
        raise redis.TimeoutError(f"no answer from {self.address} within {REDIS_TIMEOUT_S:g}s")

    async def _round_trip(
        self, stream: trio.SocketStream, payload: bytes, count: int
    ) -> list[tuple[int, str]]:
        await stream.send_all(payload)
        reader = self.reader
        gets = reader.gets
        refusals: list[tuple[int, str]] = []
        index = 0
        while index < count:
            reply = gets()
            if reply is False:  # hiredis: not enough bytes yet
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    raise redis.ConnectionError(f"Connection closed by {self.address}")
                reader.feed(data)
                continue
            if isinstance(reply, hiredis.ReplyError):
                why = str(reply)
                if self.masters is not None and why.startswith("READONLY"):
                    demoted(self.masters)
                refusals.append((index, why))
            index += 1
        return refusals

    async def _open(self) -> trio.SocketStream:
        """The link, opened by redis-py in a thread (connecting blocks), then handed over.
        Under Sentinel the master is confirmed at most every MASTER_CHECK_S, as for the
        writer thread; when it moved, the link is closed and the new master's opened."""
        masters = self.masters
        if self.stream is not None and masters is not None and masters.check_due():
            moved_to = await trio.to_thread.run_sync(masters.check_master)
            if moved_to is not None and moved_to != self.master:
                await self.close()
        if self.stream is None:
            # Abandoned on cancel: a final flush must not outlive its deadline. A link the
            # thread still opens then is dropped unused (and closed when collected).
            sock, self.master = await trio.to_thread.run_sync(self._connect, abandon_on_cancel=True)
            self.stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
            self.reader = hiredis.Reader()
        return self.stream

    def _connect(self) -> tuple[socket.socket, tuple[str, int] | None]:
        conn = self.pool.get_connection()
        try:
            conn.connect()  # type: ignore[no-untyped-call]  # a pooled one may have been closed
            sock = getattr(conn, "_sock", None)
            if type(sock) is not socket.socket:  # another redis-py layout: say what to do
                raise redis.ConnectionError(
                    f"cannot take over redis-py {redis.__version__}'s socket; "
                    "set REDIS_WRITER=thread"
                )
            conn._sock = None  # ours now: redis-py must not shut it down
            conn.disconnect()  # type: ignore[no-untyped-call]  # its parser lets go too
        finally:
            self.pool.release(conn)
        host, port = getattr(conn, "host", None), getattr(conn, "port", 0)
        self.address = f"{host}:{port}" if host is not None else str(sock.getpeername())
        master = (str(host), int(port)) if self.masters is not None and host is not None else None
        return sock, master

    async def close(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()
