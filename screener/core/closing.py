"""Closing one-minute candles: which minute of which symbol is closed, with which values.

MEXC's pushes carry no "closed" flag: a push is the state of its minute so far. `Closer` is
the pure core the window actor feeds with every live push, every REST history row, every
connection that goes down and the passing time; it answers with closed candles
(`ClosedCandle`) and with the symbols whose minutes must be repaired from REST.

Closing. A symbol's minute closes at its first push of a later minute, or, when the symbol
stays silent, once the exchange clock (the newest push time seen) passes the minute's end by
`grace_s`; its values are the last push's. A push for a minute already closed is late: counted,
never a second candle.

Sure or owed. The last push received of a minute carries its final values only if no push of
that minute can have been missed after it. Within one WebSocket session nothing is missed (TCP
keeps order, the exchange pushes each update), so a minute closes live only while its symbol
is *sure*: a push of that minute arrived since its connection last went down. A minute that
closes while its symbol is unsure (the connection dropped after its last push: a reconnect, an
exchange outage, the REST failover), each minute that ends while the symbol's connection is
down (for a lookback at most: a symbol gone for good stops costing requests), a minute a
symbol skipped (no push at all: no trades) and the minutes of the lookback before a symbol's
first push (a restart, a takeover by a fresh process) are *owed*: they are published with the
REST kline endpoint's values when its rows arrive (the backfill fetches them: `repairs()` says
which symbols to ask for, again every `retry_s` while the endpoint fails). A row is taken only
for a minute that ended `grace_s` ago (its values are settled there too). An owed minute the
endpoint answered without a row for is dropped as absent; one still owed after the lookback as
unrepaired. The REST ticker prices of the failover never reach this class.

History rows nobody owes (`screener rest`, or rows of minutes before a symbol's first push)
are candles too, once each: Redis publishes a (symbol, minute) once whoever sends it
(screener/redis/script.py), so a restarted process sends what it fetched and Redis skips
what was published before.

Time: `clock_ms` is the exchange's (push times), `wall` this host's (unix seconds), used only
for what the exchange clock cannot tell while no push arrives (a repair's due time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final, NamedTuple

from screener.core.models import (
    CANDLE_REST_SOURCE,
    LIVE_SOURCE,
    CandleLag,
    ClosedCandle,
    HistoryDone,
    Kline,
)

RETRY_S: Final = 15.0
"""A symbol with minutes still owed is asked for again this long after the last request
(the REST client has retried already; the endpoint or the budget is short)."""


class Dropped(NamedTuple):
    """Owed minutes given up: the endpoint has no row for them, or none came in time."""

    absent: int = 0
    unrepaired: int = 0


class _Symbol:
    """One symbol's closing state."""

    __slots__ = (
        "asked_at",
        "closed_through",
        "first_t",
        "last",
        "owed",
        "rest_through",
        "sure",
        "t",
        "unsure_since",
        "watched",
    )

    def __init__(self) -> None:
        self.t: int | None = None  # the open minute (newest live minute, not closed yet)
        self.last: Kline | None = None  # the last push of `t`
        self.sure = False  # no push of `t` can have been missed since `last`
        self.first_t: int | None = None  # the minute of the first live push
        self.closed_through = -1  # the newest minute closed (live or owed)
        self.rest_through = -1  # the newest minute sent from rows nobody owed
        self.owed: set[int] = set()
        self.asked_at = float("-inf")  # wall time of the last repair request
        self.unsure_since = float("inf")  # wall time its connection went down (inf: sure)
        self.watched = True  # a connection follows it (False: unsubscribed, moved, delisted)


class Closer:
    """Closed candles from pushes, history rows, connection breaks and time."""

    def __init__(
        self,
        *,
        lookback_min: int,
        grace_s: float,
        wall: Callable[[], float],
        retry_s: float = RETRY_S,
        repairable: bool = True,
    ) -> None:
        """`repairable`: owed minutes can be had from REST (the backfill runs). Without it a
        minute the live feed did not see end is given up at once, and the lookback before a
        symbol's first push is not owed at all: nothing could repair it."""
        self.lookback_s = lookback_min * 60
        self.grace_s = grace_s
        self.wall = wall
        self.retry_s = retry_s
        self.repairable = repairable
        self.given_up = 0  # minutes not owed for want of a repair, since the last tick
        self.clock_ms = 0  # the exchange clock: the newest push time seen
        self.symbols: dict[str, _Symbol] = {}
        self.late = 0  # pushes for closed minutes, since the caller last took the count
        self.repaired = 0  # candles made from owed rows, likewise
        self._scanned_at = (float("-inf"), float("-inf"))  # both clocks at the last scan

    # --- inputs -------------------------------------------------------------------------

    def push(self, k: Kline) -> ClosedCandle | None:
        """A live push; the candle it closes, if any."""
        if k.ts_ms > self.clock_ms:
            self.clock_ms = k.ts_ms
        st = self.symbols.get(k.symbol)
        if st is None:
            st = self.symbols[k.symbol] = _Symbol()
        t = k.t
        if st.t == t:
            st.last, st.sure = k, True
            st.unsure_since = float("inf")
            return None
        if (st.t is not None and t < st.t) or t <= st.closed_through or t <= st.rest_through:
            self.late += 1
            return None
        closed = None
        if st.t is not None:
            closed = self._close(st, k.ts_ms)
        if st.first_t is None:  # the first push: the lookback before it is owed
            st.first_t = t
            if self.repairable:
                self._owe(st, max(st.rest_through + 60, t - self.lookback_s + 60), t)
        else:  # minutes skipped: no push at all (no trades, or a connection down over them)
            self._owe(st, st.closed_through + 60, t)
        st.closed_through = t - 60
        st.t, st.last, st.sure = t, k, True
        st.unsure_since, st.watched = float("inf"), True
        return closed

    def broke(self, symbols: Iterable[str]) -> None:
        """These symbols' connection went down: a push of their open minutes may be missed,
        and until a push comes again every minute that ends is owed (`tick`)."""
        wall = self.wall()
        for symbol in symbols:
            st = self.symbols.get(symbol)
            if st is not None and st.watched:
                st.sure = False
                st.unsure_since = min(st.unsure_since, wall)

    def unwatch(self, symbols: Iterable[str]) -> None:
        """No connection follows these symbols any more (the universe moved them to another
        chunk or shard, or they left it): their open minute is owed, as after a break, but
        the minutes after are nobody's here: not owed by the clock."""
        for symbol in symbols:
            st = self.symbols.get(symbol)
            if st is not None:
                st.sure = st.watched = False

    def history(self, k: Kline) -> ClosedCandle | None:
        """A REST kline row: a candle if its minute is owed, or nobody owes it but it ended
        before the symbol's first push (or, with no push yet, `grace_s` ago) and within the
        lookback, once."""
        wall = self.wall()
        t = k.t
        if t + 60 + self.grace_s > wall:
            return None  # not settled at the endpoint yet
        st = self.symbols.get(k.symbol)
        if st is None:
            st = self.symbols[k.symbol] = _Symbol()
        if t in st.owed:
            st.owed.discard(t)
            self.repaired += 1
            return ClosedCandle.of(k, CANDLE_REST_SOURCE, int(wall * 1000))
        if (
            t > st.rest_through
            and (st.first_t is None or t < st.first_t)
            and t > wall - self.lookback_s - 60
        ):
            st.rest_through = t
            return ClosedCandle.of(k, CANDLE_REST_SOURCE, int(wall * 1000))
        return None

    def history_done(self, done: HistoryDone) -> Dropped:
        """A fetch ended: minutes it covered that are still owed though settled have no row
        at the endpoint."""
        st = self.symbols.get(done.symbol)
        if st is None or not st.owed:
            return Dropped()
        settled = self.wall() - 60 - self.grace_s
        absent = {t for t in st.owed if done.start_s <= t <= done.end_s and t <= settled}
        st.owed -= absent
        return Dropped(absent=len(absent))

    def tick(self) -> tuple[list[ClosedCandle], Dropped]:
        """Close what the clocks closed (at most once a second of either clock): a sure
        minute by the exchange clock, an unsure one (owed) by either; owed minutes older than
        the lookback are given up."""
        wall = self.wall()
        clock_s = self.clock_ms / 1000
        last_clock, last_wall = self._scanned_at
        if clock_s - last_clock < 1.0 and wall - last_wall < 1.0:
            return [], Dropped()
        self._scanned_at = (clock_s, wall)
        now_s = max(clock_s, wall)
        closed: list[ClosedCandle] = []
        unrepaired = 0
        exchange_due = clock_s - 60 - self.grace_s
        any_due = now_s - 60 - self.grace_s
        oldest_kept = wall - self.lookback_s - 60
        for symbol in list(self.symbols):
            st = self.symbols[symbol]
            if st.t is not None and st.t <= (exchange_due if st.sure else any_due):
                candle = self._close(st, self.clock_ms)
                if candle is not None:
                    closed.append(candle)
                st.t = st.last = None
            unsure_for = wall - st.unsure_since  # -inf while sure
            if (
                st.t is None
                and st.watched
                and st.first_t is not None
                and 0 <= unsure_for <= self.lookback_s
            ):
                # Its connection is down: each minute that ends is owed now (the endpoint
                # may answer during the outage), not when a push comes back. For a lookback
                # at most: a symbol gone for good stops costing requests.
                ended = int(any_due // 60 * 60)
                self._owe(st, st.closed_through + 60, ended + 60)
                st.closed_through = max(st.closed_through, ended)
            if st.owed:
                expired = {t for t in st.owed if t < oldest_kept}
                if expired:
                    st.owed -= expired
                    unrepaired += len(expired)
            elif st.t is None and st.closed_through < oldest_kept and st.rest_through < oldest_kept:
                del self.symbols[symbol]  # gone quiet for a whole lookback: forget it
        unrepaired += self.given_up
        self.given_up = 0
        return closed, Dropped(unrepaired=unrepaired)

    # --- outputs ------------------------------------------------------------------------

    def repairs(self) -> frozenset[str]:
        """Symbols with an owed minute that has settled and no request within `retry_s`;
        they count as asked from now on."""
        wall = self.wall()
        settled = wall - 60 - self.grace_s
        ask = []
        for symbol, st in self.symbols.items():
            if st.owed and wall - st.asked_at >= self.retry_s and min(st.owed) <= settled:
                st.asked_at = wall
                ask.append(symbol)
        return frozenset(ask)

    def lag(self) -> CandleLag:
        """Owed minutes: how many, and the oldest."""
        minutes = 0
        oldest: int | None = None
        for st in self.symbols.values():
            if st.owed:
                minutes += len(st.owed)
                first = min(st.owed)
                if oldest is None or first < oldest:
                    oldest = first
        return CandleLag(minutes, oldest)

    # --- helpers ------------------------------------------------------------------------

    def _close(self, st: _Symbol, closed_ms: int) -> ClosedCandle | None:
        """Close the open minute: live from its last push while sure, else owed (None)."""
        t, last = st.t, st.last
        assert t is not None
        assert last is not None
        st.closed_through = t
        if not st.sure:
            self._owe(st, t, t + 60)
            return None
        return ClosedCandle.of(last, LIVE_SOURCE, closed_ms)

    def _owe(self, st: _Symbol, first: int, end: int) -> None:
        """Owe the minutes `first`..`end` (exclusive), or give them up if nothing can
        repair them."""
        if first >= end:
            return
        if self.repairable:
            st.owed.update(range(first, end, 60))
        else:
            self.given_up += (end - first) // 60
