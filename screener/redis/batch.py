"""One slice of events, closed candles and the ranking written to Redis in one round trip.

A resource of the publisher actor, not an actor. `prepare_batch` encodes a slice once, as one
call of the publish script (screener/redis/script.py); `send` writes it over the publisher's
link (screener/redis/link.py), and `Prepared.result` sorts the answer: published, skipped
(published before), refused for now (held), refused for good (dropped), or fenced.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final, NamedTuple

import hiredis
import msgspec
import orjson
import redis

from screener.core.config import RedisSettings
from screener.core.models import ClosedCandle, Fence, MarketData, Ranking
from screener.redis import script
from screener.redis.link import RedisLink


class _MarketDataDoc(msgspec.Struct, tag_field="type", tag="market_data", gc=False):
    """`MarketData.as_dict()` as msgspec encodes it: the same keys in the same order, the
    same values, with no dict built per event (a third cheaper; docs/performance.md)."""

    source: str
    symbol: str
    interval: str
    candle_ts: int
    ts: int
    open: float
    high: float
    low: float
    close: float
    price: float
    volume: float
    amount: float
    change_pct: float
    window_min: int


class _CandleDoc(msgspec.Struct, tag_field="type", tag="candle", gc=False):
    """`ClosedCandle.as_dict(published_ms)` as msgspec encodes it, as `_MarketDataDoc`."""

    source: str
    symbol: str
    interval: str
    candle_ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    amount: float
    published_ts: int


_encoder: Final = msgspec.json.Encoder()
_INT64: Final = 1 << 63


class Unencodable(ValueError):
    """An event JSON consumers cannot read back (an integer beyond 64 bits)."""


def encode_event(event: MarketData) -> bytes:
    """The `market_data` document of `event`, byte for byte `orjson.dumps(event.as_dict())`
    for every event the service makes (a non-finite float becomes null there too)."""
    k = event.kline
    t, ts, window_min = k.t, k.ts_ms, event.window_min
    if not (-_INT64 <= t < _INT64 and -_INT64 <= ts < _INT64 and -_INT64 <= window_min < _INT64):
        raise Unencodable("integer beyond 64 bits")
    close = k.close
    return _encoder.encode(
        _MarketDataDoc(
            k.source,
            k.symbol,
            "Min1",
            t,
            ts,
            k.open,
            k.high,
            k.low,
            close,
            close,
            k.volume,
            k.amount,
            event.change_pct,
            window_min,
        )
    )


def encode_candle(candle: ClosedCandle, published_ms: int) -> bytes:
    """The `candle` document of `candle` published at `published_ms`, byte for byte
    `orjson.dumps(candle.as_dict(published_ms))` (as `encode_event`)."""
    t = candle.t
    if not (-_INT64 <= t < _INT64 and -_INT64 <= published_ms < _INT64):
        raise Unencodable("integer beyond 64 bits")
    return _encoder.encode(
        _CandleDoc(
            candle.source,
            candle.symbol,
            "Min1",
            t,
            candle.open,
            candle.high,
            candle.low,
            candle.close,
            candle.volume,
            candle.amount,
            published_ms,
        )
    )


HELD_CODES: Final = frozenset(
    (
        "OOM",
        "READONLY",
        "MASTERDOWN",
        "LOADING",
        "BUSY",
        "MISCONF",
        "NOREPLICAS",
        "TRYAGAIN",
        "CLUSTERDOWN",
    )
)
"""Refusals that say "not now" about Redis itself (full memory, a replica, a failover, a
dataset loading, a busy script, a disk that cannot persist), not about the command: what
they refused is kept and sent again. Any other refusal (WRONGTYPE, NOPERM, ...) would refuse
the same command forever, so it is dropped."""


class Held(NamedTuple):
    """What Redis refused for now, to send again: always a whole slice, as the publish
    script publishes nothing once its first write (the record, or a candle's key) is
    refused."""

    events: list[MarketData]
    ranking: Ranking | None
    reason: str  # Redis's words for the first of them, e.g. "OOM command not allowed ..."
    candles: Sequence[ClosedCandle] = ()


class BatchResult(NamedTuple):
    """How one write went, message by message (a message: an event, a candle or the
    ranking, sent to one or both targets). A message is published when every target
    accepted it. Candles are counted apart from `unencodable`, `refused` and `skipped`
    (events and ranking)."""

    unencodable: int
    refused: int  # messages refused for their own content (e.g. WRONGTYPE): dropped
    refusal: str | None  # the first of those refusals, for the log and /health
    held: Held | None = None  # the slice, refused for now (OOM, READONLY, ...): kept
    ranking_refused: bool = False  # the ranking is one of the `refused`
    skipped: int = 0  # events Redis had published already (a resend, another replica's)
    ranking_skipped: bool = False
    fenced: bool = False  # Redis refused the whole slice: the writer does not lead
    holder: str | None = None  # ... and who does (None: nobody)
    candles_skipped: int = 0  # candles Redis had published already (by any writer)
    candles_refused: int = 0  # candles refused for their content (WRONGTYPE): dropped
    candles_unencodable: int = 0  # candles that could not be serialized: dropped
    candles_published: Sequence[ClosedCandle] = ()  # the candles Redis took, in order

    @property
    def held_events(self) -> int:
        return len(self.held.events) if self.held is not None else 0

    @property
    def held_candles(self) -> int:
        return len(self.held.candles) if self.held is not None else 0

    @property
    def hold(self) -> str | None:
        """Why Redis refused for now, None when it did not."""
        return self.held.reason if self.held is not None else None


def is_held(refusal: str) -> bool:
    return refusal.split(" ", 1)[0] in HELD_CODES


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class Prepared(NamedTuple):
    """A slice encoded as one call of the publish script (screener/redis/script.py), and
    what it was made of, so the answer can be matched back to the records."""

    settings: RedisSettings
    head: bytes  # the call up to its script: `*N` and the command's name
    args: bytes  # the keys and arguments, after the script's SHA or source
    messages: int  # events, candles and ranking in `args`; 0: nothing to send
    events: list[MarketData]
    ranking: Ranking | None
    skipped: list[MarketData]  # events that could not be encoded: not in `args`
    candles: Sequence[ClosedCandle] = ()  # the candles in `args`, in order
    bad_candles: int = 0  # candles that could not be encoded: not in `args`

    @property
    def payload(self) -> bytes:
        """EVALSHA: the script by its SHA (Redis keeps it once loaded)."""
        return b"%s$7\r\nEVALSHA\r\n%s%s" % (self.head, _bulk(script.SHA), self.args)

    def with_source(self) -> bytes:
        """EVAL with the script's source: after NOSCRIPT (a restarted or flushed Redis)."""
        return b"%s$4\r\nEVAL\r\n%s%s" % (self.head, _bulk(script.SOURCE.encode()), self.args)

    def result(self, answer: script.Answer) -> BatchResult:
        """How the slice went, given the script's answer. A message refused by one of its
        commands (WRONGTYPE on the stream key) is dropped: the script recorded it as
        published, so sending it again would be skipped anyway."""
        unencodable = len(self.skipped)
        if answer.status == "FENCED":
            return BatchResult(unencodable, 0, None, fenced=True, holder=answer.why)
        if answer.status == "HELD":
            return self._held(answer.why or "")
        messages = {m: why for m, _, why in reversed(answer.refusals)}  # the first words win
        n = len(self.events) - unencodable  # candles are messages n.., the ranking the last
        m = len(self.candles)
        refused_candles = [k for k in messages if n <= k < n + m]
        candles: Sequence[ClosedCandle] = self.candles
        if answer.candles_skipped or refused_candles:  # not the usual case: pick those out
            gone = {*answer.candles_skipped, *refused_candles}
            candles = [c for k, c in enumerate(self.candles, n) if k not in gone]
        return BatchResult(
            unencodable,
            len(messages) - len(refused_candles),
            answer.refusals[0][2] if answer.refusals else None,
            ranking_refused=n + m in messages,
            skipped=answer.skipped,
            ranking_skipped=answer.ranking_skipped,
            candles_skipped=len(answer.candles_skipped),
            candles_refused=len(refused_candles),
            candles_unencodable=self.bad_candles,
            candles_published=candles,
        )

    def refused_whole(self, why: str) -> BatchResult:
        """Redis refused the call itself: for now (BUSY, LOADING, ...: held), or for good
        (NOPERM, ...: every message dropped)."""
        if is_held(why):
            return self._held(why)
        m = len(self.candles)
        return BatchResult(
            len(self.skipped),
            self.messages - m,
            why,
            ranking_refused=self.ranking is not None,
            candles_refused=m,
            candles_unencodable=self.bad_candles,
        )

    def _held(self, why: str) -> BatchResult:
        gone = {id(event) for event in self.skipped}
        events = [e for e in self.events if id(e) not in gone]
        return BatchResult(
            len(self.skipped),
            0,
            None,
            held=Held(events, self.ranking, why, self.candles),
            candles_unencodable=self.bad_candles,
        )


def prepare_batch(
    settings: RedisSettings,
    events: list[MarketData],
    ranking: Ranking | None,
    fence: Fence | None = None,
    candles: Sequence[ClosedCandle] = (),
    candle_ttl_ms: int = script.CANDLE_TTL_S * 1000,
) -> Prepared:
    """Encode a slice as one call of the publish script, fenced by `fence` (None: no lease
    to check). Events and candles that cannot be serialized are counted and skipped: one
    bad record must not block, or crash, the rest. Each candle's document says it was
    published now (wall time, ms). The caller keeps slices bounded, so this never holds a
    whole backlog encoded at once."""
    skipped: list[MarketData] = []
    parts: list[bytes] = []
    for event in events:
        try:
            document = encode_event(event)
        except (TypeError, ValueError, OverflowError):  # orjson, msgspec, `Unencodable`
            skipped.append(event)
            continue
        k = event.kline
        symbol = k.symbol.encode()
        ts = b"%d" % k.ts_ms
        parts.append(
            b"$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
            % (len(symbol), symbol, len(ts), ts, len(document), document)
        )
    n = len(parts)
    sent_candles: Sequence[ClosedCandle] = candles
    if candles:
        published_ms = time.time_ns() // 1_000_000
        kept: list[ClosedCandle] = []
        for candle in candles:
            try:
                document = encode_candle(candle, published_ms)
            except (TypeError, ValueError, OverflowError):
                continue
            kept.append(candle)
            symbol = candle.symbol.encode()
            t = b"%d" % candle.t
            parts.append(
                b"$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                % (len(symbol), symbol, len(t), t, len(document), document)
            )
        if len(kept) < len(candles):
            sent_candles = kept
    m = len(parts) - n
    lease_key, term_key, token, term = fence if fence is not None else ("", "", "", 0)
    fixed = [
        lease_key.encode(),
        term_key.encode(),
        settings.published_key.encode(),
        token.encode(),
        b"%d" % term,
        b"%d" % (script.PUBLISHED_TTL_S * 1000),
        TARGETS[settings.mode],
        b"%d" % settings.stream_maxlen,
        settings.market_data_channel.encode(),
        b"%d" % n,
    ]
    candle_head = (
        settings.candles_channel.encode(),
        settings.candle_key_prefix.encode(),
        b"%d" % candle_ttl_ms,
        b"%d" % m,
    )
    # command, script, numkeys, the fixed, the candles' head, the events and candles
    argc = 2 + 1 + len(fixed) + len(candle_head) + 3 * (n + m)
    tail = b""
    if ranking is not None:
        document = orjson.dumps(ranking.as_dict())
        tail = b"".join(
            _bulk(part)
            for part in (
                settings.top_movers_channel.encode(),
                script.RANKING_FIELD,
                b"%d" % round(ranking.wall_ts * 1000),
                document,
            )
        )
        argc += 4
    args = b"".join(
        (
            _bulk(b"3"),
            *map(_bulk, fixed),
            *parts[:n],
            *map(_bulk, candle_head),
            *parts[n:],
            tail,
        )
    )
    messages = n + m + (ranking is not None)
    return Prepared(
        settings,
        b"*%d\r\n" % argc,
        args,
        messages,
        events,
        ranking,
        skipped,
        sent_candles,
        len(candles) - m,
    )


TARGETS: Final = {"pubsub": b"p", "stream": b"s", "both": b"ps"}


async def send(link: RedisLink, batch: Prepared) -> BatchResult:
    """Write a prepared slice over `link`: EVALSHA, or after NOSCRIPT (a restarted or
    flushed Redis; the script did not run, so sending again is safe) EVAL with the
    source. Raises what `RedisLink.request` raises, and InvalidResponse for a reply of
    another shape (the link is closed)."""
    reply = await link.request(batch.payload)
    if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
        reply = await link.request(batch.with_source())
    if isinstance(reply, hiredis.ReplyError):
        return batch.refused_whole(str(reply))
    try:
        answer = script.read_answer(reply)
    except ValueError as exc:
        await link.close()
        raise redis.InvalidResponse(str(exc)) from None
    if answer.status == "HELD" and (answer.why or "").startswith("READONLY"):
        await link.refused_readonly()
    return batch.result(answer)
