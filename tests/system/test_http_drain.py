"""Shutdown drains HTTP: a real SIGTERM while a request is in flight through hypercorn.

Real sockets and a real signal (so real time): the signal handler sets the stop event,
hypercorn stops accepting, finishes the request in flight, and only then does `serve_http`
return (in the service, the root scope is cancelled after that)."""

from __future__ import annotations

import os
import signal
from functools import partial

import httpx
import trio
from quart import Response

from screener.app import set_on_signal
from screener.core.metrics import Metrics
from screener.core.snapshot import Views
from screener.http.routes import create_app, serve_http


async def test_sigterm_lets_the_request_in_flight_finish() -> None:
    app = create_app(Views.empty(), Metrics(), stale_after_s=60)
    entered = trio.Event()

    @app.get("/slow")
    async def slow() -> Response:  # a request still being answered when SIGTERM arrives
        entered.set()
        await trio.sleep(0.3)
        return Response("done", status=200)

    stop = trio.Event()
    answers: list[tuple[int, str]] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(set_on_signal, stop)
            port = await nursery.start(partial(serve_http, app, "127.0.0.1", 0, stop=stop.wait))

            async def ask() -> None:
                async with httpx.AsyncClient() as client:
                    response = await client.get(f"http://127.0.0.1:{port}/slow")
                answers.append((response.status_code, response.text))

            nursery.start_soon(ask)
            await entered.wait()
            os.kill(os.getpid(), signal.SIGTERM)
            await stop.wait()
            # serve_http returns only after the drain: the nursery then ends by itself.
    assert answers == [(200, "done")]
    # And nothing listens any more.
    with trio.fail_after(5):
        try:
            await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            pass
        else:
            raise AssertionError("the port still accepts connections after the drain")
