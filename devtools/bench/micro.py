"""`screener bench --micro`: the hot path's per-push and per-write costs, each measured against
what it replaced (docs/performance.md, "The hot path: what changed"), in one process,
without the machine's other load mattering much (each figure is the best of three timings).

- decode: one recorded push, msgspec's typed decoder (`decode`) against orjson plus a check
  per field (`_kline(orjson.loads(...))`, still the path of every frame the fast one refuses);
- encode: one event, `encode_event` against `orjson.dumps(event.as_dict())`;
- histogram: 20 latencies, `observe_many` against `observe` each;
- WebSocket read: one message trio-websocket's reader has already queued, taken by
  `compat.pending_messages` against the public `get_message` (a checkpoint each);
- writes: a write of 20 events over the publisher's link on the event loop (encoding, one
  call of the publish script under a fence, to a private redis-server, its reply parsed by
  hiredis), one write at a time as the publisher does; CPU (user + system, all threads),
  wall time and redis-server's own CPU per write. Beside it the write as it was before the
  script (a pipeline of 20 PUBLISH on a bare stream, no fence, no check) and the same write
  with coredis (a pipeline of as many PUBLISH on trio, in its own environment, `side_env`):
  the public client weighed against the link (docs/architecture.md).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import hiredis
import orjson
import redis
import trio
import trio.testing
from trio_websocket import wrap_client_stream, wrap_server_stream

from devtools.bench.side_env import COREDIS_VERSION, ensure_coredis
from devtools.devredis import RedisServer
from screener.core.compat import observe_many, pending_messages
from screener.core.config import RedisSettings, load_settings
from screener.core.metrics import Metrics
from screener.core.models import Fence, Kline, MarketData
from screener.mexc.frames import _kline, decode
from screener.redis.batch import BatchResult, encode_event, prepare_batch, send
from screener.redis.client import make_client
from screener.redis.link import RedisLink

WRITES = 3000
WARM_UP = 200
BATCH = 20
PUSH = (
    '{"symbol":"BTC_USDT","data":{"symbol":"BTC_USDT","interval":"Min1","t":1770330480,'
    '"o":63104.8,"c":63519.9,"h":63522.3,"l":63104.8,"a":9033395.19463,"q":1425571,'
    '"ro":63123.3,"rc":63519.9,"rh":63522.3,"rl":63120.8},"channel":"push.kline",'
    '"ts":1770330514053}'
)


def _us(fn: Callable[[], object], n: int) -> float:
    """Best of three: microseconds of this process's CPU per call (Redis's own is not
    counted, nor the time spent waiting for it)."""
    return min(timeit.repeat(fn, number=n, repeat=3, timer=time.process_time)) / n * 1e6


def _row(what: str, before: str, t_before: float, after: str, t_after: float) -> str:
    return (
        f"| {what} | {before}: {t_before:.2f} us | {after}: {t_after:.2f} us | "
        f"{t_before / t_after:.1f}x |"
    )


def main() -> int:
    print("| cost | before | after | gain |")
    print("| --- | --- | --- | ---: |")
    print(
        _row(
            "decode one push",
            "orjson + checks",
            _us(lambda: _kline(orjson.loads(PUSH)), 50_000),
            "msgspec typed",
            _us(lambda: decode(PUSH), 50_000),
        )
    )
    event = MarketData(
        Kline("BTC_USDT", 1770330480, 63104.8, 63522.3, 63104.8, 63519.9, 1425571.0, 9e6, 1),
        0.6577,
        15,
    )
    print(
        _row(
            "encode one event",
            "dict + orjson",
            _us(lambda: orjson.dumps(event.as_dict()), 50_000),
            "msgspec struct",
            _us(lambda: encode_event(event), 50_000),
        )
    )
    latencies = [0.002 + i * 0.0001 for i in range(BATCH)]
    hist = Metrics().publish_latency

    def each() -> None:
        for amount in latencies:
            hist.observe(amount)

    print(
        _row(
            f"histogram, {BATCH} latencies",
            "observe each",
            _us(each, 5_000),
            "observe_many",
            _us(lambda: observe_many(hist, latencies), 5_000),
        )
    )
    print(ws_read_row())
    with tempfile.TemporaryDirectory() as work:
        server = RedisServer(Path(work))
        server.start()
        try:
            _redis_rows(server.port, event)
        finally:
            server.stop()
    return 0


QUEUED = 20_000


def ws_read_row() -> str:
    """Best of three: CPU microseconds to read one message trio-websocket already queued."""
    public = min(trio.run(_ws_read, False) for _ in range(3))
    queued = min(trio.run(_ws_read, True) for _ in range(3))
    return _row("read a queued WebSocket message", "get_message", public, "queued", queued)


async def _ws_read(from_queue: bool) -> float:
    """`QUEUED` pushes sent over an in-memory stream, all queued by the client's reader task
    before the reads are timed."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            ws = await (await wrap_server_stream(nursery, server_stream)).accept()
            for _ in range(QUEUED):
                await ws.send_message(PUSH)

        nursery.start_soon(serve)
        # Any trio stream works; the annotation names only sockets.
        stream = cast(trio.SocketStream, client_stream)
        ws = await wrap_client_stream(nursery, stream, "sim", "/", message_queue_size=QUEUED)
        queue = pending_messages(ws)
        assert queue is not None
        await trio.testing.wait_all_tasks_blocked()  # sent, read and queued: all of them
        assert queue.statistics().current_buffer_used == QUEUED
        cpu = time.process_time()
        if from_queue:
            for _ in range(QUEUED):
                queue.receive_nowait()
        else:
            for _ in range(QUEUED):
                await ws.get_message()
        spent = time.process_time() - cpu
        nursery.cancel_scope.cancel()
    return spent / QUEUED * 1e6


def _redis_rows(port: int, event: MarketData) -> None:
    settings = load_settings({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port)}).redis
    client = make_client(settings)
    batches = _fresh_batches(event)
    print()
    print("| write | way | CPU per write | wall per write | Redis's CPU per write |")
    print("| --- | --- | ---: | ---: | ---: |")
    figures = _with_redis_cpu(client, lambda: trio.run(_measure_link, client, settings, batches))
    print(f"| publish {BATCH} events | publish script, fenced | {_cells(figures)} |")
    figures = _with_redis_cpu(client, lambda: trio.run(_measure_bare, port, settings, batches))
    print(f"| publish {BATCH} events | publish script on a bare stream | {_cells(figures)} |")
    figures = _with_redis_cpu(client, lambda: trio.run(_measure_pipeline, port, batches))
    before = "PUBLISH pipeline on a bare stream (before)"
    print(f"| publish {BATCH} events | {before} | {_cells(figures)} |")
    client.close()
    print(_coredis_row(port, event))


def _fresh_batches(event: MarketData) -> list[list[MarketData]]:
    """A batch per write (the warm-up's too), each push later than the last: the script
    skips a push it published already, so resending one batch would time a write that
    publishes nothing."""
    k = event.kline
    return [
        [
            event._replace(kline=k._replace(symbol=f"S{i:02}_USDT", ts_ms=k.ts_ms + n))
            for i in range(BATCH)
        ]
        for n in range(WARM_UP + WRITES)
    ]


def _with_redis_cpu(
    client: redis.Redis, measure: Callable[[], tuple[float, float]]
) -> tuple[float, float, float]:
    """`measure`'s figures, and redis-server's own CPU per write meanwhile (microseconds)."""

    def used() -> float:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    before = used()
    cpu_us, wall_us = measure()
    return cpu_us, wall_us, (used() - before) / (WARM_UP + WRITES) * 1e6


def _cells(figures: tuple[float, float, float]) -> str:
    return " | ".join(f"{v:.1f} us" for v in figures)


def _coredis_row(port: int, event: MarketData) -> str:
    """The same write with coredis, or why it was not measured."""
    what = f"| publish {BATCH} events | coredis {COREDIS_VERSION} pipeline on trio |"
    env = ensure_coredis()
    if env.python is None:
        return f"{what} not measured: {env.reason} | |"
    with tempfile.NamedTemporaryFile(suffix=".json") as payload:
        payload.write(encode_event(event))
        payload.flush()
        script = Path(__file__).with_name("coredis_write.py")
        done = subprocess.run(
            [str(env.python), str(script), str(port), payload.name, str(BATCH), str(WRITES)],
            capture_output=True,
            text=True,
            timeout=600,
        )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return f"{what} failed: {tail[0][:200]} | |"
    cpu_us, wall_us = done.stdout.split()
    return f"{what} {cpu_us} us | {wall_us} us |"


async def _timed(write: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """CPU and wall microseconds per awaited `write()`, after a warm-up (thread cache,
    connection)."""
    for _ in range(WARM_UP):
        await write()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(WRITES):
        await write()
    return (
        (time.process_time() - cpu) / WRITES * 1e6,
        (time.perf_counter() - wall) / WRITES * 1e6,
    )


async def _measure_link(
    client: redis.Redis, settings: RedisSettings, batches: list[list[MarketData]]
) -> tuple[float, float]:
    """The publisher's write: one call of the publish script per batch, under a fence."""
    fence = Fence("bench:lease", "bench:term", "bench#1", 1)
    client.set(fence.lease_key, fence.token)
    client.set(fence.term_key, fence.term)
    link = RedisLink.of(client)
    todo = iter(batches)

    async def write() -> BatchResult:
        return await send(link, prepare_batch(settings, next(todo), None, fence))

    try:
        return await _timed(write)
    finally:
        await link.close()


async def _bare_write(
    stream: trio.abc.Stream, reader: hiredis.Reader, payload: bytes, n: int
) -> None:
    """`payload` on a bare stream, then its `n` replies: no shield, no deadline, no checks."""
    await stream.send_all(payload)
    replies = 0
    while replies < n:
        if reader.gets() is False:
            reader.feed(bytes(await stream.receive_some(65536)))
        else:
            replies += 1


async def _measure_bare(
    port: int, settings: RedisSettings, batches: list[list[MarketData]]
) -> tuple[float, float]:
    """The publish script as `_measure_link` sends it, on a bare stream: the script against
    the pipeline on equal terms (the link's own cost is the difference to its row)."""
    fence = Fence("bench:lease", "bench:term", "bench#1", 1)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    reader = hiredis.Reader()
    step = len(batches)  # push times after every one the link's run published
    todo = iter(
        [
            [e._replace(kline=e.kline._replace(ts_ms=e.kline.ts_ms + step)) for e in b]
            for b in batches
        ]
    )

    async def write() -> None:
        await _bare_write(
            stream, reader, prepare_batch(settings, next(todo), None, fence).payload, 1
        )

    try:
        return await _timed(write)
    finally:
        await stream.aclose()


async def _measure_pipeline(port: int, batches: list[list[MarketData]]) -> tuple[float, float]:
    """The write as it was before the publish script: a pipeline of one PUBLISH per event,
    its replies read by hiredis (no fence, no check for pushes already published)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    reader = hiredis.Reader()
    todo = iter(batches)
    head = b"*3\r\n$7\r\nPUBLISH\r\n$11\r\nmarket_data\r\n"

    async def write() -> None:
        payload = b"".join(
            b"%s$%d\r\n%s\r\n" % (head, len(doc), doc) for doc in map(encode_event, next(todo))
        )
        await _bare_write(stream, reader, payload, BATCH)

    try:
        return await _timed(write)
    finally:
        await stream.aclose()


if __name__ == "__main__":
    raise SystemExit(main())
