"""The venue's names: the symbol pattern, its kline interval names, and venue text made safe.

One table per fact, imported wherever it is needed (config, decoder, REST, simulator).
"""

from __future__ import annotations

import re
from typing import Final

SYMBOL_RE: Final = re.compile(r"^[A-Z0-9_]{1,40}$")
"""A contract name as MEXC writes it (`BTC_USDT`); anything else is refused at the boundary."""

INTERVAL_MINUTES: Final[dict[str, int]] = {
    "Min1": 1,
    "Min5": 5,
    "Min15": 15,
    "Min30": 30,
    "Min60": 60,
    "Hour4": 240,
    "Hour8": 480,
    "Day1": 1440,
}
"""MEXC's kline intervals with a fixed length in minutes (`Week1` and `Month1` have none)."""

LIVE_INTERVAL: Final = "Min1"
"""The interval the live feed subscribes to and the windows are made of."""

INTERVALS: Final[dict[str, str]] = {
    "1m": "Min1",
    "5m": "Min5",
    "15m": "Min15",
    "30m": "Min30",
    "1h": "Min60",
    "4h": "Hour4",
    "8h": "Hour8",
    "1d": "Day1",
}
"""The short forms `INTERVAL` accepts beside MEXC's own names (`1M` would be a month)."""


def printable(text: object, limit: int = 200) -> str:
    """Venue text fit for a log line: at most `limit` characters, control characters (a
    forged newline) replaced."""
    return "".join(c if c.isprintable() else "?" for c in str(text)[:limit])
