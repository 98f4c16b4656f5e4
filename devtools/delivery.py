"""Every push against every event: what a fault did to delivery, counted, not sampled.

A push is identified by (symbol, push ts in ms), which the service carries unchanged into
its `market_data` event. Given every push the simulator sent and every event a subscriber
received, in the order received, `check` reports:

- lost: a push never published (a key pushed and not received);
- duplicated: a key received more often than it was pushed (keys are counted, not merely
  seen; the simulator never gives two pushes of a symbol one ts, as the exchange does not);
- back in time: an event whose push ts is lower than that of an earlier event of the same
  symbol (a consumer would move that symbol backwards).

Only pushes and events of ts `since_ms` or later count: the window a test or the benchmark
watches, once the fleet has formed.

Pushes may still be in flight at the end: `settle` (trio) and `settle_sync` wait on
observable state, until every expected key arrived or the count of events stopped changing
for `quiet_s`, with a ceiling; `check(..., in_flight_after_ms=...)` can also leave out the
pushes after a cut. The tests and `screener bench --fleet` share this module.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import trio

Key = tuple[str, int]
"""(symbol, push ts in ms)"""


@dataclass(frozen=True)
class Verdict:
    pushed: int  # pushes considered (those after the cut left out)
    published: int  # events received
    lost: list[Key]
    duplicated: dict[Key, int]  # key -> events beyond the pushes of that key
    back_in_time: list[tuple[Key, int]]  # (the event, the newer ts received before it)
    in_flight: int  # pushes after the cut, not counted as lost

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.back_in_time)

    @property
    def counts(self) -> tuple[int, int, int]:
        """(lost, duplicated, back in time): the figures the fleet's promise is 0/0/0 of."""
        return len(self.lost), sum(self.duplicated.values()), len(self.back_in_time)

    def summary(self) -> str:
        lost, dup, back = self.counts
        line = (
            f"{self.pushed:,} pushes, {self.published:,} events: {lost} lost, "
            f"{dup} duplicated, {back} back in time"
        )
        if self.in_flight:
            line += f" ({self.in_flight} pushes after the cut not counted)"
        examples = [
            *(f"lost {k}" for k in self.lost[:3]),
            *(f"duplicated {k} x{n}" for k, n in list(self.duplicated.items())[:3]),
            *(f"back in time {k} after ts {newer}" for k, newer in self.back_in_time[:3]),
        ]
        return line + ("; e.g. " + ", ".join(examples) if examples else "")


def check(
    pushes: Iterable[Key],
    events: Iterable[Key],
    *,
    since_ms: int = 0,
    in_flight_after_ms: int | None = None,
) -> Verdict:
    """Compare the pushes with the events received (in their order of arrival), for the
    pushes of ts `since_ms` or later (the window of a test: before it, the fleet formed)."""
    pushed: Counter[Key] = Counter()
    in_flight: Counter[Key] = Counter()
    for key in pushes:
        if key[1] < since_ms:
            continue
        late = in_flight_after_ms is not None and key[1] > in_flight_after_ms
        (in_flight if late else pushed)[key] += 1
    events = [k for k in events if k[1] >= since_ms]
    received = Counter(events)
    lost = sorted(k for k in pushed if k not in received)
    duplicated = {
        k: n - (pushed[k] + in_flight[k])
        for k, n in received.items()
        if n > pushed[k] + in_flight[k]
    }
    newest: dict[str, int] = {}
    back: list[tuple[Key, int]] = []
    for symbol, ts in events:
        top = newest.get(symbol)
        if top is not None and ts < top:
            back.append(((symbol, ts), top))
        else:
            newest[symbol] = ts
    return Verdict(
        pushed=sum(pushed.values()),
        published=len(events),
        lost=lost,
        duplicated=duplicated,
        back_in_time=back,
        in_flight=sum(in_flight.values()),
    )


class Settling:
    """The stop rule of `settle`: all arrived and nothing more for `linger_s` (a late copy
    would come after the last expected event), or the count stood still for `quiet_s`."""

    def __init__(
        self, expected: set[Key], quiet_s: float, now: float, *, linger_s: float = 0.0
    ) -> None:
        self.expected = expected
        self.quiet_s = quiet_s
        self.linger_s = linger_s
        self.count = -1
        self.since = now

    def done(self, events: Sequence[Key], now: float) -> bool:
        if len(events) != self.count:
            self.count, self.since = len(events), now
        still = now - self.since
        return still >= self.quiet_s or (still >= self.linger_s and self.expected <= set(events))


async def settle(
    pushes: Sequence[Key],
    events: Callable[[], Sequence[Key]],
    *,
    quiet_s: float = 2.0,
    linger_s: float = 1.0,
    within_s: float = 30.0,
) -> None:
    """Wait (trio) until every push arrived and nothing more came for `linger_s`, or no
    event arrived for `quiet_s` (then some are lost: `check` says which), or `within_s`
    passed. Call it once the pushes have stopped. Polls: events arrive on a subscriber's
    thread, which has nothing to await."""
    rule = Settling(set(pushes), quiet_s, trio.current_time(), linger_s=linger_s)
    with trio.move_on_after(within_s):
        while not rule.done(events(), trio.current_time()):  # noqa: ASYNC110 - another thread
            await trio.sleep(0.05)


def settle_sync(
    pushes: Sequence[Key],
    events: Callable[[], Sequence[Key]],
    *,
    quiet_s: float = 2.0,
    linger_s: float = 1.0,
    within_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """`settle` for code without a trio loop (the benchmark)."""
    rule = Settling(set(pushes), quiet_s, time.monotonic(), linger_s=linger_s)
    deadline = time.monotonic() + within_s
    while not rule.done(events(), time.monotonic()) and time.monotonic() < deadline:
        sleep(0.1)
