"""What the simulator's tests share (tests/actors/test_simulator_rest.py in process,
tests/system/test_simulator.py over sockets): the capture's minute `MINUTE`, the wall clock
`T0` they start at, `FILTERED` (the contracts the live-contract recipe leaves out), a
hand-set wall clock (`FakeClock`) and `make`, a `FakeExchange` on such a clock."""

from __future__ import annotations

from devtools.simulator import FakeExchange, SimConfig

MINUTE = 1_770_330_480  # the 2026-02-05 capture's candle start


T0 = MINUTE + 5.0


FILTERED = ("ETH_USDC", "BTC_USD", "HIDDEN1_USDT", "DAILY1_USDT", "OFFLINE1_USDT", "NEWLIST1_USDT")


class FakeClock:
    """Wall clock the test sets by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(symbols: int = 5, rate_per_s: float = 0.0) -> tuple[FakeExchange, FakeClock]:
    clock = FakeClock()
    return FakeExchange(SimConfig(symbols=symbols, rate_per_s=rate_per_s), clock=clock), clock
