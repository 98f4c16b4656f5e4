"""Where a report's figures come from: when, by which command, on which commit (and whether
the service's code differed from it), CPU, Python, Linux and the hot path's libraries."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path


def provenance(command: str) -> list[str]:
    """Markdown list items heading a report: date, command, then `machine`."""
    return [
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Command: `{command}`",
        *machine(),
    ]


def code_version() -> str:
    """The commit measured, and whether the service's code differed from it."""
    root = Path(__file__).resolve().parents[2]  # devtools/bench/provenance.py -> the checkout
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "actors", "screener"],
            cwd=root,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    changed = dirty.stdout.decode().splitlines()
    commit = head.stdout.decode().strip() or "unknown"
    if not changed:
        return f"commit {commit}"
    return f"commit {commit} plus uncommitted changes in {len(changed)} file(s) of the service"


def machine() -> list[str]:
    """Markdown list items: the code, the CPU, Python and Linux, the hot path's libraries."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("trio", "trio-websocket", "wsproto", "redis", "hiredis", "orjson")
    )
    return [
        f"- Code: {code_version()}",
        f"- CPU: {os.cpu_count()} x {model} (nproc {len(os.sched_getaffinity(0))})",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), "
        f"Linux {platform.release()}",
        f"- {versions}",
    ]
