"""Settings: one frozen tree built from the environment, validated at once.

`os.environ` is read nowhere else. Every variable is declared once in `VARIABLES`, which
also feeds `screener --help`, docs/operations.md and .env.example, so they cannot drift.
A bad value raises `ConfigError` carrying one line per offending variable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from screener.mexc.names import INTERVALS, SYMBOL_RE


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


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive number")
    return value


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.netloc:
            raise ValueError(f"must be a {'/'.join(schemes)} URL")
        return value

    return parse


def _optional_url(*schemes: str) -> Callable[[str], str]:
    strict = _url(*schemes)
    return lambda raw: strict(raw) if raw.strip() else ""


def _symbols(raw: str) -> frozenset[str]:
    names = {part.strip().upper() for part in raw.split(",") if part.strip()}
    bad = sorted(name for name in names if not SYMBOL_RE.match(name))
    if bad:
        raise ValueError(f"invalid symbol name(s): {', '.join(bad)} (expected e.g. BTC_USDT)")
    return frozenset(names)


def _text(raw: str) -> str:
    return raw


def _non_empty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


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
        _positive_float,
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
        _positive_float,
        into="exchange.ping_interval_s",
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
        _positive_float,
        into="stale_after_s",
    ),
    Variable(
        "RANK_INTERVAL_S", "15", "seconds between rankings", _positive_float, into="rank_interval_s"
    ),
    Variable("TOP_N", "5", "gainers and losers per ranking", _int_range(1, 100), into="top_n"),
    Variable(
        "BATCH_WAIT_MS",
        "5",
        "how long the window actor gathers pushes into one batch for Redis: a few ms of "
        "latency for far less CPU (0: no wait)",
        lambda raw: _int_range(0, 1000)(raw) / 1000,
        into="batch_wait_s",
    ),
    Variable(
        "REST_RATE_PER_S",
        "10",
        "REST requests per second, paced evenly (MEXC allows 20 per 2 s); halved for 30 s "
        "after a rate-limit answer",
        _positive_float,
        into="rest.rate_per_s",
    ),
    Variable(
        "REST_TIMEOUT_S",
        "10",
        "seconds before a REST request counts as timed out (then retried)",
        _positive_float,
        into="rest.timeout_s",
    ),
    Variable(
        "BACKFILL",
        "on",
        "on: fill the windows from REST klines at start and after a connection gap",
        lambda raw: _choice("on", "off")(raw) == "on",
        into="rest.backfill",
    ),
    Variable(
        "BACKFILL_GAP_S",
        "60",
        "a connection down at least this long refills its symbols from REST when back",
        _positive_float,
        into="rest.backfill_gap_s",
    ),
    Variable(
        "FALLBACK_POLL_S",
        "10",
        "seconds between REST ticker polls while no push arrives for STALE_AFTER_S",
        _positive_float,
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
        _positive_float,
        into="rest.poll_s",
    ),
    Variable(
        "INTERVAL",
        "1m",
        "`screener rest`: kline interval, 1m, 5m, 15m or 1h",
        _choice(*INTERVALS),
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
        _positive_float,
        into="exchange.subscribe_pause_s",
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

    @property
    def to_pubsub(self) -> bool:
        return self.mode in ("pubsub", "both")

    @property
    def to_stream(self) -> bool:
        return self.mode in ("stream", "both")

    def safe_target(self) -> str:
        """Where Redis is, fit for logs: never the password."""
        if not self.url:
            return f"redis://{self.host}:{self.port}"
        return redact_url(self.url)


@dataclass(frozen=True)
class RestSettings:
    rate_per_s: float = 10.0
    timeout_s: float = 10.0
    backfill: bool = True
    backfill_gap_s: float = 60.0
    fallback_poll_s: float = 10.0
    port: int = 8080  # `screener rest` only, as the three below
    poll_s: float = 300.0
    interval: str = "1m"

    @property
    def mexc_interval(self) -> str:
        return INTERVALS[self.interval]


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
    log_format: str
    log_level: str


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
    if problems:
        raise ConfigError(problems)
    return values


GROUPS: Final = {"exchange": ExchangeSettings, "redis": RedisSettings, "rest": RestSettings}
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


def describe_variables() -> str:
    """The environment table for `screener --help`."""
    width = max(len(var.name) for var in VARIABLES)
    lines = ["environment variables (default in brackets):"]
    for var in VARIABLES:
        lines.append(f"  {var.name:<{width}}  {var.help} [{var.default}]")
    return "\n".join(lines)
