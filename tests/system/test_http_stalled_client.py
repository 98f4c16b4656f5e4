"""A client that stops reading a long response cannot hold the server: once the kernel's
buffers are full, a write it takes nothing of for `WRITE_S` ends its connection, and
shutdown finishes in time. Real sockets through hypercorn (real time): the stall is a
socket that never reads, with a small receive buffer so the buffers fill quickly."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import trio
import trio.lowlevel
from quart import Response

from screener.core.compat import WRITE_S
from screener.core.metrics import Metrics
from screener.core.snapshot import Views
from screener.http.routes import DRAIN_S, create_app, serve_http

CHUNK = b"x" * 65_536


async def test_a_client_that_stops_reading_is_cut_and_shutdown_stays_short() -> None:
    app = create_app(Views.empty(), Metrics(), stale_after_s=60)
    written: list[float] = []  # when each chunk was handed to the server
    closed_at: list[float] = []
    body_closed = trio.Event()
    returned = trio.Event()

    @app.get("/firehose")
    async def firehose() -> Response:
        async def body() -> AsyncIterator[bytes]:
            try:
                while True:
                    await trio.lowlevel.checkpoint()  # a checkpoint, as any real body has
                    written.append(trio.current_time())
                    yield CHUNK
            finally:
                closed_at.append(trio.current_time())
                body_closed.set()

        response = Response(body(), status=200, mimetype="application/octet-stream")
        response.timeout = None
        return response

    stop = trio.Event()
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def serve(task_status: trio.TaskStatus[int]) -> None:
                await serve_http(app, "127.0.0.1", 0, stop=stop.wait, task_status=task_status)
                returned.set()

            port = await nursery.start(serve)
            await trio.to_thread.run_sync(stalled.connect, ("127.0.0.1", port))
            stalled.sendall(b"GET /firehose HTTP/1.1\r\nHost: x\r\n\r\n")
            # The stall: the server's writes stop once the buffers are full.
            # No event says "the writes stopped": watch them.
            while not written or trio.current_time() - written[-1] < 0.5:  # noqa: ASYNC110
                await trio.sleep(0.1)
            stall_began = written[-1]

            # Only a rescue if the server held on: it would otherwise wait forever (its
            # write is shielded), and the test would hang instead of failing.
            rescues: list[trio.CancelScope] = []

            async def rescue_after(seconds: float, *clients: socket.socket) -> None:
                with trio.CancelScope() as rescue:
                    rescues.append(rescue)
                    await trio.sleep(seconds)
                    for client in clients:
                        client.close()  # unread data: a reset, which fails the server's write

            nursery.start_soon(rescue_after, 3 * WRITE_S + 5, stalled)
            await body_closed.wait()
            cut_after = closed_at[0] - stall_began

            # A second stalled client, then shutdown: it must not wait for the stall.
            stalled_too = socket.socket()
            stalled_too.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await trio.to_thread.run_sync(stalled_too.connect, ("127.0.0.1", port))
            stalled_too.sendall(b"GET /firehose HTTP/1.1\r\nHost: x\r\n\r\n")
            count = len(written)
            while len(written) == count or trio.current_time() - written[-1] < 0.5:  # noqa: ASYNC110
                await trio.sleep(0.1)
            nursery.start_soon(rescue_after, 3 * WRITE_S + 5, stalled, stalled_too)
            stop.set()
            stopping = trio.current_time()
            await returned.wait()
            stopped_after = trio.current_time() - stopping
            for rescue in rescues:
                rescue.cancel()
    stalled.close()
    stalled_too.close()
    assert WRITE_S <= cut_after < WRITE_S + 1.0
    assert stopped_after < DRAIN_S + WRITE_S + 1.0
