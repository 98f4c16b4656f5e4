"""Candle builders shared by the warm-start and gap-fill tests (tests/unit/test_window_merge.py,
tests/actors/test_backfill.py, tests/system/test_warm_start.py): `k`, a live (or REST)
A_USDT candle `minute` minutes after the boundary `M`, and `history`, the same candle as the
kline history serves it. Pure values; no clock, no I/O."""

from __future__ import annotations

from screener.core.models import HISTORY_SOURCE, Kline

M = 1_770_330_480  # a minute boundary (seconds)


def k(minute: int, o: float, c: float, *, source: str = "mexc", at_s: float = 30.0) -> Kline:
    t = M + minute * 60
    ts_ms = t * 1000 if source == HISTORY_SOURCE else int((t + at_s) * 1000)
    return Kline("A_USDT", t, o, max(o, c), min(o, c), c, 5.0, 50.0, ts_ms, source)


def history(minute: int, o: float, c: float) -> Kline:
    return k(minute, o, c, source=HISTORY_SOURCE)
