"""Universe actor: which symbols to stream, and the connection actors that stream them.

Reads `contract/detail` at start and every `contracts_refresh_s`, keeps the live USDT
perpetuals (optionally restricted by the whitelist), and plans chunks of at most
`max_symbols_per_conn`. Existing chunks keep their symbols, so a refresh subscribes or
unsubscribes only the difference; a chunk that empties is retired. Connection actors live
in this actor's nursery, each with a control channel this actor owns and a clone of the
window inbox that the connection actor owns. REST failures retry with backoff forever and
are reported in /health through `status`; the connections already running carry on.

With a `backfill` channel (owned here, closed on exit) it sends the symbols to fill from REST
history: all of them after the first read, the new ones after each refresh, and with
`stream=False` (`screener rest`: no WebSocket at all) every symbol after every read. Each
connection actor gets a clone of it to ask for a refill after an outage (`gap_after_s`).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from functools import partial

import httpx
import trio
from loguru import logger

from actors.connection import WindowInbox, run_connection
from actors.mexc import CONTRACT_DETAIL_PATH, RestError, contract_rows, live_usdt_perpetuals
from screener.config import ExchangeSettings
from screener.metrics import Metrics
from screener.models import ConnStatus, UniverseStatus
from screener.snapshot import Latest
from screener.supervise import Backoff, failure_text

REST_TIMEOUT = httpx.Timeout(10.0)


def plan_chunks(
    current: dict[int, frozenset[str]], wanted: set[str] | frozenset[str], max_per: int
) -> dict[int, frozenset[str]]:
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


async def fetch_live_symbols(client: httpx.AsyncClient, base: str) -> set[str]:
    response = await client.get(base + CONTRACT_DETAIL_PATH)
    if response.status_code != 200:
        raise RestError(f"contract/detail: HTTP {response.status_code}")
    return live_usdt_perpetuals(contract_rows(response.content), time.time() * 1000)


async def run_universe(
    ingest: trio.MemorySendChannel[WindowInbox],
    *,
    settings: ExchangeSettings,
    status: Latest[UniverseStatus],
    metrics: Metrics,
    rand: Callable[[], float] = random.random,
    backfill: trio.MemorySendChannel[frozenset[str]] | None = None,
    gap_after_s: float = 60.0,
    stream: bool = True,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    log = logger.bind(actor="universe")
    tracked: frozenset[str] = frozenset()
    chunks: dict[int, frozenset[str]] = {}
    controls: dict[int, trio.MemorySendChannel[frozenset[str]]] = {}
    unknown_logged: set[str] = set()
    backoff = Backoff(first_s=2.0, cap_s=60.0, rand=rand)

    async def read_universe(client: httpx.AsyncClient) -> set[str]:
        """Retry until the exchange answers; the reason stays visible in /health."""
        while True:
            try:
                live = await fetch_live_symbols(client, settings.rest_base)
            except (httpx.HTTPError, RestError) as exc:
                metrics.rest_errors.labels("contract_detail").inc()
                reason = failure_text(exc)
                delay = backoff.next_delay()
                status.set(status.value._replace(error=f"contract list unavailable: {reason}"))
                log.warning(
                    "contract list unavailable ({reason}); retry in {delay:.1f}s",
                    reason=reason,
                    delay=delay,
                )
                await trio.sleep(delay)
                continue
            backoff.reset()
            return select(live)

    def select(live: set[str]) -> set[str]:
        """Whitelist, then the MAX_SYMBOLS bound (alphabetical, so the choice is stable)."""
        if settings.whitelist:
            for symbol in sorted(settings.whitelist - live - unknown_logged):
                log.warning(
                    "whitelisted symbol {symbol} is not a live USDT perpetual; skipped",
                    symbol=symbol,
                )
                unknown_logged.add(symbol)
            live = live & settings.whitelist
        if len(live) > settings.max_symbols:
            log.warning(
                "{n} live symbols exceed MAX_SYMBOLS={m}; the last {skipped} skipped",
                n=len(live),
                m=settings.max_symbols,
                skipped=len(live) - settings.max_symbols,
            )
            live = set(sorted(live)[: settings.max_symbols])
        return live

    async with (
        ingest,
        backfill if backfill is not None else contextlib.nullcontext(),
        httpx.AsyncClient(timeout=REST_TIMEOUT) as client,
        trio.open_nursery() as nursery,
    ):
        task_status.started()
        deadline = trio.current_time()
        while True:
            wanted = await read_universe(client)
            plan = plan_chunks(chunks, wanted, settings.max_symbols_per_conn) if stream else {}
            added = len(wanted - set().union(*chunks.values())) if chunks else len(wanted)
            for cid, symbols in plan.items():
                if not symbols:
                    await controls.pop(cid).aclose()
                    del chunks[cid]
                    await ingest.send(ConnStatus(cid, up=False, retired=True))
                elif cid not in chunks:
                    send, recv = trio.open_memory_channel[frozenset[str]](8)
                    controls[cid] = send
                    send.send_nowait(symbols)
                    chunks[cid] = symbols
                    await ingest.send(ConnStatus(cid, up=False))
                    await nursery.start(
                        partial(
                            run_connection,
                            recv,
                            ingest.clone(),
                            conn_id=cid,
                            settings=settings,
                            metrics=metrics,
                            rand=rand,
                            gaps=None if backfill is None else backfill.clone(),
                            gap_after_s=gap_after_s,
                        )
                    )
                elif symbols != chunks[cid]:
                    chunks[cid] = symbols
                    await controls[cid].send(symbols)
            status.set(
                UniverseStatus(
                    symbols=len(wanted), chunks=len(chunks), error=None, tracked=frozenset(wanted)
                )
            )
            metrics.symbols.set(len(wanted))
            metrics.connections_total.set(len(chunks))
            log.info(
                "universe: {n} symbols in {c} connections ({a} new)",
                n=len(wanted),
                c=len(chunks),
                a=added,
            )
            fill = frozenset(wanted) if not stream else frozenset(wanted) - tracked
            tracked = frozenset(wanted)
            if backfill is not None and fill:
                await backfill.send(fill)
            deadline += settings.contracts_refresh_s
            await trio.sleep_until(max(deadline, trio.current_time()))
