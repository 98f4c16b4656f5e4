"""The small JSON files through which the children report to the bench (and the bench steers
the simulator): written atomically every `REPORT_S`, read at any time without a lock.
Latency histograms in them count in buckets of 1 / `BUCKETS_PER_MS` ms."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

REPORT_S = 0.2
"""Children rewrite their stats file this often; it bounds how stale a snapshot can be."""

BUCKETS_PER_MS = 10
"""Latency histograms count in 0.1 ms buckets (the simulator's `ts` has 1 ms resolution)."""


def write_stats(path: Path, data: dict[str, Any]) -> None:
    """Atomically replace `path`; `t` (CLOCK_MONOTONIC, shared by all processes) dates the
    counts, so rates are exact even though a file is up to `REPORT_S` old when read."""
    data["t"] = time.monotonic()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS))
    os.replace(tmp, path)


def read_stats(path: Path) -> dict[str, Any]:
    """The last report in `path`, or {} before the first one."""
    try:
        data: dict[str, Any] = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    return data


def bucket(latency_ms: float) -> int:
    """The histogram bucket of a latency."""
    return int(latency_ms * BUCKETS_PER_MS)
