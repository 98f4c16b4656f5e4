"""Settings: one frozen tree built from the environment, validated at once.

`os.environ` is read nowhere else. Every variable is declared once in `VARIABLES`, which
also feeds `screener --help`, docs/operations.md and .env.example, so they cannot drift.
A bad value raises `ConfigError` carrying one line per offending variable.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

from screener.mexc.names import INTERVAL_MINUTES, INTERVALS, SYMBOL_RE


class ConfigError(ValueError):
    """All configuration problems found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Variable:
    """One environment variable: its default, its help line, how it is parsed and checked,
    and which settings field it fills (`into`: "group.field" or a top-level field)."""

    name: str
    default: str
    help: str
    parse: Callable[[str], Any]
    into: str
    secret: bool = False


VENUE_REST_RATE: Final = 10.0
"""MEXC's documented REST budget: 20 requests per 2 s."""
MAX_REST_RATE: Final = 1000.0
"""The ceiling with REST_RATE_OVERRIDE=on."""

_WHOLE = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")


N = TypeVar("N", int, float)


def _bounded(
    shape: re.Pattern[str], convert: Callable[[str], N], lo: N, hi: N, unit: str, what: str
) -> Callable[[str], N]:
    """A number written plainly (`shape`: no sign, padding, underscores, `inf` or `nan`)
    within [lo, hi]."""

    def parse(raw: str) -> N:
        if not shape.fullmatch(raw):
            raise ValueError(f"not {what}")
        value = convert(raw)
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}{unit}")
        return value

    return parse


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    """Digits only (`1_0` is not ten here, nor ` 7 ` seven)."""
    return _bounded(_WHOLE, int, lo, hi, "", "a whole number")


def _number(lo: float, hi: float, unit: str) -> Callable[[str], float]:
    """A plain decimal (`0.5`, `15`, `1e-3`) within [lo, hi]: finite, no padding."""
    return _bounded(_DECIMAL, float, lo, hi, f" {unit}", "a number")


def _seconds(lo: float, hi: float) -> Callable[[str], float]:
    """A period or timeout: a floor keeps loops from running hot, a ceiling keeps it finite."""
    return _number(lo, hi, "seconds")


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _url(*schemes: str) -> Callable[[str], str]:
    """A URL with one of `schemes`, a host (none for unix sockets) and, if given, a port in
    1..65535: checked at start, so a typo is one line and exit 2, not a traceback later."""

    def parse(raw: str) -> str:
        value = raw.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            raise ValueError(f"must be a {'/'.join(schemes)} URL")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("has no host")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("has a port that is not a number in 1..65535") from None
        if port == 0:
            raise ValueError("has a port that is not a number in 1..65535")
        return value

    return parse


def _optional_url(*schemes: str) -> Callable[[str], str]:
    strict = _url(*schemes)
    return lambda raw: strict(raw) if raw.strip() else ""


def _symbols(raw: str) -> frozenset[str]:
    if not raw.strip():
        return frozenset()
    parts = [part.strip() for part in raw.split(",")]
    if not all(parts):
        raise ValueError("has an empty entry (a stray comma would otherwise mean every symbol)")
    names = {part.upper() for part in parts}
    bad = sorted(name for name in names if not SYMBOL_RE.match(name))
    if bad:
        raise ValueError(f"invalid symbol name(s): {', '.join(bad)} (expected e.g. BTC_USDT)")
    return frozenset(names)


def _sentinels(raw: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` (IPv6 as `[::1]:26379`); empty: no Sentinel."""
    if not raw.strip():
        return ()
    found: list[tuple[str, int]] = []
    for part in (part.strip() for part in raw.split(",")):
        host, sep, port = part.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host:
            raise ValueError(f"{part!r} is not host:port")
        if not _WHOLE.fullmatch(port) or not 1 <= int(port) <= 65535:
            raise ValueError(f"{part!r} has a port that is not a number in 1..65535")
        found.append((host, int(port)))
    return tuple(found)


def _on_off(raw: str) -> bool:
    return _choice("on", "off")(raw) == "on"


def _interval(raw: str) -> str:
    """MEXC's interval name, from its own spelling or our short form; case-sensitive, as
    `1m` (a minute) and `1M` (a month) differ. Week1 and Month1 have no fixed length."""
    if raw in INTERVAL_MINUTES:
        return raw
    if raw in INTERVALS:
        return INTERVALS[raw]
    if raw in ("Week1", "Month1", "1w", "1W", "1M"):
        raise ValueError("weeks and months have no fixed length in minutes: not supported")
    raise ValueError("must be one of " + ", ".join([*INTERVALS, *INTERVAL_MINUTES]))


def _text(raw: str) -> str:
    return raw


def _non_empty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


_KEY_PART = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _key_part(raw: str) -> str:
    if not _KEY_PART.fullmatch(raw):
        raise ValueError("1 to 64 letters, digits, '_', '.', ':' or '-'")
    return raw


def _replica_id(raw: str) -> str:
    """Empty: this host and process, unique among replicas sharing one Redis."""
    return _key_part(raw) if raw else _key_part(f"{socket.gethostname()[:48]}-{os.getpid()}")


VARIABLES: tuple[Variable, ...] = (
    Variable(
        "MEXC_BASE",
        "https://api.mexc.com",
        "REST base URL of the futures API",
        _url("http", "https"),
        into="exchange.rest_base",
    ),
    Variable(
        "MEXC_WS_URL",
        "wss://contract.mexc.com/edge",
        "futures WebSocket endpoint",
        _url("ws", "wss"),
        into="exchange.ws_url",
    ),
    Variable(
        "SYMBOL_WHITELIST",
        "",
        "comma list restricting the symbols (empty: all live USDT perpetuals)",
        _symbols,
        into="exchange.whitelist",
    ),
    Variable(
        "CONTRACTS_REFRESH_S",
        "3600",
        "seconds between re-reads of contract/detail",
        _seconds(0.1, 86_400),
        into="exchange.contracts_refresh_s",
    ),
    Variable(
        "MAX_SYMBOLS_PER_CONN",
        "200",
        "symbols per WebSocket connection",
        _int_range(1, 1000),
        into="exchange.max_symbols_per_conn",
    ),
    Variable(
        "MAX_SYMBOLS",
        "3000",
        "most symbols tracked; beyond it the rest are skipped with a warning (a runaway "
        "contract list must not exhaust memory or sockets)",
        _int_range(1, 100_000),
        into="exchange.max_symbols",
    ),
    Variable(
        "PING_INTERVAL_S",
        "15",
        "seconds between pings; silence for twice this closes and reconnects",
        _seconds(0.1, 300),
        into="exchange.ping_interval_s",
    ),
    Variable(
        "SILENT_RESUBSCRIBE_S",
        "300",
        "a subscribed connection with no push for this long resubscribes its chunk, and "
        "reconnects if pushes still do not come (idle symbols push rarely: keep it minutes)",
        _seconds(10, 86_400),
        into="exchange.silent_resubscribe_s",
    ),
    Variable(
        "LOOKBACK_MIN",
        "15",
        "rolling window length in minutes",
        _int_range(1, 1440),
        into="lookback_min",
    ),
    Variable(
        "STALE_AFTER_S",
        "60",
        "/health turns 503 when no push arrived for this long",
        _seconds(0.1, 3600),
        into="stale_after_s",
    ),
    Variable(
        "RANK_INTERVAL_S",
        "15",
        "seconds between rankings",
        _seconds(0.1, 3600),
        into="rank_interval_s",
    ),
    Variable("TOP_N", "5", "gainers and losers per ranking", _int_range(1, 100), into="top_n"),
    Variable(
        "BATCH_WAIT_MS",
        "0",
        "a fixed wait of the window actor after a batch's first push (0: none; batches "
        "grow with the load by themselves)",
        lambda raw: _int_range(0, 1000)(raw) / 1000,
        into="batch_wait_s",
    ),
    Variable(
        "REST_RATE_PER_S",
        "10",
        "REST requests per second, paced evenly (MEXC allows 20 per 2 s); halved for 30 s "
        "after a rate-limit answer",
        _number(0.1, MAX_REST_RATE, "requests per second"),
        into="rest.rate_per_s",
    ),
    Variable(
        "REST_RATE_OVERRIDE",
        "off",
        f"on: allow REST_RATE_PER_S above MEXC's {VENUE_REST_RATE:g}/s (a simulator, a "
        "private endpoint)",
        _on_off,
        into="rest.rate_override",
    ),
    Variable(
        "REST_TIMEOUT_S",
        "10",
        "seconds before a REST request counts as timed out (then retried)",
        _seconds(0.1, 300),
        into="rest.timeout_s",
    ),
    Variable(
        "BACKFILL",
        "on",
        "on: fill the windows from REST klines at start and after a connection gap",
        _on_off,
        into="rest.backfill",
    ),
    Variable(
        "BACKFILL_GAP_S",
        "60",
        "a connection down at least this long refills its symbols from REST when back",
        _seconds(0.1, 86_400),
        into="rest.backfill_gap_s",
    ),
    Variable(
        "FALLBACK_POLL_S",
        "10",
        "seconds between REST ticker polls while no push arrives for STALE_AFTER_S",
        _seconds(0.1, 3600),
        into="rest.fallback_poll_s",
    ),
    Variable(
        "REST_SCREENER_PORT",
        "8080",
        "HTTP port of `screener rest` (/health, /top5, /metrics)",
        _int_range(0, 65535),
        into="rest.port",
    ),
    Variable(
        "REST_POLL_S",
        "300",
        "`screener rest`: seconds between kline polls of every symbol",
        _seconds(0.1, 86_400),
        into="rest.poll_s",
    ),
    Variable(
        "INTERVAL",
        "1m",
        "`screener rest`: kline interval, MEXC's name (Min1 ... Day1, case as MEXC writes "
        "it) or its short form (1m, 5m, 15m, 30m, 1h, 4h, 8h, 1d; 1M is a month: refused)",
        _interval,
        into="rest.interval",
    ),
    Variable(
        "REDIS_URL",
        "",
        "redis:// URL; when set, REDIS_HOST/PORT/PASSWORD are ignored",
        _optional_url("redis", "rediss", "unix"),
        secret=True,
        into="redis.url",
    ),
    Variable("REDIS_HOST", "localhost", "Redis host", _non_empty, into="redis.host"),
    Variable("REDIS_PORT", "6379", "Redis port", _int_range(1, 65535), into="redis.port"),
    Variable(
        "REDIS_PASSWORD",
        "",
        "Redis password (empty: none)",
        _text,
        secret=True,
        into="redis.password",
    ),
    Variable(
        "REDIS_SENTINELS",
        "",
        "comma list of Sentinel host:port; when set, Redis is the master they name (REDIS_URL "
        "or REDIS_PASSWORD still give its password, db and TLS; their host and port are not "
        "used)",
        _sentinels,
        into="redis.sentinels",
    ),
    Variable(
        "REDIS_SENTINEL_MASTER",
        "mymaster",
        "the master's name in the Sentinel configuration",
        _non_empty,
        into="redis.sentinel_master",
    ),
    Variable(
        "REDIS_SENTINEL_PASSWORD",
        "",
        "password of the Sentinels themselves (empty: none)",
        _text,
        secret=True,
        into="redis.sentinel_password",
    ),
    Variable(
        "MARKET_DATA_CHANNEL",
        "market_data",
        "pub/sub channel of candle events",
        _non_empty,
        into="redis.market_data_channel",
    ),
    Variable(
        "TOP_MOVERS_CHANNEL",
        "top_movers",
        "pub/sub channel of rankings",
        _non_empty,
        into="redis.top_movers_channel",
    ),
    Variable(
        "PUBLISH_MODE",
        "pubsub",
        "pubsub, stream (XADD to a stream named like the channel, so a restarted consumer "
        "resumes) or both",
        _choice("pubsub", "stream", "both"),
        into="redis.mode",
    ),
    Variable(
        "STREAM_MAXLEN",
        "100000",
        "approximate length cap of each stream (MAXLEN ~)",
        _int_range(1000, 100_000_000),
        into="redis.stream_maxlen",
    ),
    Variable(
        "PUBLISH_BUFFER",
        "20000",
        "events held while Redis is slow or down; beyond it only the newest per symbol is kept",
        _int_range(100, 10_000_000),
        into="redis.buffer",
    ),
    Variable("HTTP_HOST", "0.0.0.0", "HTTP bind address", _non_empty, into="http_host"),
    Variable(
        "WS_SCREENER_PORT",
        "8000",
        "HTTP port of /health, /top5, /metrics",
        _int_range(0, 65535),
        into="http_port",
    ),
    Variable(
        "HTTP_MAX_CONNECTIONS",
        "64",
        "HTTP connections served at once; more wait in the listen backlog, so HTTP clients can "
        "never take the file descriptors the feed needs",
        _int_range(1, 10_000),
        into="http_max_connections",
    ),
    Variable(
        "MAX_STREAM_CLIENTS",
        "100",
        "live page streams (GET /stream) open at once; more answer 503. Each holds an HTTP "
        "connection, so at most HTTP_MAX_CONNECTIONS - 4 are allowed, keeping /health reachable",
        _int_range(0, 10_000),
        into="max_stream_clients",
    ),
    Variable(
        "WS_MAX_MESSAGE_BYTES",
        "1048576",
        "largest WebSocket message accepted",
        _int_range(1024, 64 * 1024 * 1024),
        into="exchange.max_message_bytes",
    ),
    Variable(
        "SUBSCRIBE_BATCH",
        "20",
        "sub.kline requests sent back to back before a pause",
        _int_range(1, 1000),
        into="exchange.subscribe_batch",
    ),
    Variable(
        "SUBSCRIBE_PAUSE_S",
        "0.05",
        "pause between subscribe batches",
        _seconds(0, 10),
        into="exchange.subscribe_pause_s",
    ),
    Variable(
        "FLEET_SHARDS",
        "1",
        "shards the universe is split into; replicas of one shard elect one publishing "
        "leader through Redis, the others stand by",
        _int_range(1, 256),
        into="fleet.shards",
    ),
    Variable(
        "FLEET_SHARD",
        "0",
        "the shard this replica serves, 0..FLEET_SHARDS-1 (set by the orchestrator)",
        _int_range(0, 255),
        into="fleet.shard",
    ),
    Variable(
        "FLEET_LEASE_S",
        "5",
        "leader lease in seconds: a standby takes over within about one lease of a leader's death",
        _seconds(1, 600),
        into="fleet.lease_s",
    ),
    Variable(
        "FLEET_REPLICA_ID",
        "",
        "this replica's name in Redis and /health (empty: <hostname>-<pid>)",
        _replica_id,
        into="fleet.replica_id",
    ),
    Variable(
        "FLEET_KEY_PREFIX",
        "screener",
        "prefix of every Redis key the fleet writes",
        _key_part,
        into="fleet.key_prefix",
    ),
    Variable(
        "LOG_FORMAT",
        "json",
        "json (JSON lines) or text (for people)",
        _choice("json", "text"),
        into="log_format",
    ),
    Variable(
        "LOG_LEVEL",
        "INFO",
        "DEBUG, INFO, WARNING or ERROR",
        lambda raw: _choice("debug", "info", "warning", "error")(raw).upper(),
        into="log_level",
    ),
)


@dataclass(frozen=True)
class ExchangeSettings:
    rest_base: str
    ws_url: str
    whitelist: frozenset[str]
    contracts_refresh_s: float
    max_symbols_per_conn: int
    max_symbols: int
    ping_interval_s: float
    max_message_bytes: int
    subscribe_batch: int
    subscribe_pause_s: float
    silent_resubscribe_s: float = 300.0

    @property
    def dead_after_s(self) -> float:
        """Silence (pongs included) after which a connection counts as dead."""
        return 2 * self.ping_interval_s


@dataclass(frozen=True)
class RedisSettings:
    url: str
    host: str
    port: int
    password: str
    market_data_channel: str
    top_movers_channel: str
    buffer: int
    mode: str = "pubsub"
    stream_maxlen: int = 100_000
    sentinels: tuple[tuple[str, int], ...] = ()  # empty: REDIS_URL or REDIS_HOST/PORT
    sentinel_master: str = "mymaster"
    sentinel_password: str = ""

    @property
    def to_pubsub(self) -> bool:
        return self.mode in ("pubsub", "both")

    @property
    def to_stream(self) -> bool:
        return self.mode in ("stream", "both")

    def safe_target(self) -> str:
        """Where Redis is, fit for logs: never the password."""
        if self.sentinels:
            hosts = ",".join(
                f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                for host, port in self.sentinels
            )
            return f"sentinel://{hosts}/{self.sentinel_master}"
        if not self.url:
            return f"redis://{self.host}:{self.port}"
        return redact_url(self.url)


@dataclass(frozen=True)
class RestSettings:
    rate_per_s: float = 10.0
    rate_override: bool = False
    timeout_s: float = 10.0
    backfill: bool = True
    backfill_gap_s: float = 60.0
    fallback_poll_s: float = 10.0
    port: int = 8080  # `screener rest` only, as the three below
    poll_s: float = 300.0
    interval: str = "Min1"

    @property
    def mexc_interval(self) -> str:
        return self.interval  # parsed into MEXC's name already


@dataclass(frozen=True)
class FleetSettings:
    shards: int = 1
    shard: int = 0
    lease_s: float = 5.0
    replica_id: str = "replica"
    key_prefix: str = "screener"

    def key(self, *parts: object) -> str:
        """A key of this fleet: the shard count is part of it, so replicas configured
        with different counts never share a lease."""
        return ":".join((self.key_prefix, "fleet", str(self.shards), *map(str, parts)))


@dataclass(frozen=True)
class Settings:
    exchange: ExchangeSettings
    redis: RedisSettings
    rest: RestSettings
    lookback_min: int
    stale_after_s: float
    rank_interval_s: float
    batch_wait_s: float
    top_n: int
    http_host: str
    http_port: int
    http_max_connections: int
    log_format: str
    log_level: str
    fleet: FleetSettings = FleetSettings()
    max_stream_clients: int = 100


def redact_url(url: str) -> str:
    """Drop user, password and query (which may carry `password=`) from a URL."""
    parts = urlsplit(url)
    if parts.query:  # redis-py also takes ?password=...; options are not worth the risk
        parts = parts._replace(query="")
        url = urlunsplit(parts)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, f"***@{netloc}", parts.path, "", ""))


def parse_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Parse every declared variable; collect all problems before failing."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for var in VARIABLES:
        raw = env.get(var.name, var.default)
        try:
            values[var.name] = var.parse(raw)
        except ValueError as exc:
            shown = "<hidden>" if var.secret else repr(raw)
            reason = (
                str(exc)
                if not str(exc).startswith(("invalid literal", "could not"))
                else "not a number"
            )
            problems.append(f"{var.name}={shown}: {reason}")
    rate = values.get("REST_RATE_PER_S", 0.0)
    if rate > VENUE_REST_RATE and values.get("REST_RATE_OVERRIDE") is False:
        problems.append(
            f"REST_RATE_PER_S={env.get('REST_RATE_PER_S')!r}: above MEXC's documented "
            f"{VENUE_REST_RATE:g} requests per second; set REST_RATE_OVERRIDE=on to allow it"
        )
    shards, shard = values.get("FLEET_SHARDS"), values.get("FLEET_SHARD")
    if shards is not None and shard is not None and shard >= shards:
        problems.append(
            f"FLEET_SHARD={env.get('FLEET_SHARD')!r}: must be below FLEET_SHARDS={shards}"
        )
    if values.get("REDIS_SENTINELS") and values.get("REDIS_URL", "").startswith("unix:"):
        problems.append(
            "REDIS_URL=<hidden>: a unix socket cannot be combined with REDIS_SENTINELS "
            "(Sentinel names the master by host and port)"
        )
    if problems:
        raise ConfigError(problems)
    return values


RETIRED: Final = {
    "REDIS_WRITER": "all writes use the socket link",
}
"""Variables the service read once and reads no more: set, each is one warning at start,
never a refusal to start (a deployment that still sets it keeps working)."""


def retired_variables(env: Mapping[str, str]) -> list[str]:
    """One warning line per retired variable set in `env`."""
    return [f"{name} is no longer read ({why})" for name, why in RETIRED.items() if name in env]


GROUPS: Final = {
    "exchange": ExchangeSettings,
    "redis": RedisSettings,
    "rest": RestSettings,
    "fleet": FleetSettings,
}
"""The settings groups a variable's `into` may name."""


def load_settings(env: Mapping[str, str]) -> Settings:
    """The settings tree from `env`; `ConfigError` with every problem at once."""
    values = parse_env(env)
    top: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {name: {} for name in GROUPS}
    for var in VARIABLES:
        group, _, field = var.into.rpartition(".")
        (groups[group] if group else top)[field] = values[var.name]
    return Settings(**top, **{name: GROUPS[name](**fields) for name, fields in groups.items()})


def resolved_variables(env: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(name, value as it may be shown, "env" or "default") for every variable: secrets are
    `<hidden>` when set, and a Redis URL loses its credentials."""
    out: list[tuple[str, str, str]] = []
    for var in VARIABLES:
        raw = env.get(var.name)
        value = var.default if raw is None else raw
        if var.name == "REDIS_URL" and value:
            value = redact_url(value)
        elif var.secret and value:
            value = "<hidden>"
        out.append((var.name, value, "default" if raw is None else "env"))
    return out


def describe_variables() -> str:
    """The environment table for `screener --help`."""
    width = max(len(var.name) for var in VARIABLES)
    lines = ["environment variables (default in brackets):"]
    for var in VARIABLES:
        lines.append(f"  {var.name:<{width}}  {var.help} [{var.default}]")
    return "\n".join(lines)
