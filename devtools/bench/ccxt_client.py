"""The third client of the benchmark: ccxt's MEXC client (ccxt.pro, asyncio + aiohttp), fed
by the simulator, doing what a ccxt user does for kline data: `watch_ohlcv` per symbol, which
parses each push into ccxt's candle cache. It only receives and counts, like the bare loop.

Run by the Python of its own virtual environment (`side_env`), not the bench's, so it imports
only the standard library and ccxt: `python ccxt_client.py --rest ... --ws ... --stats ...`.
The venue's URLs are overridden to the simulator's (REST swap API and swap WebSocket; the
spot market list, which the simulator does not serve, is skipped), so nothing leaves the
machine. It reports through a stats file in the format of `stats_file`: `received`, `up`
(1 once every subscription is sent), `hist` (push-to-receive latency in 0.1 ms buckets),
and `error` if ccxt failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

REPORT_S = 0.2  # as stats_file.REPORT_S
BUCKETS_PER_MS = 10  # as stats_file.BUCKETS_PER_MS


def write_stats(path: Path, data: dict[str, Any]) -> None:
    """As `stats_file.write_stats`, with the standard library's json."""
    data["t"] = time.monotonic()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class Tally:
    def __init__(self) -> None:
        self.received = 0
        self.up = 0
        self.hist: dict[int, int] = {}
        self.error: str | None = None

    def report(self, path: Path) -> None:
        data: dict[str, Any] = {"received": self.received, "up": self.up, "hist": self.hist}
        if self.error is not None:
            data["error"] = self.error
        write_stats(path, data)


async def run(args: argparse.Namespace, tally: Tally) -> None:
    import ccxt.pro  # type: ignore[import-not-found,unused-ignore]

    class CountedMexc(ccxt.pro.mexc):  # type: ignore[misc,unused-ignore]
        """ccxt's MEXC client, counting each kline push before ccxt handles it."""

        def handle_ohlcv(self, client: Any, message: dict[str, Any]) -> Any:
            tally.received += 1
            ts = message.get("ts")
            if isinstance(ts, int):
                b = int((time.time() * 1000 - ts) * BUCKETS_PER_MS)
                tally.hist[b] = tally.hist.get(b, 0) + 1
            return super().handle_ohlcv(client, message)

        async def fetch_spot_markets(self, params: Any = None) -> list[Any]:
            return []  # swap only: the simulator is a futures venue

    exchange = CountedMexc({"enableRateLimit": False, "newUpdates": True})
    api = exchange.urls["api"]
    for section in ("spot", "spot2", "broker"):  # never the real venue
        for access in list(api[section]):
            api[section][access] = args.rest + "/unused"
    api["contract"]["public"] = args.rest + "/api/v1/contract"
    api["contract"]["private"] = args.rest + "/api/v1/private"
    api["ws"]["spot"] = args.ws
    api["ws"]["swap"] = args.ws
    try:
        markets = await exchange.load_markets()
        symbols = sorted(s for s, m in markets.items() if m.get("swap") and m.get("active"))

        async def watch(symbol: str) -> None:
            while True:
                await exchange.watch_ohlcv(symbol, "1m")

        tasks = [asyncio.create_task(watch(symbol)) for symbol in symbols]
        await asyncio.sleep(1.0)  # the subscriptions go out as the tasks start
        tally.up = 1
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        await exchange.close()


async def main_async(args: argparse.Namespace) -> None:
    tally = Tally()
    stats = Path(args.stats)

    async def report() -> None:
        while True:
            tally.report(stats)
            await asyncio.sleep(REPORT_S)

    reporter = asyncio.create_task(report())
    try:
        await asyncio.wait_for(run(args, tally), args.max_s)
    except TimeoutError:
        pass
    except Exception as exc:  # reported to the bench, which says so; never a traceback race
        tally.error = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        reporter.cancel()
        tally.report(stats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rest", required=True)
    parser.add_argument("--ws", required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--max-s", type=float, required=True)
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
