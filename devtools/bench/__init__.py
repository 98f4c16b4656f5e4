"""`screener bench`: the measurements of issue 3, each beside a bare trio-websocket baseline,
and the soak of issue 6 (`--soak MINUTES`). `cli` is the command line, `run` and `soak` the
runs over the processes of `lab` (started from `children`), `report` and `soak_report` write
docs/performance.md and the Soak section of docs/reliability.md.
"""

from devtools.bench.cli import main

__all__ = ("main",)
