"""Supervision: one-for-one restart with capped exponential backoff and full jitter, and
a pool that keeps one child per key of a changing plan (the connection actors, one per chunk).

Only what talks to the outside is supervised (connections, Redis, REST), and only for a
named list of exceptions: anything else is a bug and crashes the process, as it should.
The random source is injected so tests assert the exact schedule under `MockClock`.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import trio
from loguru import logger

K = TypeVar("K")
V = TypeVar("V")


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


class Spell:
    """Handed to each attempt; the attempt marks when it became healthy (e.g. subscribed)."""

    __slots__ = ("healthy_since",)

    def __init__(self) -> None:
        self.healthy_since: float | None = None

    def healthy(self) -> None:
        self.healthy_since = trio.current_time()


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
) -> None:
    """Run `attempt` forever; after a retryable failure (or a clean return) wait and retry.

    The backoff resets when the failed attempt had been healthy for `healthy_after_s`, so a
    flapping peer keeps backing off while one that served for a while reconnects at once.
    """
    log = logger.bind(actor=name)
    while True:
        spell = Spell()
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
        if on_failure is not None:
            on_failure(reason, delay)
        log.warning(
            "{name} failed ({reason}); retry in {delay:.2f}s", name=name, reason=reason, delay=delay
        )
        await trio.sleep(delay)


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
