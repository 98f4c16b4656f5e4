"""The window actor's loop in exact virtual time: batching, connection states, stats requests,
late pushes, the feed's freshness, the ingest peak and the shutdown cascade (the pure
`Windows` core is covered in tests/unit/test_window.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from loguru import logger

from screener.core.metrics import Metrics
from screener.core.models import (
    HISTORY_SOURCE,
    LIVE_SOURCE,
    REST_SOURCE,
    ConnStatus,
    FeedStatus,
    Kline,
    MarketData,
    StatsRequest,
    SymbolStat,
    WindowInbox,
    ask_stats,
)
from screener.core.snapshot import Latest
from tests.actors.fakes import start_window
from tests.helpers import sample

M = 1_770_330_480  # a minute boundary (seconds)


def push(
    symbol: str,
    minute: int = 0,
    *,
    open_: float = 2.0,
    close: float = 3.0,
    at_s: float = 30.0,
    source: str = LIVE_SOURCE,
) -> Kline:
    """A candle of `symbol` opened at minute `minute` after M, pushed `at_s` into it."""
    t = M + minute * 60
    return Kline(
        symbol=symbol,
        t=t,
        open=open_,
        high=max(open_, close),
        low=min(open_, close),
        close=close,
        volume=5.0,
        amount=50.0,
        ts_ms=int((t + at_s) * 1000),
        source=source,
    )


@dataclass
class Rig:
    inbox: trio.MemorySendChannel[WindowInbox]
    events: trio.MemoryReceiveChannel[list[MarketData]]
    feed: Latest[FeedStatus]
    metrics: Metrics

    async def batch(self) -> tuple[float, list[str]]:
        """The next batch: when it arrived and its symbols in order."""
        batch = await self.events.receive()
        return trio.current_time(), [event.kline.symbol for event in batch]

    async def assert_no_batch(self) -> None:
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            self.events.receive_nowait()


@asynccontextmanager
async def window(*, batch_wait_s: float = 0.0, lookback_min: int = 3) -> AsyncIterator[Rig]:
    """The actor with an inbox of 100 and an outbox of 10; cancelled on exit."""
    inbox_send, inbox_recv = trio.open_memory_channel[WindowInbox](100)
    events_send, events_recv = trio.open_memory_channel[list[MarketData]](10)
    feed = Latest(FeedStatus(last_push_at=None, conns_up=0, conns_total=0))
    metrics = Metrics()
    async with trio.open_nursery() as nursery:
        await start_window(
            nursery,
            inbox_recv,
            events_send,
            lookback_min=lookback_min,
            feed=feed,
            metrics=metrics,
            batch_wait_s=batch_wait_s,
        )
        yield Rig(inbox_send, events_recv, feed, metrics)
        nursery.cancel_scope.cancel()


async def test_with_batch_wait_a_burst_leaves_as_one_batch_after_exactly_the_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with window(batch_wait_s=0.5) as rig:
            await rig.inbox.send(push("A_USDT"))
            await trio.sleep(0.25)
            await rig.inbox.send(push("B_USDT"))
            await trio.sleep(0.125)
            await rig.inbox.send(push("C_USDT"))
            assert await rig.batch() == (0.5, ["A_USDT", "B_USDT", "C_USDT"])
            assert sample(rig.metrics, "screener_queue_peak", queue="ingest") == 3
            await trio.sleep(0.5)  # t=1.0: the next burst waits from its own first push
            await rig.inbox.send(push("D_USDT"))
            await rig.inbox.send(push("E_USDT"))
            assert await rig.batch() == (1.5, ["D_USDT", "E_USDT"])


async def test_without_batch_wait_each_wakeup_drains_what_is_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with window() as rig:
            for symbol in ("A_USDT", "B_USDT", "C_USDT"):
                rig.inbox.send_nowait(push(symbol))
            assert await rig.batch() == (0.0, ["A_USDT", "B_USDT", "C_USDT"])
            await trio.sleep(1)
            rig.inbox.send_nowait(push("D_USDT"))
            assert await rig.batch() == (1.0, ["D_USDT"])
            await rig.assert_no_batch()


async def test_without_a_fixed_wait_a_push_leaves_at_once_with_what_is_ready_in_the_same_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Light load: a lone push is sent without any wait. Several producers ready in the same
    scheduler round (sockets with data) land in one batch, still at no cost in time; a push
    that comes a moment later goes in the next batch, again at once."""

    async def producer(symbol: str, go: trio.Event) -> None:
        await go.wait()
        await rig.inbox.send(push(symbol))

    with trio.fail_after(10):
        async with window() as rig:
            await trio.sleep(1)
            await rig.inbox.send(push("A_USDT"))
            assert await rig.batch() == (1.0, ["A_USDT"])
            go = trio.Event()
            async with trio.open_nursery() as producers:
                for symbol in ("B_USDT", "C_USDT", "D_USDT"):
                    producers.start_soon(producer, symbol, go)
                await trio.testing.wait_all_tasks_blocked()
                go.set()
            at, symbols = await rig.batch()  # trio runs a round's tasks in any order
            assert (at, sorted(symbols)) == (1.0, ["B_USDT", "C_USDT", "D_USDT"])
            await trio.sleep(0.001)
            await rig.inbox.send(push("E_USDT"))
            assert await rig.batch() == (1.001, ["E_USDT"])
            await rig.assert_no_batch()


async def test_connection_states_feed_the_counts_and_retired_chunks_leave_the_total() -> None:
    async def feed_after(*changes: ConnStatus) -> tuple[int, int, float | None]:
        for change in changes:
            await rig.inbox.send(change)
        await trio.testing.wait_all_tasks_blocked()
        up = sample(rig.metrics, "screener_connections_up")
        assert up == rig.feed.value.conns_up
        return rig.feed.value.conns_up, rig.feed.value.conns_total, rig.feed.value.last_push_at

    with trio.fail_after(10):
        async with window() as rig:
            assert await feed_after(
                ConnStatus(conn_id=0, up=True),
                ConnStatus(conn_id=1, up=True),
                ConnStatus(conn_id=2, up=False),
            ) == (2, 3, None)
            assert await feed_after(ConnStatus(conn_id=1, up=False)) == (1, 3, None)
            assert await feed_after(ConnStatus(conn_id=2, up=False, retired=True)) == (1, 2, None)
            assert await feed_after(
                ConnStatus(conn_id=0, up=False, retired=True),
                ConnStatus(conn_id=7, up=False, retired=True),  # never seen: no effect
            ) == (0, 1, None)
            await rig.assert_no_batch()  # states are no market data


@pytest.mark.parametrize("batch_wait_s", [0.0, 0.5])
async def test_a_stats_request_is_answered_with_what_was_queued_before_it(
    autojump_clock: trio.testing.MockClock, batch_wait_s: float
) -> None:
    with trio.fail_after(10):
        async with window(batch_wait_s=batch_wait_s) as rig:
            rig.inbox.send_nowait(push("B_USDT", open_=4.0, close=3.0))
            rig.inbox.send_nowait(push("A_USDT", open_=2.0, close=3.0))
            rig.inbox.send_nowait(push("A_USDT", 1, open_=3.0, close=4.0))
            stats = await ask_stats(rig.inbox)
            assert trio.current_time() == batch_wait_s  # answered in the same wakeup
            assert sorted(stats) == [
                SymbolStat(symbol="A_USDT", change_pct=100.0, price=4.0),
                SymbolStat(symbol="B_USDT", change_pct=-25.0, price=3.0),
            ]
            assert await rig.batch() == (batch_wait_s, ["B_USDT", "A_USDT", "A_USDT"])


@pytest.mark.parametrize("requester", ["gone", "not receiving"])
async def test_a_stats_requester_that_cannot_take_the_answer_is_logged_and_skipped(
    autojump_clock: trio.testing.MockClock, requester: str
) -> None:
    lines: list[str] = []
    sink = logger.add(
        lambda message: lines.append(message.rstrip("\n")),
        level="WARNING",
        format="{message}",
        filter=lambda record: record["extra"].get("actor") == "window",
    )
    reply_send, reply_recv = trio.open_memory_channel[tuple[SymbolStat, ...]](0)
    if requester == "gone":
        reply_recv.close()
    try:
        with trio.fail_after(10):
            async with window() as rig:
                await rig.inbox.send(StatsRequest(reply=reply_send))
                await trio.sleep(1)
                await rig.inbox.send(push("A_USDT"))
                assert await rig.batch() == (1.0, ["A_USDT"])  # the actor carries on
    finally:
        logger.remove(sink)
    assert lines == ["stats requester went away"]
    with pytest.raises(trio.ClosedResourceError):  # the actor closed its end of the reply
        reply_send.send_nowait(())


async def test_late_pushes_are_counted_and_history_is_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with window(lookback_min=3) as rig:
            late = ("screener_messages_rejected_total", "late")
            for item in (
                push("A_USDT", 10),  # the clock moves to minute 10: the window is 8..10
                push("A_USDT", 5),  # late live push
                push("B_USDT", 7, source=REST_SOURCE),  # late REST price
                push("B_USDT", 5, source=HISTORY_SOURCE),  # old history: silently dropped
                push("B_USDT", 8),  # inside the window
            ):
                rig.inbox.send_nowait(item)
            assert await rig.batch() == (0.0, ["A_USDT", "B_USDT"])
            assert sample(rig.metrics, late[0], reason=late[1]) == 2
            await trio.sleep(1)
            rig.inbox.send_nowait(push("C_USDT", 6))
            await rig.assert_no_batch()  # nothing accepted, nothing sent
            assert sample(rig.metrics, late[0], reason=late[1]) == 3


async def test_last_push_at_is_the_arrival_of_the_first_live_push_of_a_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(20):
        async with window(batch_wait_s=0.5) as rig:
            await trio.sleep(3)
            await rig.inbox.send(push("A_USDT"))
            assert await rig.batch() == (3.5, ["A_USDT"])
            assert rig.feed.value.last_push_at == 3.0  # arrival, not departure

            await trio.sleep(1.5)  # t=5: a REST price alone is not a live feed
            await rig.inbox.send(push("A_USDT", at_s=40.0, source=REST_SOURCE))
            assert await rig.batch() == (5.5, ["A_USDT"])
            assert rig.feed.value.last_push_at == 3.0

            await trio.sleep(0.5)  # t=6: history makes no event and no freshness
            await rig.inbox.send(push("B_USDT", source=HISTORY_SOURCE))
            await rig.assert_no_batch()
            await trio.sleep(1)  # t=7: a REST price and a live push in one batch
            await rig.inbox.send(push("B_USDT", at_s=45.0, source=REST_SOURCE))
            await rig.inbox.send(push("C_USDT"))
            assert await rig.batch() == (7.5, ["B_USDT", "C_USDT"])
            assert rig.feed.value.last_push_at == 7.0

            await trio.sleep(1.5)  # t=9: a late live push is rejected, not fresh
            await rig.inbox.send(push("C_USDT", -10))
            await rig.assert_no_batch()
            assert rig.feed.value.last_push_at == 7.0


async def test_the_ingest_peak_is_the_most_items_waiting_at_one_wakeup(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with window() as rig:
            assert sample(rig.metrics, "screener_queue_peak", queue="ingest") == 0
            for symbol in ("A_USDT", "B_USDT", "C_USDT", "D_USDT", "E_USDT"):
                rig.inbox.send_nowait(push(symbol))
            assert (await rig.batch())[0] == 0.0
            assert sample(rig.metrics, "screener_queue_peak", queue="ingest") == 5
            await trio.sleep(1)
            rig.inbox.send_nowait(push("A_USDT", 1))
            rig.inbox.send_nowait(push("B_USDT", 1))
            assert (await rig.batch())[0] == 1.0
            assert sample(rig.metrics, "screener_queue_peak", queue="ingest") == 5  # a peak stays
            await trio.sleep(1)
            for conn_id in range(4):  # every inbox item counts, not only pushes
                rig.inbox.send_nowait(ConnStatus(conn_id=conn_id, up=True))
            for symbol in ("A_USDT", "B_USDT", "C_USDT"):
                rig.inbox.send_nowait(push(symbol, 2))
            assert (await rig.batch())[0] == 2.0
            assert sample(rig.metrics, "screener_queue_peak", queue="ingest") == 7


async def test_when_every_sender_is_closed_the_queue_drains_and_the_outbox_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inbox_send, inbox_recv = trio.open_memory_channel[WindowInbox](100)
    events_send, events_recv = trio.open_memory_channel[list[MarketData]](10)
    feed = Latest(FeedStatus(last_push_at=None, conns_up=0, conns_total=0))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:  # ends by itself: no cancel
            await start_window(nursery, inbox_recv, events_send, lookback_min=3, feed=feed)
            clone = inbox_send.clone()  # one per connection actor
            inbox_send.send_nowait(push("A_USDT"))
            await inbox_send.aclose()
            assert [e.kline.symbol for e in await events_recv.receive()] == ["A_USDT"]
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.WouldBlock):  # a sender is left: still running
                events_recv.receive_nowait()
            await trio.sleep(1)
            clone.send_nowait(push("B_USDT"))
            clone.send_nowait(push("C_USDT"))
            await clone.aclose()  # the last sender: what is queued leaves, then the end
            rest = [[e.kline.symbol for e in batch] async for batch in events_recv]
    assert rest == [["B_USDT", "C_USDT"]]
    assert trio.current_time() == 1.0


async def test_a_cancelled_actor_closes_both_channels(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with window() as rig:
            await trio.sleep(2)
    with pytest.raises(trio.EndOfChannel):
        rig.events.receive_nowait()
    with pytest.raises(trio.BrokenResourceError):  # nobody reads the inbox any more
        rig.inbox.send_nowait(push("A_USDT"))
    assert trio.current_time() == 2.0
