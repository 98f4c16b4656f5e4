"""One batch of events (and the ranking) written to Redis in one round trip.

A resource of the publisher actor, not an actor. `prepare_batch` encodes a batch once; it is
written over the publisher's link (screener/redis/link.py), whose replies are read in bulk
and sorted by `Prepared.result`: published, refused for now (held), or refused for good.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import msgspec
import orjson

from screener.core.config import RedisSettings
from screener.core.models import MarketData, Ranking


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
    """What Redis refused for now, to send again to the targets of `mode` only (with
    PUBLISH_MODE=both, an event whose PUBLISH went out but whose XADD was refused owes the
    stream only: sending it again to both would duplicate it on pub/sub)."""

    mode: str  # "pubsub", "stream" or "both"
    events: list[MarketData]
    ranking: Ranking | None
    reason: str  # Redis's words for the first of them, e.g. "OOM command not allowed ..."


class BatchResult(NamedTuple):
    """How one pipeline went, message by message (a message: an event or the ranking, sent
    to one or both targets). A message is published when every target accepted it."""

    unencodable: int
    refused: int  # messages refused for their own content (e.g. WRONGTYPE): dropped
    refusal: str | None  # the first of those refusals, for the log and /health
    held: tuple[Held, ...] = ()  # messages refused for now (OOM, READONLY, ...): kept
    ranking_refused: bool = False  # the ranking is one of the `refused`

    @property
    def held_events(self) -> int:
        return sum(len(group.events) for group in self.held)

    @property
    def hold(self) -> str | None:
        """Why Redis refused for now, None when it did not."""
        return self.held[0].reason if self.held else None


def is_held(refusal: str) -> bool:
    return refusal.split(" ", 1)[0] in HELD_CODES


def _resp(*parts: bytes) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def packed_commands(settings: RedisSettings, messages: list[tuple[str, bytes]]) -> list[bytes]:
    """PUBLISH (and XADD) commands for a batch, packed here rather than by redis-py's
    general-purpose packer, which cost a tenth of the service's CPU under load."""
    commands: list[bytes] = []
    if settings.to_pubsub:
        heads: dict[str, bytes] = {}
        for channel, payload in messages:
            head = heads.get(channel)
            if head is None:
                name = channel.encode()
                head = heads[channel] = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n" % (len(name), name)
            commands.append(b"%s$%d\r\n%s\r\n" % (head, len(payload), payload))
    if settings.to_stream:
        cap = b"%d" % settings.stream_maxlen
        for channel, payload in messages:
            commands.append(
                _resp(b"XADD", channel.encode(), b"MAXLEN", b"~", cap, b"*", b"data", payload)
            )
    return commands


class Prepared(NamedTuple):
    """A batch encoded for one round trip: its commands as one payload, and what they were
    made of, so the replies can be matched back to the records."""

    settings: RedisSettings
    payload: bytes
    commands: int  # in `payload`; 0: nothing to send
    events: list[MarketData]
    ranking: Ranking | None
    skipped: list[MarketData]  # events that could not be encoded: not in `payload`

    def result(self, refusals: list[tuple[int, str]]) -> BatchResult:
        """How the batch went, given the refusals among its replies."""
        unencodable = len(self.skipped)
        if not refusals:
            return BatchResult(unencodable, 0, None)
        gone = {id(event) for event in self.skipped}
        sources: list[MarketData | Ranking] = [e for e in self.events if id(e) not in gone]
        if self.ranking is not None:
            sources.append(self.ranking)
        return sort_refusals(self.settings, sources, refusals, unencodable)


def prepare_batch(
    settings: RedisSettings, events: list[MarketData], ranking: Ranking | None
) -> Prepared:
    """Serialize a batch for one round trip. Events that cannot be serialized are counted
    and skipped: one bad record must not block, or crash, the rest. The caller keeps batches
    to a bounded slice, so this never holds a whole backlog encoded at once."""
    messages: list[tuple[str, bytes]] = []
    skipped: list[MarketData] = []
    channel = settings.market_data_channel
    for event in events:
        try:
            messages.append((channel, encode_event(event)))
        except (TypeError, ValueError, OverflowError):  # orjson, msgspec, `Unencodable`
            skipped.append(event)
    if ranking is not None:
        messages.append((settings.top_movers_channel, orjson.dumps(ranking.as_dict())))
    commands = packed_commands(settings, messages)
    return Prepared(settings, b"".join(commands), len(commands), events, ranking, skipped)


def sort_refusals(
    settings: RedisSettings,
    sources: list[MarketData | Ranking],
    refusals: list[tuple[int, str]],
    unencodable: int,
) -> BatchResult:
    """Which messages (`sources`: the records sent, in order) are dropped, refused for their
    content on some target, and which are held, by the targets that still owe them. Commands
    come target by target (`packed_commands`: every PUBLISH, then every XADD), so command `i`
    is message `i % len(sources)`."""
    targets = [
        mode for mode, on in (("pubsub", settings.to_pubsub), ("stream", settings.to_stream)) if on
    ]
    n = len(sources)
    owed: dict[int, tuple[list[str], str]] = {}  # message -> (targets that held it, why)
    dropped: dict[int, str] = {}  # message -> why it was refused for its content
    for index, why in refusals:
        message, target = index % n, targets[index // n]
        if is_held(why):
            owed.setdefault(message, ([], why))[0].append(target)
        else:
            dropped.setdefault(message, why)
    groups: dict[str, Held] = {}
    for message in sorted(owed.keys() - dropped.keys()):
        held_by, why = owed[message]
        mode = settings.mode if len(held_by) == len(targets) else held_by[0]
        group = groups.setdefault(mode, Held(mode=mode, events=[], ranking=None, reason=why))
        source = sources[message]
        if isinstance(source, Ranking):
            groups[mode] = group._replace(ranking=source)
        else:
            group.events.append(source)
    refusal = next(iter(dropped.values()), None)
    return BatchResult(
        unencodable=unencodable,
        refused=len(dropped),
        refusal=refusal,
        held=tuple(groups.values()),
        ranking_refused=type(sources[-1]) is Ranking and (n - 1) in dropped,
    )
