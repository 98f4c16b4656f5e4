"""Security: secrets never reach logs or HTTP; HTTP answers only GET on known routes, in
JSON, without stack traces; what the exchange sends (symbols, texts, compressed frames) is
validated before it reaches logs, metrics or Redis."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio
from loguru import logger
from quart_trio import QuartTrio

from screener.http import create_app, serve_http
from screener.metrics import Metrics
from screener.snapshot import Views


def assert_json_error(response: Any, status: int, body: bytes) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert b"Traceback" not in body
    assert orjson.loads(body)["error"]


class _Broken:
    """A ranking snapshot whose rendering fails: a stand-in for any bug in a handler."""

    ranked = 3

    def as_dict(self) -> dict[str, object]:
        raise RuntimeError("boom: internal detail /srv/secret/path")


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


@pytest.mark.parametrize("path", ["/health", "/top5", "/metrics"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "TRACE"])
async def test_only_get_on_known_routes(app: QuartTrio, method: str, path: str) -> None:
    response = await app.test_client().open(path, method=method)
    body = await response.get_data()
    assert_json_error(response, 405, body)
    assert orjson.loads(body) == {"error": "method not allowed"}


async def test_options_is_not_answered_either(app: QuartTrio) -> None:
    """Quart answers OPTIONS on every route by itself (200, empty text/html)."""
    response = await app.test_client().open("/health", method="OPTIONS")
    assert_json_error(response, 405, await response.get_data())


@pytest.mark.parametrize(
    "path", ["/", "/nope", "/health/", "/top5/x", "/metrics.json", "/../../etc/passwd", "/%00"]
)
async def test_unknown_paths_are_json_404(app: QuartTrio, path: str) -> None:
    response = await app.test_client().get(path)
    body = await response.get_data()
    assert_json_error(response, 404, body)
    assert orjson.loads(body) == {"error": "not found"}


async def test_handler_error_is_json_500_without_details(app: QuartTrio) -> None:
    views = Views.empty()
    app = create_app(views, Metrics(), stale_after_s=60)
    views.ranking.set(_Broken())  # type: ignore[arg-type]
    response = await app.test_client().get("/top5")
    body = await response.get_data()
    assert_json_error(response, 500, body)
    assert orjson.loads(body) == {"error": "internal error"}
    assert b"boom" not in body
    assert b"/srv" not in body


async def test_handler_error_is_logged_for_operators() -> None:
    """The client gets no details, but the operator must: a 500 nobody sees is a silent bug."""
    views = Views.empty()
    app = create_app(views, Metrics(), stale_after_s=60)
    views.ranking.set(_Broken())  # type: ignore[arg-type]
    errors: list[Any] = []
    sink = logger.add(errors.append, level="ERROR")
    try:
        await app.test_client().get("/top5")
    finally:
        logger.remove(sink)
    assert errors, "a handler exception answered 500 without any log line"
    assert "boom" in str(errors[0])


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
