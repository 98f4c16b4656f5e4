"""/metrics as Prometheus's own linter reads it: the service runs over loopback (simulator,
real redis-server, hypercorn) until events are published and a ranking is made, then
`promtool check metrics` (Debian's `prometheus` package; CI installs it) checks what /metrics
served. Real processes because promtool is one, and the exposition must be the live one."""

from __future__ import annotations

import shutil

import pytest
import trio

from devtools.devredis import RedisServer
from devtools.simulator import SimConfig
from tests.system.service_harness import counter, eventually, running, simulator

PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: apt-get install prometheus (CI installs it)"
)
async def test_live_metrics_pass_promtool(redis_server: RedisServer) -> None:
    assert PROMTOOL is not None
    with trio.fail_after(30):
        async with (
            simulator(SimConfig(symbols=5, rate_per_s=50)) as (_, sim),
            running(sim, redis_server.port) as (svc, http),
        ):
            await eventually(lambda: counter(svc, "screener_rankings_total") >= 1)
            await eventually(
                lambda: (
                    counter(svc, "screener_push_to_publish_seconds_count") > 0
                    or counter(svc, "screener_events_published_total", channel="market_data") > 0
                )
            )
            await http.get("/health")
            text = (await http.get("/metrics")).text
    with trio.fail_after(30):
        lint = await trio.run_process(
            [PROMTOOL, "check", "metrics"],
            stdin=text.encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    said = (lint.stdout + lint.stderr).decode()
    assert lint.returncode == 0, said
    assert said == ""  # no warning either
    assert "_created" not in text
    for series in (
        "process_resident_memory_bytes",
        "process_open_fds",
        "screener_build_info{",
        'screener_http_request_duration_seconds_count{route="/health"}',
        "screener_last_push_timestamp_seconds",
        'screener_rest_failures_total{endpoint="ticker",reason="timeout"} 0.0',
    ):
        assert series in text, series
