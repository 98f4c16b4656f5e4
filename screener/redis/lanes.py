"""What the publisher owes Redis, as plain synchronous state: testable without trio.

`Lanes` holds the bounded `PublishBuffer` of what is pending and says what to send next (a
slice of at most PIPELINE_EVENTS, while the shard lease is valid by the caller's clock and
no backoff of a held slice runs), takes a failed or held slice back in front, and keeps a
standby's copy of the pushes (`StandbyHold`) for a takeover. (One lane for every target of
PUBLISH_MODE: the publish script takes a slice whole or holds it whole.) Time is passed in
(`now`: trio's clock in the actor, any number in a test). Nothing here does I/O or logs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Final, NamedTuple

from screener.core.config import RedisSettings
from screener.core.models import Leadership, MarketData, Ranking

PIPELINE_EVENTS: Final = 500
"""Most events in one pipeline, so what one round trip holds encoded is bounded. Sending a
backlog at once raised RSS by two thirds after a 30 s outage at 1,000 pushes/s (+40 MB for
10,000 events); slices of 2,000 cost 12 MB, of 500 3 MB, and their round trips still take
a fraction of a second (normal batches, a few ms of pushes, are far smaller)."""

UNCONFIRMED: Final = Leadership("leader", float("-inf"), 0)
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
    """One slice on its way to Redis."""

    events: list[MarketData]
    ranking: Ranking | None


class Lanes:
    """The pending events, the fence, a held slice's time of retry and the standby's hold.
    Methods that may drop events return how many (the actor counts them)."""

    def __init__(
        self, settings: RedisSettings, *, fenced: bool = False, hold_s: float = 0.0
    ) -> None:
        self.settings = settings
        self.buffer = PublishBuffer(settings.buffer)
        self.retry_at: float | None = None  # not before (the backoff of a held slice)
        # The shard lease as last answered (None: no fleet, always publish).
        self.fence: Leadership | None = UNCONFIRMED if fenced else None
        self.held = StandbyHold(hold_s, settings.buffer)  # a standby's copy of the pushes

    def backlog(self) -> int:
        """Events waiting to be sent."""
        return len(self.buffer.events)

    def has_pending(self) -> bool:
        return bool(len(self.buffer))

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
        hold in front of what is pending. Returns how many events that drops (a hold beyond
        the buffer's capacity keeps the newest per symbol)."""
        was, self.fence = self.fence, fence
        if fence.role == "standby":
            if was is None or was.role != "standby":
                moved, _ = self.buffer.take()
                self.retry_at = None
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
        """The next slice, if something is pending, no held slice's backoff runs and the
        lease (if any) is valid at `now`."""
        if not self.may_publish(now) or not len(self.buffer):
            return None
        if self.retry_at is not None and now < self.retry_at:
            return None
        self.retry_at = None
        return Slice(*self.buffer.take(PIPELINE_EVENTS))

    def slices(self) -> Iterator[Slice]:
        """Everything pending, slice after slice, whatever the backoff (the final flush)."""
        while len(self.buffer):
            yield Slice(*self.buffer.take(PIPELINE_EVENTS))

    def put_back(self, sent: Slice) -> int:
        """A slice that failed or was held goes back in front of what arrived meanwhile."""
        return self.buffer.put_back(sent.events, sent.ranking)
