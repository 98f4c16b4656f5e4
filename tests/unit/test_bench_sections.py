"""The benchmark rewrites docs/performance.md whole, except the sections other runs write."""

from __future__ import annotations

from pathlib import Path

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
