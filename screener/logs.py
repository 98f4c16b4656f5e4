"""Logging set-up: loguru, configured once; JSON lines for machines, text for people.

The stdlib loggers of hypercorn, trio-websocket and httpx are routed into loguru so there is
one stream with one format.
"""

from __future__ import annotations

import logging
import sys

import trio
from loguru import logger


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
        logger.add(sys.stderr, level=level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(
            sys.stderr,
            level=level,
            backtrace=False,
            diagnose=False,
            format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
            "<cyan>{extra}</cyan> {message}",
        )
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
