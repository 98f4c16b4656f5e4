"""Snapshots: the latest immutable value of each actor's state, written by that actor and
read by HTTP (`Views`).

This is the only state shared between tasks: the writer replaces the value wholesale, so a
reader always sees a consistent record without locks.
"""

from __future__ import annotations

from typing import Generic, NamedTuple, TypeVar

from screener.models import (
    BackfillProgress,
    FeedStatus,
    FleetStatus,
    Ranking,
    RedisStatus,
    RestFeedStatus,
    UniverseStatus,
)

T = TypeVar("T")


class Latest(Generic[T]):
    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def set(self, value: T) -> None:
        self.value = value


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
        )

    def push_age(self, now: float) -> float | None:
        """Seconds since the last accepted live push (None before any)."""
        at = self.feed.value.last_push_at
        return None if at is None else max(0.0, now - at)
