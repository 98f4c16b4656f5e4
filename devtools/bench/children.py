"""The code of the bench's child processes, run as `python -m devtools.bench sim|bare|sub`:
the simulator, the bare client (the baseline) and the Redis subscriber.

The simulator runs the same `FakeExchange` as `screener simulate`, but through the bench,
because the CLI lacks three knobs a benchmark needs: a count of pushes sent, a rate changed at
run time, and a warped clock (to fill 15-minute windows in seconds). Each child reports
through its stats file (`stats_file`) and ends by itself after `--max-s`, so none outlives a
crashed bench for long. trio, trio-websocket and redis-py are imported in the child that
uses them only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from devtools.bench.plan import LOOKBACK_MIN
from devtools.bench.stats_file import REPORT_S, bucket, read_stats, write_stats


def add_role_parsers(parser: argparse.ArgumentParser) -> None:
    """The subcommands `sim`, `bare` and `sub` of `parser`; `args.role` names the child."""
    roles = parser.add_subparsers(dest="role")  # the bench's own children
    sim = roles.add_parser("sim")
    sim.add_argument("--symbols", type=int, required=True)
    sim.add_argument("--rate", type=float, default=0.0)
    sim.add_argument("--warp", type=float, default=1.0)
    sim.add_argument("--ctl", required=True)
    sim.add_argument("--pushes", help="append `SYMBOL TS` of every push to this file")
    bare = roles.add_parser("bare")
    bare.add_argument("--rest", required=True)
    bare.add_argument("--ws", required=True)
    bare.add_argument("--per-conn", type=int, required=True)
    sub = roles.add_parser("sub")
    sub.add_argument("--port", type=int, required=True)
    sub.add_argument("--events", help="append `SYMBOL TS` of every market_data event here")
    for role in (sim, bare, sub):
        role.add_argument("--stats", required=True)
        role.add_argument("--max-s", type=float, required=True)


def run_child(args: argparse.Namespace) -> int:
    """Run the child `args.role` (parsed by `add_role_parsers`) to its end."""
    return {"sim": child_sim, "bare": child_bare, "sub": child_sub}[args.role](args)


def child_sim(args: argparse.Namespace) -> int:
    """The simulator, plus a sent counter, a rate read from `--ctl` and a warped clock."""
    import trio

    from devtools.simulator import FakeExchange, SimConfig
    from screener.core.logs import setup_logging

    setup_logging("text", "WARNING")
    origin = time.time()
    warp = float(args.warp)

    def clock() -> float:
        return origin + (time.time() - origin) * warp

    exchange = FakeExchange(
        SimConfig(symbols=args.symbols, rate_per_s=args.rate, rest_port=0, ws_port=0),
        clock=clock if warp != 1.0 else time.time,
    )
    sent = 0
    keys = KeyLog(args.pushes)

    def count(payload: dict[str, Any]) -> None:
        nonlocal sent
        sent += 1
        keys.add(payload["symbol"], payload["ts"])

    exchange.on_push = count
    stats, ctl = Path(args.stats), Path(args.ctl)

    async def report(rest: str, ws: str) -> None:
        start = trio.current_time()
        for k in range(1, int(args.max_s / REPORT_S) + 1):
            exchange.rate_per_s = float(read_stats(ctl).get("rate", exchange.rate_per_s))
            keys.flush()  # before the count that says how many it holds
            write_stats(
                stats,
                {
                    "rest": rest,
                    "ws": ws,
                    "sent": sent,
                    "rate": exchange.rate_per_s,
                    "conns": exchange.connections,
                },
            )
            await trio.sleep_until(start + k * REPORT_S)

    async def serve() -> None:
        with trio.move_on_after(args.max_s):
            async with trio.open_nursery() as nursery:
                address = await nursery.start(exchange.serve)
                nursery.start_soon(report, address.rest_url, address.ws_url)

    trio.run(serve)
    keys.close()
    return 0


class KeyLog:
    """`SYMBOL TS` lines, one per push or event, for the delivery checker
    (devtools/delivery.py); flushed at each report, so a count read from the stats file is
    never ahead of the lines. No path: nothing is written."""

    def __init__(self, path: str | None) -> None:
        self._file = open(path, "a", buffering=1 << 20) if path else None  # noqa: SIM115

    def add(self, symbol: str, ts: int) -> None:
        if self._file is not None:
            self._file.write(f"{symbol} {ts}\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def read_keys(path: Path) -> list[tuple[str, int]]:
    """The (symbol, ts) lines a `KeyLog` wrote, in order (a last partial line left out)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines(keepends=True):
        if line.endswith("\n"):
            symbol, _, ts = line.rstrip("\n").partition(" ")
            out.append((symbol, int(ts)))
    return out


def _live_symbols(rest_url: str) -> list[str]:
    from screener.mexc.rest import (
        CONTRACT_DETAIL_PATH,
        contracts,
        envelope_data,
        live_usdt_perpetuals,
    )

    body = httpx.get(rest_url + CONTRACT_DETAIL_PATH, timeout=10).content
    return sorted(live_usdt_perpetuals(contracts(envelope_data(body)), time.time() * 1000))


class _Tally:
    __slots__ = ("hist", "received", "up")

    def __init__(self) -> None:
        self.received = 0
        self.up = 0
        self.hist: dict[int, int] = {}


def child_bare(args: argparse.Namespace) -> int:
    """The baseline: subscribe like the service, then only receive and count.

    Besides the count it reads the trailing `"ts":<ms>}` of each frame by slicing (well
    under a microsecond, against tens for the receive itself) for a latency floor.
    """
    import trio
    import trio_websocket

    from screener.mexc.frames import PING, sub_kline

    symbols = _live_symbols(args.rest)
    chunks = [symbols[i : i + args.per_conn] for i in range(0, len(symbols), args.per_conn)]
    tally = _Tally()
    stats = Path(args.stats)

    async def connection(chunk: list[str]) -> None:
        async with trio_websocket.open_websocket_url(args.ws) as ws:
            for symbol in chunk:
                await ws.send_message(sub_kline(symbol))
            tally.up += 1
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ping, ws)
                hist = tally.hist
                while True:
                    message = await ws.get_message()
                    tally.received += 1
                    if isinstance(message, str) and (at := message.rfind('"ts":')) > 0:
                        b = bucket(time.time() * 1000 - int(message[at + 5 : -1]))
                        hist[b] = hist.get(b, 0) + 1

    async def ping(ws: trio_websocket.WebSocketConnection) -> None:
        start = trio.current_time()
        for k in range(1, int(args.max_s / 15) + 2):
            await trio.sleep_until(start + 15 * k)
            await ws.send_message(PING)

    async def report() -> None:
        start = trio.current_time()
        for k in range(1, int(args.max_s / REPORT_S) + 1):
            write_stats(stats, {"received": tally.received, "up": tally.up, "hist": tally.hist})
            await trio.sleep_until(start + k * REPORT_S)

    async def run() -> None:
        with trio.move_on_after(args.max_s):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(report)
                for chunk in chunks:
                    nursery.start_soon(connection, chunk)

    trio.run(run)
    return 0


def child_sub(args: argparse.Namespace) -> int:
    """A redis-py subscriber: counts events, push-to-Redis latency, full windows per symbol."""
    import redis

    client = redis.Redis(port=args.port, socket_timeout=5)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("market_data", "top_movers")
    stats = Path(args.stats)
    keys = KeyLog(args.events)
    events = rankings = 0
    hist: dict[int, int] = {}
    window_min: dict[str, int] = {}
    deadline = time.monotonic() + args.max_s
    next_report = time.monotonic()
    while (now := time.monotonic()) < deadline:
        message = pubsub.get_message(timeout=REPORT_S / 2)
        if message is not None:
            if message["channel"] == b"market_data":
                event = orjson.loads(message["data"])
                events += 1
                b = bucket(time.time() * 1000 - event["ts"])
                hist[b] = hist.get(b, 0) + 1
                window_min[event["symbol"]] = event["window_min"]
                keys.add(event["symbol"], event["ts"])
            else:
                rankings += 1
        if now >= next_report:
            keys.flush()
            full = sum(1 for w in window_min.values() if w >= LOOKBACK_MIN)
            write_stats(
                stats,
                {"events": events, "rankings": rankings, "hist": hist, "full": full},
            )
            next_report = now + REPORT_S
    keys.close()
    pubsub.close()
    client.close()
    return 0
