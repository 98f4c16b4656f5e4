"""ccxt's own virtual environment for the benchmark: created and filled with `pip install
ccxt==CCXT_VERSION` on the first run that needs it, then reused (it is ~150 MB and takes a
minute or two to install). Kept apart from the project's environment: ccxt pins its own
versions of aiohttp, orjson and more. A failure is a reason to say, never an exception."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

CCXT_VERSION = "4.5.90"
"""Pinned, so runs on different days compare the same client."""


class CcxtEnv(NamedTuple):
    python: Path | None  # None: not available, `reason` says why
    reason: str


def env_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "screener-bench" / f"ccxt-{CCXT_VERSION}"


def ensure_ccxt() -> CcxtEnv:
    """The Python of a virtual environment holding ccxt, installing it if needed."""
    root = env_dir()
    python = root / "bin" / "python"
    ready = root / ".installed"
    if ready.exists() and python.exists():
        return CcxtEnv(python, "")
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(root)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"ccxt=={CCXT_VERSION}"],
            capture_output=True,
            timeout=900,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return CcxtEnv(None, f"could not create its virtual environment ({exc})")
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return CcxtEnv(None, f"pip install ccxt=={CCXT_VERSION} failed: {tail[0][:200]}")
    ready.touch()
    return CcxtEnv(python, "")
