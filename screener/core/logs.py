"""Logging set-up: loguru, configured once; JSON lines for machines, text for people.

JSON lines have the shape log pipelines (Loki, ELK, Datadog, Vector) read without
configuration: one object per line with `timestamp` (RFC 3339, UTC, `Z`), `level`,
`message`, `logger` (the module), the context fields (`actor`, `conn`, and the values of the
message) at the top level, and `exception` as text when there is one; no file paths. The
stdlib loggers of hypercorn, trio-websocket and httpx are routed into loguru so there is one
stream with one format.

Text lines are for a terminal (`make demo`): time, level, the message, then the same context
fields as `key=value` pairs, so the eye finds the message at a fixed column.
"""

from __future__ import annotations

import logging
import sys
import traceback
from datetime import UTC
from typing import TYPE_CHECKING, Any, Final

import orjson
import trio
from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

RESERVED: Final = frozenset({"timestamp", "level", "message", "logger", "exception"})
"""Top-level keys of a JSON line that context fields may not overwrite."""


def json_line(record: Record) -> str:
    """One log record as a JSON object in the shape log pipelines expect."""
    line: dict[str, Any] = {
        "timestamp": record["time"].astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z",
        "level": record["level"].name,
        "message": record["message"],
        "logger": record["extra"].get("lib") or record["name"],
    }
    for key, value in record["extra"].items():
        if key not in RESERVED and key not in ("lib", "_json", "_text"):
            line[key] = value
    exc = record["exception"]
    if exc is not None and exc.type is not None:
        line["exception"] = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
    return orjson.dumps(line, default=str).decode()


def _json_format(record: Record) -> str:
    # loguru formats the returned string with the record: stash the JSON where no brace in
    # it can be taken for a field.
    record["extra"]["_json"] = json_line(record)
    return "{extra[_json]}\n"


TEXT_FORMAT: Final = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> {message}"
    "<cyan>{extra[_text]}</cyan>\n{exception}"
)


def text_fields(record: Record) -> str:
    """The context fields of a text line as `key=value` pairs; a value with a space, quote or
    `=` in it (or none at all) is quoted, so the pairs stay apart."""
    pairs = []
    for key, value in record["extra"].items():
        if key.startswith("_"):
            continue
        text = str(value)
        if not text or any(c.isspace() or c in '"=' for c in text):
            text = orjson.dumps(text).decode()
        pairs.append(f"{key}={text}")
    return " ".join(pairs)


def text_format(record: Record) -> str:
    """The loguru format of a text line: the message first, then its context fields."""
    # As for JSON: the fields go through the record, so no brace or tag in a value is
    # taken for a field or a colour.
    fields = text_fields(record)
    record["extra"]["_text"] = f" {fields}" if fields else ""
    return TEXT_FORMAT


class _ToLoguru(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).bind(lib=record.name).log(
            level, record.getMessage()
        )


def setup_logging(fmt: str, level: str) -> None:
    logger.remove()
    if fmt == "json":
        logger.add(sys.stderr, level=level, format=_json_format, backtrace=False, diagnose=False)
    else:
        logger.add(sys.stderr, level=level, format=text_format, backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[_ToLoguru()], level=logging.WARNING, force=True)
    # Access logs and per-request noise stay out; warnings and errors come through.
    for name in ("httpx", "httpcore", "hypercorn.access", "trio-websocket"):
        logging.getLogger(name).setLevel(logging.WARNING)


class RateLimited:
    """Log a recurring problem at most once per `every_s`, saying how many were suppressed.

    Garbage frames can arrive thousands per second; one line per kind per interval keeps the
    log readable while the counters carry the exact numbers.
    """

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None when this occurrence should stay quiet, else how many were suppressed."""
        now = trio.current_time()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)
