"""The universe actor in exact virtual time: reads on the refresh grid, plans by difference,
fills, whitelist and MAX_SYMBOLS, future listings, REST failures with backoff, shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial

import pytest
import trio
import trio.testing
from loguru import logger

from actors.universe import run_universe
from screener.core.config import load_settings
from screener.core.metrics import Metrics
from screener.core.models import ChunkPlan, SymbolSet, UniverseStatus
from screener.core.snapshot import Latest
from screener.mexc.client import RestFailed
from screener.mexc.rest import Contract

W0 = 1_770_000_000.0  # the wall clock (unix seconds) at virtual time 0
ERROR = "contract list unavailable: RestFailed: contract_detail: server: HTTP 500"


def syms(names: str) -> SymbolSet:
    """`syms("A B")` -> {"A_USDT", "B_USDT"}."""
    return frozenset(f"{name}_USDT" for name in names.split())


def contract(name: str, *, opening_ms: float = 0.0, quote: str = "USDT") -> Contract:
    return Contract(
        symbol=f"{name}_USDT",
        quote=quote,
        settle="USDT",
        future_type=1.0,
        state=0.0,
        hidden=False,
        opening_ms=opening_ms,
    )


class FakeContracts:
    """The shared REST client's `fetch_contracts`: the listed rows, or `RestFailed` for the
    next `failures` reads; `delays` says how long each read takes (0 when exhausted)."""

    def __init__(self, names: str = "") -> None:
        self.rows: list[Contract] = [contract(name) for name in names.split()]
        self.failures = 0
        self.delays: list[float] = []
        self.reads: list[float] = []

    def relist(self, names: str) -> None:
        self.rows = [contract(name) for name in names.split()]

    async def __call__(self) -> list[Contract]:
        self.reads.append(trio.current_time())
        if self.delays:
            await trio.sleep(self.delays.pop(0))
        if self.failures:
            self.failures -= 1
            raise RestFailed("contract_detail", "server", "HTTP 500")
        return list(self.rows)


@dataclass
class Rig:
    plans: trio.MemoryReceiveChannel[ChunkPlan] | None
    fills: trio.MemoryReceiveChannel[SymbolSet]
    status: Latest[UniverseStatus]
    metrics: Metrics
    scope: trio.CancelScope

    async def plan(self) -> tuple[float, dict[int, SymbolSet]]:
        assert self.plans is not None
        plan = await self.plans.receive()
        return trio.current_time(), dict(plan)

    async def fill(self) -> tuple[float, SymbolSet]:
        fill = await self.fills.receive()
        return trio.current_time(), fill

    async def assert_no_fill(self) -> None:
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            self.fills.receive_nowait()

    def gauge(self, name: str) -> float | None:
        return self.metrics.registry.get_sample_value(name)


@asynccontextmanager
async def universe(
    fetch: FakeContracts,
    *,
    env: Mapping[str, str] | None = None,
    refresh_s: float = 30.0,
    stream: bool = True,
    wall: Callable[[], float] = lambda: W0 + trio.current_time(),
    rand: Callable[[], float] = lambda: 0.5,
) -> AsyncIterator[Rig]:
    """The actor started with MAX_SYMBOLS_PER_CONN=2 (plus `env`); cancelled on exit."""
    settings = load_settings({"MAX_SYMBOLS_PER_CONN": "2", **(env or {})}).exchange
    plans_send, plans_recv = trio.open_memory_channel[ChunkPlan](16)
    fills_send, fills_recv = trio.open_memory_channel[SymbolSet](16)
    status = Latest(UniverseStatus(symbols=0, chunks=0, error=None))
    metrics = Metrics()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(
                run_universe,
                plans_send if stream else None,
                fills_send,
                fetch=fetch,
                settings=settings,
                refresh_s=refresh_s,
                status=status,
                metrics=metrics,
                wall=wall,
                rand=rand,
            )
        )
        if not stream:
            await plans_send.aclose()
        yield Rig(plans_recv if stream else None, fills_recv, status, metrics, nursery.cancel_scope)
        nursery.cancel_scope.cancel()


@contextmanager
def universe_warnings() -> Iterator[list[str]]:
    """The universe actor's WARNING messages logged inside the block."""
    lines: list[str] = []
    sink = logger.add(
        lambda message: lines.append(message.rstrip("\n")),
        level="WARNING",
        format="{message}",
        filter=lambda record: record["extra"].get("actor") == "universe",
    )
    try:
        yield lines
    finally:
        logger.remove(sink)


async def test_first_read_at_start_plans_every_chunk_and_fills_every_symbol(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeContracts("E D C B A")
    exchange.rows.append(contract("USDC", quote="USDC"))  # not a USDT perpetual: ignored
    with trio.fail_after(10):
        async with universe(exchange) as rig:
            assert await rig.plan() == (
                0.0,
                {0: syms("A B"), 1: syms("C D"), 2: syms("E")},
            )
            assert await rig.fill() == (0.0, syms("A B C D E"))
            assert rig.status.value == UniverseStatus(
                symbols=5, chunks=3, error=None, tracked=syms("A B C D E")
            )
            assert rig.gauge("screener_symbols") == 5
            assert rig.gauge("screener_connections") == 3
    assert exchange.reads == [0.0]


async def test_reads_every_refresh_on_the_grid_and_an_unchanged_list_fills_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeContracts("A B C")
    with trio.fail_after(200):
        async with universe(exchange, refresh_s=30.0) as rig:
            first = await rig.plan()
            assert await rig.fill() == (0.0, syms("A B C"))
            later = [await rig.plan() for _ in range(3)]
            await rig.assert_no_fill()
    assert first == (0.0, {0: syms("A B"), 1: syms("C")})
    assert later == [(t, first[1]) for t in (30.0, 60.0, 90.0)]  # the same plan, resent
    assert exchange.reads == [0.0, 30.0, 60.0, 90.0]


async def test_refresh_keeps_chunks_changes_only_the_difference_and_retires_emptied_chunks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeContracts("A B C D E")
    with trio.fail_after(200):
        async with universe(exchange, refresh_s=30.0) as rig:
            assert await rig.plan() == (0.0, {0: syms("A B"), 1: syms("C D"), 2: syms("E")})
            assert await rig.fill() == (0.0, syms("A B C D E"))

            exchange.relist("A C D E F")  # B delisted, F listed: F takes B's place
            assert await rig.plan() == (30.0, {0: syms("A F"), 1: syms("C D"), 2: syms("E")})
            assert await rig.fill() == (30.0, syms("F"))
            assert (rig.gauge("screener_symbols"), rig.gauge("screener_connections")) == (5, 3)

            exchange.relist("A E F")  # chunk 1 empties: retired with an empty set
            assert await rig.plan() == (60.0, {0: syms("A F"), 1: frozenset(), 2: syms("E")})
            await rig.assert_no_fill()
            assert rig.status.value == UniverseStatus(
                symbols=3, chunks=2, error=None, tracked=syms("A E F")
            )
            assert (rig.gauge("screener_symbols"), rig.gauge("screener_connections")) == (3, 2)

            exchange.relist("A E F G H I")  # fill chunk 2's gap, then a new id (1 is gone)
            assert await rig.plan() == (90.0, {0: syms("A F"), 2: syms("E G"), 3: syms("H I")})
            assert await rig.fill() == (90.0, syms("G H I"))
            assert (rig.gauge("screener_symbols"), rig.gauge("screener_connections")) == (6, 3)


async def test_without_plans_every_symbol_is_filled_after_every_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeContracts("A B C")
    with trio.fail_after(1000):
        async with universe(exchange, refresh_s=300.0, stream=False) as rig:
            assert await rig.fill() == (0.0, syms("A B C"))
            assert await rig.fill() == (300.0, syms("A B C"))
            exchange.relist("A B C D")
            assert await rig.fill() == (600.0, syms("A B C D"))
            assert rig.status.value == UniverseStatus(
                symbols=4, chunks=0, error=None, tracked=syms("A B C D")
            )
            assert rig.gauge("screener_connections") == 0
            assert rig.gauge("screener_symbols") == 4


async def test_whitelist_restricts_and_an_unknown_symbol_is_warned_about_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeContracts("A B C D")
    with trio.fail_after(200), universe_warnings() as lines:
        async with universe(exchange, env={"SYMBOL_WHITELIST": "C_USDT,A_USDT,NOPE_USDT"}) as rig:
            assert await rig.plan() == (0.0, {0: syms("A C")})
            assert await rig.fill() == (0.0, syms("A C"))
            assert await rig.plan() == (30.0, {0: syms("A C")})
            assert await rig.plan() == (60.0, {0: syms("A C")})
            assert lines == ["whitelisted symbol NOPE_USDT is not a live USDT perpetual; skipped"]
            exchange.relist("A B C D NOPE")  # listed after all: tracked and filled
            assert await rig.plan() == (90.0, {0: syms("A C"), 1: syms("NOPE")})
            assert await rig.fill() == (90.0, syms("NOPE"))
    assert len(lines) == 1


@pytest.mark.parametrize(
    ("whitelist", "kept", "warning"),
    [
        ("", "A B C", "5 live symbols exceed MAX_SYMBOLS=3; the last 2 skipped"),
        # The whitelist applies first, then the bound.
        (
            "E_USDT,D_USDT,C_USDT,B_USDT",
            "B C D",
            "4 live symbols exceed MAX_SYMBOLS=3; the last 1 skipped",
        ),
    ],
)
async def test_max_symbols_keeps_the_first_alphabetically_and_warns(
    autojump_clock: trio.testing.MockClock, whitelist: str, kept: str, warning: str
) -> None:
    exchange = FakeContracts("E C A D B")
    env = {"MAX_SYMBOLS": "3", "SYMBOL_WHITELIST": whitelist}
    with trio.fail_after(10), universe_warnings() as lines:
        async with universe(exchange, env=env) as rig:
            _, plan = await rig.plan()
            assert await rig.fill() == (0.0, syms(kept))
    assert frozenset().union(*plan.values()) == syms(kept)
    assert rig.status.value.symbols == 3
    assert lines == [warning]


async def test_a_listing_that_opens_later_is_skipped_until_the_wall_clock_reaches_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeContracts("A")
    exchange.rows += [
        contract("NEW", opening_ms=(W0 + 60.0) * 1000),  # opens at virtual t=60
        contract("OLD", opening_ms=(W0 - 3600.0) * 1000),  # opened an hour ago
    ]
    with trio.fail_after(200):
        async with universe(exchange, refresh_s=30.0) as rig:
            assert await rig.plan() == (0.0, {0: syms("A OLD")})
            assert await rig.fill() == (0.0, syms("A OLD"))
            assert await rig.plan() == (30.0, {0: syms("A OLD")})
            assert await rig.plan() == (60.0, {0: syms("A OLD"), 1: syms("NEW")})
            assert await rig.fill() == (60.0, syms("NEW"))


async def test_a_failing_read_is_retried_on_the_exact_backoff_schedule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeContracts("A")
    exchange.failures = 7
    with trio.fail_after(200), universe_warnings() as lines:
        async with universe(exchange, refresh_s=1000.0, rand=lambda: 0.5) as rig:
            assert await rig.plan() == (91.0, {0: syms("A")})
    # Full jitter at half the ceiling: 2 s doubling, capped at 60 s.
    assert exchange.reads == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 61.0, 91.0]
    reason = "RestFailed: contract_detail: server: HTTP 500"
    assert lines == [
        f"contract list unavailable ({reason}); retry in {delay}s"
        for delay in ("1.0", "2.0", "4.0", "8.0", "16.0", "30.0", "30.0")
    ]


async def test_the_error_stays_in_status_while_reads_fail_and_the_backoff_resets_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeContracts("A B C")
    exchange.failures = 2
    with trio.fail_after(300):
        async with universe(exchange, refresh_s=100.0, rand=lambda: 0.5) as rig:
            await trio.sleep(0.5)
            assert rig.status.value == UniverseStatus(symbols=0, chunks=0, error=ERROR)
            assert await rig.plan() == (3.0, {0: syms("A B"), 1: syms("C")})
            await trio.testing.wait_all_tasks_blocked()  # the plan leaves before the status
            assert rig.status.value == UniverseStatus(
                symbols=3, chunks=2, error=None, tracked=syms("A B C")
            )
            exchange.failures = 1
            await trio.sleep(97.5)  # t=100.5: the refresh at 100 failed; the last count stays
            assert rig.status.value == UniverseStatus(
                symbols=3, chunks=2, error=ERROR, tracked=syms("A B C")
            )
            assert await rig.plan() == (101.0, {0: syms("A B"), 1: syms("C")})  # 1 s again
            await trio.testing.wait_all_tasks_blocked()
            assert rig.status.value.error is None
            assert await rig.plan() == (200.0, {0: syms("A B"), 1: syms("C")})  # grid kept
    assert exchange.reads == [0.0, 1.0, 3.0, 100.0, 101.0, 200.0]


async def test_a_read_slower_than_the_refresh_skips_the_missed_ticks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeContracts("A")
    exchange.delays = [0.0, 25.0]  # the read at t=10 answers at t=35
    with trio.fail_after(200):
        async with universe(exchange, refresh_s=10.0) as rig:
            times = [(await rig.plan())[0] for _ in range(4)]
    assert times == [0.0, 35.0, 40.0, 50.0]
    assert exchange.reads == [0.0, 10.0, 40.0, 50.0]  # no catch-up reads at 20 and 30


@pytest.mark.parametrize("while_", ["waiting for the next tick", "retrying a failed read"])
async def test_both_channels_are_closed_when_the_actor_is_cancelled(
    autojump_clock: trio.testing.MockClock, while_: str
) -> None:
    exchange = FakeContracts("A")
    retrying = while_ == "retrying a failed read"
    exchange.failures = 1000 if retrying else 0
    with trio.fail_after(100):
        async with universe(exchange) as rig:
            if not retrying:
                assert await rig.plan() == (0.0, {0: syms("A")})
                assert await rig.fill() == (0.0, syms("A"))
            await trio.sleep(5)
            rig.scope.cancel()
    assert rig.plans is not None
    with pytest.raises(trio.EndOfChannel):
        rig.plans.receive_nowait()
    with pytest.raises(trio.EndOfChannel):
        rig.fills.receive_nowait()
    assert trio.current_time() == 5.0


async def test_anything_but_a_rest_failure_is_a_bug_not_retried_and_closes_the_channels(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reads: list[float] = []

    async def broken() -> list[Contract]:
        reads.append(trio.current_time())
        raise KeyError("decoder bug")

    plans_send, plans_recv = trio.open_memory_channel[ChunkPlan](4)
    fills_send, fills_recv = trio.open_memory_channel[SymbolSet](4)
    with trio.fail_after(10), pytest.raises(KeyError):
        await run_universe(
            plans_send,
            fills_send,
            fetch=broken,
            settings=load_settings({}).exchange,
            refresh_s=30.0,
            status=Latest(UniverseStatus(symbols=0, chunks=0, error=None)),
            metrics=Metrics(),
            rand=lambda: 0.5,
        )
    assert reads == [0.0]
    with pytest.raises(trio.EndOfChannel):
        plans_recv.receive_nowait()
    with pytest.raises(trio.EndOfChannel):
        fills_recv.receive_nowait()
