"""MEXC futures venue specifics: request frames, the frame decoder, the contract filter.

Raw venue dicts stop here: the decoder turns a frame into a typed record or raises
`DecodeError` with a short reason that becomes a metric label. Facts behind every rule are in
shared/mexc-protocol.md (§1.3 push fields, §1.4 compression, §2.2 the contract filter).
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Iterable
from typing import Any, NamedTuple

import orjson

from screener.config import SYMBOL_RE
from screener.models import Kline

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


def decode(frame: str | bytes) -> Frame:
    """Decode one WebSocket message; binary frames are tried as gzip, then zlib."""
    if isinstance(frame, bytes | bytearray):
        frame = _decompress(bytes(frame))
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
        return ErrorReply(str(msg.get("data"))[:200])
    if isinstance(channel, str) and channel.startswith("rs."):
        return OtherReply(channel)
    raise DecodeError("unknown_channel", str(channel)[:40])


def _decompress(data: bytes) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error):
        pass
    try:
        return zlib.decompress(data)
    except zlib.error:
        raise DecodeError("binary", "neither gzip nor zlib") from None


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
        t, o, h, low, c, q, a = (data[k] for k in ("t", "o", "h", "l", "c", "q", "a"))
        ts = msg["ts"]
    except KeyError as exc:
        raise DecodeError("missing_field", str(exc.args[0])) from None
    o, h, low, c = _price(o), _price(h), _price(low), _price(c)
    if low > h:
        raise DecodeError("bad_value", "low above high")
    return Kline(symbol, _int(t), o, h, low, c, _amount(q), _amount(a), _int(ts))


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


# No listed contract trades anywhere near a trillion USDT; beyond it a price is corrupt, and
# 1e308 would turn the window's change into infinity.
MAX_PRICE = 1e12


def _price(value: object) -> float:
    number = _number(value)
    if not 0 < number < MAX_PRICE:
        raise DecodeError("bad_value", "price out of range")
    return number


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
