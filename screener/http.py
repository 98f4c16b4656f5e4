"""HTTP face: /health, /top5, /metrics on quart-trio, served by hypercorn.

Handlers only read the latest immutable snapshots the actors publish (`Views`); they never
reach into an actor. Unknown routes and methods answer JSON, never a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final

import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Response
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from screener.health import feed_state, health_report
from screener.metrics import Metrics
from screener.snapshot import Views
from screener.supervise import split_retryable


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def create_app(
    views: Views, metrics: Metrics, *, stale_after_s: float, rest_mode: bool = False
) -> QuartTrio:
    app = QuartTrio(__name__)

    @app.get("/health", provide_automatic_options=False)
    async def health() -> Response:
        status, body = health_report(views, trio.current_time(), stale_after_s, rest_mode=rest_mode)
        return _json(body, status)

    @app.get("/top5", provide_automatic_options=False)
    async def top5() -> Response:
        ranking = views.ranking.value
        if ranking is None or not ranking.ranked:
            return _json({"error": "no data yet"}, 503)
        # Windows advance with exchange time, so a dead feed freezes the ranking: say so.
        _, status, _ = feed_state(views, trio.current_time(), stale_after_s, rest_mode=rest_mode)
        return _json({**ranking.as_dict(), "stale": status == "stale"})

    @app.get("/metrics", provide_automatic_options=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), status=200, content_type=CONTENT_TYPE_LATEST)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return _json({"error": (exc.name or "error").lower()}, exc.code or 500)

    @app.errorhandler(Exception)
    async def server_error(exc: Exception) -> Response:
        logger.bind(actor="http").opt(exception=exc).error("request failed: {exc!r}", exc=exc)
        return _json({"error": "internal error"}, 500)

    return app


DRAIN_S: Final = 1.0
"""How long requests in flight may take to finish once shutdown began."""


class ListenError(RuntimeError):
    """The HTTP port cannot be bound (in use, no permission)."""


async def serve_http(
    app: QuartTrio,
    host: str,
    port: int,
    *,
    stop: Callable[[], Awaitable[None]] = trio.sleep_forever,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `stop` returns, then stop accepting, let the requests in flight finish
    (within `DRAIN_S`) and return; `started()` reports the bound port (useful with port 0)."""
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = DRAIN_S
    async with trio.open_nursery() as nursery:
        try:
            binds: list[str] = await nursery.start(
                partial(serve, app, config, shutdown_trigger=stop)
            )
        except BaseException as exc:
            found = split_retryable(exc, (OSError,))
            if found is None:
                raise
            raise ListenError(f"cannot listen on {host}:{port}: {found}") from None
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
