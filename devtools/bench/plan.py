"""What one benchmark run measures and for how long (`Plan`), and what every part shares:
the error that ends a run, the default report path and the bench's progress lines."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

DEFAULT_OUT = Path("docs/performance.md")
LOOKBACK_MIN = 15
"""The service's window, in 1-minute candles: an event with `window_min` 15 is a full one."""


class BenchError(RuntimeError):
    """A run that cannot produce figures: a child died, a wait timed out."""


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one run; `--quick` shrinks them to a smoke test."""

    quick: bool = False
    symbols: int = 800
    per_conn: int = 200  # 800 symbols -> 4 connections, as on MEXC
    fixed_rate: float = 2000.0
    max_rate: float = 1_000_000.0  # far above any consumer: the pusher is paced by backpressure
    warmup_s: float = 5.0
    max_s: float = 20.0
    cpu_s: float = 30.0
    top5_s: float = 20.0
    top5_rps: float = 50.0
    mem_symbols: int = 1000
    mem_warp: float = 60.0  # one simulated minute per real second
    mem_rate: float = 2000.0  # two pushes per symbol per simulated minute
    profile_s: float = 20.0
    search_steps: int = 5  # fixed-rate trials, each 10 % lower, to find the sustained maximum
    ccxt: bool = True  # also measure ccxt's MEXC client (installed into its own venv)
    service_env: Mapping[str, str] = field(default_factory=dict)


QUICK = Plan(
    quick=True,
    symbols=40,
    per_conn=20,
    fixed_rate=400.0,
    max_rate=5000.0,
    warmup_s=0.5,
    max_s=1.5,
    cpu_s=1.5,
    top5_s=1.0,
    profile_s=0.0,
    ccxt=False,  # a 150 MB install has no place in a smoke test
    # Backfill in < 1 s; read-only, so no run can change the constant for the next one.
    service_env=MappingProxyType(
        {"RANK_INTERVAL_S": "1", "REST_RATE_PER_S": "100", "REST_RATE_OVERRIDE": "on"}
    ),
)


def connections(symbols: int, per_conn: int) -> int:
    """WebSocket connections the service (and the bare client) open for `symbols`."""
    return -(-symbols // per_conn)


def say(text: str) -> None:
    """A progress line on stderr; stdout carries only the figures."""
    print(f"bench: {text}", file=sys.stderr, flush=True)
