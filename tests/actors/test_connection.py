"""Connection actor timing in exact virtual time: pings, dead sockets, backoff, retirement."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from screener.core.config import load_settings
from screener.core.metrics import Metrics
from screener.core.models import ConnStatus, Unwatched, WindowInbox
from tests.actors.fakes import start_connection
from tests.actors.memory_exchange import MemoryExchange

SETTINGS = load_settings(
    {"PING_INTERVAL_S": "15", "SUBSCRIBE_BATCH": "2", "SUBSCRIBE_PAUSE_S": "0.5"}
).exchange


async def start_actor(
    nursery: trio.Nursery, exchange: MemoryExchange, symbols: frozenset[str], rand: float = 0.5
) -> tuple[trio.MemorySendChannel[frozenset[str]], trio.MemoryReceiveChannel[WindowInbox]]:
    # The chunk is counted at once (for /health's connections total), as down.
    return await start_connection(
        nursery, exchange, symbols, settings=SETTINGS, metrics=Metrics(), rand=rand
    )


async def test_pings_every_interval_on_absolute_deadlines(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            await start_actor(nursery, exchange, frozenset({"A_USDT"}))
            await trio.sleep(61)
            nursery.cancel_scope.cancel()
    assert exchange.pings == [15.0, 30.0, 45.0, 60.0]
    assert exchange.connects == [0.0]


async def test_subscribes_paced_then_reports_up(autojump_clock: trio.testing.MockClock) -> None:
    symbols = frozenset(f"S{i}_USDT" for i in range(5))
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            _, out = await start_actor(nursery, exchange, symbols)
            assert await out.receive() == ConnStatus(7, up=True)
            # batches of 2 with 0.5 s pauses: 2 + 2 + 1
            assert trio.current_time() == 1.0
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert sorted(exchange.subs) == sorted(symbols)


async def test_silence_for_twice_the_ping_interval_is_a_dead_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            exchange.answer_pings = False
            _, out = await start_actor(nursery, exchange, frozenset({"A_USDT"}), rand=0.5)
            assert await out.receive() == ConnStatus(7, up=True)  # the sub ack arrived at 0
            assert await out.receive() == ConnStatus(7, up=False, symbols=frozenset({"A_USDT"}))
            # last frame (the ack) at t=0; dead at 0 + 2 * 15
            assert trio.current_time() == 30.0
            exchange.answer_pings = True
            assert await out.receive() == ConnStatus(7, up=True)
            nursery.cancel_scope.cancel()
    # first retry after uniform(0, 2) with rand 0.5 -> 1 s
    assert exchange.connects == [0.0, 31.0]
    assert exchange.pings == [15.0]  # the first socket pinged once before it was declared dead


async def test_server_close_restarts_with_growing_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            _, out = await start_actor(nursery, exchange, frozenset({"A_USDT"}), rand=1.0)
            for _ in range(3):
                assert await out.receive() == ConnStatus(7, up=True)
                await trio.testing.wait_all_tasks_blocked()
                await exchange.server_sockets[-1].aclose(1001)
                assert await out.receive() == ConnStatus(7, up=False, symbols=frozenset({"A_USDT"}))
            assert await out.receive() == ConnStatus(7, up=True)
            nursery.cancel_scope.cancel()
    assert exchange.connects == [0.0, 2.0, 6.0, 14.0]


async def test_chunk_changes_subscribe_only_the_difference_and_close_retires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            control, out = await start_actor(nursery, exchange, frozenset({"A_USDT", "B_USDT"}))
            assert await out.receive() == ConnStatus(7, up=True)
            await control.send(frozenset({"B_USDT", "C_USDT"}))
            assert await out.receive() == Unwatched(frozenset({"A_USDT"}))
            await trio.testing.wait_all_tasks_blocked()
            assert exchange.unsubs == ["A_USDT"]
            assert sorted(exchange.subs) == ["A_USDT", "B_USDT", "C_USDT"]
            await control.aclose()
            bc = frozenset({"B_USDT", "C_USDT"})  # the chunk's symbols when it went down
            assert await out.receive() == Unwatched(bc)
            assert await out.receive() == ConnStatus(7, up=False, symbols=bc)
            assert await out.receive() == ConnStatus(7, up=False, retired=True)
            with pytest.raises(trio.EndOfChannel):
                await out.receive()
    assert exchange.close_codes == [1000]
