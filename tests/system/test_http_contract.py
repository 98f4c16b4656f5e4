"""The served API keeps the contract it publishes: schemathesis (a property-based API tester)
reads /openapi.json from the service and sends every operation generated requests, with every
check it has (status codes and headers documented, bodies matching their schemas, 405s naming
the allowed methods, unsupported methods refused, ...). Any finding fails the test.

Real sockets through hypercorn (`serve_http`, as the service serves) and schemathesis's own
command line as a process, as an operator would run it. Deterministic: a fixed seed and
schemathesis's deterministic generation, the snapshots fixed for the whole run (a staleness
limit far beyond it), so the same requests get the same answers every time.
"""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path

import trio

from screener.core.metrics import Metrics
from screener.core.models import (
    Charts,
    FeedStatus,
    Kline,
    RedisStatus,
    UniverseStatus,
)
from screener.core.snapshot import Views
from screener.http.probes import run_heartbeat
from screener.http.routes import create_app, serve_http
from screener.http.stream import Streams
from tests.helpers import ranked

M = 1_770_330_480  # 2026-02-05 22:28:00 UTC
EXAMPLES = 25
"""Generated cases per operation and phase: the whole run stays well under a minute."""
SEED = 20261207


def fresh_views(now: float) -> Views:
    """A service with data: /health 200, /top5 200, /symbol/A_USDT 200."""
    views = Views.empty()
    views.universe.set(UniverseStatus(symbols=2, chunks=1, error=None))
    views.feed.set(FeedStatus(last_push_at=now, conns_up=1, conns_total=1))
    views.redis.set(RedisStatus(up=True, error=None))
    ranked(views, wall_ts=M + 0.5)
    kline = Kline("A_USDT", M, 1e-8, 2e-8, 1e-8, 1.5e-8, 3.0, 4.5e-8, M * 1000 + 1, "mexc")
    views.charts.set(Charts(wall_ts=M + 20.5, lookback_min=15, candles={"A_USDT": (kline,)}))
    return views


CONFIG = """
# /stream lasts until the service stops: read its first events, then hang up.
max-stream-events = 2

# A warning is a finding too (an unresolvable $ref only skips part of the schema, silently).
[warnings]
fail-on = true

# A symbol the service has candles for, so /symbol's 200 answer is checked too (a generated
# name is unknown: 404, also checked).
[[operations]]
include-name = "GET /symbol/{symbol}"
parameters = { symbol = "A_USDT" }
"""


async def test_schemathesis_finds_nothing_against_the_served_openapi(tmp_path: Path) -> None:
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    views = fresh_views(trio.current_time())
    metrics = Metrics()
    streams = Streams(views, metrics, stale_after_s=3600)
    app = create_app(views, metrics, stale_after_s=3600, streams=streams)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(streams.run)
            await nursery.start(run_heartbeat, views.heartbeat)  # /livez 200, as served
            port = await nursery.start(partial(serve_http, app, "127.0.0.1", 0))
            result = await trio.run_process(
                [
                    str(Path(sys.executable).with_name("schemathesis")),
                    "run",
                    f"http://127.0.0.1:{port}/openapi.json",
                    "--checks=all",
                    f"--max-examples={EXAMPLES}",
                    f"--seed={SEED}",
                    "--generation-deterministic",
                    "--workers=1",
                    "--request-timeout=10",
                    "--no-color",
                    f"--report-dir={tmp_path}",
                ],
                cwd=tmp_path,
                capture_stdout=True,
                stderr=subprocess.STDOUT,
                check=False,
            )
            nursery.cancel_scope.cancel()
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, output[-6000:]
    assert "No issues found" in output, output[-6000:]
