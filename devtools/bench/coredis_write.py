"""The publisher's write done with coredis, for `screener bench --micro`: a pipeline of N
PUBLISH of one encoded event on trio, one write at a time as the publisher writes. Run by the
Python of coredis's own environment (`side_env`), not the bench's, so it imports nothing of
the project; prints `CPU_US WALL_US` per write.

Usage: python coredis_write.py PORT PAYLOAD_FILE BATCH WRITES
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import coredis  # type: ignore[import-not-found,unused-ignore]
import trio

WARM_UP = 200


async def measure(port: int, payload: bytes, batch: int, writes: int) -> tuple[float, float]:
    client = coredis.Redis(host="127.0.0.1", port=port)
    async with client:

        async def write() -> None:
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(batch):
                    pipe.publish("market_data", payload)

        for _ in range(WARM_UP):
            await write()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(writes):
            await write()
        return (
            (time.process_time() - cpu) / writes * 1e6,
            (time.perf_counter() - wall) / writes * 1e6,
        )


def main() -> None:
    port, payload_file, batch, writes = sys.argv[1:5]
    payload = Path(payload_file).read_bytes()
    cpu_us, wall_us = trio.run(measure, int(port), payload, int(batch), int(writes))
    print(f"{cpu_us:.1f} {wall_us:.1f}")


if __name__ == "__main__":
    main()
