"""The tree states the architecture, and these checks keep it so: imports flow one way,
actors never import each other, the service never imports the development tools, and no
production module holds mutable state at module level."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = sorted(
    p for top in ("screener", "actors") for p in (ROOT / top).rglob("*.py") if p.is_file()
)

# Layers from the bottom up; a module may import its own layer or any lower one.
FACTS = {"screener.mexc.names"}  # the venue's names, which config validates against
SHELL = {"screener.__main__", "screener.app", "screener.http", "screener.healthcheck"}
BASE = {
    "screener",
    "screener.config",
    "screener.models",
    "screener.metrics",
    "screener.logs",
    "screener.periodic",
    "screener.snapshot",
    "screener.supervise",
    "screener.health",
    "screener.redis_client",
    "screener.mexc.values",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    """0 facts, 1 base, 2 venue, 3 actors, 4 shell."""
    if module in FACTS:
        return 0
    if module in BASE:
        return 1
    if module.startswith("screener.mexc"):
        return 2
    if module.startswith("actors"):
        return 3
    if module in SHELL:
        return 4
    raise AssertionError(f"{module}: not placed in a layer (add it to this test)")


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("screener", "actors", "devtools")}


@pytest.mark.parametrize("path", PRODUCTION, ids=module_name)
def test_imports_flow_one_way(path: Path) -> None:
    me = module_name(path)
    for other in imports(path):
        assert not other.startswith("devtools"), f"{me} imports the development tool {other}"
        if other.startswith("actors") and me.startswith("actors"):
            raise AssertionError(f"actor {me} imports actor {other}")
        if other != "screener.__main__":
            assert layer(other) <= layer(me), f"{me} (layer {layer(me)}) imports {other} above it"


def test_models_and_config_stay_free_of_the_web_and_the_actors() -> None:
    for name in ("models", "config"):
        text = (ROOT / "screener" / f"{name}.py").read_text()
        for banned in ("import quart", "from quart", "from actors", "import actors"):
            assert banned not in text, f"screener/{name}.py: {banned}"


MUTABLE_CALLS = {"list", "dict", "set", "defaultdict", "Counter", "deque"}


@pytest.mark.parametrize("path", PRODUCTION, ids=module_name)
def test_no_mutable_state_at_module_level(path: Path) -> None:
    for node in ast.parse(path.read_text()).body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if value is None:
            continue
        final = isinstance(node, ast.AnnAssign) and "Final" in ast.unparse(node.annotation)
        literal = isinstance(value, ast.List | ast.Dict | ast.Set | ast.ListComp | ast.DictComp)
        call = isinstance(value, ast.Call) and ast.unparse(value.func) in MUTABLE_CALLS
        where = f"{module_name(path)}:{node.lineno}"
        # A Final table (read, never written) is allowed; anything else mutable is state.
        assert final or not literal, f"{where}: module-level mutable literal without Final"
        assert not call, f"{where}: module-level mutable object"
