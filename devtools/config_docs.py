"""Writes the variable list of .env.example and the variable table of docs/operations.md from
the settings declaration (`screener.core.config.VARIABLES`), so neither is edited by hand.

`make config-docs` runs it after a setting is added or changed; tests/system/test_packaging.py
fails while either file disagrees with the declaration. The text around the list and the table
(the file's header, the compose-only lines, the prose of the doc) is left as it is, and so are
the hand-written notes of .env.example under a variable's help line (what compose does with it).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path

from screener.core.config import VARIABLES

ROOT = Path(__file__).resolve().parents[1]
ENV_EXAMPLE = ROOT / ".env.example"
OPERATIONS = ROOT / "docs" / "operations.md"
TABLE_HEAD = ("| variable | default | meaning |", "| --- | --- | --- |")
_ASSIGNMENT = re.compile(r"[A-Z][A-Z0-9_]*=")


def env_example_lines(notes: Mapping[str, list[str]]) -> list[str]:
    """Each variable as its help comment, its `notes`, then `NAME=default`; a blank line
    between variables."""
    lines: list[str] = []
    for var in VARIABLES:
        lines += [f"# {var.help}", *notes.get(var.name, []), f"{var.name}={var.default}", ""]
    return lines[:-1]


def env_example_notes(lines: list[str]) -> dict[str, list[str]]:
    """The comment lines between each variable's help line and its `NAME=value`."""
    notes: dict[str, list[str]] = {}
    comments: list[str] = []
    for line in lines[env_example_span(lines)]:
        if line.startswith("#"):
            comments.append(line)
        elif _ASSIGNMENT.match(line):
            notes[line.partition("=")[0]] = comments[1:]
            comments = []
        else:
            comments = []
    return notes


def operations_table_lines() -> list[str]:
    """The markdown table of every variable, its default and its meaning."""
    rows = list(TABLE_HEAD)
    for var in VARIABLES:
        default = f"`{var.default}`" if var.default else "(empty)"
        secret = " (secret: hidden in logs and errors)" if var.secret else ""
        rows.append(f"| `{var.name}` | {default} | {var.help}{secret} |")
    return rows


def env_example_span(lines: list[str]) -> slice:
    """The variable list inside .env.example: from the help line of its first `NAME=value`
    to its last `NAME=value`."""
    at = [i for i, line in enumerate(lines) if _ASSIGNMENT.match(line)]
    if not at:
        raise ValueError(".env.example: no NAME=value line")
    return slice(at[0] - 1, at[-1] + 1)


def operations_table_span(lines: list[str]) -> slice:
    """The variable table inside docs/operations.md: its header and every row after it."""
    start = lines.index(TABLE_HEAD[0])
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return slice(start, end)


def _rewrite(path: Path, span: slice, new: list[str]) -> bool:
    lines = path.read_text().splitlines()
    if lines[span] == new:
        return False
    lines[span] = new
    path.write_text("\n".join(lines) + "\n")
    return True


def main() -> int:
    """Rewrite both files; say which changed."""
    env_lines = ENV_EXAMPLE.read_text().splitlines()
    doc_lines = OPERATIONS.read_text().splitlines()
    notes = env_example_notes(env_lines)
    changed = [
        path.relative_to(ROOT)
        for path, span, new in (
            (ENV_EXAMPLE, env_example_span(env_lines), env_example_lines(notes)),
            (OPERATIONS, operations_table_span(doc_lines), operations_table_lines()),
        )
        if _rewrite(path, span, new)
    ]
    for path in changed:
        print(f"config-docs: rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
