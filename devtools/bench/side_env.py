"""Virtual environments of their own for the clients the benchmark compares the service with
(ccxt, coredis): created and filled with `pip install NAME==VERSION` on the first run that
needs one, then reused from the user's cache. Kept apart from the project's environment and
its lock: ccxt pins its own versions of aiohttp, orjson and more, and neither is a dependency
of the service. A failure is a reason to say, never an exception."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

CCXT_VERSION = "4.5.90"
"""Pinned, so runs on different days compare the same client."""
COREDIS_VERSION = "6.9.0"
"""The typed anyio client weighed against the publisher's link (docs/architecture.md)."""


class SideEnv(NamedTuple):
    python: Path | None  # None: not available, `reason` says why
    reason: str


def env_dir(name: str = "ccxt", version: str = CCXT_VERSION) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "screener-bench" / f"{name}-{version}"


def ensure(name: str, version: str, *extra: str) -> SideEnv:
    """The Python of a virtual environment holding `name==version` (and `extra`
    requirements), installing it if needed."""
    root = env_dir(name, version)
    python = root / "bin" / "python"
    ready = root / ".installed"
    if ready.exists() and python.exists():
        return SideEnv(python, "")
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(root)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"{name}=={version}", *extra],
            capture_output=True,
            timeout=900,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return SideEnv(None, f"could not create its virtual environment ({exc})")
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return SideEnv(None, f"pip install {name}=={version} failed: {tail[0][:200]}")
    ready.touch()
    return SideEnv(python, "")


def ensure_ccxt() -> SideEnv:
    """ccxt's environment (about 150 MB, a minute or two to install the first time)."""
    return ensure("ccxt", CCXT_VERSION)


def ensure_coredis() -> SideEnv:
    """coredis's environment, with trio to run it on."""
    return ensure("coredis", COREDIS_VERSION, "trio")
