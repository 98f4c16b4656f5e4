"""What the publisher owes Redis, as plain synchronous state: testable without trio.

The lanes: `buffer`, owed to every target of PUBLISH_MODE, and under PUBLISH_MODE=both the
events one target took and the other held, by the target still owed (older, so sent first).
Each lane is a bounded `PublishBuffer`. `Lanes` says what to send next (a slice of at most
PIPELINE_EVENTS of the first lane due, while the shard lease, if any, is valid by the caller's
clock), takes a failed slice back in front, files what Redis held in the lane of the targets
that still owe it, and keeps a standby's copy of the pushes (`StandbyHold`) for a takeover.
Time is passed in (`now`: trio's clock in the actor, any number in a test). Nothing here does
I/O or logs.
"""

from __future__ import annotations

import dataclasses
from collections import deque
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


class StandbyHold:
    """What a standby received, for `window_s` (a few leases) and at most `capacity`
    events: its leader publishes them, but if this replica takes over, what the leader did
    not publish goes out from here (Redis skips the rest: screener/redis/script.py)."""

    def __init__(self, window_s: float, capacity: int) -> None:
        self.window_s = window_s
        self.capacity = capacity
        self.batches: deque[tuple[float, list[MarketData]]] = deque()
        self.size = 0

    def add(self, now: float, events: list[MarketData]) -> None:
        self.batches.append((now, events))
        self.size += len(events)
        self.prune(now)

    def prune(self, now: float) -> None:
        batches = self.batches
        while batches and (batches[0][0] < now - self.window_s or self.size > self.capacity):
            self.size -= len(batches.popleft()[1])

    def take(self, now: float) -> list[MarketData]:
        """Everything still within the window, oldest first; the hold is empty after."""
        self.prune(now)
        events = [event for _, batch in self.batches for event in batch]
        self.batches.clear()
        self.size = 0
        return events


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

    def __init__(
        self, settings: RedisSettings, *, fenced: bool = False, hold_s: float = 0.0
    ) -> None:
        self.settings = settings
        self.buffer = PublishBuffer(settings.buffer)
        self.owed: dict[str, PublishBuffer] = {}
        self.targets = {settings.mode: settings}  # the settings a lane is written with
        self.retry_at: dict[str, float] = {}  # lane -> not before (a held lane's backoff)
        # The shard lease as last answered (None: no fleet, always publish).
        self.fence: Leadership | None = UNCONFIRMED if fenced else None
        self.held = StandbyHold(hold_s, settings.buffer)  # a standby's copy of the pushes

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
        """No fleet, or a leader whose token Redis can check, within its lease by `now`."""
        fence = self.fence
        if fence is None:
            return True
        return fence.role == "leader" and fence.fence is not None and now < fence.valid_until

    def refence(self, fence: Leadership, now: float) -> int:
        """A lease answer. A leader that becomes a standby keeps what it did not publish in
        the standby's hold (the new leader publishes those pushes, or if this replica leads
        again, Redis skips what went out meanwhile); a standby that becomes leader puts its
        hold in front of its lanes. Returns how many events that drops (a hold beyond the
        buffer's capacity keeps the newest per symbol)."""
        was, self.fence = self.fence, fence
        if fence.role == "standby":
            if was is None or was.role != "standby":
                moved = [event for _, lane in self for event in lane.take()[0]]
                self.owed.clear()
                self.retry_at.clear()
                if moved:
                    self.held.add(now, moved)
            return 0
        if self.held.size:
            return self.buffer.put_back(self.held.take(now), None)
        return 0

    def keep_for_takeover(self, now: float, events: list[MarketData]) -> None:
        """A standby's events: kept for a takeover, never sent while standby."""
        self.held.add(now, events)

    def unconfirmed(self) -> None:
        """Redis said this writer does not lead (a fenced write): hold everything until
        the next lease answer says who does."""
        fence = self.fence
        if fence is not None:
            self.fence = fence._replace(valid_until=float("-inf"))

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
