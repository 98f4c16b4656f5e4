"""/health's verdict, a pure function of the snapshots and the time: which feed serves the
windows, whether it is fresh, and the problems to report.

Five verdicts, the worst one wins: "stale" (503: nothing trustworthy is being followed: no
fresh feed, or no symbol tracked at all), "refused" (503: Redis refuses to let this replica
lead: another live process has its FLEET_REPLICA_ID, or the fleet on its channel runs other
settings; the problem line names the variable and both values), "leaderless" (503: Redis
has refused this shard's lease to every request for more than two leases, so its events
reach nobody), "degraded" (200:
the market is followed, but not the way it should be: the REST failover feeds the windows, a
connection has been down for `CONN_DOWN_GRACE_S`, or Redis refuses writes), "ok". Each reason
is a line in `problems`."""

from __future__ import annotations

import time
from typing import Any, Final

from screener.core.models import CandleLag, FeedStatus, FleetStatus, RedisStatus
from screener.core.snapshot import Views

CONN_DOWN_GRACE_S: Final = 5.0
"""A connection down this long (or longer) makes /health "degraded". A healthy reconnect
(first retry within 2 s, a handshake, the subscriptions) fits inside it, so a blip is not
reported, while an outage of a chunk, whose symbols then go unwatched, is."""


CANDLE_LAG_PROBLEM_S: Final = 120.0
"""Closed minutes not published this long after their end are reported in `problems`: a
live-closed minute is normally out within a second or two of its end (grace included for a
silent symbol), a repaired one as soon as the REST kline endpoint answers."""


def candles_report(
    owed: CandleLag, unpublished: CandleLag, wall: float
) -> tuple[dict[str, Any], str | None]:
    """(the `candles` block, a problem line while the oldest closed minute not yet
    published ended more than CANDLE_LAG_PROBLEM_S ago)."""
    oldest = min((t for t in (owed.oldest_t, unpublished.oldest_t) if t is not None), default=None)
    lag = None if oldest is None else max(0.0, wall - (oldest + 60))
    block = {
        "unpublished": unpublished.minutes,
        "owed": owed.minutes,
        "oldest": oldest,
        "lag_s": None if lag is None else round(lag, 3),
    }
    if lag is None or lag <= CANDLE_LAG_PROBLEM_S:
        return block, None
    when = time.strftime("%H:%M", time.gmtime(oldest))
    return block, (
        f"candles: {unpublished.minutes} closed not published, {owed.minutes} owed to the REST "
        f"kline endpoint; the oldest, of {when} UTC, ended {lag:.0f}s ago"
    )


def _age(at: float | None, now: float) -> float | None:
    return None if at is None else max(0.0, now - at)


def _freshness(
    views: Views, now: float, stale_after_s: float, rest_mode: bool
) -> tuple[str, str, float | None]:
    """(feed, status, age) from the freshness of the data alone; see `feed_state`."""
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


def feed_state(
    views: Views, now: float, stale_after_s: float, *, rest_mode: bool = False
) -> tuple[str, str, float | None]:
    """(feed, status, age). The WebSocket feed is fresh ("ok") while a live push arrived
    within `stale_after_s`; without one, the REST failover is "degraded" while its last
    ticker poll is that recent. `screener rest` is "ok" while a kline fetch succeeded within
    `stale_after_s`. Anything else is "stale", and so is any feed while no symbol is tracked:
    a successful poll that updates nothing is no fresh data (the contract list failing while
    the ticker works). `age` is that of the last push (of the last kline fetch in
    `rest_mode`). /top5's `stale` flag is this status, so it agrees with /health."""
    feed, fresh, age = _freshness(views, now, stale_after_s, rest_mode)
    return feed, _unless_untracked(views, fresh), age


def _unless_untracked(views: Views, status: str) -> str:
    return "stale" if views.universe.value.symbols == 0 else status


def connections_problem(feed: FeedStatus, now: float) -> str | None:
    """The reason to report while a connection has been down for `CONN_DOWN_GRACE_S`."""
    down_for = _age(feed.down_since, now)
    if down_for is None or down_for < CONN_DOWN_GRACE_S:
        return None
    down = feed.conns_total - feed.conns_up
    return f"{down} of {feed.conns_total} connections down, the longest for {down_for:.0f}s"


def redis_state(red: RedisStatus) -> tuple[str, str | None]:
    """("up" | "degraded" | "down", the problem to report). Down wins over refused: a write
    that fails says nothing about whether Redis would accept it."""
    if not red.up:
        return "down", f"redis: {red.error}" if red.error else None
    if red.refused:
        return "degraded", f"redis refuses writes: {red.refused}"
    return "up", None


def fleet_report(fleet: FleetStatus, now: float) -> tuple[dict[str, Any], str | None, str]:
    """(the `fleet` block, a problem line or None, the verdict: "refused", "leaderless"
    (for more than two leases) or ""). `publishing`: a leader whose lease is still valid by
    its own clock; a leader that cannot confirm its lease is not publishing."""
    publishing = fleet.role == "leader" and now < fleet.valid_until
    block = {
        "shard": fleet.shard,
        "shards": fleet.shards,
        "role": fleet.role,
        "publishing": publishing,
        "leader": fleet.leader,
        "term": fleet.term,
        "replica": fleet.replica,
    }
    if fleet.refused is not None:
        return block, f"fleet: refused to lead: {fleet.refused}", "refused"
    leaderless = _age(fleet.leaderless_since, now)
    if leaderless is not None and leaderless > 2 * fleet.lease_s:
        return block, f"shard {fleet.shard} has had no leader for {leaderless:.0f}s", "leaderless"
    if fleet.error is not None:
        return block, f"fleet: no lease answer ({fleet.error}); publishing held", ""
    if fleet.role == "leader" and not publishing:
        return block, f"fleet: lease of shard {fleet.shard} not confirmed; publishing held", ""
    return block, None, ""


def health_report(
    views: Views,
    now: float,
    stale_after_s: float,
    *,
    rest_mode: bool = False,
    wall: float | None = None,
) -> tuple[int, dict[str, Any]]:
    """503 "stale" while no feed is fresh or no symbol is tracked (`feed_state`); else 200,
    "degraded" while the REST failover serves, a connection has been down for
    `CONN_DOWN_GRACE_S` or Redis refuses writes, "ok" otherwise. Redis being down alone keeps
    "ok" (the events wait in the publish buffer); it shows in `problems` like every reason.
    The `candles` block counts closed minutes not published yet (`wall`: unix seconds, this
    host's clock by default); a lag beyond CANDLE_LAG_PROBLEM_S is a problem line."""
    feed, universe = views.feed.value, views.universe.value
    fill, rest = views.backfill.value, views.rest.value
    source, fresh, age = _freshness(views, now, stale_after_s, rest_mode)
    status = _unless_untracked(views, fresh)
    redis, redis_problem = redis_state(views.redis.value)
    body: dict[str, Any] = {
        "status": status,
        "feed": source,
        "symbols": universe.symbols,
        "age": None if age is None else round(age, 3),
        "connections": {"up": feed.conns_up, "total": feed.conns_total},
        "backfill": {"done": fill.done, "total": fill.total},
        "redis": redis,
    }
    problems = []
    if rest_mode and fresh == "stale":
        problems.append("no REST data yet" if age is None else f"no REST data for {age:.0f}s")
    elif fresh != "ok":
        problems.append("no push received yet" if age is None else f"no push for {age:.0f}s")
    conns_problem = connections_problem(feed, now)
    if conns_problem is not None:
        problems.append(conns_problem)
    if rest.active and rest.error:
        problems.append(rest.error)
    if universe.error:
        problems.append(universe.error)
    elif universe.symbols == 0:
        problems.append("no symbols tracked")
    if redis_problem is not None:
        problems.append(redis_problem)
    body["candles"], candles_problem = candles_report(
        views.candles_owed.value,
        views.candles_unpublished.value,
        time.time() if wall is None else wall,
    )
    if candles_problem is not None:
        problems.append(candles_problem)
    verdict = ""
    if (fleet := views.fleet.value) is not None:
        body["fleet"], fleet_problem, verdict = fleet_report(fleet, now)
        if fleet_problem is not None:
            problems.append(fleet_problem)
    if status == "ok" and (conns_problem is not None or redis == "degraded"):
        body["status"] = "degraded"
    if verdict and status != "stale":
        body["status"] = status = verdict
    if problems:
        body["problems"] = problems
    return (503 if status in ("stale", "refused", "leaderless") else 200), body


def top5_report(
    views: Views, now: float, stale_after_s: float, *, rest_mode: bool = False
) -> tuple[int, dict[str, Any]]:
    """/top5's answer (and the live page's ranking): 503 before a ranking with data; else
    the ranking, flagged `stale` as /health judges the feed (windows advance with exchange
    time, so a dead feed freezes the ranking: say so)."""
    ranking = views.ranking.value
    if ranking is None or not ranking.ranked:
        return 503, {"error": "no data yet"}
    _, status, _ = feed_state(views, now, stale_after_s, rest_mode=rest_mode)
    return 200, {**ranking.as_dict(), "stale": status == "stale"}
