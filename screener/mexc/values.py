"""The numbers the venue sends, checked once for every message shape (pushes, klines, tickers).

Each check raises `DecodeError` with a fixed reason that becomes a metric label, so one bad
number rejects its record, never the service.
"""

from __future__ import annotations

import math
from typing import Final

from screener.core.models import LIVE_SOURCE, Kline

# No listed contract trades anywhere near a trillion USDT or below 1e-15; outside that a price
# is corrupt, and 1e308 or 5e-324 would turn the window's change into infinity.
MIN_PRICE: Final = 1e-15
MAX_PRICE: Final = 1e12
# Candle open times from 2010 to 2100: a wild `t` or `ts` would move the window's clock and
# silence every later push as "late".
MIN_T: Final = 1_262_304_000
MAX_T: Final = 4_102_444_800
# A push belongs to its candle: sent at or after the minute opened, and not hours later.
MAX_PUSH_DELAY_MS: Final = 3_600_000


class DecodeError(ValueError):
    """Something we cannot use; `reason` is a fixed label for metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def number(value: object) -> float:
    """A finite number; bool (an int subclass) is none. Strings are accepted defensively:
    some clients and older captures stringify numbers."""
    if type(value) is float or type(value) is int:
        result = float(value)
    elif type(value) is str:
        try:
            result = float(value)
        except ValueError:
            raise DecodeError("bad_value", "not a number") from None
    else:
        raise DecodeError("bad_type", type(value).__name__)
    if not math.isfinite(result):
        raise DecodeError("bad_value", "not finite")
    return result


def price(value: object) -> float:
    # Fast path for what the venue sends: a float in range (NaN and inf fail the comparison).
    if type(value) is float and MIN_PRICE <= value < MAX_PRICE:
        return value
    result = number(value)
    if not MIN_PRICE <= result < MAX_PRICE:
        raise DecodeError("bad_value", "price out of range")
    return result


def amount(value: object) -> float:
    """A volume or turnover: finite and not negative."""
    result = number(value)
    if result < 0:
        raise DecodeError("bad_value", "negative volume")
    return result


def timestamp(value: object) -> int:
    """A positive whole number of seconds or milliseconds."""
    result = number(value)
    if result <= 0 or result != int(result):
        raise DecodeError("bad_value", "bad timestamp")
    return int(result)


def loose_float(value: object) -> float:
    """A number for a filter comparison (ccxt's dumps stringify them: "1"), NaN for junk."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def candle(
    symbol: str,
    t: int,
    ohlc: tuple[object, object, object, object],
    volume: object,
    turnover: object,
    *,
    ts_ms: int,
    source: str = LIVE_SOURCE,
) -> Kline:
    """A candle from the venue's raw numbers, each checked: prices in range, low not above
    high, volume and turnover not negative. The caller has checked the symbol and times."""
    o, h, low, c = (price(v) for v in ohlc)
    if low > h:
        raise DecodeError("bad_value", "low above high")
    return Kline(
        symbol=symbol,
        t=t,
        open=o,
        high=h,
        low=low,
        close=c,
        volume=amount(volume),
        amount=amount(turnover),
        ts_ms=ts_ms,
        source=source,
    )
