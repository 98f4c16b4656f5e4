"""A TCP proxy that plays the network between a replica and redis-server, for fault tests.

Real processes talk to Redis through it (one proxy per replica, each on a free loopback
port), and the test changes what the link does while they run:

- `forward()`: bytes go through as they come (the start state);
- `delay(s)`: each chunk is delivered `s` seconds after it arrived, both ways, in order (a
  slow link, a high RTT);
- `stall()`: nothing is delivered, both ways, but every byte and connection is kept; at the
  next `forward()`/`delay()` the held bytes go out in order (a partition that heals: late
  writes arrive late, as TCP retransmission would deliver them);
- `blackhole()`: bytes are dropped, connections stay open (nothing answers: only the
  client's own timeouts notice). A connection that lost bytes cannot carry a protocol any
  more, so it is closed when the black hole ends, as TCP would give up on it;
- `reset()`: close every connection now (new ones are accepted as the mode says).

It runs in the test's own trio loop (`await nursery.start(proxy.serve)`), so a change of mode
takes effect when the call returns, with no round trip to another process: tests stay
deterministic. Chunks are held in memory without bound: a test tool, meant for seconds.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

import trio

CHUNK = 65536


class Mode(Enum):
    FORWARD = "forward"
    DELAY = "delay"
    STALL = "stall"
    BLACKHOLE = "blackhole"


@dataclass
class Stats:
    """What went through, for tests of the proxy and of what a fault really did."""

    accepted: int = 0  # connections accepted from clients
    open: int = 0  # connections open now
    forwarded: int = 0  # bytes delivered, both ways
    dropped: int = 0  # bytes swallowed by a black hole
    resets: int = 0  # connections closed by `reset` or at the end of a black hole


@dataclass(eq=False)
class _Pipe:
    """One direction of a link: the chunks held (delivery time, bytes; b"" ends the
    stream) and the event its writer waits on, set on new data or a change of mode."""

    held: deque[tuple[float, bytes]] = field(default_factory=deque)
    wake: trio.Event = field(default_factory=trio.Event)


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream one; closing its scope closes both."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    damaged: bool = False  # lost bytes to a black hole


class FaultProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to `target_port` on 127.0.0.1."""

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0  # set once `serve` listens
        self.mode = Mode.FORWARD
        self.delay_s = 0.0
        self.stats = Stats()
        self._links: set[_Link] = set()
        self._pipes: set[_Pipe] = set()

    # --- control ---------------------------------------------------------------------------

    def forward(self) -> None:
        self._set(Mode.FORWARD, 0.0)

    def delay(self, seconds: float) -> None:
        if not 0 <= seconds < math.inf:
            raise ValueError(f"delay of {seconds!r} s")
        self._set(Mode.DELAY, seconds)

    def stall(self) -> None:
        self._set(Mode.STALL, self.delay_s)

    def blackhole(self) -> None:
        self._set(Mode.BLACKHOLE, 0.0)

    def reset(self) -> None:
        """Close every connection (both sides); bytes held for them are dropped."""
        for link in list(self._links):
            self._close(link)

    def _set(self, mode: Mode, delay_s: float) -> None:
        if self.mode is Mode.BLACKHOLE and mode is not Mode.BLACKHOLE:
            for link in list(self._links):
                if link.damaged:
                    self._close(link)
        self.mode, self.delay_s = mode, delay_s
        for pipe in self._pipes:
            pipe.wake.set()

    def _close(self, link: _Link) -> None:
        if link in self._links:
            self._links.discard(link)
            self.stats.resets += 1
            link.scope.cancel()

    # --- serving ---------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and forward until cancelled; `task_status.started(port)` once listening."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = int(listeners[0].socket.getsockname()[1])
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, client: trio.SocketStream) -> None:
        link = _Link()
        self.stats.accepted += 1
        self.stats.open += 1
        self._links.add(link)
        try:
            with link.scope:
                async with (
                    client,
                    await trio.open_tcp_stream(*self.target) as upstream,
                    trio.open_nursery() as nursery,
                ):
                    nursery.start_soon(self._pipe, link, client, upstream)
                    nursery.start_soon(self._pipe, link, upstream, client)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # either end went away (or Redis is down): the other is closed with it
        finally:
            self.stats.open -= 1
            self._links.discard(link)

    async def _pipe(self, link: _Link, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        """One direction: a reader stamps each chunk with its delivery time, a writer sends
        them in order when the mode allows. An end of stream is passed on after the bytes
        before it; when both directions ended, the link closes."""
        pipe = _Pipe()
        self._pipes.add(pipe)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, link, pipe, src)
                while True:
                    pipe.wake = trio.Event()  # before looking: no wake-up can be missed
                    if not pipe.held or self.mode in (Mode.STALL, Mode.BLACKHOLE):
                        await pipe.wake.wait()
                        continue
                    due, chunk = pipe.held[0]
                    if due > trio.current_time():
                        with trio.move_on_at(due):
                            await pipe.wake.wait()  # a new mode may free it earlier
                        continue
                    pipe.held.popleft()
                    if not chunk:
                        await dst.send_eof()
                        return
                    await dst.send_all(chunk)
                    self.stats.forwarded += len(chunk)
        finally:
            self._pipes.discard(pipe)

    async def _read(self, link: _Link, pipe: _Pipe, src: trio.SocketStream) -> None:
        while chunk := await src.receive_some(CHUNK):
            if self.mode is Mode.BLACKHOLE:
                self.stats.dropped += len(chunk)
                link.damaged = True
                continue
            pipe.held.append((trio.current_time() + self.delay_s, chunk))
            pipe.wake.set()
        pipe.held.append((-math.inf, b""))  # end of stream, delivered in its turn
        pipe.wake.set()
