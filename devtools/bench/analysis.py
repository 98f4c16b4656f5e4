"""The report's reading of the hot-path figures: what changed (the per-push and per-write
costs of `screener bench --micro`, measured once and kept here with their date) and what
stands in the way of the targets (worked out from this run's own figures)."""

from __future__ import annotations

from devtools.bench.run import Results

CHANGES = (
    "## The hot path: what changed",
    "",
    "Per push and per write, measured by `screener bench --micro` (CPU time of the process,",
    "best of three; the ranges span runs on 2026-12-02, the lower ends on a quiet machine, the",
    "upper with its load average at 5-6 from other work):",
    "",
    "| cost | before | after |",
    "| --- | ---: | ---: |",
    "| decode one push | orjson + a check per field: 4.5-10 us | msgspec typed + range checks: "
    "2.0-5 us |",
    "| encode one event | `as_dict()` + orjson: 1.2-2.3 us | msgspec struct, no dict: 1.2-1.5 us |",
    "| push-to-publish histogram, 20 events | `observe` each: 14-20 us | `observe_many`: "
    "3.2-7 us |",
    "| received counter | one `inc()` per message | one `inc(n)` per run of queued messages |",
    "| read one queued WebSocket message (2026-12-07, loaded machine) | `get_message`, a "
    "checkpoint each: 6.4-11 us | taken from trio-websocket's queue (`screener/core/compat.py`): "
    "0.2 us |",
    "| 20 PUBLISH replies (send included) | `read_response` each: 37-67 us | hiredis `gets` "
    "in bulk: 21-37 us |",
    "| a write of 20 events (encoding included), CPU / wall | redis-py in "
    "`trio.to_thread.run_sync`: 257 / 308 us; in the writer thread: 232 / 298 us | "
    "socket link on the event loop: 141 / 175 us |",
    "| the same write, the link against coredis 6.9 (2026-12-07 16:17, load average 1.5) | "
    "coredis pipeline of 20 PUBLISH on trio: 940 / 966 us | the link: 231 / 233 us |",
    "",
    "- Decoding: a push goes through msgspec's typed decoder (the fields read, their JSON types",
    "  checked in C, the others skipped) and a few range checks; any frame that path does not",
    "  take as a plain good push is decoded again by the checked path, which names the reject",
    "  reason, so every reason and counter stays (a property test checks the fast path accepts",
    "  nothing the checked path rejects).",
    "- Batching: no fixed wait (BATCH_WAIT_MS=0). The window takes what is queued plus what the",
    "  tasks ready in the same scheduler round add; the publisher keeps one write in flight and",
    "  what arrives meanwhile goes in the next, so batches grow with the load (about 9 events a",
    "  write at 2,000 msg/s, 225 writes a second).",
    "- Publishing: one way, the publisher's own link (screener/redis/link.py). It opens its",
    "  own trio stream (TCP, Unix socket or TLS through trio.SSLStream; AUTH and SELECT as RESP",
    "  commands; under Sentinel the master redis-py's public Sentinel API names), sends each",
    "  slice in one `send_all` and `hiredis.Reader` parses the replies on the event loop: no",
    "  thread, no GIL hand-off, no pass through redis-py's pool per write. It replaced two",
    "  threaded ways (redis-py per write in `trio.to_thread`, or in one writer thread) that",
    "  cost 40 % more CPU per write in earlier runs. A write is shielded from cancellation for",
    "  up to REDIS_TIMEOUT_S (2 s) so it is never cut in half.",
    "",
)


def obstacles(res: Results) -> list[str]:
    """What stands in the way of the CPU and throughput targets, in this run's figures."""
    p = res.plan
    lines = ["## What stands in the way of the CPU and throughput targets", ""]
    if res.bare_fixed and res.svc_fixed:
        rate = p.fixed_rate
        bare_us = res.bare_fixed.cpu_pct("bare") / 100 / rate * 1e6
        svc_us = res.svc_fixed.cpu_pct("service") / 100 / rate * 1e6
        lines += [
            f"- Per message the bare loop spends {bare_us:.0f} us of CPU in trio-websocket and",
            f"  wsproto ({res.bare_fixed.cpu_pct('bare'):.1f} % of a core at {rate:,.0f} msg/s "
            "in this run). The service runs the",
            "  same path (trio-websocket's reader task is a third of its GIL samples in the",
            f"  profile above), so 1.25x leaves {bare_us / 4:.0f} us a push for everything else; "
            f"it spends {svc_us - bare_us:.0f} us.",
        ]
    lines += [
        "- Where that goes (the profile above): the publisher's flusher (encoding each event,",
        "  the socket round trip, the bookkeeping of a write), the connection's read loop",
        "  (decoding, the channel to the window), the window (merge, event), and the trio",
        "  scheduler and channels between them. Each is a few microseconds of Python per push",
        "  or per write, several times its cost in isolation (`--micro`) once the caches are",
        "  shared with everything else; none is large enough that removing it alone reaches",
        "  1.25x.",
        "- What would reach it is fewer trio task switches per push: a push passes",
        "  trio-websocket's reader task, the connection's read loop and the window, and a write",
        "  the publisher's collector and flusher, each a scheduler round trip. Folding those",
        "  actors together goes against the design (the publisher is apart so ingest never",
        "  waits for Redis); the other way is a receive path cheaper than trio-websocket and",
        "  wsproto, the bare loop's own cost, which ccxt's aiohttp parser undercuts.",
    ]
    best = res.sustained
    if best and res.bare_max and res.bare_fixed and res.svc_fixed:
        top = best.window.rate("sub", "events")
        bare_top = res.bare_max.rate("bare", "received")
        cost = res.svc_fixed.cpu_pct("service") / res.bare_fixed.cpu_pct("bare")
        lines += [
            f"- Throughput: saturated, the service used {best.window.cpu_pct('service'):.0f} % "
            f"of a core and the bare loop {res.bare_max.cpu_pct('bare'):.0f} %: one",
            "  core is the limit of each, so the ratio of their rates follows the ratio of their",
            f"  costs per push: 1/{cost:.2f} = {1 / cost:.2f}x expected, {top / bare_top:.2f}x "
            "measured.",
        ]
    lines += [
        "- Every figure of a run is of the whole set-up on a shared machine: when other work takes",
        "  the cores (see the load average at the top), the maximum rates and the tails of the",
        "  latencies fall apart for every client alike (this machine's virtual CPUs also stall",
        "  now and then: runs minutes apart gave the bare loop's own p99 3 ms and 17 ms), and",
        "  only the ratios within one run and the per-push figures above are worth comparing.",
        "- The before figures come from another build of the machine (Linux 6.18.44-fc-v857;",
        "  this run's kernel is named at the top): the bare loop took 11.7 % of a core at 2,000",
        "  msg/s then, 9-22 % in the runs since. So the before/after table compares ratios to",
        "  the bare loop of the same run, not percentages.",
        "",
    ]
    return lines
