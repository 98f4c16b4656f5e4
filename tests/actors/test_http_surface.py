"""The HTTP surface in-process (Quart's test client): only GET on known routes, answers in
JSON, no stack traces, handler errors logged for operators. Nothing here depends on time, so
no MockClock."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from loguru import logger
from quart_trio import QuartTrio

from screener.core.metrics import Metrics
from screener.core.snapshot import Views
from screener.http.routes import create_app


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


@pytest.fixture
def app() -> QuartTrio:
    return create_app(Views.empty(), Metrics(), stale_after_s=60)


@pytest.mark.parametrize(
    "path", ["/health", "/livez", "/readyz", "/top5", "/metrics", "/", "/stream", "/symbol/A_USDT"]
)
@pytest.mark.parametrize("method", ["HEAD", "POST", "PUT", "DELETE", "PATCH", "TRACE"])
async def test_only_get_on_known_routes(app: QuartTrio, method: str, path: str) -> None:
    response = await app.test_client().open(path, method=method)
    body = await response.get_data()
    assert_json_error(response, 405, body)
    assert orjson.loads(body) == {"error": "method not allowed"}
    assert response.headers["Allow"] == "GET"  # RFC 9110 15.5.6: a 405 names what is allowed


async def test_options_is_not_answered_either(app: QuartTrio) -> None:
    """Quart answers OPTIONS on every route by itself (200, empty text/html)."""
    response = await app.test_client().open("/health", method="OPTIONS")
    assert_json_error(response, 405, await response.get_data())
    assert response.headers["Allow"] == "GET"


async def test_head_on_an_unknown_path_stays_404(app: QuartTrio) -> None:
    """HEAD is refused on the known routes (Werkzeug would answer it for every GET route),
    but an unknown path is still "not found", as for any other method."""
    response = await app.test_client().open("/nope", method="HEAD")
    assert_json_error(response, 404, await response.get_data())


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/index.html",
        "/stream/x",
        "/symbol",
        "/health/",
        "/top5/x",
        "/metrics.json",
        "/../../etc/passwd",
        "/%00",
    ],
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
