"""The one way the publisher writes to Redis: a trio stream of its own, on the event loop.

A prepared slice (screener/redis/batch.py: one call of the publish script) goes out in one
`send_all` and its reply is parsed by a `hiredis.Reader`, so a write costs no thread, no GIL
hand-off and no pass through redis-py's pool (docs/architecture.md, "How the publisher
writes"). The stream is opened by screener/redis/connect.py (TCP, Unix socket or TLS;
AUTH, SELECT; the master the Sentinels name); redis-py keeps the control path only. A
resource of the publisher actor, not an actor.

A write is never cut in half: `request` shields the send and the reading of its reply
from cancellation under a deadline of `REDIS_TIMEOUT_S` (and never past the caller's own),
so the publisher knows how a slice went before its final flush. A link that fails, times
out or answers garbage is closed, and the next write opens a new one. Under Sentinel the
master is confirmed at most every MASTER_CHECK_S: when it moved, the link is closed and the
new master's opened; READONLY from it is a broken link, not a refusal (`demoted`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, NamedTuple

import hiredis
import redis
import trio

from screener.redis.client import REDIS_TIMEOUT_S, MasterPool, demoted
from screener.redis.connect import Endpoint, endpoint_of, master_address, open_stream

RECEIVE_BYTES: Final = 65536


class Opened(NamedTuple):
    stream: trio.abc.Stream
    address: str  # host:port or socket path, for error messages
    master: tuple[str, int] | None  # under Sentinel: whose link this is


Opener = Callable[[], Awaitable[Opened]]
"""Opens a new link; the service's is `opener_for(client)`, tests pass their own."""


def opener_for(client: redis.Redis) -> Opener:
    """Links to the Redis `client` talks to, with its settings (screener/redis/connect.py)."""
    pool = client.connection_pool
    masters = pool if isinstance(pool, MasterPool) else None
    endpoint: Endpoint | None = None

    async def open_link() -> Opened:
        nonlocal endpoint
        if endpoint is None:  # here, not at start: a bad CA file is an outage, said once
            endpoint = endpoint_of(pool)
        master = await master_address(masters) if masters is not None else None
        return Opened(await open_stream(endpoint, master), endpoint.address(master), master)

    return open_link


class RedisLink:
    """One Redis connection of the publisher's, opened on the first write."""

    def __init__(self, opener: Opener, masters: MasterPool | None = None) -> None:
        self.opener = opener
        self.masters = masters  # under Sentinel: the pool whose master is confirmed
        self.stream: trio.abc.Stream | None = None
        self.address = ""
        self.master: tuple[str, int] | None = None
        self.reader = hiredis.Reader()

    @classmethod
    def of(cls, client: redis.Redis) -> RedisLink:
        pool = client.connection_pool
        return cls(opener_for(client), pool if isinstance(pool, MasterPool) else None)

    async def request(self, payload: bytes) -> object:
        """Send one command and read its reply: a refusal comes back as the
        `hiredis.ReplyError` it is (READONLY from a Sentinel master also marks the master
        demoted). Raises a redis-py error (ConnectionError, TimeoutError, InvalidResponse)
        when the link fails: whether the command took effect is then unknown."""
        stream = await self._open()
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled before: nothing was sent
        deadline = min(trio.current_time() + REDIS_TIMEOUT_S, trio.current_effective_deadline())
        with trio.CancelScope(shield=True, deadline=deadline) as cut:
            try:
                reply = await self._round_trip(stream, payload)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await self.close()
                raise redis.ConnectionError(f"Error talking to {self.address}: {exc}") from None
            except hiredis.ProtocolError as exc:
                await self.close()
                raise redis.InvalidResponse(f"Protocol error from {self.address}: {exc}") from None
            except BaseException:
                await self.close()
                raise
            readonly = isinstance(reply, hiredis.ReplyError) and str(reply).startswith("READONLY")
            if readonly and self.masters is not None:
                demoted(self.masters)
            return reply
        await self.close()  # `cut`: the deadline passed; a half-read reply stream is useless
        assert cut.cancelled_caught
        raise redis.TimeoutError(f"no answer from {self.address} within {REDIS_TIMEOUT_S:g}s")

    async def refused_readonly(self) -> None:
        """Redis answered READONLY inside a script (the publish script's first write): from
        the master the Sentinels named, a broken link, as a READONLY reply is; elsewhere (a
        replica by configuration) a refusal for now, which the caller holds."""
        if self.masters is not None:
            await self.close()
            demoted(self.masters)

    async def _round_trip(self, stream: trio.abc.Stream, payload: bytes) -> object:
        await stream.send_all(payload)
        reader = self.reader
        while (reply := reader.gets()) is False:  # hiredis: not enough bytes yet
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise redis.ConnectionError(f"Connection closed by {self.address}")
            reader.feed(bytes(data) if isinstance(data, bytearray) else data)
        return reply

    async def _open(self) -> trio.abc.Stream:
        masters = self.masters
        if self.stream is not None and masters is not None and masters.check_due():
            moved_to = await trio.to_thread.run_sync(masters.check_master)
            if moved_to is not None and moved_to != self.master:
                await self.close()
        if self.stream is None:
            opened = await self.opener()
            self.stream, self.address, self.master = opened
            self.reader = hiredis.Reader()
        return self.stream

    async def close(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
