"""Supervision: one-for-one restart with capped exponential backoff and full jitter, a
shared view of the exchange's reachability so the connections recover together, and a pool
that keeps one child per key of a changing plan (the connection actors, one per chunk).

Only what talks to the outside is supervised (connections, Redis, REST), and only for a
named list of exceptions: anything else is a bug and crashes the process, as it should.
The random source is injected so tests assert the exact schedule under `MockClock`.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

import trio
from loguru import logger

K = TypeVar("K")
V = TypeVar("V")

# While the exchange is unreachable, one waiting connection at a time retries within this
# (full jitter, doubling from 2 s): the exchange's return is noticed within seconds however
# far each connection's own backoff has grown, for one connect every 2.5 s on average.
PROBE_CAP_S: Final = 5.0
# After a recovery the waiting connections retry spread over this much (uniform jitter):
# with at most 15 chunks that is a few connects per second, not one burst of TLS handshakes
# and subscriptions, and it costs at most a second of the 10 s recovery budget.
RECOVERY_SPREAD_S: Final = 1.0
# Recoveries wake the waiters at most once per this: an exchange that accepts some connects
# and refuses others cannot drive early retries faster than one per connection per gap.
RECOVERY_GAP_S: Final = 10.0


@dataclass
class Backoff:
    """Delay before retry n (0-based): uniform in [0, min(cap, first * 2**n))."""

    first_s: float = 2.0
    cap_s: float = 60.0
    rand: Callable[[], float] = field(default=random.random)
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.first_s * 2.0**self.attempt)
        self.attempt += 1
        return ceiling * self.rand()

    def reset(self) -> None:
        self.attempt = 0


class _Waiter:
    """One connection waiting out its backoff; `wake` is set when it should look again."""

    __slots__ = ("deadline", "wake")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.wake = trio.Event()


class Reachability:
    """The exchange's reachability as every connection sees it, so that they recover together.

    Owned by the app and handed to every connection actor (which never import each other).
    Each attempt reports through its `Spell`: `missed` when it could not even open the socket
    (TCP, TLS or the handshake failed: the exchange or the way to it is in trouble, not the
    chunk), `reached` once it is connected and subscribed. A `reached` after a `missed` is a
    recovery: every connection waiting out its backoff then retries within
    `RECOVERY_SPREAD_S` instead of at the end of its own jitter, which after a 30 s outage
    can be tens of seconds away.

    While the exchange is unreachable, one waiting connection at a time is the probe: it
    retries within `PROBE_CAP_S` (its own backoff if that is sooner), so the first connection
    gets through within seconds of the exchange's return and the others follow at once. The
    probe is, of those waiting when it is chosen, the one whose own retry is furthest away
    (it gains the most); when it leaves, the next one is chosen the same way: one at a time.

    Per-chunk trouble (a connection closed after it subscribed, an oversized message, refused
    subscriptions) opens the socket, so it neither starts the probe nor makes a recovery:
    that chunk keeps its own backoff. Recoveries wake the waiters at most once per
    `RECOVERY_GAP_S`; a recovery sooner than that has its waiters retry when the gap ends.
    """

    def __init__(
        self,
        *,
        rand: Callable[[], float] = random.random,
        probe_cap_s: float = PROBE_CAP_S,
        spread_s: float = RECOVERY_SPREAD_S,
        gap_s: float = RECOVERY_GAP_S,
    ) -> None:
        self.rand = rand
        self.spread_s = spread_s
        self.gap_s = gap_s
        self.generation = 0  # recoveries so far
        self.unreachable_since: float | None = None
        self._probe = Backoff(first_s=min(2.0, probe_cap_s), cap_s=probe_cap_s, rand=rand)
        self._prober: _Waiter | None = None
        self._waiters: list[_Waiter] = []  # in the order they began to wait
        self._retry_from = -math.inf  # when the waiters of the latest recovery may retry
        self._log = logger.bind(actor="reachability")

    def missed(self, reason: str) -> None:
        """An attempt could not open the socket."""
        if self.unreachable_since is None:
            self.unreachable_since = trio.current_time()
            self._log.warning(
                "exchange unreachable ({reason}); a connection retries within {cap:g}s "
                "until one gets through",
                reason=reason,
                cap=self._probe.cap_s,
            )
            self._choose_probe()

    def reached(self) -> None:
        """An attempt is connected and subscribed; after a miss, that is a recovery."""
        self._probe.reset()
        if self.unreachable_since is None:
            return
        now = trio.current_time()
        down_s = now - self.unreachable_since
        self.unreachable_since = None
        self._retry_from = max(now, self._retry_from + self.gap_s)
        self.generation += 1
        self._log.info(
            "exchange reachable again after {down:.1f}s; {n} waiting connections retry "
            "within {within:.1f}s",
            down=down_s,
            n=len(self._waiters),
            within=self._retry_from - now + self.spread_s,
        )
        for waiter in self._waiters:
            waiter.wake.set()

    async def wait_to_retry(self, delay_s: float, *, seen: int) -> bool:
        """Wait out a backoff of `delay_s`, or less: until a recovery after generation `seen`
        (then, from the end of the recovery gap, a jitter in [0, spread_s)), or, as the
        probe, a probe delay. True when a recovery cut the wait short."""
        me = _Waiter(trio.current_time() + delay_s)
        self._waiters.append(me)
        try:
            self._choose_probe()
            while self.generation == seen:
                with trio.move_on_at(me.deadline) as waited:
                    await me.wake.wait()
                if waited.cancelled_caught:
                    return False
                me.wake = trio.Event()
        finally:
            self._waiters.remove(me)
            if self._prober is me:
                self._prober = None
                self._choose_probe()
        start = max(trio.current_time(), self._retry_from) + self.spread_s * self.rand()
        await trio.sleep_until(min(start, me.deadline))
        return start < me.deadline

    def _choose_probe(self) -> None:
        """While unreachable, make the waiter whose retry is furthest away the probe."""
        if self._prober is not None or self.unreachable_since is None or not self._waiters:
            return
        probe = max(self._waiters, key=lambda w: w.deadline)  # the first of equals
        probe.deadline = min(probe.deadline, trio.current_time() + self._probe.next_delay())
        probe.wake.set()  # it sleeps again with the nearer deadline
        self._prober = probe


class Spell:
    """Handed to each attempt; the attempt marks when it opened its socket, when it was
    connected and subscribed (`reached`, told to the shared `Reachability`), and when it
    became healthy (its subscriptions acknowledged)."""

    __slots__ = ("_reachability", "healthy_since", "opened_at", "seen")

    def __init__(self, reachability: Reachability | None = None) -> None:
        self.healthy_since: float | None = None
        self.opened_at: float | None = None
        self._reachability = reachability
        # The recoveries this attempt knows of: a later one may cut its backoff short.
        self.seen = 0 if reachability is None else reachability.generation

    def healthy(self) -> None:
        self.healthy_since = trio.current_time()

    def opened(self) -> None:
        self.opened_at = trio.current_time()

    def reached(self) -> None:
        if self._reachability is not None:
            self._reachability.reached()
            self.seen = self._reachability.generation  # its own recovery cuts nothing


def failure_text(exc: BaseException) -> str:
    """A short reason for logs and /health; never a URL with credentials (we pass none)."""
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def split_retryable(
    exc: BaseException, retry_on: tuple[type[Exception], ...]
) -> BaseException | None:
    """The retryable exception inside `exc` (possibly a group), or None if anything else is
    in there; the caller re-raises in that case."""
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(retry_on)
        if rest is not None or matched is None:
            return None
        found: BaseException = matched
        while isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]
        return found
    return exc if isinstance(exc, retry_on) else None


async def run_supervised(
    attempt: Callable[[Spell], Awaitable[None]],
    *,
    name: str,
    retry_on: tuple[type[Exception], ...],
    backoff: Backoff,
    healthy_after_s: float,
    on_failure: Callable[[str, float], None] | None = None,
    reachability: Reachability | None = None,
    on_early_retry: Callable[[], None] | None = None,
) -> None:
    """Run `attempt` forever; after a retryable failure (or a clean return) wait and retry.

    The backoff resets when the failed attempt had been healthy for `healthy_after_s`, so a
    flapping peer keeps backing off while one that served for a while reconnects at once.
    With a `reachability`, an attempt that never opened its socket reports a miss, and the
    wait may end early (`Reachability.wait_to_retry`); `on_early_retry` is told when a
    recovery cut it short.
    """
    log = logger.bind(actor=name)
    while True:
        spell = Spell(reachability)
        try:
            await attempt(spell)
            reason = "ended by peer"
        except BaseException as exc:  # narrowed below; everything else is re-raised
            found = split_retryable(exc, retry_on)
            if found is None:
                raise
            reason = failure_text(found)
        if (
            spell.healthy_since is not None
            and trio.current_time() - spell.healthy_since >= healthy_after_s
        ):
            backoff.reset()
        delay = backoff.next_delay()
        if reachability is not None and spell.opened_at is None:
            reachability.missed(reason)
        if on_failure is not None:
            on_failure(reason, delay)
        log.warning(
            "{name} failed ({reason}); retry in {delay:.2f}s", name=name, reason=reason, delay=delay
        )
        if reachability is None:
            await trio.sleep(delay)
        elif await reachability.wait_to_retry(delay, seen=spell.seen) and on_early_retry:
            on_early_retry()


async def supervise_pool(
    plans: trio.MemoryReceiveChannel[Mapping[K, V]],
    start_child: Callable[[K, trio.MemoryReceiveChannel[V]], Awaitable[None]],
    *,
    owned: Sequence[trio.abc.AsyncResource] = (),
    control_buffer: int = 8,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One child per key of the latest plan: started with its own control channel (which
    this supervisor owns and feeds the key's value), told of every change of the value,
    retired by closing its channel when the value becomes empty (falsy).

    The children restart themselves (`run_supervised`); a child that raises anything else
    crashes the pool, as a bug should. When `plans` ends, every control channel is closed,
    so the children end too. `owned`: resources the children borrow (the channel clones
    they clone from), closed on exit.
    """
    controls: dict[K, trio.MemorySendChannel[V]] = {}
    current: dict[K, V] = {}
    async with contextlib.AsyncExitStack() as stack:
        for resource in owned:
            await stack.enter_async_context(resource)
        async with plans, trio.open_nursery() as nursery:
            task_status.started()
            async for plan in plans:
                for key, value in plan.items():
                    if not value:
                        if key in controls:
                            await controls.pop(key).aclose()
                            del current[key]
                    elif key not in controls:
                        send, recv = trio.open_memory_channel[V](control_buffer)
                        send.send_nowait(value)
                        controls[key], current[key] = send, value
                        nursery.start_soon(start_child, key, recv)
                    elif value != current[key]:
                        current[key] = value
                        await controls[key].send(value)
            for send in controls.values():
                await send.aclose()
