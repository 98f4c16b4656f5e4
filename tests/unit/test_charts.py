"""The live page's figures from the candles snapshot: one sparkline point per minute, the
`/symbol/<SYMBOL>` document, nothing for a symbol without a window here."""

from __future__ import annotations

import pytest

from screener.core.models import Charts, Kline
from screener.http.charts import closes_per_minute, sparklines, symbol_report

T0 = 1_770_330_000  # a minute boundary (seconds)


def k(minute: int, o: float, c: float, *, source: str = "mexc") -> Kline:
    t = T0 + 60 * minute
    return Kline("A_USDT", t, o, max(o, c), min(o, c), c, 2.0, 2.0 * c, t * 1000 + 5, source)


@pytest.mark.parametrize(
    ("minutes", "points"),
    [
        ([], []),
        ([0], [1.0]),
        ([0, 1, 2], [1.0, 2.0, 3.0]),
        # Minutes without a candle (no trade) repeat the previous close: a point per minute.
        ([0, 3], [1.0, 1.0, 1.0, 4.0]),
        ([2, 4, 5], [3.0, 3.0, 5.0, 6.0]),
    ],
)
def test_one_point_per_minute_of_the_window(minutes: list[int], points: list[float]) -> None:
    candles = [k(m, float(m), float(m + 1)) for m in minutes]
    assert closes_per_minute(candles) == points


def test_sparklines_are_empty_for_symbols_without_a_window_here() -> None:
    charts = Charts(wall_ts=0.0, lookback_min=15, candles={"A_USDT": (k(0, 1.0, 2.0),)})
    assert sparklines(charts, ["A_USDT", "B_USDT"]) == {"A_USDT": [2.0], "B_USDT": []}


def test_symbol_report_is_the_window_as_the_window_computes_it() -> None:
    candles = (k(0, 1e-8, 1.2e-8), k(2, 1.2e-8, 1.5e-8, source="mexc-rest"))
    charts = Charts(wall_ts=T0 + 150.25, lookback_min=15, candles={"A_USDT": candles})
    doc = symbol_report(charts, "A_USDT")
    assert doc is not None
    assert doc["change_pct"] == pytest.approx(50.0)
    assert {k: v for k, v in doc.items() if k not in ("change_pct", "candles")} == {
        "symbol": "A_USDT",
        "ts_ms": (T0 + 150) * 1000 + 250,
        "lookback_min": 15,
        "window_min": 3,
        "price": 1.5e-8,
        "closes": [1.2e-8, 1.2e-8, 1.5e-8],
    }
    assert doc["candles"][1] == {
        "t": T0 + 120,
        "open": 1.2e-8,
        "high": 1.5e-8,
        "low": 1.2e-8,
        "close": 1.5e-8,
        "volume": 2.0,
        "amount": 3e-8,
        "source": "mexc-rest",
    }
    assert len(doc["closes"]) == doc["window_min"]
    assert symbol_report(charts, "B_USDT") is None
