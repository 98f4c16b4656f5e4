"""Where the service reaches into a dependency's private interfaces: one clearly named function
per reach-in, each with the versions it was verified on. tests/unit/test_compat_*.py fail
loudly when an installed version moves beyond them, so an upgrade is a decision, not a
surprise. Everything else uses public interfaces only.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, cast

import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ASGIFramework, ConnectionState, LifespanState
from hypercorn.utils import wrap_app
from prometheus_client import Histogram
from trio_websocket import WebSocketConnection

# --- hypercorn: serving connections that the service accepts itself ---------------------------

HYPERCORN_VERIFIED: Final = ("0.18.0",)
"""hypercorn releases the reach-in below was verified on (tests/unit/test_compat_hypercorn.py
fails on any other)."""

WRITE_S: Final = 2.0
"""Deadline for one write to a client. hypercorn shields its writes (the ASGI app's task is
cancelled once a response is complete, and a write must not be cut) without a deadline, so a
client that stops reading, once the kernel's buffers are full, would hold its connection and
shutdown forever: a live page stream does exactly that when a laptop sleeps. A client that
takes not one byte more for 2 s while megabytes wait in the buffers is gone; a slow but live
one frees room continuously, so a small write completes."""

CLOSE_S: Final = 2.0
"""Deadline for closing a connection whose write was cut (immediate; only a backstop)."""


class _Connection(TCPServer):
    """hypercorn's HTTP connection with two changes no public interface offers: a write has a
    deadline, and the keep-alive timer stops when the client leaves."""

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            await self._write(event.data)
        else:
            await super().protocol_send(event)

    async def _write(self, data: bytes) -> None:
        """hypercorn's write, shielded as there, but a client that takes nothing for `WRITE_S`
        loses its connection, as one that went away does."""
        async with self.send_lock:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + WRITE_S):
                try:
                    await self.stream.send_all(data)
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_S):
                await self.stream.aclose()  # a cut write leaves the stream unusable
                await self.protocol.handle(Closed())

    async def _read_data(self) -> None:
        # Reading ends when the client has gone (EOF, reset). The connection's task group
        # then waits for its tasks, the keep-alive timer included: stopped here, the socket
        # is released at once instead of at the end of the keep-alive timeout.
        await super()._read_data()
        await self.idle_task.stop()


@dataclass(frozen=True)
class HypercornWorker:
    """What hypercorn's trio worker shares between its connections, for an accept loop that
    is not hypercorn's: the wrapped app, the config and the worker's context."""

    app: AppWrapper
    config: Config
    context: WorkerContext
    state: LifespanState

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        """Serve one accepted connection until it ends (hypercorn's `TCPServer.run`). The
        caller closes `stream` afterwards: cancelled, hypercorn's own close does not run."""
        # hypercorn annotates the stream as SSLStream but serves plain SocketStreams too.
        tls = cast(trio.SSLStream[trio.SocketStream], stream)
        await _Connection(self.app, self.config, self.context, self.state, tls).run()

    async def close_idle_connections(self) -> None:
        """Tell every connection that the worker is stopping: idle ones close at once."""
        await self.context.terminated.set()


@asynccontextmanager
async def open_hypercorn_worker(
    app: ASGIFramework, config: Config
) -> AsyncIterator[HypercornWorker]:
    """hypercorn's trio worker without its accept loop (`hypercorn.trio.serve` accepts without
    limit and has no hook for a cap): the ASGI lifespan runs (startup before the block,
    shutdown after it), and the block serves connections with `serve_connection`.

    Private: `hypercorn.trio.tcp_server.TCPServer` (subclassed: `protocol_send`, `_read_data`,
    `idle_task`, `send_lock`, `stream`, `protocol`), `hypercorn.trio.lifespan.Lifespan`,
    `hypercorn.trio.worker_context.WorkerContext`, `hypercorn.utils.wrap_app`; the same way
    `hypercorn.trio.run.worker_serve` uses them."""
    wrapped: AppWrapper = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        state = ConnectionState(lifespan_state.copy())
        yield HypercornWorker(wrapped, config, WorkerContext(None), state)
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


# --- trio-websocket: the messages its reader has already queued ------------------------------

TRIO_WEBSOCKET_VERIFIED: Final = ("0.12.0", "0.12.1", "0.12.2")
"""trio-websocket releases `pending_messages` was verified on (the floor pyproject.toml allows
up to the locked one; tests/unit/test_compat_trio_websocket.py fails on any other)."""


def pending_messages(ws: WebSocketConnection) -> trio.MemoryReceiveChannel[str | bytes] | None:
    """The channel trio-websocket's reader task puts each received message on, the one its
    `get_message` reads: what is already there can be taken with `receive_nowait`, in the
    same order and never twice, without a checkpoint. None when a release no longer has it:
    the caller then reads with `get_message` only (same messages, slower).

    Why: the connection actor reads a burst of pushes in one go, and counts them with one
    `inc(n)` once the queue is empty. `get_message` is the only public read and yields to the
    scheduler on every message, even when the next one is already queued: 6.4-11 us of CPU a
    message against 0.2 us taken from the queue (`screener bench --micro`, 2026-12-07, load
    average 2.6-3.3 from other work), at 2,000 pushes a second about 1.3 % of a core, some 5 %
    of the service's CPU. trio-websocket (0.12.2, the newest) has no public batch read and no
    public queue length, so no public way costs nothing.

    The attribute is `_recv_channel`, a `trio.MemoryReceiveChannel` made in
    `WebSocketConnection.__init__` (buffer `message_queue_size`) and closed by the reader when
    the connection closes (then `receive_nowait` raises `ClosedResourceError` or
    `EndOfChannel`, and `get_message` raises `ConnectionClosed`)."""
    queue = getattr(ws, "_recv_channel", None)
    return queue if isinstance(queue, trio.MemoryReceiveChannel) else None


# --- prometheus-client: a histogram observed a batch at a time ----------------------------------

PROMETHEUS_CLIENT_VERIFIED: Final = ("0.20.0", "0.26.0")
"""prometheus-client releases `observe_many` was verified on: the floor pyproject.toml allows
and the locked one (tests/unit/test_metrics_batch.py fails on any other)."""


def observe_many(histogram: Histogram, amounts: Iterable[float]) -> None:
    """`histogram.observe(a)` for every `a`, paid once per batch: the bucket of each amount
    is found in one loop, then each bucket, the sum and the count move once. The client
    library has no batch call, so this reads its bucket bounds and values (`_upper_bounds`,
    `_buckets`, `_sum`, unchanged since 0.4); tests/unit/test_metrics_batch.py compares the
    result with `observe` and fails on a release not in `PROMETHEUS_CLIENT_VERIFIED`. Not for
    labelled parents or exemplars.

    Why: the publisher records each event's push-to-Redis latency, a batch at a time; one
    `observe` per amount costs 32 us for 20 latencies against 5 us here (`screener bench
    --micro`, "histogram, 20 latencies"), about 1 % of a core at 2,000 pushes a second."""
    bounds: list[float] = histogram._upper_bounds
    counts = [0] * len(bounds)
    total = 0.0
    for amount in amounts:
        counts[bisect_left(bounds, amount)] += 1
        total += amount
    buckets = histogram._buckets
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)
    histogram._sum.inc(total)
