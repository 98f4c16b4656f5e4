"""WebSocket frames: the requests we send and the decoder of what the exchange sends.

The decoder turns one message into a typed record (`Kline`, an ack, a pong, an error reply)
or raises `DecodeError`. A push goes first through msgspec's typed decoder (`_Push`: the
fields we read, their JSON types checked in C, the rest skipped) and a few range checks; any
message that path does not accept as a plain good push (replies, string numbers, anything
wrong) is decoded again by the general path (orjson, then a check per field), which says why
it is rejected. So the usual push costs one C call, and every reject keeps its reason.
Binary frames are inflated (gzip or zlib) under a size bound, so a small compressed bomb
cannot blow up memory. The frames, with real captures, are described in docs/exchange.md.
"""

from __future__ import annotations

import zlib
from typing import Any, Final, NamedTuple

import msgspec
import orjson

from screener.core.models import LIVE_SOURCE, Kline
from screener.core.names import LIVE_INTERVAL, SYMBOL_RE, printable
from screener.mexc.values import (
    MAX_PRICE,
    MAX_PUSH_DELAY_MS,
    MAX_T,
    MIN_PRICE,
    MIN_T,
    DecodeError,
    candle,
    timestamp,
)

PING: Final = orjson.dumps({"method": "ping"}).decode()


def sub_kline(symbol: str) -> str:
    """Subscribe one symbol's 1-minute candles, uncompressed (`"gzip": false`)."""
    return orjson.dumps(
        {
            "method": "sub.kline",
            "param": {"symbol": symbol, "interval": LIVE_INTERVAL},
            "gzip": False,
        }
    ).decode()


def unsub_kline(symbol: str) -> str:
    return orjson.dumps(
        {"method": "unsub.kline", "param": {"symbol": symbol, "interval": LIVE_INTERVAL}}
    ).decode()


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


class _KlineData(msgspec.Struct, gc=False):
    """`data` of a push as the fast path takes it: JSON numbers only (msgspec's `float`
    takes integers too, never a bool or a string)."""

    t: int
    o: float
    h: float
    l: float  # noqa: E741  # the venue's name
    c: float
    q: float
    a: float
    symbol: str | msgspec.UnsetType = msgspec.UNSET  # absent: the frame's own; null: bad
    interval: str = LIVE_INTERVAL


class _Push(msgspec.Struct, gc=False):
    channel: str
    data: _KlineData
    ts: int
    symbol: str | None = None


_push_decoder: Final = msgspec.json.Decoder(_Push)
_INF: Final = float("inf")


def _fast_kline(frame: str | bytes) -> Kline | None:
    """The push as a `Kline` when it is a plain good one, else None (the general path then
    decodes it and says why it is rejected, if it is). Accepts nothing `_kline` rejects."""
    try:
        msg = _push_decoder.decode(frame)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    d = msg.data
    symbol = msg.symbol if d.symbol is msgspec.UNSET else d.symbol
    t, ts, o, h, low, c, q, a = d.t, msg.ts, d.o, d.h, d.l, d.c, d.q, d.a
    if (
        msg.channel != "push.kline"
        or d.interval != LIVE_INTERVAL
        or symbol is None
        or t % 60
        or not MIN_T <= t <= MAX_T
        or not 0 <= ts - t * 1000 < MAX_PUSH_DELAY_MS
        # Comparisons with NaN are false, so these reject NaN and infinities too.
        or not (MIN_PRICE <= o < MAX_PRICE and MIN_PRICE <= h < MAX_PRICE)
        or not (MIN_PRICE <= low < MAX_PRICE and MIN_PRICE <= c < MAX_PRICE)
        or low > h
        or not (0.0 <= q < _INF and 0.0 <= a < _INF)
        or not SYMBOL_RE.match(symbol)
    ):
        return None
    return Kline(symbol, t, o, h, low, c, q, a, ts, LIVE_SOURCE)


def decode(frame: str | bytes, max_bytes: int = 1 << 20) -> Frame:
    """Decode one WebSocket message; binary frames are inflated up to `max_bytes`."""
    if isinstance(frame, bytes | bytearray):
        frame = _decompress(bytes(frame), max_bytes)
    kline = _fast_kline(frame)
    if kline is not None:
        return kline
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
    interval = data.get("interval", LIVE_INTERVAL)
    if interval != LIVE_INTERVAL:
        raise DecodeError("interval", str(interval)[:10])
    try:
        t, o, h, low, c = data["t"], data["o"], data["h"], data["l"], data["c"]
        q, a, ts = data["q"], data["a"], msg["ts"]
    except KeyError as exc:
        raise DecodeError("missing_field", str(exc.args[0])) from None
    t, ts = timestamp(t), timestamp(ts)
    if t % 60 or not MIN_T <= t <= MAX_T or not 0 <= ts - t * 1000 < MAX_PUSH_DELAY_MS:
        raise DecodeError("bad_value", "implausible candle or push time")
    return candle(symbol, t, (o, h, low, c), q, a, ts_ms=ts)
