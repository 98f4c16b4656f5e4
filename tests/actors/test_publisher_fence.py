"""The publisher's side of the fleet on MockClock: it writes only within its lease by its own
clock, and Redis (the publish script, here `MemoryRedis.run_script`; the Lua on a real
redis-server: tests/system/test_publish_script.py) refuses a write whose token does not hold
the lease there, and skips every push already published. So a retried slice is delivered
once, a standby that takes over publishes what its leader did not, and a symbol's events
never go back in time."""

from __future__ import annotations

import itertools
import math

import pytest
import trio
import trio.testing

from actors.publisher import FINAL_FLUSH_S, FencedOut, Publisher
from screener.core.config import load_settings
from screener.core.metrics import Metrics
from screener.core.models import Fence, Leadership, MarketData, PublisherInbox, RedisStatus
from screener.core.snapshot import Latest
from screener.redis.lanes import StandbyHold
from tests.actors.fakes import M, MemoryRedis, Write, market_data, threads_hold_clock
from tests.helpers import sample

SETTINGS = load_settings({}).redis
STANDBY = Leadership("standby", -math.inf, 0)
_PUSHES = itertools.count(1)


def push(symbol: str) -> MarketData:
    """A push of `symbol`, later than every push made before."""
    return market_data(symbol, 1.0, M * 1000 + next(_PUSHES))


def lead(fake: MemoryRedis, token: str, term: int, until: float) -> Leadership:
    """A lease answer making `token` leader until `until`, and Redis's keys saying so."""
    fake.data[b"lease"], fake.data[b"term"] = token.encode(), b"%d" % term
    return Leadership("leader", until, term, fence=fence(token, term))


def fence(token: str, term: int) -> Fence:
    return Fence("lease", "term", token, term)


def publisher(fake: MemoryRedis, *, hold_s: float = 30.0, up: bool = True) -> Publisher:
    return Publisher(
        SETTINGS,
        fake.link(),
        status=Latest(RedisStatus(up=up, error=None if up else "ConnectionError: refused")),
        metrics=Metrics(),
        rand=lambda: 0.5,  # delays 0.25, 0.5, 1, 2, 4, ...
        fenced=True,
        hold_s=hold_s,
    )


def start(
    nursery: trio.Nursery, pub: Publisher, fake: MemoryRedis
) -> trio.MemorySendChannel[PublisherInbox]:
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](64)
    nursery.start_soon(pub.collect, inbox_recv)
    nursery.start_soon(pub.flush, fake.ping)
    return inbox_send


def symbols(fake: MemoryRedis) -> list[tuple[float, list[str]]]:
    return [(w.at, [e.kline.symbol for e in w.events]) for w in fake.delivered]


async def test_a_fenced_publisher_writes_only_within_its_lease_by_its_own_clock(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis
) -> None:
    pub = publisher(fake)
    a, b, c, d = push("A"), push("B"), push("C"), push("D")
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        inbox = start(nursery, pub, fake)
        await inbox.send([a])  # before any lease answer: held
        await trio.sleep(1.0)
        assert fake.writes == []
        await inbox.send(lead(fake, "r#1", 1, until=5.0))
        await trio.sleep(1.0)  # t=2
        assert symbols(fake) == [(1.0, ["A"])]
        await trio.sleep(4.0)  # t=6: the lease ran out by this clock, no renewal came
        await inbox.send([b])
        await trio.sleep(1.0)
        assert symbols(fake) == [(1.0, ["A"])]
        await inbox.send(lead(fake, "r#1", 1, until=12.0))  # renewed
        await trio.sleep(1.0)
        assert symbols(fake)[-1] == (7.0, ["B"])
        await inbox.send(STANDBY)
        await inbox.send([c])
        await trio.sleep(1.0)
        assert symbols(fake)[-1] == (7.0, ["B"])  # a standby leaves C to its leader
        assert sample(pub.metrics, "screener_fleet_standby_events_total") == 1
        await inbox.send(lead(fake, "r#1", 3, until=30.0))  # took over: C first, then D
        await inbox.send([d])
        await trio.sleep(1.0)
        assert [s for _, batch in symbols(fake)[2:] for s in batch] == ["C", "D"]
        nursery.cancel_scope.cancel()


async def test_redis_refuses_a_write_whose_token_or_term_no_longer_holds_the_lease(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis
) -> None:
    """The leader's clock says it leads, Redis says otherwise (a frozen process woken, a
    partition healed): nothing is published, and the events wait for the lease answer,
    which here makes this replica a standby that keeps them for a takeover."""
    pub = publisher(fake)
    a, b = push("A"), push("B")
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        inbox = start(nursery, pub, fake)
        await inbox.send(lead(fake, "r#1", 1, until=100.0))
        fake.data[b"lease"], fake.data[b"term"] = b"other#9", b"2"  # taken over meanwhile
        await inbox.send([a])
        await trio.sleep(1.0)
        assert fake.fenced == [0.0]
        assert fake.writes == []
        assert sample(pub.metrics, "screener_fleet_fenced_writes_total") == 1
        assert pub.lanes.backlog() == 1  # held until the next lease answer
        # Its own token again, but under an older term: refused all the same.
        fake.data[b"lease"] = b"r#1"
        await inbox.send(lead(fake, "r#1", 1, until=100.0))
        fake.data[b"term"] = b"2"
        await inbox.send([b])
        await trio.sleep(1.0)
        assert fake.fenced == [0.0, 1.0]
        await inbox.send(STANDBY)
        await trio.testing.wait_all_tasks_blocked()
        assert pub.lanes.backlog() == 0
        assert pub.lanes.held.size == 2  # kept for a takeover, oldest first
        nursery.cancel_scope.cancel()
    assert fake.delivered == []
    assert sample(pub.metrics, "screener_events_published_total", channel="market_data") == 0


async def test_a_standby_that_takes_over_publishes_only_what_its_leader_did_not(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis
) -> None:
    """Both replicas receive every push; the leader published the first three when it
    died. The standby takes over with all five held: Redis skips the three, publishes the
    two, and no symbol goes back in time."""
    pushes = [push("A"), push("B"), push("A"), push("B"), push("A")]
    old, new = publisher(fake), publisher(fake)
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        to_old, to_new = start(nursery, old, fake), start(nursery, new, fake)
        await to_old.send(lead(fake, "old#1", 1, until=5.0))
        await to_new.send(STANDBY)
        await to_old.send(pushes[:3])
        await to_new.send(pushes[:3])
        await trio.sleep(1.0)
        await to_new.send(pushes[3:])  # the old leader is gone: these reach only the standby
        await trio.sleep(5.0)  # its lease runs out in Redis; the standby's next answer:
        await to_new.send(lead(fake, "new#1", 2, until=20.0))
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert [w.events for w in fake.delivered] == [pushes[:3], pushes[3:]]
    assert sample(new.metrics, "screener_events_skipped_total") == 3
    assert sample(new.metrics, "screener_events_published_total", channel="market_data") == 2
    for symbol in ("A", "B"):
        times = [
            e.kline.ts_ms for w in fake.delivered for e in w.events if e.kline.symbol == symbol
        ]
        assert times == sorted(set(times))


async def test_a_deposed_leader_keeps_what_it_could_not_publish_for_a_takeover(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    pub = publisher(fake)
    a, b = push("A"), push("B")
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        inbox = start(nursery, pub, fake)
        await inbox.send(lead(fake, "r#1", 1, until=100.0))
        fake.state = "down"
        await inbox.send([a, b])
        await trio.sleep(1.0)
        fake.state = "up"
        await inbox.send(STANDBY)  # another replica took over while this one was cut off
        await trio.testing.wait_all_tasks_blocked()
        assert pub.lanes.backlog() == 0
        assert pub.lanes.held.size == 2
        nursery.cancel_scope.cancel()
    assert fake.delivered == []


def test_a_standby_keeps_what_it_received_for_its_window_and_capacity_only() -> None:
    hold = StandbyHold(window_s=10.0, capacity=3)
    a, b, c, d = push("A"), push("B"), push("C"), push("D")
    hold.add(0.0, [a])
    hold.add(5.0, [b])
    hold.add(12.0, [c])  # a is older than the window now
    assert hold.size == 2
    hold.add(13.0, [d, push("E")])  # beyond the capacity: the oldest batch goes
    assert hold.take(13.0)[:1] == [c]
    assert hold.size == 0


async def test_a_standby_takes_its_redis_status_from_its_lease_answers(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    """A standby never writes: without this, a partition it saw stayed on its /health
    ("redis": "down") long after Redis answered its lease requests again."""
    pub = publisher(fake, up=False)
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        inbox = start(nursery, pub, fake)
        await inbox.send(STANDBY)
        await trio.testing.wait_all_tasks_blocked()
        assert pub.status.value == RedisStatus(up=True, error=None)
        assert sample(pub.metrics, "screener_redis_up") == 1
        nursery.cancel_scope.cancel()


async def test_a_lease_answer_ends_the_publishers_backoff_after_a_redis_outage(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis
) -> None:
    """The fleet actor's lease answer proves Redis answers: the publisher's retry goes then,
    not at the end of a backoff grown through the outage (it once waited up to 30 s after a
    Redis restart). An answer while the publisher still cannot reach Redis costs one PING,
    and the backoff grows on."""
    pub = publisher(fake)
    a = push("A")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            inbox = start(nursery, pub, fake)
            lease = lead(fake, "r#1", 1, until=1000.0)
            await inbox.send(lease)
            await trio.sleep_until(1.0)
            fake.state = "down"
            await inbox.send([a])  # fails at 1.0; PINGs at 1.25, 1.75, 2.75, 4.75
            await trio.sleep_until(6.0)
            await inbox.send(lease)  # answered, but this link still fails: one PING
            await trio.sleep_until(10.0)
            fake.state = "up"  # the next PING by the backoff alone: 6.0 + 8 = 14.0
            await trio.sleep_until(10.5)
            await inbox.send(lease)
            await trio.sleep_until(11.0)
            nursery.cancel_scope.cancel()
    assert fake.pings == [1.25, 1.75, 2.75, 4.75, 6.0, 10.5]
    assert fake.delivered == [Write(10.5, "pubsub", [a], None)]


async def test_a_slice_whose_lease_ran_out_while_it_was_encoded_is_not_written(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis
) -> None:
    """The last check by this clock, right before the send: a slice taken while the lease
    was valid but sent after it ran out writes nothing and goes back."""
    pub = publisher(fake)
    pub.lanes.refence(lead(fake, "r#1", 1, until=1.0), 0.0)
    pub.lanes.buffer.add([push("A")])
    sent = pub.lanes.next_slice(0.5)
    assert sent is not None
    await trio.sleep_until(1.0)
    with pytest.raises(FencedOut):
        await pub._send(sent)
    assert fake.writes == []


@pytest.mark.parametrize("holder", ["r#1", "other#2"])
async def test_shutdown_tries_the_final_flush_and_redis_decides(
    autojump_clock: trio.testing.MockClock,
    fake: MemoryRedis,
    logs: list[tuple[str, str]],
    holder: str,
) -> None:
    """At SIGTERM the lease ran out by this clock (no renewal came in time), but Redis
    still says whether it holds: the flush goes, and either publishes or is refused."""
    pub = publisher(fake)
    a, b = push("A"), push("B")
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            inbox = start(nursery, pub, fake)
            await inbox.send(lead(fake, "r#1", 1, until=1.0))
            await trio.sleep_until(2.0)
            fake.data[b"lease"] = holder.encode()
            await inbox.send([a, b])
            await trio.testing.wait_all_tasks_blocked()
            assert fake.writes == []
            nursery.cancel_scope.cancel()
        with trio.CancelScope(deadline=trio.current_time() + FINAL_FLUSH_S):
            await pub.finish()
    if holder == "r#1":
        assert fake.delivered == [Write(2.0, "pubsub", [a, b], None)]
        assert logs[-1] == ("INFO", "flushed 2 pending events")
    else:
        assert fake.delivered == []
        assert logs[-1] == (
            "WARNING",
            "final flush failed, 2 events not published (redis says other#2 leads this shard now)",
        )


async def test_a_script_redis_does_not_know_is_sent_whole_once(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis
) -> None:
    """After a Redis restart or SCRIPT FLUSH, EVALSHA answers NOSCRIPT (the script did not
    run): the same slice goes again with the script's source, once."""
    fake.scripts_loaded = False
    pub = publisher(fake)
    a = push("A")
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        inbox = start(nursery, pub, fake)
        await inbox.send(lead(fake, "r#1", 1, until=100.0))
        await inbox.send([a])
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert fake.attempts == [0.0, 0.0]
    assert fake.delivered == [Write(0.0, "pubsub", [a], None)]
