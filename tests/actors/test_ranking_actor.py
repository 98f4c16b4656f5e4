"""The ranking actor against a fake window in exact virtual time: the tick grid, skipped ticks
after a slow answer, snapshot and outbox, wall time, top_n and ties, metrics, shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from loguru import logger

from actors.ranking import run_ranking
from screener.core.metrics import Metrics
from screener.core.models import PublisherInbox, Ranking, StatsRequest, SymbolStat, WindowInbox
from screener.core.snapshot import Latest

W0 = 1_770_000_000.0  # the wall clock (unix seconds) at virtual time 0


def stat(symbol: str, change_pct: float, price: float = 1.0) -> SymbolStat:
    return SymbolStat(symbol=symbol, change_pct=change_pct, price=price)


@dataclass
class FakeWindow:
    """Answers each `StatsRequest` with the next canned stats (the last one repeats), after
    the next delay in `delays` (0 when exhausted); records when it was asked."""

    answers: Sequence[tuple[SymbolStat, ...]]
    delays: list[float] = field(default_factory=list)
    asked: list[float] = field(default_factory=list)
    ended_at: float | None = None

    async def run(self, requests: trio.MemoryReceiveChannel[WindowInbox]) -> None:
        async with requests:
            async for request in requests:
                assert isinstance(request, StatsRequest)
                self.asked.append(trio.current_time())
                if self.delays:
                    await trio.sleep(self.delays.pop(0))
                answer = self.answers[min(len(self.asked), len(self.answers)) - 1]
                async with request.reply:
                    await request.reply.send(answer)
        self.ended_at = trio.current_time()


@dataclass
class Rig:
    outbox: trio.MemoryReceiveChannel[PublisherInbox]
    snapshot: Latest[Ranking | None]
    metrics: Metrics
    scope: trio.CancelScope

    async def ranking(self) -> tuple[float, Ranking]:
        item = await self.outbox.receive()
        assert isinstance(item, Ranking)
        assert self.snapshot.value is item  # the snapshot is the ranking sent
        return trio.current_time(), item

    def rankings_total(self) -> float | None:
        return self.metrics.registry.get_sample_value("screener_rankings_total")


@asynccontextmanager
async def ranking_actor(
    fake: FakeWindow,
    *,
    interval_s: float = 10.0,
    top_n: int = 5,
    wall: Callable[[], float] = lambda: W0 + trio.current_time(),
) -> AsyncIterator[Rig]:
    """The fake window and the actor (in its own cancel scope); both cancelled on exit."""
    req_send, req_recv = trio.open_memory_channel[WindowInbox](4)
    out_send, out_recv = trio.open_memory_channel[PublisherInbox](10)
    snapshot: Latest[Ranking | None] = Latest(None)
    metrics = Metrics()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake.run, req_recv)
        scope = trio.CancelScope()

        async def actor(task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await run_ranking(
                    req_send,
                    out_send,
                    interval_s=interval_s,
                    top_n=top_n,
                    lookback_min=15,
                    snapshot=snapshot,
                    metrics=metrics,
                    wall=wall,
                    task_status=task_status,
                )

        await nursery.start(actor)
        yield Rig(out_recv, snapshot, metrics, scope)
        nursery.cancel_scope.cancel()


async def test_rankings_at_exactly_each_interval_and_none_before_the_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeWindow(answers=[(stat("A_USDT", 1.0),)])
    with trio.fail_after(100):
        async with ranking_actor(fake, interval_s=10.0) as rig:
            await trio.sleep(9.5)
            assert rig.snapshot.value is None
            assert rig.rankings_total() == 0
            times = [(await rig.ranking())[0] for _ in range(3)]
            assert rig.rankings_total() == 3
    assert times == [10.0, 20.0, 30.0]
    assert fake.asked == [10.0, 20.0, 30.0]


@pytest.mark.parametrize(
    ("delay_s", "asked", "published"),
    [
        (15.0, [10.0, 30.0, 40.0], [25.0, 30.0, 40.0]),  # the tick at 20 is skipped
        (25.0, [10.0, 40.0, 50.0], [35.0, 40.0, 50.0]),  # 20 and 30 are skipped
    ],
)
async def test_a_slow_answer_skips_the_missed_ticks_instead_of_ranking_twice_in_a_row(
    autojump_clock: trio.testing.MockClock,
    delay_s: float,
    asked: list[float],
    published: list[float],
) -> None:
    fake = FakeWindow(answers=[(stat("A_USDT", 1.0),)], delays=[delay_s])
    with trio.fail_after(100):
        async with ranking_actor(fake, interval_s=10.0) as rig:
            times = [(await rig.ranking())[0] for _ in range(3)]
            await trio.testing.wait_all_tasks_blocked()
            assert rig.rankings_total() == 3  # no extra round to catch up
    assert fake.asked == asked
    assert times == published


async def test_each_round_replaces_the_snapshot_and_sends_the_same_ranking(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeWindow(
        answers=[
            (stat("A_USDT", 1.0, 5.0),),
            (stat("A_USDT", 2.0, 10.0), stat("B_USDT", -1.0, 20.0)),
        ]
    )
    with trio.fail_after(100):
        async with ranking_actor(fake, interval_s=10.0) as rig:
            first = await rig.ranking()
            second = await rig.ranking()
    one = stat("A_USDT", 1.0, 5.0)
    assert first == (
        10.0,
        Ranking(wall_ts=W0 + 10.0, lookback_min=15, gainers=(one,), losers=(one,), ranked=1),
    )
    a, b = stat("A_USDT", 2.0, 10.0), stat("B_USDT", -1.0, 20.0)
    assert second == (
        20.0,
        Ranking(wall_ts=W0 + 20.0, lookback_min=15, gainers=(a, b), losers=(b, a), ranked=2),
    )
    assert rig.snapshot.value is second[1]


async def test_wall_ts_is_read_when_the_ranking_is_made_after_the_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeWindow(answers=[(stat("A_USDT", 1.0),)], delays=[3.0])
    with trio.fail_after(100):
        async with ranking_actor(fake, interval_s=10.0) as rig:
            at, ranking = await rig.ranking()
    assert (at, ranking.wall_ts) == (13.0, W0 + 13.0)


STATS = (  # deliberately unsorted; A/B tie at +5 and D/E at -3
    stat("B_USDT", 5.0),
    stat("E_USDT", -3.0),
    stat("A_USDT", 5.0),
    stat("C_USDT", 1.0),
    stat("F_USDT", 0.0),
    stat("D_USDT", -3.0),
)


@pytest.mark.parametrize(
    ("top_n", "gainers", "losers"),
    [
        (1, ["A_USDT"], ["D_USDT"]),
        (2, ["A_USDT", "B_USDT"], ["D_USDT", "E_USDT"]),
        (
            10,
            ["A_USDT", "B_USDT", "C_USDT", "F_USDT", "D_USDT", "E_USDT"],
            ["D_USDT", "E_USDT", "F_USDT", "C_USDT", "A_USDT", "B_USDT"],
        ),
    ],
)
async def test_top_n_and_ties_broken_by_symbol_in_the_ranking_and_its_log_line(
    autojump_clock: trio.testing.MockClock, top_n: int, gainers: list[str], losers: list[str]
) -> None:
    records: list[dict[str, Any]] = []
    sink = logger.add(
        lambda message: records.append(dict(message.record["extra"])),
        level="INFO",
        filter=lambda record: record["extra"].get("actor") == "ranking",
    )
    fake = FakeWindow(answers=[STATS])
    try:
        with trio.fail_after(100):
            async with ranking_actor(fake, top_n=top_n) as rig:
                _, ranking = await rig.ranking()
    finally:
        logger.remove(sink)
    change = {s.symbol: s.change_pct for s in STATS}
    assert [s.symbol for s in ranking.gainers] == gainers
    assert [s.symbol for s in ranking.losers] == losers
    assert ranking.ranked == 6
    assert records == [
        {
            "actor": "ranking",
            "ranked": 6,
            "gainers": [(symbol, change[symbol]) for symbol in gainers],
            "losers": [(symbol, change[symbol]) for symbol in losers],
        }
    ]


async def test_cancelling_the_actor_closes_the_outbox_and_its_request_channel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeWindow(answers=[(stat("A_USDT", 1.0),)])
    with trio.fail_after(100):
        async with ranking_actor(fake, interval_s=10.0) as rig:
            assert (await rig.ranking())[0] == 10.0
            await trio.sleep(5)
            rig.scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert fake.ended_at == 15.0  # its requests ended: the window side may finish
            with pytest.raises(trio.EndOfChannel):
                rig.outbox.receive_nowait()


async def test_a_window_that_is_gone_crashes_the_actor_at_the_next_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    req_send, req_recv = trio.open_memory_channel[WindowInbox](4)
    out_send, out_recv = trio.open_memory_channel[PublisherInbox](4)
    await req_recv.aclose()
    with trio.fail_after(100), pytest.raises(trio.BrokenResourceError):
        await run_ranking(
            req_send,
            out_send,
            interval_s=10.0,
            top_n=5,
            lookback_min=15,
            snapshot=Latest(None),
            metrics=Metrics(),
            wall=lambda: W0,
        )
    assert trio.current_time() == 10.0  # not retried
    with pytest.raises(trio.EndOfChannel):
        out_recv.receive_nowait()
