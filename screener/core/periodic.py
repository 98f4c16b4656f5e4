"""Time and wake-ups shared by the actors: one fixed-grid ticker and one repeatable event.

`Ticker` runs periodic work (rankings, pings, contract-list reads, REST polls) against
absolute deadlines `start + k * period`, so nothing drifts and tests on MockClock assert
exact times. A round that overran skips the ticks it missed instead of catching up in a
burst. `wait_quiet` waits for a silence of a given length; `Pulse` wakes one waiter after
one or more `fire()`s.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio


class Ticker:
    """Deadlines on the grid `start + k * period_s` (k = 1, 2, ...), on trio's clock."""

    __slots__ = ("period_s", "start", "tick")

    def __init__(self, period_s: float, *, start: float | None = None) -> None:
        if not period_s > 0 or not math.isfinite(period_s):
            raise ValueError(f"period must be a positive number of seconds, not {period_s!r}")
        self.period_s = period_s
        self.start = trio.current_time() if start is None else start
        self.tick = 0

    def next_deadline(self, now: float) -> float:
        """The first grid point after the last one served and after `now`: ticks that
        passed while the caller was busy are skipped, never caught up."""
        due = int((now - self.start) // self.period_s) + 1
        self.tick = max(self.tick + 1, due)
        return self.start + self.tick * self.period_s

    async def wait(self) -> int:
        """Sleep until the next deadline; returns its tick number."""
        await trio.sleep_until(self.next_deadline(trio.current_time()))
        return self.tick


async def wait_quiet(last: Callable[[], float], quiet_s: float) -> None:
    """Return once `quiet_s` passed since `last()`, read anew at each wake-up so a newer
    event moves the deadline; sleeps only until the deadlines (no polling). The one shape of
    every silence rule: a dead socket, a silent subscription, a stale feed."""
    while True:
        deadline = last() + quiet_s
        if trio.current_time() >= deadline:
            return
        await trio.sleep_until(deadline)


class Pulse:
    """A repeatable event for one waiter: `fire()` is remembered until `wait()` consumes it,
    so a fire while the waiter is busy is never lost, and many fires wake it once."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def fire(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()
