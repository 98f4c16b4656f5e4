"""Recovery of the connection actors on MockClock over `MemoryExchange`: the shared
`Reachability` (all chunks back together after an outage, the probe, per-chunk trouble kept
on its own backoff, the recovery gap) and silent subscriptions (resubscribe, then reconnect)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from loguru import logger
from trio_websocket import WebSocketConnection

from screener.core.config import ExchangeSettings, load_settings
from screener.core.metrics import Metrics
from screener.core.models import ConnStatus, Kline, WindowInbox
from screener.core.supervise import Reachability
from tests.actors.fakes import start_connection
from tests.actors.memory_exchange import MemoryExchange
from tests.helpers import sample

# No silence check in the recovery tests (they push nothing): the longest allowed.
SETTINGS = load_settings(
    {"PING_INTERVAL_S": "15", "SUBSCRIBE_BATCH": "2", "SILENT_RESUBSCRIBE_S": "86400"}
).exchange
SILENT_60 = load_settings(
    {"PING_INTERVAL_S": "15", "SUBSCRIBE_BATCH": "2", "SILENT_RESUBSCRIBE_S": "60"}
).exchange


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Every INFO-and-up message of the block, as `actor: message`."""
    lines: list[str] = []

    def sink(message: Any) -> None:
        record = message.record
        lines.append(f"{record['extra'].get('actor')}: {record['message']}")

    sink_id = logger.add(sink, level="INFO", format="{message}")
    try:
        yield lines
    finally:
        logger.remove(sink_id)


async def start_conn(
    nursery: trio.Nursery,
    exchange: MemoryExchange,
    conn_id: int,
    symbols: frozenset[str],
    *,
    metrics: Metrics,
    rand: float,
    reachability: Reachability | None,
    settings: ExchangeSettings = SETTINGS,
) -> trio.MemoryReceiveChannel[WindowInbox]:
    """Start one connection actor; returns its outbox after the initial "down"."""
    _, out_recv = await start_connection(
        nursery,
        exchange,
        symbols,
        settings=settings,
        metrics=metrics,
        rand=rand,
        conn_id=conn_id,
        outbox=1000,
        reachability=reachability,
    )
    return out_recv


async def next_status(out: trio.MemoryReceiveChannel[WindowInbox]) -> ConnStatus:
    """The next status change, skipping klines, without the symbols a down status names
    (tests/actors/test_connection.py checks those)."""
    async for item in out:
        if isinstance(item, ConnStatus):
            return item._replace(symbols=frozenset())
    raise AssertionError("outbox closed")


# --- the shared view: every chunk back together -----------------------------------------------

JITTERS = (0.3125, 0.5625, 0.8125)  # three draws; binary fractions keep the times exact


async def outage(
    reachability: Reachability | None, metrics: Metrics
) -> tuple[MemoryExchange, list[float]]:
    """Three chunks up at 0; at 10 the exchange closes every socket and refuses connects
    until 46. Returns the exchange and when each chunk was up again."""
    async with trio.open_nursery() as nursery:
        exchange = MemoryExchange(nursery)
        outs = [
            await start_conn(
                nursery,
                exchange,
                i,
                frozenset({f"S{i}_USDT"}),
                metrics=metrics,
                rand=rand,
                reachability=reachability,
            )
            for i, rand in enumerate(JITTERS)
        ]
        for i, out in enumerate(outs):
            assert await next_status(out) == ConnStatus(i, up=True)
        await trio.sleep(10)
        exchange.refuse_until = 46.0
        await exchange.close_all()
        back = [0.0] * len(outs)

        async def wait_back(i: int, out: trio.MemoryReceiveChannel[WindowInbox]) -> None:
            assert await next_status(out) == ConnStatus(i, up=False)
            assert await next_status(out) == ConnStatus(i, up=True)
            back[i] = trio.current_time()

        async with trio.open_nursery() as waiting:
            for i, out in enumerate(outs):
                waiting.start_soon(wait_back, i, out)
        nursery.cancel_scope.cancel()
    return exchange, back


async def test_without_a_shared_view_each_chunk_waits_out_its_own_jitter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The fault as it was: after a 36 s outage the last chunk is back 32.6 s after the
    exchange (full jitter, each chunk on its own schedule: 2, 4, 8, ... s times its draw)."""
    with trio.fail_after(300):
        exchange, back = await outage(None, Metrics())
    assert back == [48.125, 78.625, 60.375]
    assert len(exchange.refused) == 5 + 5 + 4


async def test_all_chunks_reconnect_right_after_the_first_gets_through(
    autojump_clock: trio.testing.MockClock, logged: list[str]
) -> None:
    """The same outage with the app's shared `Reachability`: while the exchange refuses, one
    chunk at a time probes within 5 s (the others keep their backoff); the probe gets
    through at 47.375, 1.375 s after the exchange's return, and the other two follow 0.5 s
    later (the spread, 1 s x the draw 0.5) instead of at 60.375 and 78.625."""
    metrics = Metrics()
    with trio.fail_after(300):
        exchange, back = await outage(Reachability(rand=lambda: 0.5), metrics)
    assert exchange.connects == [0.0, 0.0, 0.0, 47.375, 47.875, 47.875]
    assert sorted(back) == [47.375, 47.875, 47.875]
    # While it was away: each chunk's own retries (10.625, 11.125, 11.625, ...), and once
    # those grew apart the probe every 2.5 s (its cap 5 s x 0.5): never a pause over 5 s.
    attempts = exchange.refused
    assert attempts == [
        *(10.625, 11.125, 11.625, 11.875, 13.375, 14.375, 14.875, 17.375, 17.875),
        *(19.875, 22.375, 24.875, 26.875, 27.375, 29.875, 32.375, 34.875, 37.375),
        *(39.875, 42.375, 44.875, 44.875),
    ]
    assert max(b - a for a, b in itertools.pairwise(attempts)) <= 5.0
    assert sample(metrics, "screener_reconnects_early_total") == 2
    assert sample(metrics, "screener_reconnects_total") == 3 + len(attempts)
    reach_lines = [line for line in logged if line.startswith("reachability")]
    assert reach_lines == [
        "reachability: exchange unreachable (ConnectionRefusedError: connection refused "
        "(memory exchange)); a connection retries within 5s until one gets through",
        "reachability: exchange reachable again after 36.8s; 2 waiting connections retry "
        "within 1.0s",
    ]


def socket_of(exchange: MemoryExchange, symbol: str) -> WebSocketConnection:
    """The exchange's end of the open socket subscribed to `symbol`."""
    (ws,) = (ws for ws, kept in exchange.kept.items() if symbol in kept and ws.closed is None)
    return ws


async def test_one_chunks_own_trouble_keeps_its_own_backoff(
    autojump_clock: trio.testing.MockClock, logged: list[str]
) -> None:
    """Chunk 0 is closed by the exchange each time it subscribes (its own trouble: the
    exchange is reachable, chunk 1 streams throughout). It retries on its own doubling
    schedule; chunk 2 starting (and coming up) at 7 does not cut its wait, and nothing
    probes."""
    metrics = Metrics()
    reach = Reachability(rand=lambda: 0.5)
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            troubled, steady = [
                await start_conn(
                    nursery,
                    exchange,
                    i,
                    frozenset({f"S{i}_USDT"}),
                    metrics=metrics,
                    rand=1.0,
                    reachability=reach,
                )
                for i in range(2)
            ]
            assert await next_status(steady) == ConnStatus(1, up=True)
            for _ in range(3):
                assert await next_status(troubled) == ConnStatus(0, up=True)
                await trio.testing.wait_all_tasks_blocked()
                await socket_of(exchange, "S0_USDT").aclose(1011)
                assert await next_status(troubled) == ConnStatus(0, up=False)
                if trio.current_time() == 6.0:  # waiting until 14 now
                    await trio.sleep(1)
                    late = await start_conn(
                        nursery,
                        exchange,
                        2,
                        frozenset({"S2_USDT"}),
                        metrics=metrics,
                        rand=1.0,
                        reachability=reach,
                    )
                    assert await next_status(late) == ConnStatus(2, up=True)
            assert await next_status(troubled) == ConnStatus(0, up=True)
            nursery.cancel_scope.cancel()
    assert exchange.connects == [0.0, 0.0, 2.0, 6.0, 7.0, 14.0]
    assert exchange.refused == []
    assert sample(metrics, "screener_reconnects_early_total") == 0
    assert not [line for line in logged if line.startswith("reachability")]


async def test_a_socket_closed_while_subscribing_is_the_chunks_trouble_not_an_outage(
    autojump_clock: trio.testing.MockClock, logged: list[str]
) -> None:
    """The exchange accepts chunk 0's socket and closes it a quarter second later, in the
    middle of its paced subscriptions (one every 0.5 s): the socket opened, so the exchange
    is reachable and this is the chunk's own trouble. It keeps its doubling backoff (2, 4,
    8 s after each failure); nothing probes, and chunk 2 coming up at 9 cuts nothing."""
    metrics = Metrics()
    reach = Reachability(rand=lambda: 0.5)
    slow = load_settings(
        {"SUBSCRIBE_BATCH": "1", "SUBSCRIBE_PAUSE_S": "0.5", "SILENT_RESUBSCRIBE_S": "86400"}
    ).exchange
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            start = partial(start_conn, nursery, exchange, metrics=metrics, rand=1.0)
            steady = await start(1, frozenset({"S1_USDT"}), reachability=reach)
            assert await next_status(steady) == ConnStatus(1, up=True)
            connected = exchange.connected
            troubled = await start(
                0, frozenset({"A_USDT", "B_USDT", "C_USDT"}), reachability=reach, settings=slow
            )
            for _ in range(3):
                await connected.wait()
                connected = exchange.connected
                await trio.sleep(0.25)
                await exchange.server_sockets[-1].aclose(1011)
            await trio.sleep_until(9)
            late = await start(2, frozenset({"S2_USDT"}), reachability=reach)
            assert await next_status(late) == ConnStatus(2, up=True)
            assert await next_status(troubled) == ConnStatus(0, up=True)
            assert trio.current_time() == 15.75  # subscribed at 14.75, 15.25, 15.75
            nursery.cancel_scope.cancel()
    # Each failure at 0.25 s into the attempt; retries 2, 4, 8 s later.
    assert exchange.connects == [0.0, 0.0, 2.25, 6.5, 9.0, 14.75]
    assert sample(metrics, "screener_reconnects_early_total") == 0
    assert not [line for line in logged if line.startswith("reachability")]


async def test_a_lone_chunk_is_back_within_the_probe_cap_of_the_exchange(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With one chunk there is nobody to signal it: after a long outage its own backoff is
    at the 60 s cap (it would retry at 252, 51 s after the exchange's return at 201), but
    as the probe it retries every 2.5 s (5 s x the draw 0.5) and is back at 202.5."""
    metrics = Metrics()
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            out = await start_conn(
                nursery,
                exchange,
                0,
                frozenset({"S0_USDT"}),
                metrics=metrics,
                rand=1.0,
                reachability=Reachability(rand=lambda: 0.5),
            )
            assert await next_status(out) == ConnStatus(0, up=True)
            await trio.sleep(10)
            exchange.refuse_until = 201.0
            await exchange.close_all()
            assert await next_status(out) == ConnStatus(0, up=False)
            assert await next_status(out) == ConnStatus(0, up=True)
            nursery.cancel_scope.cancel()
    assert exchange.connects == [0.0, 202.5]
    attempts = exchange.refused
    assert attempts[:4] == [12.0, 13.0, 15.0, 17.5]  # own 2 s, then the probe: 1, 2, 2.5
    assert {b - a for a, b in itertools.pairwise(attempts[3:])} == {2.5}
    assert sample(metrics, "screener_reconnects_early_total") == 0  # it got through itself


async def test_the_probe_is_one_waiter_at_a_time_the_one_whose_retry_is_furthest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Three connections wait out 2.5, 50 and 40 s; the exchange turns unreachable. The one
    due at 50 probes first (1 s: 2 s x 0.5), then the one due at 40 (2 s later); the one due
    at 2.5 keeps its own time. Before the miss nobody probes."""
    reach = Reachability(rand=lambda: 0.5)
    ended: list[tuple[str, float, bool]] = []

    async def wait(name: str, delay_s: float) -> None:
        early = await reach.wait_to_retry(delay_s, seen=reach.generation)
        ended.append((name, trio.current_time(), early))

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            for name, delay_s in (("soon", 2.5), ("latest", 50.0), ("later", 40.0)):
                nursery.start_soon(wait, name, delay_s)
            await trio.sleep(0.5)
            assert ended == []
            reach.missed("refused")
    assert ended == [("latest", 1.5, False), ("soon", 2.5, False), ("later", 3.5, False)]


async def test_recoveries_wake_the_waiters_at_most_once_per_gap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A recovery at 0.25 has its waiters retry at once (plus the 0.5 s spread). The next
    one, at 2.5, within the 10 s gap, has its waiters retry when the gap ends (10.25 + 0.5),
    except those due sooner anyway: the probe (at 3) and one whose own retry is at 7. A wait
    begun by an attempt that started before the latest recovery is cut at once."""
    reach = Reachability(rand=lambda: 0.5)
    ended: list[tuple[str, float, bool]] = []

    async def wait(name: str, delay_s: float, seen: int) -> None:
        early = await reach.wait_to_retry(delay_s, seen=seen)
        ended.append((name, trio.current_time(), early))

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            reach.missed("refused")
            for name, delay_s in (("a", 100.0), ("b", 90.0)):
                nursery.start_soon(wait, name, delay_s, 0)
            await trio.sleep(0.25)
            reach.reached()
            await trio.sleep(1.75)
            assert sorted(ended) == [("a", 0.75, True), ("b", 0.75, True)]
            for name, delay_s in (("probe", 100.0), ("c", 90.0), ("d", 5.0)):
                nursery.start_soon(wait, name, delay_s, 1)
            await trio.testing.wait_all_tasks_blocked()
            reach.missed("refused")
            await trio.sleep(0.5)
            reach.reached()
            await trio.sleep(9.5)
            nursery.start_soon(wait, "stale", 100.0, 1)
    assert reach.generation == 2
    assert ended[2:] == [
        ("probe", 3.0, False),
        ("d", 7.0, False),
        ("c", 10.75, True),
        ("stale", 12.5, True),
    ]


# --- silent subscriptions ---------------------------------------------------------------------


async def push_at(exchange: MemoryExchange, symbol: str, times: range) -> None:
    """The exchange trades `symbol` at these times (pushed to whoever is subscribed)."""
    for t in times:
        await trio.sleep_until(t)
        await exchange.push(symbol)


async def arrivals(out: trio.MemoryReceiveChannel[WindowInbox], times: list[float]) -> None:
    """When each kline reached the window's inbox; the statuses go to `out`'s reader."""
    async for item in out:
        if isinstance(item, Kline):
            times.append(trio.current_time())


async def test_silent_subscriptions_are_resubscribed_and_pushes_resume(
    autojump_clock: trio.testing.MockClock, logged: list[str]
) -> None:
    """The exchange forgets the socket's subscriptions at 25 and keeps answering pings, so
    the connection looks alive. 60 s after the last push (24) the chunk is resubscribed on
    the same socket, and pushes flow again from the next trade (87): no reconnect."""
    metrics = Metrics()
    got: list[float] = []
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            out = await start_conn(
                nursery,
                exchange,
                7,
                frozenset({"A_USDT", "B_USDT"}),
                metrics=metrics,
                rand=0.5,
                reachability=None,
                settings=SILENT_60,
            )
            nursery.start_soon(arrivals, out, got)
            nursery.start_soon(push_at, exchange, "A_USDT", range(3, 200, 7))
            await trio.sleep_until(25)
            exchange.drop_subscriptions()
            await trio.sleep_until(200)
            subscribed = sample(metrics, "screener_subscriptions")
            nursery.cancel_scope.cancel()
    assert got == [3, 10, 17, 24, *range(87, 200, 7)]
    assert exchange.sub_times == [0.0, 0.0, 84.0, 84.0]
    assert sorted(exchange.subs[2:]) == ["A_USDT", "B_USDT"]
    assert exchange.connects == [0.0]
    assert sample(metrics, "screener_silent_resubscribes_total") == 1
    assert sample(metrics, "screener_silent_reconnects_total") == 0
    assert sample(metrics, "screener_reconnects_total") == 0
    assert subscribed == 2  # acknowledged again, not counted twice
    assert [line for line in logged if "push" in line] == [
        "connection: no push for 60s on 2 symbols; resubscribing"
    ]


async def test_still_silent_after_resubscribing_the_connection_is_replaced(
    autojump_clock: trio.testing.MockClock, logged: list[str]
) -> None:
    """The exchange acknowledges subscriptions but never serves them (from 25 on): the
    resubscription at 84 brings nothing, so at 144 the socket is given up (counted, logged
    once) and a new one opened after the backoff (1 s: reset, it had served for 144 s); on
    it the pushes come again."""
    metrics = Metrics()
    got: list[float] = []
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            out = await start_conn(
                nursery,
                exchange,
                7,
                frozenset({"A_USDT", "B_USDT"}),
                metrics=metrics,
                rand=0.5,
                reachability=None,
                settings=SILENT_60,
            )
            assert await next_status(out) == ConnStatus(7, up=True)
            nursery.start_soon(push_at, exchange, "A_USDT", range(3, 200, 7))
            await trio.sleep_until(25)
            exchange.forget_subs = True
            exchange.drop_subscriptions()
            assert await next_status(out) == ConnStatus(7, up=False)
            assert trio.current_time() == 144.0
            exchange.forget_subs = False  # a fresh socket is served again
            assert await next_status(out) == ConnStatus(7, up=True)
            nursery.start_soon(arrivals, out, got)
            await trio.sleep_until(200)
            subscribed = sample(metrics, "screener_subscriptions")
            nursery.cancel_scope.cancel()
    assert exchange.connects == [0.0, 145.0]
    assert exchange.sub_times == [0.0, 0.0, 84.0, 84.0, 145.0, 145.0]
    assert got == list(range(150, 200, 7))
    assert sample(metrics, "screener_silent_resubscribes_total") == 1
    assert sample(metrics, "screener_silent_reconnects_total") == 1
    assert sample(metrics, "screener_reconnects_total") == 1
    assert subscribed == 2
    assert [line for line in logged if "push" in line] == [
        "connection: no push for 60s on 2 symbols; resubscribing",
        "conn-7: conn-7 failed (ConnectionSilent: no push for 120s, resubscribing did not "
        "help); retry in 1.00s",
    ]


async def test_silence_is_per_connection_not_per_symbol(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """B never trades and A trades every 50 s (under the 60 s limit): the chunk is not
    silent, however long B stays idle. Once A stops too (last trade at 353), the chunk is
    resubscribed 60 s later."""
    metrics = Metrics()
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            await start_conn(
                nursery,
                exchange,
                7,
                frozenset({"A_USDT", "B_USDT"}),
                metrics=metrics,
                rand=0.5,
                reachability=None,
                settings=SILENT_60,
            )
            nursery.start_soon(push_at, exchange, "A_USDT", range(3, 400, 50))
            await trio.sleep_until(450)
            nursery.cancel_scope.cancel()
    assert exchange.sub_times == [0.0, 0.0, 413.0, 413.0]
    assert sample(metrics, "screener_silent_resubscribes_total") == 1
