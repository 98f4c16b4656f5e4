"""REST answers: the one envelope parser, the contract filter, kline history and tickers.

Every answer is `{"success": .., "code": .., "data": ..}`; codes 0 and 200 and a missing code
mean success, `success: false` or any other code is a refusal (`VenueError`). A body that is
not that envelope, or data of the wrong shape, is a `DecodeError`. docs/exchange.md has the
endpoints, their limits and real answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, NamedTuple

import orjson

from screener.core.models import HISTORY_SOURCE, Kline
from screener.core.names import SYMBOL_RE, printable
from screener.mexc.values import DecodeError, candle, loose_float, price, timestamp

CONTRACT_DETAIL_PATH: Final = "/api/v1/contract/detail"
KLINE_PATH: Final = "/api/v1/contract/kline/{symbol}"
TICKER_PATH: Final = "/api/v1/contract/ticker"
_KLINE_COLUMNS: Final = ("time", "open", "high", "low", "close", "vol", "amount")


class VenueError(Exception):
    """`{"success":false,"code":..,"message":..}`: the venue answered and refused."""

    def __init__(self, code: object, message: object) -> None:
        text = printable(message)
        super().__init__(f"code {code}: {text}"[:200])
        self.code = code
        self.message = text


def envelope_data(body: bytes) -> Any:
    """`data` of a REST answer, or `DecodeError` (not the envelope) or `VenueError` (refused)."""
    try:
        envelope = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise DecodeError("json", "body is not JSON") from None
    if not isinstance(envelope, dict):
        raise DecodeError("shape", "body is not an object")
    code = envelope.get("code")
    if envelope.get("success") is False or code not in (0, 200, None):
        raise VenueError(code, envelope.get("message", ""))
    if "data" not in envelope:
        raise DecodeError("missing_field", "data")
    return envelope["data"]


def _rows(data: Any, what: str) -> list[Any]:
    """`data` as a list of rows: some answers hold a single object instead of a list."""
    rows = [data] if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise DecodeError("shape", f"{what} data is neither a list nor an object")
    return rows


# --- contract/detail: the universe ------------------------------------------------------


class Contract(NamedTuple):
    """The fields of a `contract/detail` row that decide whether we stream it."""

    symbol: str
    quote: object
    settle: object
    future_type: float
    state: float
    hidden: bool
    opening_ms: float


def contracts(data: Any) -> list[Contract]:
    """The rows of a contract/detail answer; rows without a valid symbol are skipped."""
    out: list[Contract] = []
    for row in _rows(data, "contract"):
        if not isinstance(row, dict):
            continue
        symbol = row.get("symbol")
        if not isinstance(symbol, str) or not SYMBOL_RE.match(symbol):
            continue
        out.append(
            Contract(
                symbol=symbol,
                quote=row.get("quoteCoin"),
                settle=row.get("settleCoin"),
                future_type=loose_float(row.get("futureType")),
                state=loose_float(row.get("state")),
                hidden=bool(row.get("isHidden", False)),
                opening_ms=loose_float(row.get("openingTime", 0)),
            )
        )
    return out


def live_usdt_perpetuals(rows: Iterable[Contract], now_ms: float) -> set[str]:
    """USDT-margined perpetuals that trade now. `apiAllowed` is deliberately ignored: it is
    false even for BTC_USDT and concerns order placement, not market data."""
    return {
        c.symbol
        for c in rows
        if c.quote == "USDT"
        and c.settle == "USDT"
        and c.future_type == 1
        and c.state == 0
        and not c.hidden
        and (c.opening_ms == 0 or c.opening_ms <= now_ms)
    }


# --- contract/kline: history --------------------------------------------------------------


def kline_rows(data: Any, symbol: str) -> list[Kline]:
    """The columnar `kline/{symbol}` data as history candles; any bad row rejects the answer.

    `ts_ms` is the candle's open time: history must never move a window's clock past the
    candles it holds, and it produces no event whose push time could matter.
    """
    if not isinstance(data, dict):
        raise DecodeError("shape", "kline data is not an object")
    try:
        columns = [data[name] for name in _KLINE_COLUMNS]
    except KeyError as exc:
        raise DecodeError("missing_field", str(exc.args[0])) from None
    if not all(type(col) is list for col in columns) or len({len(c) for c in columns}) != 1:
        raise DecodeError("shape", "kline columns are not lists of one length")
    out: list[Kline] = []
    for t, o, h, low, c, q, a in zip(*columns, strict=True):
        start = timestamp(t)
        ohlc = (o, h, low, c)
        out.append(candle(symbol, start, ohlc, q, a, ts_ms=start * 1000, source=HISTORY_SOURCE))
    return out


# --- contract/ticker: last prices -----------------------------------------------------------


class Tick(NamedTuple):
    """One contract's last price from `contract/ticker`, at exchange time `ts_ms`."""

    price: float
    ts_ms: int


def ticker_prices(data: Any) -> dict[str, Tick]:
    """`lastPrice` and `timestamp` per symbol; unusable rows are skipped, none usable is an
    error (a ticker answer always lists every enabled contract)."""
    rows = _rows(data, "ticker")
    ticks: dict[str, Tick] = {}
    for row in rows:
        if not isinstance(row, dict):
            continue
        symbol = row.get("symbol")
        if not isinstance(symbol, str) or not SYMBOL_RE.match(symbol):
            continue
        try:
            ticks[symbol] = Tick(
                price=price(row.get("lastPrice")), ts_ms=timestamp(row.get("timestamp"))
            )
        except DecodeError:
            continue
    if rows and not ticks:
        raise DecodeError("bad_value", "no usable ticker row")
    return ticks
