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
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Response
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from screener.metrics import Metrics
from screener.models import (
    BackfillProgress,
    FeedStatus,
    Ranking,
    RedisStatus,
    RestFeedStatus,
    UniverseStatus,
)
from screener.snapshot import Latest
from screener.supervise import split_retryable


class Views(NamedTuple):
    """The snapshots HTTP may read, each written by exactly one actor."""

    ranking: Latest[Ranking | None]
    feed: Latest[FeedStatus]
    universe: Latest[UniverseStatus]
    redis: Latest[RedisStatus]
    backfill: Latest[BackfillProgress]
    rest: Latest[RestFeedStatus]

    @classmethod
    def empty(cls) -> Views:
        return cls(
            Latest(None),
            Latest(FeedStatus(None, 0, 0)),
            Latest(UniverseStatus(0, 0, None)),
            Latest(RedisStatus(False, None)),
            Latest(BackfillProgress(0, 0)),
            Latest(RestFeedStatus(False, None, None)),
        )

    def push_age(self, now: float) -> float | None:
        return _age(self.feed.value.last_push_at, now)


def _age(at: float | None, now: float) -> float | None:
    return None if at is None else max(0.0, now - at)


def feed_state(
    views: Views, now: float, stale_after_s: float, *, rest_mode: bool = False
) -> tuple[str, str, float | None]:
    """(feed, status, age). The WebSocket feed is fresh ("ok") while a live push arrived
    within `stale_after_s`; without one, the REST failover is "degraded" while its last
    ticker poll is that recent. `screener rest` is "ok" while a kline fetch succeeded within
    `stale_after_s`. Anything else is "stale". `age` is that of the last push (of the last
    kline fetch in `rest_mode`)."""
    if rest_mode:
        age = _age(views.backfill.value.last_ok_at, now)
        return "rest", "ok" if age is not None and age < stale_after_s else "stale", age
    age = views.push_age(now)
    if age is not None and age < stale_after_s:
        return "ws", "ok", age
    rest = views.rest.value
    if not rest.active:
        return "ws", "stale", age
    polled = _age(rest.last_ok_at, now)
    return "rest", "degraded" if polled is not None and polled < stale_after_s else "stale", age


def health_report(
    views: Views, now: float, stale_after_s: float, *, rest_mode: bool = False
) -> tuple[int, dict[str, Any]]:
    """200 while the feed is fresh ("ok") or served by the REST failover ("degraded"),
    else 503 with the reasons; see `feed_state`."""
    feed, universe, red = views.feed.value, views.universe.value, views.redis.value
    fill, rest = views.backfill.value, views.rest.value
    source, status, age = feed_state(views, now, stale_after_s, rest_mode=rest_mode)
    body: dict[str, Any] = {
        "status": status,
        "feed": source,
        "symbols": universe.symbols,
        "age": None if age is None else round(age, 3),
        "connections": {"up": feed.conns_up, "total": feed.conns_total},
        "backfill": {"done": fill.done, "total": fill.total},
        "redis": "up" if red.up else "down",
    }
    problems = []
    if rest_mode and status == "stale":
        problems.append("no REST data yet" if age is None else f"no REST data for {age:.0f}s")
    elif status != "ok":
        problems.append("no push received yet" if age is None else f"no push for {age:.0f}s")
    if rest.active and rest.error:
        problems.append(rest.error)
    if universe.error:
        problems.append(universe.error)
    if red.error and not red.up:
        problems.append(f"redis: {red.error}")
    if problems:
        body["problems"] = problems
    return (503 if status == "stale" else 200), body


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
