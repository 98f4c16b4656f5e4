"""A MEXC-compatible futures exchange simulator (REST + ``/edge`` WebSocket) for tests,
benchmarks and offline runs. Faithful to docs/exchange.md; see ``FakeExchange``.
"""

from __future__ import annotations

from devtools.simulator.cli import main
from devtools.simulator.exchange import SimAddress, SimConfig
from devtools.simulator.server import FakeExchange, run_simulator

__all__ = ["FakeExchange", "SimAddress", "SimConfig", "main", "run_simulator"]
