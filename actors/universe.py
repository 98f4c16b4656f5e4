"""Universe actor: which symbols to stream, and how they are cut into chunks.

Reads the contract list through the shared paced REST client (`fetch`) at start and every
`refresh_s` on a fixed grid, keeps the live USDT perpetuals (restricted by the whitelist,
then capped at `max_symbols`) and plans chunks of at most `max_symbols_per_conn`. Existing
chunks keep their symbols, so a refresh changes only the difference; a chunk that empties is
retired. Outputs: each plan on `plans` (to the connections' supervisor; none in `screener
rest`) and the symbols to fill from REST history on `fills` (if given): all of them after the
first read, the new ones after each refresh, every one after every read without `plans`. It
owns and closes both. A failed read is retried with backoff until it succeeds; the reason
stays in /health through `status` meanwhile.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import trio
from loguru import logger

from screener.core.config import ExchangeSettings
from screener.core.metrics import Metrics
from screener.core.models import ChunkPlan, SymbolSet, UniverseStatus
from screener.core.periodic import Ticker
from screener.core.snapshot import Latest
from screener.core.supervise import Backoff, failure_text
from screener.fleet.shards import shard_of
from screener.mexc.client import RestFailed
from screener.mexc.rest import Contract, live_usdt_perpetuals

FetchContracts = Callable[[], Awaitable[list[Contract]]]
"""Every listed contract; raises `RestFailed` once the client's retries are spent."""


def plan_chunks(current: ChunkPlan, wanted: SymbolSet, max_per: int) -> dict[int, SymbolSet]:
    """New chunk assignment: keep what stays where it is, fill gaps, then open new chunks.

    Returns every chunk id of `current` (an empty set means retire it) plus new ids.
    """
    plan = {cid: set(symbols & wanted) for cid, symbols in current.items()}
    placed = set().union(*plan.values()) if plan else set()
    fresh = sorted(set(wanted) - placed)
    for symbols in plan.values():
        room = max_per - len(symbols)
        if room > 0 and fresh:
            symbols.update(fresh[:room])
            del fresh[:room]
    next_id = max(current, default=-1) + 1
    while fresh:
        plan[next_id] = set(fresh[:max_per])
        del fresh[:max_per]
        next_id += 1
    return {cid: frozenset(symbols) for cid, symbols in plan.items()}


class Update(NamedTuple):
    """What one read of the contract list changes."""

    symbols: SymbolSet  # tracked from now on
    plan: dict[int, SymbolSet]  # every chunk, retired ones with an empty set
    added: int  # symbols not tracked before
    removed: int  # symbols tracked before, gone now
    fill: SymbolSet  # to fill from REST history
    warnings: list[str]


class Universe:
    """The pure core: selection, chunk planning and what to backfill, read after read."""

    def __init__(
        self, settings: ExchangeSettings, *, stream: bool = True, shard: tuple[int, int] = (0, 1)
    ) -> None:
        self.settings = settings
        self.stream = stream
        self.shard, self.shards = shard
        self.tracked: SymbolSet = frozenset()
        self.chunks: dict[int, SymbolSet] = {}
        self._unknown_warned: set[str] = set()

    def select(self, live: set[str]) -> tuple[SymbolSet, list[str]]:
        """Whitelist, then the MAX_SYMBOLS bound (alphabetical, so the choice is stable),
        then this replica's shard (`shard_of`); each unknown whitelisted symbol is warned
        about once."""
        settings, warnings = self.settings, []
        if settings.whitelist:
            for symbol in sorted(settings.whitelist - live - self._unknown_warned):
                warnings.append(
                    f"whitelisted symbol {symbol} is not a live USDT perpetual; skipped"
                )
                self._unknown_warned.add(symbol)
            live = live & settings.whitelist
        if len(live) > settings.max_symbols:
            warnings.append(
                f"{len(live)} live symbols exceed MAX_SYMBOLS={settings.max_symbols}; "
                f"the last {len(live) - settings.max_symbols} skipped"
            )
            live = set(sorted(live)[: settings.max_symbols])
        if self.shards > 1:
            live = {s for s in live if shard_of(s, self.shards) == self.shard}
        return frozenset(live), warnings

    def update(self, contracts: list[Contract], now_ms: float) -> Update:
        wanted, warnings = self.select(live_usdt_perpetuals(contracts, now_ms))
        plan: dict[int, SymbolSet] = {}
        if self.stream:
            plan = plan_chunks(self.chunks, wanted, self.settings.max_symbols_per_conn)
            self.chunks = {cid: symbols for cid, symbols in plan.items() if symbols}
        added, removed = len(wanted - self.tracked), len(self.tracked - wanted)
        fill = wanted if not self.stream else wanted - self.tracked
        self.tracked = wanted
        return Update(wanted, plan, added, removed, fill, warnings)


async def read_contracts(
    fetch: FetchContracts,
    backoff: Backoff,
    *,
    status: Latest[UniverseStatus],
    log: Callable[[str], None],
) -> list[Contract]:
    """Retry until the exchange answers; the reason stays visible in /health meanwhile."""
    while True:
        try:
            contracts = await fetch()
        except RestFailed as exc:
            reason = failure_text(exc)
            delay = backoff.next_delay()
            status.set(status.value._replace(error=f"contract list unavailable: {reason}"))
            log(f"contract list unavailable ({reason}); retry in {delay:.1f}s")
            await trio.sleep(delay)
            continue
        backoff.reset()
        return contracts


async def run_universe(
    plans: trio.MemorySendChannel[ChunkPlan] | None,
    fills: trio.MemorySendChannel[SymbolSet] | None,
    *,
    fetch: FetchContracts,
    settings: ExchangeSettings,
    shard: tuple[int, int] = (0, 1),
    refresh_s: float,
    status: Latest[UniverseStatus],
    metrics: Metrics,
    wall: Callable[[], float] = time.time,
    rand: Callable[[], float] = random.random,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Without `plans` nothing is streamed (`screener rest`). `refresh_s`: seconds between
    reads (`CONTRACTS_REFRESH_S`, or `REST_POLL_S` in `screener rest`, where each read starts
    a poll round); `wall`: the clock that says which listings have opened."""
    log = logger.bind(actor="universe")
    universe = Universe(settings, stream=plans is not None, shard=shard)
    backoff = Backoff(first_s=2.0, cap_s=60.0, rand=rand)
    async with (
        plans if plans is not None else contextlib.nullcontext(),
        fills if fills is not None else contextlib.nullcontext(),
    ):
        ticker = Ticker(refresh_s)
        first = True
        task_status.started()
        while True:
            contracts = await read_contracts(fetch, backoff, status=status, log=log.warning)
            update = universe.update(contracts, wall() * 1000)
            for warning in update.warnings:
                log.warning(warning)
            if plans is not None:
                await plans.send(update.plan)
            status.set(
                UniverseStatus(
                    symbols=len(update.symbols),
                    chunks=len(universe.chunks),
                    error=None,
                    tracked=update.symbols,
                )
            )
            metrics.symbols.set(len(update.symbols))
            metrics.connections_total.set(len(universe.chunks))
            if first or update.added or update.removed:  # a quiet refresh logs nothing
                log.info(
                    "universe: {n} symbols in {c} connections ({a} new, {r} gone)",
                    n=len(update.symbols),
                    c=len(universe.chunks),
                    a=update.added,
                    r=update.removed,
                )
            first = False
            if fills is not None and update.fill:
                await fills.send(update.fill)
            await ticker.wait()
