"""The benchmark rewrites docs/performance.md whole, except the sections other runs write."""

from __future__ import annotations

from pathlib import Path

from devtools.bench.fleet import FleetPlan, FleetResult, Round, takeover_table
from devtools.bench.profile import _group
from devtools.bench.report import kept_sections


def test_the_fleet_section_survives_a_benchmark_run(tmp_path: Path) -> None:
    report = tmp_path / "performance.md"
    report.write_text(
        "# Performance\n\n## Figures\n\nold\n\n## Fleet\n\nfleet figures\n\n## Z\n\nz\n"
    )
    assert kept_sections(report) == ["", "## Fleet", "", "fleet figures", ""]
    assert kept_sections(tmp_path / "absent.md") == []


def test_the_profile_tells_our_redis_modules_from_redis_py() -> None:
    """`screener/redis/` paths hold "redis/" too: ours must be named before redis-py is."""
    ours = "RedisLink.request (/src/screener/redis/link.py:80)"
    theirs = "Redis.execute_command (/venv/lib/python3.11/site-packages/redis/client.py:600)"
    assert _group(ours) == "screener/redis/link.py"
    assert _group(theirs) == "redis-py"


def test_the_fleet_section_counts_each_kind_of_takeover() -> None:
    """The checker's counts stand next to the gap, one row per fault."""
    res = FleetResult(FleetPlan(lease_s=2.0))
    res.rounds = [
        Round("SIGKILL", 2.0, 0, 1, pushes=100, lost=3),
        Round("SIGKILL", 3.0, 1, 2, pushes=100, duplicated=1),
        Round("SIGSTOP", 2.5, 2, 3, pushes=50, back_in_time=2),
    ]
    table = takeover_table(res)
    assert "| SIGKILL of the leader | 2 | **2.50 s** (2.00-3.00) | 200 | 3 | 1 | 0 |" in table
    assert "| SIGSTOP of the leader | 1 | **2.50 s** (2.50-2.50) | 50 | 0 | 0 | 2 |" in table
    assert any(line.startswith("| fault | rounds |") for line in table)
