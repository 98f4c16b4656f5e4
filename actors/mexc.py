"""MEXC futures venue specifics: request frames, the frame decoder, the contract filter, and
the REST envelope, kline and ticker decoders.

Raw venue dicts stop here: the decoder turns a frame into a typed record or raises
`DecodeError` with a short reason that becomes a metric label. Facts behind every rule are in
shared/mexc-protocol.md (§1.3 push fields, §1.4 compression, §2.1 the REST envelope, §2.2 the
contract filter, §2.3 tickers, §2.4 columnar klines).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from typing import Any, NamedTuple

import orjson

from screener.config import SYMBOL_RE
from screener.models import HISTORY_SOURCE, Kline

PING = orjson.dumps({"method": "ping"}).decode()
CONTRACT_DETAIL_PATH = "/api/v1/contract/detail"


def sub_kline(symbol: str) -> str:
    return orjson.dumps(
        {"method": "sub.kline", "param": {"symbol": symbol, "interval": "Min1"}, "gzip": False}
    ).decode()


def unsub_kline(symbol: str) -> str:
    return orjson.dumps(
        {"method": "unsub.kline", "param": {"symbol": symbol, "interval": "Min1"}}
    ).decode()


class DecodeError(ValueError):
    """A frame we cannot use; `reason` is a fixed label for metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Pong(NamedTuple):
    pass


class SubAck(NamedTuple):
    pass


class UnsubAck(NamedTuple):
    pass


class ErrorReply(NamedTuple):
    message: str


class OtherReply(NamedTuple):
    """An `rs.*` answer to a method we do not track; harmless."""

    channel: str


Frame = Kline | Pong | SubAck | UnsubAck | ErrorReply | OtherReply
_PONG, _SUB_ACK, _UNSUB_ACK = Pong(), SubAck(), UnsubAck()


def decode(frame: str | bytes, max_bytes: int = 1 << 20) -> Frame:
    """Decode one WebSocket message; binary frames are inflated (gzip or zlib) up to
    `max_bytes`, so a small compressed bomb cannot blow up memory."""
    if isinstance(frame, bytes | bytearray):
        frame = _decompress(bytes(frame), max_bytes)
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("json", str(exc)[:80]) from None
    if not isinstance(msg, dict):
        raise DecodeError("shape", "not an object")
    channel = msg.get("channel")
    if channel == "push.kline":
        return _kline(msg)
    if channel == "pong":
        return _PONG
    if channel == "rs.sub.kline":
        return _SUB_ACK
    if channel == "rs.unsub.kline":
        return _UNSUB_ACK
    if channel == "rs.error":
        return ErrorReply(printable(msg.get("data")))
    if isinstance(channel, str) and channel.startswith("rs."):
        return OtherReply(channel)
    raise DecodeError("unknown_channel", printable(channel, 40))


def _decompress(data: bytes, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib header, detected
    try:
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error:
        raise DecodeError("binary", "neither gzip nor zlib") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise DecodeError("too_large", f"inflates beyond {max_bytes} bytes")
    if not inflater.eof:
        raise DecodeError("binary", "truncated compressed frame")
    return out


def _kline(msg: dict[str, Any]) -> Kline:
    data = msg.get("data")
    if not isinstance(data, dict):
        raise DecodeError("missing_field", "data")
    symbol = data.get("symbol", msg.get("symbol"))
    if not isinstance(symbol, str) or not SYMBOL_RE.match(symbol):
        raise DecodeError("bad_symbol")
    interval = data.get("interval", "Min1")
    if interval != "Min1":
        raise DecodeError("interval", str(interval)[:10])
    try:
        t, o, h, low, c = data["t"], data["o"], data["h"], data["l"], data["c"]
        q, a, ts = data["q"], data["a"], msg["ts"]
    except KeyError as exc:
        raise DecodeError("missing_field", str(exc.args[0])) from None
    o, h, low, c = _price(o), _price(h), _price(low), _price(c)
    if low > h:
        raise DecodeError("bad_value", "low above high")
    t, ts = _int(t), _int(ts)
    if t % 60 or not MIN_T <= t <= MAX_T or not 0 <= ts - t * 1000 < MAX_PUSH_DELAY_MS:
        raise DecodeError("bad_value", "implausible candle or push time")
    return Kline(symbol, t, o, h, low, c, _amount(q), _amount(a), ts)


def _number(value: object) -> float:
    # bool is an int subclass; True is no price. Strings are accepted defensively (§1.3).
    if type(value) is float or type(value) is int:
        number = float(value)
    elif type(value) is str:
        try:
            number = float(value)
        except ValueError:
            raise DecodeError("bad_value", "not a number") from None
    else:
        raise DecodeError("bad_type", type(value).__name__)
    if not math.isfinite(number):
        raise DecodeError("bad_value", "not finite")
    return number


# No listed contract trades anywhere near a trillion USDT or below 1e-15; outside that a price
# is corrupt, and 1e308 or 5e-324 would turn the window's change into infinity.
MIN_PRICE, MAX_PRICE = 1e-15, 1e12
# Candle open times from 2010 to 2100: a wild `t` or `ts` would move the window's clock and
# silence every later push as "late".
MIN_T, MAX_T = 1_262_304_000, 4_102_444_800
# A push belongs to its candle: sent at or after the minute opened, and not hours later.
MAX_PUSH_DELAY_MS = 3_600_000


def _price(value: object) -> float:
    # Fast path for what the venue sends: a float in range (NaN and inf fail the comparison).
    if type(value) is float and MIN_PRICE <= value < MAX_PRICE:
        return value
    number = _number(value)
    if not MIN_PRICE <= number < MAX_PRICE:
        raise DecodeError("bad_value", "price out of range")
    return number


def printable(text: object, limit: int = 200) -> str:
    """Venue text fit for a log line: control characters (a forged newline) replaced."""
    return "".join(c if c.isprintable() else "?" for c in str(text)[:limit])


def _amount(value: object) -> float:
    number = _number(value)
    if number < 0:
        raise DecodeError("bad_value", "negative volume")
    return number


def _int(value: object) -> int:
    number = _number(value)
    if number <= 0 or number != int(number):
        raise DecodeError("bad_value", "bad timestamp")
    return int(number)


# --- REST: the contract universe (§2.2) -------------------------------------------------


class RestError(Exception):
    """The REST API answered, but not with usable data."""


def contract_rows(body: bytes) -> list[dict[str, Any]]:
    """The rows of a contract/detail answer; `data` may be a list or a single object."""
    try:
        envelope = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RestError("contract/detail: body is not JSON") from None
    if not isinstance(envelope, dict):
        raise RestError("contract/detail: body is not an object")
    if envelope.get("success") is not True or envelope.get("code", 0) not in (0, 200, None):
        raise RestError(
            f"contract/detail: code {envelope.get('code')}: {envelope.get('message', '')}"[:200]
        )
    data = envelope.get("data")
    rows = [data] if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise RestError("contract/detail: data is neither a list nor an object")
    return [row for row in rows if isinstance(row, dict)]


def live_usdt_perpetuals(rows: Iterable[dict[str, Any]], now_ms: float) -> set[str]:
    """The filter recipe of §2.2; `apiAllowed` is deliberately ignored (false even for BTC)."""
    live: set[str] = set()
    for row in rows:
        symbol = row.get("symbol")
        if not isinstance(symbol, str) or not SYMBOL_RE.match(symbol):
            continue
        opening = _as_float(row.get("openingTime", 0))
        if (
            row.get("quoteCoin") == "USDT"
            and row.get("settleCoin") == "USDT"
            and _as_float(row.get("futureType")) == 1
            and _as_float(row.get("state")) == 0
            and not row.get("isHidden", False)
            and (opening == 0 or opening <= now_ms)
        ):
            live.add(symbol)
    return live


def _as_float(value: object) -> float:
    """ccxt's dumps stringify numbers ("1"); compare numerically, NaN for junk."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


# --- REST: envelope, klines (§2.4) and tickers (§2.3) -----------------------------------

KLINE_PATH = "/api/v1/contract/kline/{symbol}"
TICKER_PATH = "/api/v1/contract/ticker"
_KLINE_COLUMNS = ("time", "open", "high", "low", "close", "vol", "amount")


class VenueError(RestError):
    """`{"success":false,"code":..,"message":..}`: the venue answered and refused."""

    def __init__(self, code: object, message: object) -> None:
        # Venue text ends up in log lines: no control characters (a newline forges a line).
        text = "".join(ch if ch.isprintable() else " " for ch in str(message)[:200])
        super().__init__(f"code {code}: {text}"[:200])
        self.code = code
        self.message = text


def envelope_data(body: bytes) -> Any:
    """`data` of a REST answer; `DecodeError` for a body that is not the envelope at all,
    `VenueError` for a refusal (codes 0 and 200 and a missing code mean success, §2.1)."""
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


def kline_rows(data: Any, symbol: str, source: str = HISTORY_SOURCE) -> list[Kline]:
    """The columnar `kline/{symbol}` data as candles; any bad row rejects the whole answer.

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
    rows: list[Kline] = []
    for t, o, h, low, c, q, a in zip(*columns, strict=True):
        start = _int(t)
        o, h, low, c = _price(o), _price(h), _price(low), _price(c)
        if low > h:
            raise DecodeError("bad_value", "low above high")
        volume, amount = _amount(q), _amount(a)
        rows.append(Kline(symbol, start, o, h, low, c, volume, amount, start * 1000, source))
    return rows


class Tick(NamedTuple):
    """One contract's last price from `contract/ticker`, at exchange time `ts_ms`."""

    price: float
    ts_ms: int


def ticker_prices(data: Any) -> dict[str, Tick]:
    """`lastPrice` and `timestamp` per symbol; unusable rows are skipped, none usable is an
    error (a ticker answer always lists every enabled contract)."""
    rows = [data] if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise DecodeError("shape", "ticker data is neither a list nor an object")
    ticks: dict[str, Tick] = {}
    for row in rows:
        if not isinstance(row, dict):
            continue
        symbol = row.get("symbol")
        if not isinstance(symbol, str) or not SYMBOL_RE.match(symbol):
            continue
        try:
            ticks[symbol] = Tick(_price(row.get("lastPrice")), _int(row.get("timestamp")))
        except DecodeError:
            continue
    if rows and not ticks:
        raise DecodeError("bad_value", "no usable ticker row")
    return ticks
