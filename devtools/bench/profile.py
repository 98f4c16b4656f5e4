"""The py-spy profile of the service: record its GIL-holding thread for a while, then sum the
collapsed stacks by component, by trio task and by function into Markdown tables."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from devtools.bench.lab import Lab

# A frame's file -> the component it is counted under; the first needle found wins, so the
# specific ones come before the general ("trio/_channel" before "trio/").
_GROUPS: tuple[tuple[str, str], ...] = (
    ("trio_websocket", "trio-websocket"),
    ("wsproto", "wsproto"),
    ("h11", "h11 (HTTP)"),
    ("trio/_threads", "trio to_thread hand-off"),
    ("trio/_core/_thread_cache", "trio to_thread hand-off"),
    ("trio/_core/_io", "trio scheduler and I/O"),
    ("trio/_core/_run", "trio scheduler and I/O"),
    ("trio/_core/_traps", "trio scheduler and I/O"),
    ("trio/_core/_wakeup", "trio scheduler and I/O"),
    ("outcome", "trio scheduler and I/O"),
    ("trio/_channel", "trio memory channels"),
    ("trio/", "trio other (streams, sockets, sync)"),
    # Ours before redis-py's: "redis/" is in screener/redis/ paths too.
    ("screener/redis/client", "screener/redis/client.py"),
    ("screener/redis/batch", "screener/redis/batch.py"),
    ("screener/redis/link", "screener/redis/link.py"),
    ("screener/redis/connect", "screener/redis/connect.py"),
    ("screener/redis/lanes", "screener/redis/lanes.py"),
    ("screener/redis/status", "screener/redis/status.py"),
    ("redis/", "redis-py"),
    ("hiredis", "redis-py"),
    ("actors/connection", "actors/connection.py"),
    ("screener/mexc/frames", "screener/mexc/frames.py (decoder)"),
    ("screener/mexc/values", "screener/mexc/values.py (decoder)"),
    ("actors/window", "actors/window.py"),
    ("actors/publisher", "actors/publisher.py"),
    ("actors/ranking", "actors/ranking.py"),
    ("screener/core/models", "screener/core/models.py"),
    ("screener/core/snapshot", "screener/core/snapshot.py"),
    ("prometheus_client", "prometheus_client"),
    ("loguru", "loguru"),
    ("hypercorn", "HTTP (hypercorn, quart)"),
    ("quart", "HTTP (hypercorn, quart)"),
    ("werkzeug", "HTTP (hypercorn, quart)"),
    ("threading", "threading (stdlib)"),
)


def _group(frame: str) -> str:
    path = frame[frame.rfind("(") + 1 :].split(":")[0]
    for needle, name in _GROUPS:
        if needle in path:
            return name
    return "other: " + Path(path).name


def _function(frame: str) -> str:
    name, _, where = frame.rpartition(" (")
    path, _, line = where.rstrip(")").rpartition(":")
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short}:{line})"


def _task(frames: list[str]) -> str:
    """The trio task a sample belongs to: the coroutine right under the scheduler."""
    loop = [
        i
        for i, f in enumerate(frames)
        if f.startswith("unrolled_run (") or (f.startswith("run (") and "trio/_core" in f)
    ]
    if loop:
        i = loop[-1]
        return "trio scheduler itself" if i + 1 == len(frames) else frames[i + 1].split(" (")[0]
    if any(f.startswith("publish_batch (") for f in frames):
        return "worker thread: publish_batch"
    return "other thread: " + frames[-1].split(" (")[0]


def summarize_profile(raw: str) -> list[str]:
    """Markdown tables: self and inclusive time by component, top functions, trio tasks."""
    self_group: dict[str, int] = {}
    incl_group: dict[str, int] = {}
    by_function: dict[str, int] = {}
    by_task: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaf = frames[-1]
        for key, counts in ((_group(leaf), self_group), (_function(leaf), by_function)):
            counts[key] = counts.get(key, 0) + count
        for key in {_group(f) for f in frames if "runpy" not in f and "__main__" not in f}:
            incl_group[key] = incl_group.get(key, 0) + count
        task = _task(frames)
        by_task[task] = by_task.get(task, 0) + count
    if not total:
        return ["py-spy recorded no samples holding the GIL."]

    def table(title: str, counts: dict[str, int], n: int, share: str = "share") -> list[str]:
        rows = [f"| {title} | {share} |", "| --- | ---: |"]
        for key, value in sorted(counts.items(), key=lambda kv: -kv[1])[:n]:
            rows.append(f"| {key} | {value / total:.1%} |")
        return [*rows, ""]

    return [
        f"{total} samples of the thread holding the GIL (py-spy `--gil`, 200 Hz; a thread "
        "waiting in epoll or on a lock does not hold it, so this is Python busy time).",
        "",
        "By component, self time (the innermost frame) and inclusive time (anywhere on the stack):",
        "",
        *_two_columns(self_group, incl_group, total),
        "By trio task (the coroutine directly under the scheduler) or thread:",
        "",
        *table("task", by_task, 14),
        "Top functions by self time:",
        "",
        *table("function (file:line)", by_function, 20, "self"),
    ]


def _two_columns(self_time: dict[str, int], inclusive: dict[str, int], total: int) -> list[str]:
    rows = ["| component | self | inclusive |", "| --- | ---: | ---: |"]
    for key, value in sorted(inclusive.items(), key=lambda kv: -self_time.get(kv[0], 0))[:16]:
        rows.append(f"| {key} | {self_time.get(key, 0) / total:.1%} | {value / total:.1%} |")
    return [*rows, ""]


def run_profile(lab: Lab, pid: int, seconds: float) -> list[str]:
    """`seconds` of py-spy on `pid`, summarized; a line saying why where there is none."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return ["py-spy not installed (`pip install py-spy`): no profile."]
    raw = lab.dir / "profile.txt"
    done = subprocess.run(
        [
            *(spy, "record", "--pid", str(pid), "--duration", str(int(seconds))),
            *("--rate", "200", "--gil", "--format", "raw", "--output", str(raw)),
        ],
        capture_output=True,
        timeout=seconds + 60,
        check=False,
    )
    if done.returncode != 0 or not raw.exists():
        return [f"py-spy failed: {done.stderr.decode(errors='replace')[-300:]}"]
    kept = Path(tempfile.gettempdir()) / "screener-bench-profile.txt"
    shutil.copy(raw, kept)
    lab.check()
    note = f"Raw collapsed stacks of this run: `{kept}` (py-spy raw format, not committed)."
    return [note, "", *summarize_profile(raw.read_text())]
