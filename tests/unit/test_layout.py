"""The tree states the architecture, and these checks keep it so: imports flow one way,
actors never import each other, the service never imports the development tools, and no
production module holds mutable state at module level."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = sorted(
    p for top in ("screener", "actors") for p in (ROOT / top).rglob("*.py") if p.is_file()
)

# Layers from the bottom up; a module may import its own layer or any lower one.
FACTS = {"screener.mexc.names"}  # the venue's names, which config validates against
SHELL = {
    "screener.__main__",
    "screener.app",
    "screener.http",
    "screener.http_server",
    "screener.healthcheck",
    "screener.stream",
}
BASE = {
    "screener",
    "screener.compat",
    "screener.config",
    "screener.models",
    "screener.metrics",
    "screener.logs",
    "screener.periodic",
    "screener.snapshot",
    "screener.supervise",
    "screener.health",
    "screener.charts",
    "screener.redis_client",
    "screener.redis_batch",
    "screener.fleet",
    "screener.fleet_redis",
    "screener.writer_thread",
    "screener.redis_socket",
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


def test_imports_flow_one_way() -> None:
    wrong: list[str] = []
    for path in PRODUCTION:
        me = module_name(path)
        for other in sorted(imports(path)):
            if other.startswith("devtools"):
                wrong.append(f"{me} imports the development tool {other}")
            elif other.startswith("actors") and me.startswith("actors"):
                wrong.append(f"actor {me} imports actor {other}")
            elif layer(other) > layer(me):
                wrong.append(f"{me} (layer {layer(me)}) imports {other} (layer {layer(other)})")
    assert not wrong, "\n".join(wrong)
    assert len(PRODUCTION) > 20  # the glob found the tree


def test_models_and_config_stay_free_of_the_web_and_the_actors() -> None:
    for name in ("models", "config"):
        text = (ROOT / "screener" / f"{name}.py").read_text()
        for banned in ("import quart", "from quart", "from actors", "import actors"):
            assert banned not in text, f"screener/{name}.py: {banned}"


MUTABLE_CALLS = {"list", "dict", "set", "defaultdict", "Counter", "deque"}


def test_no_mutable_state_at_module_level() -> None:
    wrong: list[str] = []
    for path in PRODUCTION:
        for node in ast.parse(path.read_text()).body:
            value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
            if value is None:
                continue
            final = isinstance(node, ast.AnnAssign) and "Final" in ast.unparse(node.annotation)
            literal = isinstance(value, ast.List | ast.Dict | ast.Set | ast.ListComp | ast.DictComp)
            call = isinstance(value, ast.Call) and ast.unparse(value.func) in MUTABLE_CALLS
            # A Final table (read, never written) is allowed; anything else mutable is state.
            if call or (literal and not final):
                wrong.append(f"{module_name(path)}:{node.lineno}: module-level mutable value")
    assert not wrong, "\n".join(wrong)
