"""Redis as the publisher uses it: the client, and one batch written in one round trip.

A resource, not an actor. `prepare_batch` encodes a batch once; it is written either over
the publisher's socket link (screener/redis_socket.py) or by `publish_batch` through
redis-py in a writer thread; either way the replies are read in bulk and sorted by
`Prepared.result`. With REDIS_SENTINELS the client writes to the master the Sentinels name
and follows it when it moves (`MasterPool`).
"""

from __future__ import annotations

import time
from typing import Any, Final, NamedTuple, NoReturn

import msgspec
import orjson
import redis
from loguru import logger
from redis.backoff import NoBackoff
from redis.connection import SSLConnection, parse_url
from redis.retry import Retry
from redis.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)

try:  # redis-py's hiredis parser and its "need more bytes" marker (read_refusals)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
    from redis._parsers.hiredis import _HiredisParser
except ImportError:  # pragma: no cover - another redis-py layout: one reply at a time
    _HiredisParser = None  # type: ignore[assignment,misc]
    _NOT_ENOUGH_DATA = object()

from screener.config import RedisSettings
from screener.models import MarketData, Ranking

REDIS_TIMEOUT_S: Final = 2.0
SENTINEL_TIMEOUT_S: Final = 1.0
"""Per Sentinel asked: an unreachable one costs this much before the next is tried."""
MASTER_CHECK_S: Final = 1.0
"""How often the master is confirmed with the Sentinels while writes succeed. After a
`SENTINEL FAILOVER` the old master keeps accepting writes (PUBLISH even as a replica) until
Sentinel reconfigures it, about 10 s later: without this check the events of those seconds
would go where the new master's subscribers never see them."""
MASTER_CHECK_FAILED_S: Final = 30.0
"""After a check no Sentinel answered: a hung Sentinel costs SENTINEL_TIMEOUT_S of the
write path each time it is asked, so while none answers the master is confirmed rarely
(writes to it go on meanwhile)."""
REDIS_ERRORS: Final[tuple[type[Exception], ...]] = (redis.RedisError, OSError)
"""What a failed link raises; anything else is a bug."""


def make_client(settings: RedisSettings, *, announce_moves: bool = True) -> redis.Redis:
    """Our own backoff does the retrying (and says so once); redis-py's silent internal
    retries would only delay the first warning. RESP2 keeps auth errors plain.
    `announce_moves`: log a Sentinel failover (the publisher's client does; a second client
    of the same process, the fleet's, would only repeat the line)."""
    if settings.sentinels:
        return _sentinel_client(settings, announce_moves)
    if settings.url:
        return redis.Redis.from_url(
            settings.url,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
            protocol=2,
        )
    return redis.Redis(
        host=settings.host,
        port=settings.port,
        password=settings.password or None,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        protocol=2,
    )


def _master_options(settings: RedisSettings) -> dict[str, Any]:
    """How to talk to the master: REDIS_URL's password, user, db and TLS options (its host
    and port are the Sentinels' to say), else REDIS_PASSWORD."""
    if not settings.url:
        return {"password": settings.password or None}
    options: dict[str, Any] = parse_url(settings.url)  # type: ignore[no-untyped-call]
    for name in ("host", "port"):
        options.pop(name, None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True  # SentinelConnectionPool picks its TLS connection from this
    return options


def _sentinel_client(settings: RedisSettings, announce_moves: bool) -> redis.Redis:
    common: dict[str, Any] = {"retry": Retry(NoBackoff(), 0), "protocol": 2}
    sentinel = _Sentinel(
        announce_moves,
        list(settings.sentinels),
        sentinel_kwargs={
            "socket_timeout": SENTINEL_TIMEOUT_S,
            "socket_connect_timeout": SENTINEL_TIMEOUT_S,
            "password": settings.sentinel_password or None,
            **common,
        },
    )
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        settings.sentinel_master,
        connection_pool_class=MasterPool,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        **common,
        **_master_options(settings),
    )
    return client


class _Sentinel(Sentinel):
    """redis-py's Sentinel client, with two changes to `discover_master`. It says once when
    the master moved (the first address found is not news: the publisher's `redis up at`
    line names the group). And when no Sentinel names a master, the error says why for each
    in a few words: redis-py's own message quotes every client's settings, some 800
    characters per Sentinel, so the reason was cut off in the log and /health."""

    def __init__(self, announce_moves: bool, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.announce_moves = announce_moves
        self.master_seen: tuple[str, int] | None = None

    def discover_master(self, service_name: str) -> tuple[str, int]:
        address = self._ask(service_name)
        seen, self.master_seen = self.master_seen, address
        if self.announce_moves and seen is not None and seen != address:
            logger.bind(actor="redis").warning(
                "redis master {name} moved from {old} to {new} (Sentinel failover)",
                name=service_name,
                old=f"{seen[0]}:{seen[1]}",
                new=f"{address[0]}:{address[1]}",
            )
        return address

    def _ask(self, service_name: str) -> tuple[str, int]:
        """redis-py's loop: the first Sentinel naming a master that is up wins and is asked
        first next time."""
        why: list[str] = []
        for index, sentinel in enumerate(self.sentinels):
            where = "{host}:{port}".format_map(sentinel.connection_pool.connection_kwargs)
            try:
                masters: dict[str, dict[str, Any]] = sentinel.sentinel_masters()  # type: ignore[assignment]
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                why.append(f"{where}: {type(exc).__name__}: {exc}")
                continue
            state = masters.get(service_name)
            if not state:
                why.append(f"{where}: does not know {service_name!r}")
            elif not self.check_master_state(state, service_name):  # type: ignore[no-untyped-call]
                why.append(f"{where}: sees it down")
            else:
                self.sentinels[0], self.sentinels[index] = sentinel, self.sentinels[0]
                return str(state["ip"]), int(state["port"])
        raise MasterNotFoundError(f"no master {service_name!r} ({'; '.join(why)})")


class MasterPool(SentinelConnectionPool):
    """A Sentinel pool that also asks the Sentinels where the master is at most every
    `MASTER_CHECK_S` while writes succeed (redis-py asks only when it connects): when it
    moved, the idle connection is closed, and the write taken next connects to the new one.
    Sentinels that cannot answer do not stop writes to a master that still takes them (and
    are asked again only after `MASTER_CHECK_FAILED_S`).
    READONLY from a demoted master is redis-py's own business: it drops the connection and
    raises ConnectionError, so the publisher retries, and the retry asks the Sentinels."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.check_at = 0.0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        self.check_master()
        return super().get_connection(*args, **kwargs)

    def check_due(self) -> bool:
        return time.monotonic() >= self.check_at

    def check_master(self) -> tuple[str, int] | None:
        """Where the Sentinels say the master is, when a check is due (None: not due, or no
        Sentinel answered; the connection attempt, if there is one, says why). Blocking: the
        publisher's socket link calls it from a thread."""
        now = time.monotonic()
        if now < self.check_at:
            return None
        self.check_at = now + MASTER_CHECK_S
        try:
            address: tuple[str, int] = self.get_master_address()  # type: ignore[no-untyped-call]
        except REDIS_ERRORS:
            self.check_at = now + MASTER_CHECK_FAILED_S
            return None
        return address

    def disconnect(self, inuse_connections: bool = True) -> None:
        """Closing the client closes the Sentinel links too (a failover only drops the idle
        master connections: `inuse_connections=False`)."""
        super().disconnect(inuse_connections)
        if inuse_connections:
            for sentinel in self.sentinel_manager.sentinels:
                sentinel.close()


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


def refusal_text(exc: redis.RedisError) -> str:
    """Redis's own words: redis-py strips the code off the errors it knows (OOM, READONLY,
    LOADING, ...) and keeps it apart; it is put back, as operators search for it."""
    code = getattr(exc, "status_code", None)
    text = str(exc)
    return f"{code} {text}" if code else text


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


def publish_batch(
    client: redis.Redis,
    settings: RedisSettings,
    events: list[MarketData],
    ranking: Ranking | None,
) -> BatchResult:
    """Runs in a writer thread (REDIS_WRITER=thread or to_thread): the batch in one round
    trip through redis-py's connection pool.

    Commands Redis refuses for their content are counted and skipped; commands it refuses
    for now (`HELD_CODES`) come back in `held`, to be sent again."""
    batch = prepare_batch(settings, events, ranking)
    if not batch.commands:
        return batch.result([])
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([batch.payload])  # type: ignore[no-untyped-call]
        refusals = read_refusals(conn, batch.commands)
    except BaseException:
        conn.disconnect()  # type: ignore[no-untyped-call]  # a half-read reply stream is useless
        raise
    finally:
        pool.release(conn)
    return batch.result(refusals)


# A refusal is one error reply: the reply stream stays in step, the link is fine. LOADING is
# one too, although redis-py files it under ConnectionError.
_REFUSALS: Final = (redis.ResponseError, redis.BusyLoadingError)


def read_refusals(conn: redis.Connection, n: int) -> list[tuple[int, str]]:
    """Read the replies to `n` pipelined commands; returns the refusals among them as
    (command index, Redis's words), raises as redis-py does when the link fails.

    In bulk: the socket's bytes go to the hiredis reader of redis-py's own parser and each
    reply costs one C call (`gets`), not a pass through redis-py's `read_response` (a few
    Python frames per reply). This reads two private attributes of redis-py's parser
    (`_parser`, `_reader`; redis 5 to 8); without them, or without hiredis >= 3.2 (redis-py
    then parses in Python), it falls back to `read_response` per reply."""
    parser = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if _HiredisParser is None or not isinstance(parser, _HiredisParser) or reader is None:
        return _read_one_by_one(conn, n)
    gets = reader.gets
    refusals: list[tuple[int, str]] = []
    index = 0
    try:
        while index < n:
            reply = gets()
            if reply is _NOT_ENOUGH_DATA:
                parser.read_from_socket()  # type: ignore[no-untyped-call]  # raises Redis errors
                continue
            if isinstance(reply, Exception):
                if not isinstance(reply, _REFUSALS):
                    raise reply
                if isinstance(reply, redis.ReadOnlyError) and isinstance(
                    conn, SentinelManagedConnection
                ):
                    demoted(conn.connection_pool)
                refusals.append((index, refusal_text(reply)))
            index += 1
    except OSError as exc:  # as redis-py's read_response words it
        raise redis.ConnectionError(
            f"Error while reading from {conn._host_error()} : {exc.args}"  # type: ignore[no-untyped-call]
        ) from None
    return refusals


def demoted(pool: SentinelConnectionPool) -> NoReturn:
    """READONLY from the master the Sentinels named: it has been demoted. As redis-py's own
    `read_response` does for a Sentinel connection, a broken link, not a refusal: the pool
    forgets the old master and the caller's retry asks the Sentinels for the new one. (Both
    ways of writing: `read_refusals` and the socket link.)"""
    pool.reset()  # type: ignore[no-untyped-call]
    raise redis.ConnectionError("The previous master is now a slave")


def _read_one_by_one(conn: redis.Connection, n: int) -> list[tuple[int, str]]:
    refusals: list[tuple[int, str]] = []
    for index in range(n):
        try:
            conn.read_response()
        except _REFUSALS as exc:
            refusals.append((index, refusal_text(exc)))
    return refusals


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
