"""HTTP face: /health, the probes /livez and /readyz, /top5, /metrics, /openapi.json, and the
live page (`/`, its event stream `/stream`, `/symbol/<SYMBOL>`) on quart-trio, served by
hypercorn.

Handlers only read the latest immutable snapshots the actors publish (`Views`); they never
reach into an actor. Unknown routes and methods answer JSON, never a stack trace; only GET is
served (HEAD too answers 405). The server (screener/http/server.py) closes connections when
HTTP says so and holds at most `max_connections` at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from importlib import resources
from typing import Any, Final

import orjson
import trio
from hypercorn.config import Config
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from screener.core.metrics import ROUTES, Metrics
from screener.core.names import SYMBOL_RE
from screener.core.snapshot import Views
from screener.core.supervise import split_retryable
from screener.http.charts import symbol_report
from screener.http.health import health_report, top5_report
from screener.http.probes import livez_report, readyz_report
from screener.http.server import serve_hypercorn
from screener.http.stream import Streams


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def openapi_document() -> bytes:
    """The OpenAPI 3.1 description of these routes, shipped as package data beside the JSON
    Schemas of every document the service emits (screener/schemas/), so consumers can check
    what they receive against the same files the tests validate with."""
    return resources.files("screener").joinpath("schemas/openapi.json").read_bytes()


def page_document() -> bytes:
    """The live page: one file of HTML, CSS and JavaScript, package data (screener/http/page/),
    nothing fetched from elsewhere."""
    return resources.files("screener.http").joinpath("page/index.html").read_bytes()


PAGE_POLICY: Final = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'"
)
"""The page's Content-Security-Policy: its own inline script and style, requests to this
service only."""


def create_app(
    views: Views,
    metrics: Metrics,
    *,
    stale_after_s: float,
    rest_mode: bool = False,
    streams: Streams | None = None,
) -> QuartTrio:
    """`streams`: the live page's streams, fed by `Streams.run` in the caller's nursery (one
    that nobody runs serves each stream its first events only)."""
    app = QuartTrio(__name__)
    if streams is None:
        streams = Streams(views, metrics, stale_after_s=stale_after_s, rest_mode=rest_mode)
    # Read once here: package data never changes while the process runs.
    openapi = openapi_document()
    page = page_document()

    @app.before_request
    async def started() -> None:
        g.started = time.perf_counter()

    @app.before_request
    async def get_only() -> None:
        # Werkzeug adds HEAD to every GET rule; the service promises 405 for all but GET.
        if request.method == "HEAD" and request.routing_exception is None:
            raise MethodNotAllowed(valid_methods=["GET"])

    @app.after_request
    async def close_if_ambiguous(response: Response) -> Response:
        # RFC 9112 6.3: a request with both Content-Length and Transfer-Encoding may be a
        # smuggling attempt; answer it, then close, so nothing pipelined behind it runs.
        if "Content-Length" in request.headers and "Transfer-Encoding" in request.headers:
            response.headers["Connection"] = "close"
        return response

    @app.after_request
    async def timed(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else "other"
        route = rule if rule in ROUTES else "other"
        started = g.get("started")
        if started is not None:  # None only if an earlier hook failed
            metrics.http_duration.labels(route).observe(time.perf_counter() - started)
        return response

    @app.get("/health", provide_automatic_options=False)
    async def health() -> Response:
        status, body = health_report(views, trio.current_time(), stale_after_s, rest_mode=rest_mode)
        return _json(body, status)

    @app.get("/livez", provide_automatic_options=False)
    async def livez() -> Response:
        status, body = livez_report(views.heartbeat.value, trio.current_time())
        return _json(body, status)

    @app.get("/readyz", provide_automatic_options=False)
    async def readyz() -> Response:
        status, body = readyz_report(views, trio.current_time(), stale_after_s, rest_mode=rest_mode)
        return _json(body, status)

    @app.get("/top5", provide_automatic_options=False)
    async def top5() -> Response:
        status, body = top5_report(views, trio.current_time(), stale_after_s, rest_mode=rest_mode)
        return _json(body, status)

    @app.get("/metrics", provide_automatic_options=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), status=200, content_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", provide_automatic_options=False)
    async def openapi_json() -> Response:
        return Response(openapi, status=200, mimetype="application/json")

    @app.get("/", provide_automatic_options=False)
    async def live_page() -> Response:
        response = Response(page, status=200, mimetype="text/html")
        response.headers["Content-Security-Policy"] = PAGE_POLICY
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.get("/stream", provide_automatic_options=False)
    async def stream() -> Response:
        queue = streams.open()
        if isinstance(queue, str):
            return _json({"error": queue}, 503)
        response = Response(streams.events(queue), status=200, mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
        response.timeout = None  # it lasts until the client leaves, lags behind, or shutdown
        return response

    @app.get("/symbol/<symbol>", provide_automatic_options=False)
    async def symbol(symbol: str) -> Response:
        name = symbol.upper()
        if not SYMBOL_RE.fullmatch(name):
            return _json({"error": "invalid symbol"}, 404)
        body = symbol_report(views.charts.value, name)
        if body is None:
            return _json({"error": "unknown symbol"}, 404)
        return _json(body)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        response = _json({"error": (exc.name or "error").lower()}, exc.code or 500)
        if isinstance(exc, MethodNotAllowed):
            # RFC 9110 15.5.6: a 405 names the methods the resource serves. Werkzeug lists HEAD
            # beside GET, but HEAD is refused (get_only above).
            allowed = sorted(set(exc.valid_methods or ()) - {"HEAD"})
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    async def server_error(exc: Exception) -> Response:
        logger.bind(actor="http").opt(exception=exc).error("request failed: {exc!r}", exc=exc)
        return _json({"error": "internal error"}, 500)

    return app


DRAIN_S: Final = 1.0
"""How long requests in flight may take to finish once shutdown began."""

KEEP_ALIVE_S: Final = 5.0
"""An idle connection (no request yet, or none since the last response) is closed after this;
hypercorn's default, kept explicit because the cap below counts idle connections too."""

MAX_CONNECTIONS: Final = 64
"""Default cap for callers other than the service, which passes HTTP_MAX_CONNECTIONS."""


class ListenError(RuntimeError):
    """The HTTP port cannot be bound (in use, no permission)."""


async def serve_http(
    app: QuartTrio,
    host: str,
    port: int,
    *,
    stop: Callable[[], Awaitable[None]] = trio.sleep_forever,
    max_connections: int = MAX_CONNECTIONS,
    keep_alive_s: float = KEEP_ALIVE_S,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `stop` returns, then stop accepting, let the requests in flight finish
    (within `DRAIN_S`) and return; `started()` reports the bound port (useful with port 0).
    At most `max_connections` are open at once (more wait in the listen backlog), so HTTP
    clients cannot take the file descriptors the feed needs."""
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = DRAIN_S
    config.keep_alive_timeout = keep_alive_s
    async with trio.open_nursery() as nursery:
        try:
            binds: list[str] = await nursery.start(
                partial(
                    serve_hypercorn,
                    app,
                    config,
                    max_connections=max_connections,
                    shutdown_trigger=stop,
                )
            )
        except BaseException as exc:
            found = split_retryable(exc, (OSError,))
            if found is None:
                raise
            raise ListenError(f"cannot listen on {host}:{port}: {found}") from None
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
