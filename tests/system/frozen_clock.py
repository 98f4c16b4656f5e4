"""The simulator and the service on one frozen wall clock, shared by the system tests of
warm start and failover (test_warm_start.py, test_failover.py): `T0`, half a minute into
minute `M`; `frozen_simulator`, a simulator whose clock stands at `T0`; `service`, the
service in-process on the same clock with a fixed reconnect jitter."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import httpx

from devtools.simulator import FakeExchange, SimAddress, SimConfig
from screener.app import Service
from tests.kline_builders import M
from tests.system.service_harness import running, simulator

T0 = M + 30.0  # the simulator's frozen wall clock: every test minute is minute M


def frozen_simulator(symbols: int) -> AbstractAsyncContextManager[tuple[FakeExchange, SimAddress]]:
    """A simulator whose wall clock stands still: every test minute is minute M."""
    return simulator(
        SimConfig(symbols=symbols, rate_per_s=0, extra_contracts=False), clock=lambda: T0
    )


def service(
    sim: SimAddress, redis_port: int, **env: str
) -> AbstractAsyncContextManager[tuple[Service, httpx.AsyncClient]]:
    """The service on the same frozen clock, with a fixed reconnect jitter."""
    return running(sim, redis_port, wall=lambda: T0, rand=lambda: 0.1, **env)
