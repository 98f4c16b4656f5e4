"""The benchmark rewrites docs/performance.md whole, except the sections other runs write."""

from __future__ import annotations

from pathlib import Path

from devtools.bench.report import kept_sections


def test_the_fleet_section_survives_a_benchmark_run(tmp_path: Path) -> None:
    report = tmp_path / "performance.md"
    report.write_text(
        "# Performance\n\n## Figures\n\nold\n\n## Fleet\n\nfleet figures\n\n## Z\n\nz\n"
    )
    assert kept_sections(report) == ["", "## Fleet", "", "fleet figures", ""]
    assert kept_sections(tmp_path / "absent.md") == []
