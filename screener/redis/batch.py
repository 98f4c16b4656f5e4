"""One slice of events (and the ranking) written to Redis in one round trip.

A resource of the publisher actor, not an actor. `prepare_batch` encodes a slice once, as one
call of the publish script (screener/redis/script.py); `send` writes it over the publisher's
link (screener/redis/link.py), and `Prepared.result` sorts the answer: published, skipped
(published before), refused for now (held), refused for good (dropped), or fenced.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import hiredis
import msgspec
import orjson
import redis

from screener.core.config import RedisSettings
from screener.core.models import Fence, MarketData, Ranking
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
    script publishes nothing once its first write (the record) is refused."""

    events: list[MarketData]
    ranking: Ranking | None
    reason: str  # Redis's words for the first of them, e.g. "OOM command not allowed ..."


class BatchResult(NamedTuple):
    """How one write went, message by message (a message: an event or the ranking, sent
    to one or both targets). A message is published when every target accepted it."""

    unencodable: int
    refused: int  # messages refused for their own content (e.g. WRONGTYPE): dropped
    refusal: str | None  # the first of those refusals, for the log and /health
    held: Held | None = None  # the slice, refused for now (OOM, READONLY, ...): kept
    ranking_refused: bool = False  # the ranking is one of the `refused`
    skipped: int = 0  # events Redis had published already (a resend, another replica's)
    ranking_skipped: bool = False
    fenced: bool = False  # Redis refused the whole slice: the writer does not lead
    holder: str | None = None  # ... and who does (None: nobody)

    @property
    def held_events(self) -> int:
        return len(self.held.events) if self.held is not None else 0

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
    messages: int  # events and ranking in `args`; 0: nothing to send
    events: list[MarketData]
    ranking: Ranking | None
    skipped: list[MarketData]  # events that could not be encoded: not in `args`

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
        ranking_index = self.messages - 1 if self.ranking is not None else None
        return BatchResult(
            unencodable,
            len(messages),
            answer.refusals[0][2] if answer.refusals else None,
            ranking_refused=ranking_index in messages,
            skipped=answer.skipped,
            ranking_skipped=answer.ranking_skipped,
        )

    def refused_whole(self, why: str) -> BatchResult:
        """Redis refused the call itself: for now (BUSY, LOADING, ...: held), or for good
        (NOPERM, ...: every message dropped)."""
        if is_held(why):
            return self._held(why)
        return BatchResult(
            len(self.skipped), self.messages, why, ranking_refused=self.ranking is not None
        )

    def _held(self, why: str) -> BatchResult:
        gone = {id(event) for event in self.skipped}
        events = [e for e in self.events if id(e) not in gone]
        return BatchResult(len(self.skipped), 0, None, held=Held(events, self.ranking, why))


def prepare_batch(
    settings: RedisSettings,
    events: list[MarketData],
    ranking: Ranking | None,
    fence: Fence | None = None,
) -> Prepared:
    """Encode a slice as one call of the publish script, fenced by `fence` (None: no lease
    to check). Events that cannot be serialized are counted and skipped: one bad record
    must not block, or crash, the rest. The caller keeps slices bounded, so this never
    holds a whole backlog encoded at once."""
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
    argc = 2 + 1 + len(fixed) + 3 * n  # command, script, numkeys, the fixed, the events
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
    args = _bulk(b"3") + b"".join(map(_bulk, fixed)) + b"".join(parts) + tail
    messages = n + (ranking is not None)
    return Prepared(settings, b"*%d\r\n" % argc, args, messages, events, ranking, skipped)


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
