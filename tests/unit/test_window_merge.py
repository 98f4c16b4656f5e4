"""Warm start and gap fill: the window's merge rule, the backfill actor in virtual time, a
connection asking for a refill after an outage, and the whole service over loopback."""

from __future__ import annotations

import pytest

from actors.backfill import history_range
from actors.window import Windows
from screener.core.models import (
    HISTORY_SOURCE,
    REST_SOURCE,
    Kline,
)
from tests.kline_builders import M, history, k


def test_history_fills_an_empty_window_without_events() -> None:
    w = Windows(lookback_min=3)
    assert [w.apply(history(m, 100.0 + m, 101.0 + m)) for m in range(5)] == [None] * 5
    assert [c.t for c in w.candles("A_USDT")] == [M + 120, M + 180, M + 240]
    assert w.stats()[0].change_pct == pytest.approx((105.0 / 102.0 - 1) * 100)


def test_live_wins_over_history_of_the_same_candle_either_way_round() -> None:
    w = Windows(lookback_min=3)
    w.apply(history(0, 100.0, 101.0))
    live = w.apply(k(1, 101.0, 103.0))
    assert live is not None
    assert live.change_pct == pytest.approx(3.0)
    assert w.apply(history(1, 101.0, 102.0)) is None  # history arriving after the live push
    assert w.candles("A_USDT")[-1].close == 103.0
    event = w.apply(k(0, 100.0, 100.5, at_s=59))  # a live push replaces history
    assert event is not None
    assert w.candles("A_USDT")[0].source == "mexc"
    assert w.apply(history(0, 100.0, 101.0)) is None
    assert w.candles("A_USDT")[0].close == 100.5


def test_history_replaces_history_and_rest_prices() -> None:
    w = Windows(lookback_min=3)
    w.apply(history(0, 100.0, 101.0))
    w.apply(history(0, 100.0, 102.0))
    assert w.candles("A_USDT")[0].close == 102.0
    w.apply(k(1, 102.0, 104.0, source=REST_SOURCE))
    w.apply(history(1, 102.0, 103.0))
    assert w.candles("A_USDT")[-1].source == HISTORY_SOURCE
    assert w.candles("A_USDT")[-1].close == 103.0


def test_rest_price_updates_the_held_candle() -> None:
    w = Windows(lookback_min=3)
    w.apply(k(0, 100.0, 101.0, at_s=10))  # live: open 100, high 101, volume 5
    tick = Kline("A_USDT", M, 101.0, 104.0, 101.0, 104.0, 0.0, 0.0, (M + 40) * 1000, REST_SOURCE)
    event = w.apply(tick)
    assert event is not None
    held = w.candles("A_USDT")[0]
    assert (held.open, held.high, held.low, held.close) == (100.0, 104.0, 100.0, 104.0)
    assert (held.volume, held.source) == (5.0, REST_SOURCE)
    assert event.kline.source == REST_SOURCE
    assert event.as_dict()["source"] == "mexc-rest"
    assert event.change_pct == pytest.approx(4.0)
    stale_tick = tick._replace(close=90.0, low=90.0, ts_ms=(M + 20) * 1000)
    assert w.apply(stale_tick) is None  # older than what is held
    w.apply(k(0, 100.0, 102.0, at_s=50))  # live is back: it wins outright
    assert w.candles("A_USDT")[0].close == 102.0


def test_history_range_covers_the_window_and_one_spare_row() -> None:
    assert history_range(M + 30.5, 15, 1) == (M - 15 * 60, M)
    five = M // 300 * 300
    assert history_range(M + 30, 15, 5) == (five - 3 * 300, five)
    hour = M // 3600 * 3600
    assert history_range(M + 30, 15, 60) == (hour - 3600, hour)
