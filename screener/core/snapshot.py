"""Snapshots: the latest immutable value of each actor's state, written by that actor and
read by HTTP (`Views`).

This is the only state shared between tasks: the writer replaces the value wholesale, so a
reader always sees a consistent record without locks.
"""

from __future__ import annotations

from typing import Generic, NamedTuple, TypeVar

import trio

from screener.core.models import (
    BackfillProgress,
    CandleLag,
    Charts,
    FeedStatus,
    FleetStatus,
    Ranking,
    RedisStatus,
    RestFeedStatus,
    UniverseStatus,
)

T = TypeVar("T")


class Latest(Generic[T]):
    __slots__ = ("_changed", "value")

    def __init__(self, value: T) -> None:
        self.value = value
        self._changed: trio.Event | None = None  # only while someone waits

    def set(self, value: T) -> None:
        self.value = value
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    async def wait_set(self) -> None:
        """Return at the next `set()` (the live page's stream waits for each ranking so).
        Only a trio task may wait; a writer with no waiter pays one attribute read."""
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()


class Views(NamedTuple):
    """The snapshots HTTP may read, each written by exactly one actor."""

    ranking: Latest[Ranking | None]  # the global one (the fleet actor's merge)
    feed: Latest[FeedStatus]
    universe: Latest[UniverseStatus]
    redis: Latest[RedisStatus]
    backfill: Latest[BackfillProgress]
    rest: Latest[RestFeedStatus]
    shard_ranking: Latest[Ranking | None]  # this shard's (the ranking actor's)
    fleet: Latest[FleetStatus | None]
    charts: Latest[Charts]  # the candles behind the latest ranking, for the live page
    candles_owed: Latest[CandleLag]  # closed minutes awaiting REST repair (the window's)
    candles_unpublished: Latest[CandleLag]  # closed candles Redis has not taken (the publisher's)
    heartbeat: Latest[float | None]  # trio time of the app's last beat, for /livez

    @classmethod
    def empty(cls) -> Views:
        return cls(
            ranking=Latest(None),
            feed=Latest(FeedStatus(last_push_at=None, conns_up=0, conns_total=0)),
            universe=Latest(UniverseStatus(symbols=0, chunks=0, error=None)),
            redis=Latest(RedisStatus(up=False, error=None)),
            backfill=Latest(BackfillProgress(done=0, total=0)),
            rest=Latest(RestFeedStatus(active=False, last_ok_at=None, error=None)),
            shard_ranking=Latest(None),
            fleet=Latest(None),
            charts=Latest(Charts(wall_ts=0.0, lookback_min=0, candles={})),
            candles_owed=Latest(CandleLag()),
            candles_unpublished=Latest(CandleLag()),
            heartbeat=Latest(None),
        )

    def push_age(self, now: float) -> float | None:
        """Seconds since the last accepted live push (None before any)."""
        at = self.feed.value.last_push_at
        return None if at is None else max(0.0, now - at)
