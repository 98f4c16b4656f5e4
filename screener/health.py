"""/health's verdict, a pure function of the snapshots and the time: which feed serves the
windows, whether it is fresh, and the problems to report."""

from __future__ import annotations

from typing import Any

from screener.snapshot import Views


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
