"""What the publisher owes Redis, as plain synchronous state: testable without trio.

The lanes: `buffer`, owed to every target of PUBLISH_MODE, and under PUBLISH_MODE=both the
events one target took and the other held, by the target still owed (older, so sent first).
Each lane is a bounded `PublishBuffer`. `Lanes` says what to send next (a slice of at most
PIPELINE_EVENTS of the first lane due, while the shard lease, if any, is valid by the caller's
clock), takes a failed slice back in front, files what Redis held in the lane of the targets
that still owe it, and drops what a standby or a new leader must not send. Time is passed in
(`now`: trio's clock in the actor, any number in a test). Nothing here does I/O or logs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Final, NamedTuple

from screener.core.config import RedisSettings
from screener.core.models import Leadership, MarketData, Ranking
from screener.redis.batch import Held

PIPELINE_EVENTS: Final = 500
"""Most events in one pipeline, so what one round trip holds encoded is bounded. Sending a
backlog at once raised RSS by two thirds after a 30 s outage at 1,000 pushes/s (+40 MB for
10,000 events); slices of 2,000 cost 12 MB, of 500 3 MB, and their round trips still take
a fraction of a second (normal batches, a few ms of pushes, are far smaller)."""

UNCONFIRMED: Final = Leadership("leader", float("-inf"), 0, drop_held=False)
"""A fenced publisher's start: nothing goes out before the first lease answer."""


class PublishBuffer:
    """Pending events in arrival order, bounded by coalescing to the newest per symbol."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.events: list[MarketData] = []
        self.ranking: Ranking | None = None  # only the newest ranking is worth sending

    def __len__(self) -> int:
        return len(self.events) + (self.ranking is not None)

    def add(self, events: list[MarketData]) -> int:
        """Append; returns how many events were dropped to stay within capacity."""
        self.events.extend(events)
        if len(self.events) <= self.capacity:
            return 0
        before = len(self.events)
        newest = {ev.kline.symbol: ev for ev in self.events}
        kept = [ev for ev in self.events if newest[ev.kline.symbol] is ev]
        if len(kept) > self.capacity:  # more symbols than room: the oldest go
            kept = kept[-self.capacity :]
        self.events = kept
        return before - len(kept)

    def take(self, limit: int | None = None) -> tuple[list[MarketData], Ranking | None]:
        """The oldest `limit` events (all by default) and the ranking."""
        events, ranking = self.events, self.ranking
        self.ranking = None
        if limit is not None and len(events) > limit:
            self.events = events[limit:]
            return events[:limit], ranking
        self.events = []
        return events, ranking

    def put_back(self, events: list[MarketData], ranking: Ranking | None) -> int:
        """Return a failed batch to the front; newer arrivals stay behind it."""
        if ranking is not None and self.ranking is None:
            self.ranking = ranking
        newer = self.events
        self.events = []
        return self.add(events + newer)


class Slice(NamedTuple):
    """One slice on its way to the targets of `mode` (its lane)."""

    mode: str
    events: list[MarketData]
    ranking: Ranking | None


class Lanes:
    """Every lane, the fence, and each held lane's time of retry. Methods that may drop
    events return how many (the actor counts them)."""

    def __init__(self, settings: RedisSettings, *, fenced: bool = False) -> None:
        self.settings = settings
        self.buffer = PublishBuffer(settings.buffer)
        self.owed: dict[str, PublishBuffer] = {}
        self.targets = {settings.mode: settings}  # the settings a lane is written with
        self.retry_at: dict[str, float] = {}  # lane -> not before (a held lane's backoff)
        # The shard lease as last answered (None: no fleet, always publish).
        self.fence: Leadership | None = UNCONFIRMED if fenced else None

    def __iter__(self) -> Iterator[tuple[str, PublishBuffer]]:
        yield from self.owed.items()
        yield self.settings.mode, self.buffer

    def lane(self, mode: str) -> PublishBuffer:
        if mode == self.settings.mode:
            return self.buffer
        lane = self.owed.get(mode)
        if lane is None:
            lane = self.owed[mode] = PublishBuffer(self.settings.buffer)
            self.targets[mode] = dataclasses.replace(self.settings, mode=mode)
        return lane

    def backlog(self) -> int:
        """Events waiting in the lanes."""
        return sum(len(lane.events) for _, lane in self)

    def has_pending(self) -> bool:
        return any(len(lane) for _, lane in self)

    def standby(self) -> bool:
        return self.fence is not None and self.fence.role == "standby"

    def may_publish(self, now: float) -> bool:
        fence = self.fence
        return fence is None or (fence.role == "leader" and now < fence.valid_until)

    def refence(self, fence: Leadership) -> int:
        """A lease answer. A standby, or a leader that took over from another replica,
        drops what it holds (those pushes are, or were, published by the other replica);
        returns how many events it dropped."""
        self.fence = fence
        if not fence.drop_held:
            return 0
        held = self.backlog()
        self.owed.clear()
        self.buffer.take()
        self.retry_at.clear()
        return held

    def next_slice(self, now: float) -> Slice | None:
        """The next slice of the first lane with something to send and no backoff to wait,
        while the lease (if any) is valid at `now`."""
        if not self.may_publish(now):
            return None
        for mode, lane in self:
            if len(lane) and self.retry_at.get(mode, now) <= now:
                self.retry_at.pop(mode, None)
                events, ranking = lane.take(PIPELINE_EVENTS)
                return Slice(mode, events, ranking)
        return None

    def slices(self) -> Iterator[Slice]:
        """Every lane, slice after slice, whatever the backoff (the final flush)."""
        for mode, lane in list(self):
            while len(lane):
                events, ranking = lane.take(PIPELINE_EVENTS)
                yield Slice(mode, events, ranking)

    def put_back(self, sent: Slice) -> int:
        return self.lane(sent.mode).put_back(sent.events, sent.ranking)

    def hold(self, sent: Slice, group: Held) -> int:
        """Keep what Redis held in the lane of the targets still owed: in front of that lane
        when it came from there, else behind (a write of `buffer` under PUBLISH_MODE=both
        whose XADDs were held: newer than what the stream lane already owes)."""
        lane = self.lane(group.mode)
        if group.mode == sent.mode:
            return lane.put_back(group.events, group.ranking)
        dropped = lane.add(group.events)
        if group.ranking is not None:
            lane.ranking = group.ranking
        return dropped

    def first_retry(self) -> float | None:
        return min(self.retry_at.values()) if self.retry_at else None
