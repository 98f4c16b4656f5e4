"""`screener bench --hops`: what one publisher write costs in hand-offs, for each way
of reaching the writing thread (docs/performance.md, "Publishing: the options measured").

Each option writes the same batches (20 events, the size of a 10 ms burst at 2,000 msg/s)
to a private redis-server with `publish_batch`, one at a time as the publisher does, then
the same number of empty writes (the hop alone). Printed: process CPU (user + system) and
wall time per write, in microseconds.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

from actors.publisher import Hop, WriterThread, to_thread_hop
from devtools.devredis import RedisServer
from screener.config import load_settings
from screener.models import Kline, MarketData
from screener.redis_client import BatchResult, make_client, publish_batch

WRITES = 5000
BATCH = 20


def main() -> int:
    with tempfile.TemporaryDirectory() as work:
        server = RedisServer(Path(work))
        server.start()
        try:
            settings = load_settings(
                {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(server.port)}
            ).redis
            client = make_client(settings)
            events = [
                MarketData(Kline(f"S{i}_USDT", 60, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 60_000), 0.0, 1)
                for i in range(BATCH)
            ]

            def publish() -> BatchResult:
                return publish_batch(client, settings, events, None)

            def empty() -> BatchResult:
                return BatchResult(0, 0, None)

            for name, write in (("publish 20 events", publish), ("empty write", empty)):
                for option in ("to_thread per write", "writer thread"):
                    cpu_us, wall_us = trio.run(_measure, option, write)
                    print(f"{name:18} {option:20} CPU {cpu_us:6.1f} us  wall {wall_us:6.1f} us")
            client.close()
        finally:
            server.stop()
    return 0


async def _measure(option: str, write: Callable[[], BatchResult]) -> tuple[float, float]:
    async def run(hop: Hop) -> tuple[float, float]:
        for _ in range(200):  # warm-up: thread cache, connection
            await hop(write)
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(WRITES):
            await hop(write)
        return (
            (time.process_time() - cpu) / WRITES * 1e6,
            (time.perf_counter() - wall) / WRITES * 1e6,
        )

    if option == "writer thread":
        with WriterThread.open() as writer:
            return await run(writer.run)
    return await run(to_thread_hop)


if __name__ == "__main__":
    raise SystemExit(main())
