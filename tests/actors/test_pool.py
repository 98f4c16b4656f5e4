"""`supervise_pool` on MockClock with fake children that record, in virtual time, every value
their control channel delivers and when it ends."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from functools import partial

import pytest
import trio
import trio.testing

from screener.core.supervise import supervise_pool

END = "<end>"  # recorded when a child's control channel ends

Plans = trio.MemorySendChannel[Mapping[int, str]]


class Children:
    """The fake children: per key, (time, value) for each value received, then (time, END)."""

    def __init__(self, linger_s: float = 0.0) -> None:
        self.linger_s = linger_s  # cleanup time after the control channel ends
        self.seen: defaultdict[int, list[tuple[float, str]]] = defaultdict(list)

    async def child(self, key: int, control: trio.MemoryReceiveChannel[str]) -> None:
        async with control:
            async for value in control:
                self.seen[key].append((trio.current_time(), value))
        self.seen[key].append((trio.current_time(), END))
        await trio.sleep(self.linger_s)


async def feed(
    plans: Plans, schedule: list[tuple[float, Mapping[int, str]]], *, end_at: float
) -> None:
    """Send each plan at its virtual time, then end the plans at `end_at`."""
    async with plans:
        for at, plan in schedule:
            await trio.sleep_until(at)
            await plans.send(plan)
        await trio.sleep_until(end_at)


async def test_new_keys_start_children_and_only_changed_values_are_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    children = Children()
    plans_send, plans_recv = trio.open_memory_channel[Mapping[int, str]](0)
    schedule: list[tuple[float, Mapping[int, str]]] = [
        (0.0, {1: "a", 2: "b"}),
        (5.0, {1: "a", 2: "c"}),  # only 2 changed
        (10.0, {1: "a2"}),  # 2 is absent, not retired: left alone
        (15.0, {3: "x", 2: "c", 1: "a2"}),  # a new key; the others unchanged
    ]
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervise_pool, plans_recv, children.child)
            nursery.start_soon(partial(feed, plans_send, schedule, end_at=20.0))
    assert dict(children.seen) == {
        1: [(0.0, "a"), (10.0, "a2"), (20.0, END)],
        2: [(0.0, "b"), (5.0, "c"), (20.0, END)],
        3: [(15.0, "x"), (20.0, END)],
    }
    assert trio.current_time() == 20.0


async def test_an_empty_value_retires_the_child_and_the_key_can_return(
    autojump_clock: trio.testing.MockClock,
) -> None:
    children = Children()
    plans_send, plans_recv = trio.open_memory_channel[Mapping[int, str]](0)
    schedule: list[tuple[float, Mapping[int, str]]] = [
        (0.0, {1: "a", 2: "b"}),
        (3.0, {1: ""}),  # retire 1
        (4.0, {1: "", 9: ""}),  # already retired, and never started: nothing to do
        (6.0, {1: "z"}),  # 1 again: a new child
    ]
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervise_pool, plans_recv, children.child)
            nursery.start_soon(partial(feed, plans_send, schedule, end_at=8.0))
    assert dict(children.seen) == {
        1: [(0.0, "a"), (3.0, END), (6.0, "z"), (8.0, END)],
        2: [(0.0, "b"), (8.0, END)],
    }


@pytest.mark.parametrize("linger_s", [0.0, 2.0])
async def test_ending_plans_ends_every_child_then_closes_what_the_pool_owns(
    autojump_clock: trio.testing.MockClock, linger_s: float
) -> None:
    """The owned resource here is the original of a channel each child sends on through its
    own clone: its reader sees the end once the pool and every child are done."""
    out_send, out_recv = trio.open_memory_channel[tuple[float, int, str]](16)
    plans_send, plans_recv = trio.open_memory_channel[Mapping[int, str]](0)
    children = Children(linger_s)

    async def child(key: int, control: trio.MemoryReceiveChannel[str]) -> None:
        async with out_send.clone() as out:
            await out.send((trio.current_time(), key, "started"))
            await children.child(key, control)

    received: list[tuple[float, int, str]] = []
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            schedule: list[tuple[float, Mapping[int, str]]] = [
                (0.0, {1: "a", 2: "b"}),
                (4.0, {3: "c"}),
                (6.0, {}),  # an empty plan changes nothing
            ]
            nursery.start_soon(partial(feed, plans_send, schedule, end_at=10.0))
            nursery.start_soon(partial(supervise_pool, plans_recv, child, owned=[out_send]))
            async for item in out_recv:
                received.append(item)
            reader_done_at = trio.current_time()
        pool_done_at = trio.current_time()
    assert sorted(received) == [(0.0, 1, "started"), (0.0, 2, "started"), (4.0, 3, "started")]
    assert dict(children.seen) == {
        1: [(0.0, "a"), (10.0, END)],
        2: [(0.0, "b"), (10.0, END)],
        3: [(4.0, "c"), (10.0, END)],
    }
    assert reader_done_at == pool_done_at == 10.0 + linger_s
    with pytest.raises(trio.ClosedResourceError):
        out_send.send_nowait((0.0, 0, "after"))


async def test_a_child_raising_a_bug_crashes_the_pool(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cancelled_at: list[float] = []
    owned_send, owned_recv = trio.open_memory_channel[None](0)
    plans_send, plans_recv = trio.open_memory_channel[Mapping[int, str]](0)

    async def child(key: int, control: trio.MemoryReceiveChannel[str]) -> None:
        async with control:
            try:
                await control.receive()
                await trio.sleep(3.0 if key == 2 else 100.0)
            except trio.Cancelled:
                cancelled_at.append(trio.current_time())
                raise
            raise KeyError("bug")

    async def run_pool() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(supervise_pool, plans_recv, child, owned=[owned_send]))
            await plans_send.send({1: "a", 2: "b"})
            await trio.sleep(100)

    with trio.fail_after(100), pytest.raises(ExceptionGroup) as info:
        await run_pool()
    assert info.group_contains(KeyError, match="bug")
    assert trio.current_time() == 3.0
    assert cancelled_at == [3.0]  # the sibling child was cancelled with it
    with pytest.raises(trio.BrokenResourceError):  # the pool closed its plans
        plans_send.send_nowait({1: "a"})
    with pytest.raises(trio.EndOfChannel):  # and what it owns
        owned_recv.receive_nowait()


async def test_every_change_reaches_a_slow_child_in_order_while_the_plans_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No change is coalesced: with a full control channel the pool waits, and so does
    whoever sends the plans."""
    seen: list[tuple[float, str]] = []
    plans_send, plans_recv = trio.open_memory_channel[Mapping[int, str]](0)

    async def slow(key: int, control: trio.MemoryReceiveChannel[str]) -> None:
        async with control:
            seen.append((trio.current_time(), await control.receive()))
            await trio.sleep(10.0)
            async for value in control:
                seen.append((trio.current_time(), value))

    sent_at: list[float] = []
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(supervise_pool, plans_recv, slow, control_buffer=1))
            for at, value in ((0.0, "a"), (1.0, "b"), (2.0, "c"), (3.0, "d")):
                await trio.sleep_until(at)
                await plans_send.send({1: value})
                sent_at.append(trio.current_time())
            await plans_send.aclose()
    assert sent_at == [0.0, 1.0, 2.0, 10.0]  # "c" fills the channel; "d" waits for the child
    assert seen == [(0.0, "a"), (10.0, "b"), (10.0, "c"), (10.0, "d")]
    assert trio.current_time() == 10.0
