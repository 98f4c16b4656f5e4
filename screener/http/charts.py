"""The live page's figures, pure functions of the `Charts` snapshot: a symbol's sparkline
(its window's closes, one point per minute) and the `/symbol/<SYMBOL>` document.

One point per minute, not per candle: a minute without trades has no candle, and its price is
the previous close, so a sparkline always has as many points as the window has minutes
(`window_min` of `market_data`), and a gap never squeezes the time axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from screener.core.models import Charts, Kline


def closes_per_minute(candles: Sequence[Kline]) -> list[float]:
    """The close of every minute from the oldest candle to the newest; a minute without a
    candle repeats the previous close."""
    points: list[float] = []
    if not candles:
        return points
    start = candles[0].t
    for k in candles:
        while start + 60 * len(points) < k.t:
            points.append(points[-1])
        points.append(k.close)
    return points


def change_pct(candles: Sequence[Kline]) -> float:
    """As the window computes it: newest close against oldest open (`o`, docs/architecture.md)."""
    return (candles[-1].close / candles[0].open - 1.0) * 100.0


def sparklines(charts: Charts, symbols: Sequence[str]) -> dict[str, list[float]]:
    """Each symbol's points; an empty list for a symbol this process holds no window for (in
    a fleet, the ranking lists every shard's symbols: the page then draws nothing)."""
    return {s: closes_per_minute(charts.candles.get(s, ())) for s in symbols}


def _candle(k: Kline) -> dict[str, Any]:
    return {
        "t": k.t,
        "open": k.open,
        "high": k.high,
        "low": k.low,
        "close": k.close,
        "volume": k.volume,
        "amount": k.amount,
        "source": k.source,
    }


def symbol_report(charts: Charts, symbol: str) -> dict[str, Any] | None:
    """`/symbol/<SYMBOL>`'s document, None when the symbol has no candles in the window."""
    candles = charts.candles.get(symbol)
    if not candles:
        return None
    return {
        "symbol": symbol,
        "ts_ms": round(charts.wall_ts * 1000),
        "lookback_min": charts.lookback_min,
        "window_min": (candles[-1].t - candles[0].t) // 60 + 1,
        "change_pct": change_pct(candles),
        "price": candles[-1].close,
        "closes": closes_per_minute(candles),
        "candles": [_candle(k) for k in candles],
    }
