"""Immutable records that cross actor channels, and the item type of every channel.

NamedTuples rather than frozen dataclasses: equally immutable and typed, but about three
times cheaper to build, which matters for thousands of pushes per second. Build them by
keyword outside the hot path.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Literal, NamedTuple, TypeAlias

import trio


class Kline(NamedTuple):
    """One decoded `push.kline` update: the state of a 1-minute candle at push time."""

    symbol: str
    t: int  # candle open time, seconds
    open: float  # `o`: previous close carried forward, so windows chain without gaps
    high: float
    low: float
    close: float
    volume: float  # `q`: contracts traded this minute so far
    amount: float  # `a`: USDT turnover this minute so far
    ts_ms: int  # exchange push time, milliseconds
    source: str = "mexc"


# `Kline.source` values. Live pushes win over everything; history (REST klines, warm start and
# gap fill) never overwrites a live candle and emits no event; a REST ticker price is an
# update of the current minute's candle while the WebSocket feed is down.
LIVE_SOURCE = "mexc"
REST_SOURCE = "mexc-rest"
HISTORY_SOURCE = "mexc-rest-history"


class MarketData(NamedTuple):
    """A normalized candle update with the window's change, as published on Redis."""

    kline: Kline
    change_pct: float
    window_min: int  # minutes spanned by the candles behind change_pct

    def as_dict(self) -> dict[str, object]:
        k = self.kline
        return {
            "type": "market_data",
            "source": k.source,
            "symbol": k.symbol,
            "interval": "Min1",
            "candle_ts": k.t,
            "ts": k.ts_ms,
            "open": k.open,
            "high": k.high,
            "low": k.low,
            "close": k.close,
            "price": k.close,
            "volume": k.volume,
            "amount": k.amount,
            "change_pct": self.change_pct,
            "window_min": self.window_min,
        }


class ConnStatus(NamedTuple):
    """A connection actor's state change, sent to the window actor for /health and for the
    candle closer: a chunk that goes down may miss the last push of its symbols' open
    minutes, so those minutes are repaired from REST instead of closed live."""

    conn_id: int
    up: bool
    retired: bool = False  # the chunk no longer exists; drop it from the totals
    symbols: frozenset[str] = frozenset()  # the chunk's symbols (on a down status)


CANDLE_REST_SOURCE = "mexc-rest-kline"
"""`ClosedCandle.source` of a minute whose end the live feed did not see: the values are the
REST kline endpoint's (a closed candle from the live feed has `LIVE_SOURCE`)."""


class ClosedCandle(NamedTuple):
    """A closed one-minute candle with the exchange's final values, published once per
    (`symbol`, `t`) on CANDLES_CHANNEL (screener/core/closing.py closes them)."""

    symbol: str
    t: int  # open time, seconds
    open: float
    high: float
    low: float
    close: float
    volume: float  # contracts (MEXC `q`)
    amount: float  # USDT turnover (MEXC `a`)
    source: str  # LIVE_SOURCE: the minute's last push; CANDLE_REST_SOURCE: the kline endpoint
    closed_ms: int  # when it was closed (exchange ms; for a repair, the wall ms it was had)

    @classmethod
    def of(cls, k: Kline, source: str, closed_ms: int) -> ClosedCandle:
        return cls(
            k.symbol, k.t, k.open, k.high, k.low, k.close, k.volume, k.amount, source, closed_ms
        )

    def as_dict(self, published_ms: int) -> dict[str, object]:
        """The `candle` document, published at `published_ms` (epoch ms)."""
        return {
            "type": "candle",
            "source": self.source,
            "symbol": self.symbol,
            "interval": "Min1",
            "candle_ts": self.t,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
            "amount": self.amount,
            "published_ts": published_ms,
        }


class CandleBatch(NamedTuple):
    """Closed candles for the publisher, from one window wakeup. Never coalesced: each is
    held until Redis took it (at most LOOKBACK_MIN minutes old)."""

    candles: list[ClosedCandle]


class Unwatched(NamedTuple):
    """A connection no longer follows these symbols (its chunk changed or was retired: the
    universe moved them elsewhere or they left it): a push of their open minutes may be
    missed, but nothing after is this connection's to owe."""

    symbols: frozenset[str]


class HistoryDone(NamedTuple):
    """The backfill's last word on one fetch: `symbol`'s REST rows for open times
    `start_s`..`end_s` were all sent before this. A minute owed in that range that had no
    row is one the exchange has no candle for."""

    symbol: str
    start_s: int
    end_s: int


class CandleLag(NamedTuple):
    """Closed minutes not yet published, for /health: how many and the oldest open time."""

    minutes: int = 0
    oldest_t: int | None = None


class SymbolStat(NamedTuple):
    symbol: str
    change_pct: float
    price: float


class StatsRequest(NamedTuple):
    """Ask the window actor for every symbol's current stat; it answers on `reply`."""

    reply: trio.MemorySendChannel[tuple[SymbolStat, ...]]


async def ask_stats(window: trio.MemorySendChannel[WindowInbox]) -> tuple[SymbolStat, ...]:
    """Every symbol's stat from the window actor, through a one-shot reply channel."""
    reply_send, reply_recv = trio.open_memory_channel[tuple[SymbolStat, ...]](1)
    await window.send(StatsRequest(reply_send))
    async with reply_recv:
        return await reply_recv.receive()


class CandlesRequest(NamedTuple):
    """Ask the window actor for every symbol's candles in the window; it answers on `reply`.
    The candles are the window's own immutable records, shared, so an answer costs one tuple
    per symbol, not a copy of every candle."""

    reply: trio.MemorySendChannel[Candles]


async def ask_candles(window: trio.MemorySendChannel[WindowInbox]) -> Candles:
    """Every symbol's window candles from the window actor, through a one-shot reply."""
    reply_send, reply_recv = trio.open_memory_channel[Candles](1)
    await window.send(CandlesRequest(reply_send))
    async with reply_recv:
        return await reply_recv.receive()


class Charts(NamedTuple):
    """The candles behind the latest ranking, for the live page and `/symbol/<SYMBOL>`:
    written by the ranking actor each round, so HTTP never asks the window actor."""

    wall_ts: float  # unix seconds of the round that obtained them
    lookback_min: int
    candles: Candles


class Ranking(NamedTuple):
    """One ranking: immutable, replaced wholesale, read by HTTP and published."""

    wall_ts: float  # unix seconds when it was computed
    lookback_min: int
    gainers: tuple[SymbolStat, ...]
    losers: tuple[SymbolStat, ...]
    ranked: int  # symbols with data in the window
    shards_total: int = 1  # FLEET_SHARDS: a global ranking merges one per shard
    shards_missing: tuple[int, ...] = ()  # shards whose ranking is missing or expired

    def as_dict(self) -> dict[str, object]:
        """The `top_movers` document (and `/top5`'s, which adds `stale`). `ts_ms` is the time
        in epoch milliseconds, as `market_data` dates its events; `ts` the same time as text,
        kept for the consumers that read it."""
        return {
            "type": "top_movers",
            "ts_ms": round(self.wall_ts * 1000),
            "ts": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.wall_ts)),
            "lookback_min": self.lookback_min,
            "top5_gainers": [_stat_dict(s) for s in self.gainers],
            "top5_losers": [_stat_dict(s) for s in self.losers],
            "shards": {
                "reporting": self.shards_total - len(self.shards_missing),
                "total": self.shards_total,
                "missing": list(self.shards_missing),
            },
        }


def _stat_dict(stat: SymbolStat) -> dict[str, object]:
    return {"symbol": stat.symbol, "change_pct": stat.change_pct, "price": stat.price}


Role: TypeAlias = Literal["leader", "standby"]


class Fence(NamedTuple):
    """What Redis checks before it runs a leader's write (screener/redis/script.py): the
    shard's lease key still holds `token` (this process's, no other's) and its term key
    `term`. A deposed, frozen or partitioned leader's late write fails the check in Redis,
    whatever its own clock says."""

    lease_key: str
    term_key: str
    token: str
    term: int


class Leadership(NamedTuple):
    """The fence, sent to the publisher after every lease answer. It publishes while `role`
    is leader and its clock is before `valid_until` (trio time), and Redis checks `fence`
    at every write (screener/redis/script.py). A standby keeps what it receives for a
    takeover; Redis skips, at that takeover, what the last leader published."""

    role: Role
    valid_until: float
    term: int
    fence: Fence | None = None  # a leader's token, for Redis to check; None: a standby


class FleetStatus(NamedTuple):
    """The fleet actor's view, for /health and /metrics."""

    shard: int
    shards: int
    replica: str
    lease_s: float
    role: Role
    leader: str | None
    term: int
    error: str | None  # why this replica holds no lease answer (Redis unreachable, refused)
    leaderless_since: float | None  # trio time since when Redis refuses every lease
    valid_until: float = float("-inf")  # trio time: a leader publishes until then
    refused: str | None = None  # why Redis refuses to let this replica lead


class FeedStatus(NamedTuple):
    """What the window actor knows about the feed, for /health and /metrics."""

    last_push_at: float | None  # trio.current_time() of the last accepted push
    conns_up: int
    conns_total: int
    # trio.current_time() since when the longest-down connection has been down (None: all up)
    down_since: float | None = None


class UniverseStatus(NamedTuple):
    """What the universe actor knows: the tracked symbols and the last REST problem."""

    symbols: int
    chunks: int
    error: str | None  # why the contract list could not be read, while it cannot
    tracked: frozenset[str] = frozenset()  # the symbols themselves (for the REST failover)


class RedisStatus(NamedTuple):
    """The publisher's view of Redis. `up` False: the last write failed or timed out (`error`
    says why) and nothing is delivered. `refused`: Redis is reachable but refuses writes
    (OOM, READONLY, ...): "degraded" in /health with that reason."""

    up: bool
    error: str | None
    refused: str | None = None


class BackfillProgress(NamedTuple):
    """Symbols whose windows were (re)filled from REST klines, for /health and the logs."""

    done: int  # finished, failed ones included
    total: int  # requested since start
    failed: int = 0
    last_ok_at: float | None = None  # trio.current_time() of the last successful fetch


class RestFeedStatus(NamedTuple):
    """The REST ticker failover: active while no live push arrives for `STALE_AFTER_S`."""

    active: bool
    last_ok_at: float | None  # trio.current_time() of the last successful poll
    error: str | None  # why the last poll failed, while it fails


# --- channel item types (docs/architecture.md, "Channels") ---------------------------------

WindowInbox: TypeAlias = (
    Kline | ConnStatus | Unwatched | StatsRequest | CandlesRequest | HistoryDone
)
"""The window actor's inbox: pushes and history (each fetch ended by a `HistoryDone`),
connection states, stats and candles requests."""

Candles: TypeAlias = Mapping[str, tuple[Kline, ...]]
"""Each symbol's candles in the window, oldest first (symbols with none are left out)."""

PublisherInbox: TypeAlias = list[MarketData] | CandleBatch | Ranking | Leadership
"""The publisher's inbox: one batch of events (and one of closed candles) per window wakeup,
each ranking to publish (the global one, on the top-movers replica), and the fence after
every lease answer."""

ChunkPlan: TypeAlias = Mapping[int, frozenset[str]]
"""The universe's chunk assignment: chunk id -> its symbols; an empty set retires the chunk."""

SymbolSet: TypeAlias = frozenset[str]
"""Symbols to (re)fill from REST history, or a chunk's desired subscriptions."""
