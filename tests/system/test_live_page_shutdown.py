"""SIGTERM while live page streams are open: the service as a real process still exits 0
within 5 s. Shutdown drains HTTP before it cancels anything, so every stream must end by
itself when the signal comes: the reading clients see their response end cleanly (the last
chunk), and a client that never reads holds nothing up."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import trio

from devtools.devredis import RedisServer, free_port
from devtools.simulator import SimConfig
from tests.system.test_process import ROOT, env_for, read_all, simulator


async def test_sigterm_with_open_streams_exits_0_within_5s(redis_server: RedisServer) -> None:
    http_port = free_port()
    base = f"http://127.0.0.1:{http_port}"
    ended: list[bytes] = []
    async with simulator(SimConfig(symbols=50, rate_per_s=200)) as (_, sim):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "screener"],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            env=env_for(sim, redis_server.port, http_port, RANK_INTERVAL_S="0.5"),
        )
        try:
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                with trio.fail_after(20):
                    while True:
                        try:
                            if (await http.get("/top5")).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        await trio.sleep(0.05)

                async def follow(ready: trio.Event) -> None:
                    """Read a stream to its end; keep what came last."""
                    async with http.stream("GET", "/stream") as response:
                        assert response.status_code == 200
                        last = b""
                        async for chunk in response.aiter_bytes():
                            last = chunk
                            ready.set()
                        ended.append(last)

                # A client that sends its request and never reads a byte of the answer.
                stalled = await trio.open_tcp_stream("127.0.0.1", http_port)
                await stalled.send_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
                async with trio.open_nursery() as nursery:
                    for _ in range(3):
                        ready = trio.Event()
                        nursery.start_soon(follow, ready)
                        await ready.wait()
                    await trio.sleep(1.5)  # rankings and status go by
                    started = trio.current_time()
                    proc.send_signal(signal.SIGTERM)
                    with trio.fail_after(10):
                        code = await proc.wait()
                    elapsed = trio.current_time() - started
                await stalled.aclose()
            assert proc.stderr is not None
            log = (await read_all(proc.stderr)).decode(errors="replace")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert code == 0, log[-2000:]
    assert elapsed < 5
    assert len(ended) == 3  # every stream ended as a complete response, none was cut
    assert "SIGTERM received" in log
