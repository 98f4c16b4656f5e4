"""The candle closer: closed by a later push or by the exchange clock's grace, live only
while no push can have been missed, owed to REST otherwise, each minute once."""

from __future__ import annotations

from screener.core.closing import Closer, Dropped
from screener.core.models import (
    CANDLE_REST_SOURCE,
    HISTORY_SOURCE,
    LIVE_SOURCE,
    CandleLag,
    ClosedCandle,
    HistoryDone,
    Kline,
)

M = 1_770_330_480  # a minute boundary (seconds)
GRACE = 10.0


class Wall:
    """This host's clock, set by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def push(minute: int, close: float, *, at_s: float = 30.0, symbol: str = "A_USDT") -> Kline:
    t = M + minute * 60
    return Kline(
        symbol,
        t,
        100.0,
        max(100.0, close),
        min(100.0, close),
        close,
        7.0,
        70.0,
        int((t + at_s) * 1000),
    )


def row(minute: int, close: float, symbol: str = "A_USDT") -> Kline:
    t = M + minute * 60
    return Kline(
        symbol,
        t,
        100.0,
        max(100.0, close),
        min(100.0, close),
        close,
        9.0,
        90.0,
        t * 1000,
        HISTORY_SOURCE,
    )


def closer(wall: Wall, lookback_min: int = 15) -> Closer:
    return Closer(lookback_min=lookback_min, grace_s=GRACE, wall=wall)


def started(wall: Wall) -> Closer:
    """A closer past its first push (the lookback before it repaired), at minute 0."""
    c = closer(wall)
    assert c.push(push(0, 100.0, at_s=1)) is None
    wall.now = max(wall.now, M + GRACE)  # minute -1 settled at the endpoint
    for m in range(-14, 0):
        assert c.history(row(m, 100.0)) is not None
    assert c.lag() == CandleLag()
    return c


def test_a_minute_closes_at_the_first_push_of_a_later_one_with_its_last_pushs_values() -> None:
    wall = Wall(M + 1)
    c = started(wall)
    assert c.push(push(0, 101.0, at_s=20)) is None
    assert c.push(push(0, 102.5, at_s=59.9)) is None
    closed = c.push(push(1, 103.0, at_s=0.2))
    assert closed == ClosedCandle(
        "A_USDT", M, 100.0, 102.5, 100.0, 102.5, 7.0, 70.0, LIVE_SOURCE, (M + 60) * 1000 + 200
    )


def test_a_silent_symbol_closes_when_the_exchange_clock_passes_the_grace() -> None:
    wall = Wall(M + 1)
    c = started(wall)
    c.push(push(0, 101.0, at_s=50))
    other = push(1, 5.0, at_s=GRACE - 1, symbol="B_USDT")
    c.push(other)
    wall.now = M + 60 + GRACE + 5  # this host's clock alone closes no sure minute
    assert c.tick()[0] == []
    c.push(push(1, 5.0, at_s=GRACE, symbol="B_USDT"))
    closed, _ = c.tick()
    assert [(x.symbol, x.t, x.close, x.source) for x in closed] == [
        ("A_USDT", M, 101.0, LIVE_SOURCE)
    ]
    assert c.push(push(0, 99.0, at_s=59)) is None  # late: counted, no second candle
    assert c.late == 1
    assert c.push(push(1, 102.0)) is None  # the next minute opens normally


def test_a_push_for_a_closed_minute_is_late_and_never_a_second_candle() -> None:
    wall = Wall(M + 1)
    c = started(wall)
    c.push(push(0, 101.0))
    assert c.push(push(1, 101.0)) is not None
    assert c.push(push(0, 150.0, at_s=59.9)) is None
    assert c.late == 1


def test_a_break_after_a_minutes_last_push_owes_that_minute_to_rest() -> None:
    wall = Wall(M + 30)
    c = started(wall)
    c.push(push(0, 101.0, at_s=30))
    c.broke({"A_USDT"})
    wall.now = M + 125
    assert c.push(push(2, 104.0, at_s=5)) is None  # minute 0 unsure, minute 1 skipped
    assert c.lag() == CandleLag(2, M)
    assert c.repairs() == frozenset({"A_USDT"})
    assert c.repairs() == frozenset()  # asked: not again before the retry time
    assert c.history(row(0, 101.7)) == ClosedCandle(
        "A_USDT", M, 100.0, 101.7, 100.0, 101.7, 9.0, 90.0, CANDLE_REST_SOURCE, 125_000 + M * 1000
    )
    assert c.history(row(0, 101.7)) is None  # once
    wall.now = M + 120 + GRACE
    assert c.history(row(1, 103.0)) is not None
    assert c.repaired == 14 + 2  # the lookback before the first push, then these two
    assert c.lag() == CandleLag()


def test_a_push_of_the_same_minute_after_a_break_makes_the_minute_sure_again() -> None:
    wall = Wall(M + 1)
    c = started(wall)
    c.push(push(0, 101.0, at_s=20))
    c.broke({"A_USDT"})
    c.push(push(0, 102.0, at_s=40))  # on the new session: every later push arrives
    closed = c.push(push(1, 103.0))
    assert closed is not None
    assert closed.close == 102.0
    assert c.lag() == CandleLag()


def test_an_unsure_silent_minute_is_owed_by_this_hosts_clock_when_no_push_comes() -> None:
    wall = Wall(M + 1)
    c = started(wall)
    c.push(push(0, 101.0))
    c.broke({"A_USDT"})  # the exchange is gone: no push moves its clock
    wall.now = M + 60 + GRACE + 1
    assert c.tick() == ([], Dropped())
    assert c.lag() == CandleLag(1, M)
    assert c.repairs() == frozenset({"A_USDT"})


def test_rows_are_taken_only_for_minutes_that_ended_a_grace_ago() -> None:
    wall = Wall(M + 30)
    c = started(wall)
    c.push(push(0, 101.0))
    c.broke({"A_USDT"})
    wall.now = M + 61
    c.push(push(1, 101.0))
    assert c.history(row(0, 101.0)) is None  # the endpoint may not have settled it
    assert c.lag() == CandleLag(1, M)
    wall.now = M + 60 + GRACE
    assert c.history(row(0, 101.0)) is not None


def test_owed_minutes_the_endpoint_has_no_row_for_are_absent_and_old_ones_unrepaired() -> None:
    wall = Wall(M + 1)
    c = started(wall)
    c.push(push(0, 101.0))
    wall.now = M + 5 * 60 + 30
    c.push(push(5, 101.0))  # minutes 1..4 skipped
    assert c.lag() == CandleLag(4, M + 60)
    assert c.history(row(2, 101.0)) is not None
    dropped = c.history_done(HistoryDone("A_USDT", M + 60, M + 3 * 60))
    assert dropped == Dropped(absent=2)  # minutes 1 and 3: no row
    assert c.lag() == CandleLag(1, M + 4 * 60)
    wall.now = M + 21 * 60  # minute 4 left the lookback: given up
    assert c.tick()[1] == Dropped(unrepaired=1)
    assert c.lag() == CandleLag()


def test_a_first_push_owes_the_lookback_before_it_and_history_before_it_is_sent_once() -> None:
    wall = Wall(M + 30)
    c = closer(wall, lookback_min=5)
    sent = [c.history(row(m, 100.0 + m)) for m in range(-6, 1)]
    # Minute -6 is out of the lookback, 0 has not ended a grace ago; the others go once.
    assert [x.t if x else None for x in sent] == [None] + [M + m * 60 for m in range(-5, 0)] + [
        None
    ]
    assert all(x.source == CANDLE_REST_SOURCE for x in sent if x)
    assert [c.history(row(m, 1.0)) for m in range(-5, 0)] == [None] * 5
    assert c.push(push(1, 101.0)) is None
    assert c.lag() == CandleLag(1, M)  # minute 0: between the rows and the first push
    wall.now = M + 60 + GRACE
    assert c.history(row(0, 100.0)) is not None


def test_a_restart_without_history_owes_the_whole_lookback() -> None:
    wall = Wall(M + 30)
    c = closer(wall, lookback_min=5)
    c.push(push(0, 101.0))
    assert c.lag() == CandleLag(4, M - 4 * 60)
    assert c.repairs() == frozenset({"A_USDT"})


def test_the_rest_failover_feeds_nothing_here_and_a_quiet_symbol_is_forgotten() -> None:
    wall = Wall(M + 1)
    c = started(wall)
    c.push(push(0, 101.0))
    wall.now = M + 60 + GRACE + 1
    c.push(push(1, 1.0, at_s=GRACE + 1, symbol="B_USDT"))
    closed, _ = c.tick()
    assert [x.t for x in closed] == [M]
    wall.now = M + 20 * 60
    c.tick()
    assert "A_USDT" not in c.symbols


def test_while_a_connection_is_down_each_minute_that_ends_is_owed_at_once() -> None:
    wall = Wall(M + 30)
    c = started(wall)
    c.push(push(0, 101.0))
    c.broke({"A_USDT"})  # the exchange is gone for three minute ends; its REST still answers
    wall.now = M + 3 * 60 + GRACE
    c.tick()
    assert c.lag() == CandleLag(3, M)  # not only the open minute: each one that ended
    assert c.repairs() == frozenset({"A_USDT"})
    for m in range(3):
        assert c.history(row(m, 100.0 + m)) is not None
    assert c.lag() == CandleLag()
    wall.now = M + 3 * 60 + 30
    assert c.push(push(3, 104.0)) is None  # back: nothing more owed, nothing twice
    assert c.lag() == CandleLag()


def test_a_symbol_unsure_for_a_whole_lookback_stops_owing_by_the_clock() -> None:
    wall = Wall(M + 30)
    c = closer(wall, lookback_min=2)
    c.push(push(0, 101.0))
    c.lag()
    c.broke({"A_USDT"})  # delisted while its connection was down: no push ever again
    for minute in range(1, 10):
        wall.now = M + minute * 60 + GRACE
        c.tick()
    assert c.lag().minutes <= 2  # what is left is given up with the lookback, not renewed
    wall.now = M + 12 * 60
    c.tick()
    assert c.lag() == CandleLag()


def test_without_repairs_nothing_is_owed_and_unseen_minute_ends_are_given_up_at_once() -> None:
    wall = Wall(M + 30)
    c = Closer(lookback_min=15, grace_s=GRACE, wall=wall, repairable=False)
    c.push(push(0, 101.0))
    assert c.lag() == CandleLag()  # the lookback before the first push: nobody can repair it
    c.broke({"A_USDT"})
    wall.now = M + 3 * 60 + 5
    assert c.push(push(3, 104.0, at_s=5)) is None  # minutes 0 (cut), 1 and 2 (down) unseen
    assert c.lag() == CandleLag()
    assert c.tick()[1] == Dropped(unrepaired=3)
    assert c.repairs() == frozenset()


def test_a_symbol_no_connection_follows_owes_its_open_minute_and_nothing_after() -> None:
    wall = Wall(M + 30)
    c = started(wall)
    c.push(push(0, 101.0))
    c.unwatch({"A_USDT"})  # moved to another shard, or delisted
    c.broke({"A_USDT"})  # its old connection then goes down: nothing more to owe
    wall.now = M + 5 * 60
    c.tick()
    assert c.lag() == CandleLag(1, M)  # the open minute's last push may not be its final one
    c.history(row(0, 101.5))
    assert c.lag() == CandleLag()
    wall.now = M + 8 * 60
    c.tick()
    assert c.lag() == CandleLag()
