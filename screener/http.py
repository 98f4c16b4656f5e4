"""HTTP face: /health, /top5, /metrics on quart-trio, served by hypercorn.

Handlers only read the latest immutable snapshots the actors publish (`Views`); they never
reach into an actor. Unknown routes and methods answer JSON, never a stack trace.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, NamedTuple

import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Response
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from screener.metrics import Metrics
from screener.models import FeedStatus, Ranking, RedisStatus, UniverseStatus
from screener.snapshot import Latest
from screener.supervise import split_retryable


class Views(NamedTuple):
    """The snapshots HTTP may read, each written by exactly one actor."""

    ranking: Latest[Ranking | None]
    feed: Latest[FeedStatus]
    universe: Latest[UniverseStatus]
    redis: Latest[RedisStatus]

    @classmethod
    def empty(cls) -> Views:
        return cls(
            Latest(None),
            Latest(FeedStatus(None, 0, 0)),
            Latest(UniverseStatus(0, 0, None)),
            Latest(RedisStatus(False, None)),
        )

    def push_age(self, now: float) -> float | None:
        last = self.feed.value.last_push_at
        return None if last is None else max(0.0, now - last)


def health_report(views: Views, now: float, stale_after_s: float) -> tuple[int, dict[str, Any]]:
    """200 while a push arrived within `stale_after_s`, else 503 with the reasons."""
    feed, universe, red = views.feed.value, views.universe.value, views.redis.value
    age = views.push_age(now)
    fresh = age is not None and age < stale_after_s
    body: dict[str, Any] = {
        "status": "ok" if fresh else "stale",
        "symbols": universe.symbols,
        "age": None if age is None else round(age, 3),
        "connections": {"up": feed.conns_up, "total": feed.conns_total},
        "redis": "up" if red.up else "down",
    }
    problems = []
    if not fresh:
        problems.append("no push received yet" if age is None else f"no push for {age:.0f}s")
    if universe.error:
        problems.append(universe.error)
    if red.error and not red.up:
        problems.append(f"redis: {red.error}")
    if problems:
        body["problems"] = problems
    return (200 if fresh else 503), body


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def create_app(views: Views, metrics: Metrics, *, stale_after_s: float) -> QuartTrio:
    app = QuartTrio(__name__)

    @app.get("/health")
    async def health() -> Response:
        status, body = health_report(views, trio.current_time(), stale_after_s)
        return _json(body, status)

    @app.get("/top5")
    async def top5() -> Response:
        ranking = views.ranking.value
        if ranking is None or not ranking.ranked:
            return _json({"error": "no data yet"}, 503)
        # Windows advance with exchange time, so a dead feed freezes the ranking: say so.
        age = views.push_age(trio.current_time())
        return _json({**ranking.as_dict(), "stale": age is None or age >= stale_after_s})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), status=200, content_type=CONTENT_TYPE_LATEST)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return _json({"error": (exc.name or "error").lower()}, exc.code or 500)

    @app.errorhandler(Exception)
    async def server_error(exc: Exception) -> Response:
        return _json({"error": "internal error"}, 500)

    return app


class ListenError(RuntimeError):
    """The HTTP port cannot be bound (in use, no permission)."""


async def serve_http(
    app: QuartTrio,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; `started()` reports the bound port (useful with port 0)."""
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        try:
            binds: list[str] = await nursery.start(
                partial(serve, app, config, shutdown_trigger=trio.sleep_forever)
            )
        except BaseException as exc:
            found = split_retryable(exc, (OSError,))
            if found is None:
                raise
            raise ListenError(f"cannot listen on {host}:{port}: {found}") from None
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
