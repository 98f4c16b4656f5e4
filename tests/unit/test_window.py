"""The window core: minutes, not messages."""

from __future__ import annotations

import pytest

from actors.window import Windows
from screener.core.models import Kline

T0 = 1_770_330_000  # a minute boundary (seconds)


def k(symbol: str, minute: int, o: float, c: float, *, at_s: float = 30.0) -> Kline:
    t = T0 + minute * 60
    return Kline(symbol, t, o, max(o, c), min(o, c), c, 1.0, 1.0, int((t + at_s) * 1000))


def test_change_is_newest_close_over_oldest_open() -> None:
    w = Windows(lookback_min=15)
    assert w.apply(k("A_USDT", 0, 100.0, 101.0)) is not None
    ev = w.apply(k("A_USDT", 1, 101.0, 110.0))
    assert ev is not None
    assert ev.change_pct == pytest.approx(10.0)
    assert ev.window_min == 2


def test_same_t_replaces_the_candle() -> None:
    w = Windows(lookback_min=15)
    w.apply(k("A_USDT", 0, 100.0, 101.0))
    w.apply(k("A_USDT", 0, 100.0, 105.0, at_s=50))
    assert [c.close for c in w.candles("A_USDT")] == [105.0]
    assert w.stats()[0].change_pct == pytest.approx(5.0)


def test_many_messages_in_one_minute_do_not_shrink_the_window() -> None:
    # The original kept the last N messages and called it N minutes.
    w = Windows(lookback_min=3)
    w.apply(k("A_USDT", 0, 100.0, 100.0))
    for i in range(50):
        w.apply(k("A_USDT", 1, 100.0, 100.0 + i, at_s=i))
    assert len(w.candles("A_USDT")) == 2
    assert w.stats()[0].change_pct == pytest.approx(49.0)


def test_window_keeps_only_lookback_minutes() -> None:
    w = Windows(lookback_min=3)
    for m in range(6):
        ev = w.apply(k("A_USDT", m, 100.0 + m, 101.0 + m))
    # now_minute = T0+5min; keeps t > T0+2min -> minutes 3,4,5
    assert [c.t for c in w.candles("A_USDT")] == [T0 + 180, T0 + 240, T0 + 300]
    assert ev is not None
    assert ev.change_pct == pytest.approx((106.0 / 103.0 - 1) * 100)
    assert ev.window_min == 3


def test_late_push_outside_the_window_is_ignored() -> None:
    w = Windows(lookback_min=3)
    w.apply(k("A_USDT", 10, 100.0, 100.0))
    assert w.apply(k("A_USDT", 7, 50.0, 50.0, at_s=700)) is None
    assert w.candles("A_USDT")[0].t == T0 + 600


def test_late_push_inside_the_window_is_inserted_in_order() -> None:
    w = Windows(lookback_min=5)
    w.apply(k("A_USDT", 0, 100.0, 100.0))
    w.apply(k("A_USDT", 2, 102.0, 103.0))
    ev = w.apply(k("A_USDT", 1, 100.0, 102.0, at_s=150))
    assert [c.t for c in w.candles("A_USDT")] == [T0, T0 + 60, T0 + 120]
    assert ev is not None
    assert ev.change_pct == pytest.approx(3.0)  # newest close 103 over oldest open 100


def test_windows_expire_by_exchange_time_of_any_symbol() -> None:
    w = Windows(lookback_min=3)
    w.apply(k("QUIET_USDT", 0, 10.0, 11.0))
    w.apply(k("BUSY_USDT", 2, 20.0, 21.0))
    assert {s.symbol for s in w.stats()} == {"QUIET_USDT", "BUSY_USDT"}
    w.apply(k("BUSY_USDT", 3, 21.0, 22.0))  # cutoff T0: QUIET's only candle leaves
    assert {s.symbol for s in w.stats()} == {"BUSY_USDT"}
    assert w.held() == 2


def test_stats_carry_price_and_change() -> None:
    w = Windows(lookback_min=15)
    w.apply(k("A_USDT", 0, 2.0, 3.0))
    [stat] = w.stats()
    assert (stat.symbol, stat.price) == ("A_USDT", 3.0)
    assert stat.change_pct == pytest.approx(50.0)


def test_all_candles_are_the_held_records_inside_the_window_only() -> None:
    """The live page's candles: each symbol's window, oldest first, the very records the
    window holds (shared, never copied), without what the clock has moved past."""
    w = Windows(lookback_min=3)
    a0, a1 = k("A_USDT", 0, 1.0, 2.0), k("A_USDT", 1, 2.0, 3.0)
    b2 = k("B_USDT", 2, 5.0, 4.0)
    for candle in (a0, a1, b2):
        w.apply(candle)
    held = w.all_candles()
    assert held == {"A_USDT": (a0, a1), "B_USDT": (b2,)}
    assert held["A_USDT"][0] is a0
    w.apply(k("B_USDT", 4, 4.0, 4.5))  # the window is now minutes 2..4: A's are outside
    assert set(w.all_candles()) == {"B_USDT"}
    assert [c.t for c in w.all_candles()["B_USDT"]] == [T0 + 120, T0 + 240]
    assert held["A_USDT"] == (a0, a1)  # an answer already given does not change
