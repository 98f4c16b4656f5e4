"""`screener bench --quick` (and `--fleet --quick`) end to end: the whole pipeline delivers
(never a speed).

It starts real processes (redis-server, simulator, service, subscriber, bare client) on
loopback, so it runs as a subprocess under a hard timeout.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

QUICK_TIMEOUT_S = 90  # the quick run takes about 15 s; the ceiling allows a slow CI machine


def test_quick_bench_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "performance.md"
    done = subprocess.run(
        [sys.executable, "-m", "devtools.bench", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = out.read_text()
    assert "| figure | value | baseline (bare client) | ratio to baseline | target |" in report
    for figure in ("max sustained throughput", "CPU at", "push-to-Redis latency p99", "/top5"):
        assert figure in report
    assert "| figure |" in done.stdout


QUICK_FLEET_TIMEOUT_S = 240  # about a minute: four replicas start, two takeovers


def test_quick_fleet_bench_counts_every_push_of_its_takeovers(tmp_path: Path) -> None:
    """`--fleet --quick`: one SIGKILL and one SIGSTOP takeover, each with the gap and the
    checker's counts, written into the Fleet section (the counts are figures here, not
    asserted: the fleet's own tests hold them to 0)."""
    out = tmp_path / "performance.md"
    done = subprocess.run(
        [sys.executable, "-m", "devtools.bench", "--fleet", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=QUICK_FLEET_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = out.read_text()
    assert "## Fleet" in report
    assert "| fault | rounds | gap median (min-max) | pushes | lost | duplicated |" in report
    for kind in ("SIGKILL", "SIGSTOP"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {kind} "))
        pushes = int(row.split("|")[4].strip().replace(",", ""))
        assert pushes > 0, row
