"""How a setting is declared: one typed field of a frozen dataclass, which names its
environment variable, its default as the variable would be written, its help line, its
parser (type and bounds) and whether it is secret. `screener.core.config` declares every setting
this way; from that one declaration come the parsing, the `--help` table, `check-config`,
.env.example and the variable table of docs/operations.md.

A field's default is its variable's default parsed, so the record built with no arguments
and the service started with an empty environment agree. Plain dataclasses rather than
msgspec or pydantic-settings: `dataclasses.replace` works on them, they need nothing beyond
the standard library (importing and loading the settings: 22 ms; the same fields as a
pydantic-settings `BaseSettings`: 236 ms, msgspec: 32 ms; docs/operations.md, "Configuration"),
and the parsers below give the one-line messages the service has always given, all at once.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Generic, TypeVar
from urllib.parse import urlsplit

from screener.core.names import INTERVAL_MINUTES, INTERVALS, SYMBOL_RE

T = TypeVar("T")
N = TypeVar("N", int, float)

VARIABLE: Final = "screener.variable"
"""The key of a setting's `Variable` in its dataclass field's metadata."""
GROUP: Final = "screener.group"
"""The key of a nested settings record in its field's metadata."""


class ConfigError(ValueError):
    """All configuration problems found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Variable(Generic[T]):
    """One environment variable: its default as written in the environment, its help line,
    how it is parsed and checked, and whether its value is secret."""

    name: str
    default: str
    help: str
    parse: Callable[[str], T]
    secret: bool = False

    def default_value(self) -> T:
        return self.parse(self.default)


def env(
    name: str, default: str, help: str, parse: Callable[[str], T], *, secret: bool = False
) -> T:
    """A settings field filled from the variable `name` (typed as what `parse` returns)."""
    var = Variable(name, default, help, parse, secret)
    return field(default_factory=var.default_value, metadata={VARIABLE: var})


def group(record: type[T]) -> T:
    """A field holding a nested settings record, itself filled from the environment."""
    return field(default_factory=record, metadata={GROUP: record})


def variables_of(record: type) -> tuple[Variable[Any], ...]:
    """Every variable of `record` and its nested records, in declaration order."""
    out: list[Variable[Any]] = []
    for f in fields(record):
        if VARIABLE in f.metadata:
            out.append(f.metadata[VARIABLE])
        elif GROUP in f.metadata:
            out.extend(variables_of(f.metadata[GROUP]))
    return tuple(out)


def build(record: type[T], values: Mapping[str, Any]) -> T:
    """`record` (and its nested records) from parsed values keyed by variable name."""
    kwargs: dict[str, Any] = {}
    for f in fields(record):  # type: ignore[arg-type]  # a dataclass, as declared above
        if VARIABLE in f.metadata:
            kwargs[f.name] = values[f.metadata[VARIABLE].name]
        elif GROUP in f.metadata:
            kwargs[f.name] = build(f.metadata[GROUP], values)
    return record(**kwargs)


def parse_all(
    variables: tuple[Variable[Any], ...], raw: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """Every variable parsed from `raw` (its default when absent), and one problem line per
    bad one naming it, a secret's value shown as `<hidden>`."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for var in variables:
        text = raw.get(var.name, var.default)
        try:
            values[var.name] = var.parse(text)
        except ValueError as exc:
            problems.append(f"{var.name}={'<hidden>' if var.secret else repr(text)}: {exc}")
    return values, problems


# --- parsers: each takes the text of a variable and returns its value or raises ValueError
# with the reason, which follows `NAME='value': ` in the message.

_WHOLE = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")


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


def whole(lo: int, hi: int) -> Callable[[str], int]:
    """Digits only (`1_0` is not ten here, nor ` 7 ` seven)."""
    return _bounded(_WHOLE, int, lo, hi, "", "a whole number")


def number(lo: float, hi: float, unit: str) -> Callable[[str], float]:
    """A plain decimal (`0.5`, `15`, `1e-3`) within [lo, hi]: finite, no padding."""
    return _bounded(_DECIMAL, float, lo, hi, f" {unit}", "a number")


def seconds(lo: float, hi: float) -> Callable[[str], float]:
    """A period or timeout: a floor keeps loops from running hot, a ceiling keeps it finite."""
    return number(lo, hi, "seconds")


def millis_as_seconds(lo: int, hi: int) -> Callable[[str], float]:
    """Whole milliseconds in the environment, seconds in the settings."""
    ms = whole(lo, hi)
    return lambda raw: ms(raw) / 1000


def choice(*options: str) -> Callable[[str], str]:
    """One of `options`, any case, returned in lower case."""

    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def upper_choice(*options: str) -> Callable[[str], str]:
    lower = choice(*(option.lower() for option in options))
    return lambda raw: lower(raw).upper()


def on_off(raw: str) -> bool:
    return choice("on", "off")(raw) == "on"


def url(*schemes: str) -> Callable[[str], str]:
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


def optional_url(*schemes: str) -> Callable[[str], str]:
    strict = url(*schemes)
    return lambda raw: strict(raw) if raw.strip() else ""


def symbols(raw: str) -> frozenset[str]:
    """A comma list of symbol names, upper-cased; empty: no restriction."""
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


def host_ports(raw: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` (IPv6 as `[::1]:26379`); empty: none."""
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


def interval_name(raw: str) -> str:
    """MEXC's interval name, from its own spelling or our short form; case-sensitive, as
    `1m` (a minute) and `1M` (a month) differ. Week1 and Month1 have no fixed length."""
    if raw in INTERVAL_MINUTES:
        return raw
    if raw in INTERVALS:
        return INTERVALS[raw]
    if raw in ("Week1", "Month1", "1w", "1W", "1M"):
        raise ValueError("weeks and months have no fixed length in minutes: not supported")
    raise ValueError("must be one of " + ", ".join([*INTERVALS, *INTERVAL_MINUTES]))


def text(raw: str) -> str:
    return raw


def non_empty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


_KEY_PART = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def key_part(raw: str) -> str:
    """A piece of a Redis key name."""
    if not _KEY_PART.fullmatch(raw):
        raise ValueError("1 to 64 letters, digits, '_', '.', ':' or '-'")
    return raw


def replica_name(raw: str) -> str:
    """Empty: this host and process, unique among replicas sharing one Redis."""
    return key_part(raw) if raw else key_part(f"{socket.gethostname()[:48]}-{os.getpid()}")
