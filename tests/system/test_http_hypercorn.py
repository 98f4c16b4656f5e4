"""Malformed HTTP through the real server (hypercorn on a loopback port, real time): no
request, however broken, gets a stack trace back."""

from __future__ import annotations

import pytest
import trio
from quart_trio import QuartTrio

from screener.core.metrics import Metrics
from screener.core.snapshot import Views
from screener.http.routes import create_app, serve_http


async def exchange(port: int, raw: bytes) -> bytes:
    """Send raw bytes, return what comes back until the server closes or goes quiet."""
    answer = b""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(raw)
        while True:
            with trio.move_on_after(0.3 if answer else 3):
                chunk = await stream.receive_some()
                if chunk:
                    answer += chunk
                    continue
            return answer


@pytest.fixture
def app() -> QuartTrio:
    return create_app(Views.empty(), Metrics(), stale_after_s=60)


async def test_malformed_requests_through_hypercorn_get_no_stack_trace(app: QuartTrio) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port: int = await nursery.start(serve_http, app, "127.0.0.1", 0)
            for raw in (
                b"BLAH\r\n\r\n",
                b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                b"Connection: close\r\n\r\nabc",
            ):
                answer = await exchange(port, raw)
                assert answer.startswith(b"HTTP/1.1 4"), (raw[:40], answer[:200])
                assert b"Traceback" not in answer
                assert b'File "' not in answer
            nursery.cancel_scope.cancel()
