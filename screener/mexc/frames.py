"""WebSocket frames: the requests we send and the decoder of what the exchange sends.

The decoder turns one message into a typed record (`Kline`, an ack, a pong, an error reply)
or raises `DecodeError`. Binary frames are inflated (gzip or zlib) under a size bound, so a
small compressed bomb cannot blow up memory. The frames, with real captures, are described
in docs/exchange.md.
"""

from __future__ import annotations

import zlib
from typing import Any, Final, NamedTuple

import orjson

from screener.mexc.names import LIVE_INTERVAL, SYMBOL_RE, printable
from screener.mexc.values import MAX_PUSH_DELAY_MS, MAX_T, MIN_T, DecodeError, candle, timestamp
from screener.models import Kline

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


def decode(frame: str | bytes, max_bytes: int = 1 << 20) -> Frame:
    """Decode one WebSocket message; binary frames are inflated up to `max_bytes`."""
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
