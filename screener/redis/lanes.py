"""What the publisher owes Redis, as plain synchronous state: testable without trio.

`Lanes` holds the bounded `PublishBuffer` of what is pending and says what to send next (a
slice of at most PIPELINE_EVENTS events and as many closed candles, while the shard lease
is valid by the caller's clock and no backoff of a held slice runs), takes a failed or held
slice back in front, and keeps a standby's copy of the pushes (`StandbyHold`) for a
takeover. Closed candles wait in their own `CandleHold`, in both roles: never coalesced,
dropped only by age; a standby sends none, and at a takeover sends them all (Redis skips
those its leader published). (One lane for every target of PUBLISH_MODE: the publish script
takes a slice whole or holds it whole.) Time is passed in (`now`: trio's clock in the actor,
any number in a test). Nothing here does I/O or logs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import Final, NamedTuple

from screener.core.config import RedisSettings
from screener.core.models import CandleLag, ClosedCandle, Leadership, MarketData, Ranking

PIPELINE_EVENTS: Final = 500
"""Most events in one pipeline, so what one round trip holds encoded is bounded. Sending a
backlog at once raised RSS by two thirds after a 30 s outage at 1,000 pushes/s (+40 MB for
10,000 events); slices of 2,000 cost 12 MB, of 500 3 MB, and their round trips still take
a fraction of a second (normal batches, a few ms of pushes, are far smaller)."""

CANDLE_HOLD_S: Final = 900.0
"""How long a closed candle waits for Redis when the owner names no time (tests, tools):
LOOKBACK_MIN's default of 15 minutes. The service passes LOOKBACK_MIN."""

NO_LAG: Final = CandleLag()
"""No candle waits."""

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


class CandleHold:
    """Closed candles not yet taken by Redis, in arrival order. Never coalesced (each is a
    minute of its own, published once); bounded by age instead: a candle whose open time
    is `hold_s` or more before the newest open time seen is dropped. So it holds at most
    the tracked symbols times `hold_s` minutes' worth (about 30,000 candles for 2,000
    symbols and 15 minutes)."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.candles: deque[ClosedCandle] = deque()
        self.minutes: dict[int, int] = {}  # open time -> candles held: the oldest, cheaply
        self.newest_t: int | None = None

    def __len__(self) -> int:
        return len(self.candles)

    def add(self, candles: Sequence[ClosedCandle]) -> int:
        """Append; returns how many candles were dropped for their age."""
        if not candles:
            return 0
        self.candles.extend(candles)
        self._count(candles)
        newest = max(candle.t for candle in candles)
        if self.newest_t is None or newest > self.newest_t:
            self.newest_t = newest
        return self.prune()

    def take(self, limit: int) -> list[ClosedCandle]:
        """The oldest-arrived `limit` candles."""
        candles = self.candles
        if len(candles) <= limit:
            taken = list(candles)
            candles.clear()
            self.minutes.clear()
            return taken
        taken = [candles.popleft() for _ in range(limit)]
        minutes = self.minutes
        for candle in taken:
            left = minutes[candle.t] - 1
            if left:
                minutes[candle.t] = left
            else:
                del minutes[candle.t]
        return taken

    def put_back(self, candles: Sequence[ClosedCandle]) -> int:
        """Return candles a write did not deliver to the front; returns how many were
        dropped for their age meanwhile."""
        if not candles:
            return 0
        self.candles.extendleft(reversed(candles))
        self._count(candles)
        return self.prune()

    def prune(self) -> int:
        if self.newest_t is None or not self.minutes:
            return 0
        cutoff = self.newest_t - self.hold_s
        if min(self.minutes) > cutoff:  # the usual case: a look at a few minutes
            return 0
        before = len(self.candles)
        self.candles = deque(c for c in self.candles if c.t > cutoff)
        self.minutes = {t: k for t, k in self.minutes.items() if t > cutoff}
        return before - len(self.candles)

    def lag(self, flying: CandleLag = NO_LAG) -> CandleLag:
        """How many candles wait (with `flying`, those of a write not yet answered) and the
        oldest open time among them."""
        if not self.candles:
            return flying
        oldest = min(self.minutes)
        if flying.oldest_t is not None:
            oldest = min(oldest, flying.oldest_t)
        return CandleLag(len(self.candles) + flying.minutes, oldest)

    def _count(self, candles: Sequence[ClosedCandle]) -> None:
        minutes = self.minutes
        for candle in candles:
            minutes[candle.t] = minutes.get(candle.t, 0) + 1


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
    candles: Sequence[ClosedCandle] = ()


class Lanes:
    """The pending events and candles, the fence, a held slice's time of retry and the
    standby's hold. Methods that may drop events return how many (the actor counts them);
    those of candles (`add_candles`, `put_back_candles`) return the candles dropped for
    their age."""

    def __init__(
        self,
        settings: RedisSettings,
        *,
        fenced: bool = False,
        hold_s: float = 0.0,
        candle_hold_s: float = CANDLE_HOLD_S,
    ) -> None:
        self.settings = settings
        self.buffer = PublishBuffer(settings.buffer)
        self.retry_at: float | None = None  # not before (the backoff of a held slice)
        # The shard lease as last answered (None: no fleet, always publish).
        self.fence: Leadership | None = UNCONFIRMED if fenced else None
        self.held = StandbyHold(hold_s, settings.buffer)  # a standby's copy of the pushes
        self.candles = CandleHold(candle_hold_s)  # in both roles: a standby sends none

    def backlog(self) -> int:
        """Events waiting to be sent."""
        return len(self.buffer.events)

    def has_pending(self) -> bool:
        """Something to send once the lease allows: events, the ranking, or (a standby's
        are its leader's to publish) candles."""
        return bool(len(self.buffer)) or (bool(self.candles) and not self.standby())

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

    def add_candles(self, candles: Sequence[ClosedCandle]) -> int:
        """Closed candles, in either role (a standby's wait for a takeover)."""
        return self.candles.add(candles)

    def candle_lag(self, flying: CandleLag = NO_LAG) -> CandleLag:
        """The candles Redis has not taken yet, for /health; none while standby (its
        leader publishes them)."""
        if self.standby():
            return CandleLag()
        return self.candles.lag(flying)

    def unconfirmed(self) -> None:
        """Redis said this writer does not lead (a fenced write): hold everything until
        the next lease answer says who does."""
        fence = self.fence
        if fence is not None:
            self.fence = fence._replace(valid_until=float("-inf"))

    def next_slice(self, now: float) -> Slice | None:
        """The next slice, if something is pending, no held slice's backoff runs and the
        lease (if any) is valid at `now`."""
        if not self.may_publish(now) or not (len(self.buffer) or self.candles):
            return None
        if self.retry_at is not None and now < self.retry_at:
            return None
        self.retry_at = None
        return self._take()

    def slices(self) -> Iterator[Slice]:
        """Everything pending, slice after slice, whatever the backoff (the final flush)."""
        while len(self.buffer) or self.candles:
            yield self._take()

    def _take(self) -> Slice:
        events, ranking = self.buffer.take(PIPELINE_EVENTS)
        if not self.candles:  # the usual case: no candle closed since the last write
            return Slice(events, ranking)
        return Slice(events, ranking, self.candles.take(PIPELINE_EVENTS))

    def put_back(self, sent: Slice) -> int:
        """A slice that failed or was held goes back in front of what arrived meanwhile;
        returns how many events that drops (its candles: `put_back_candles`)."""
        return self.buffer.put_back(sent.events, sent.ranking)

    def put_back_candles(self, candles: Sequence[ClosedCandle]) -> int:
        """A write's candles that Redis did not take, in front again."""
        return self.candles.put_back(candles)
