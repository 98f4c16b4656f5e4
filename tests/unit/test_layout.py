"""The tree states the architecture, and these checks keep it so: imports flow one way (the
composition root, screener/app.py and screener/__main__.py, -> actors -> the concerns'
sub-packages -> screener/core/), actors never import each other, the service never imports
the development tools, and no production module holds mutable state at module level."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = sorted(
    p for top in ("screener", "actors") for p in (ROOT / top).rglob("*.py") if p.is_file()
)

# The composition root: the entry points above everything they wire.
ROOT_MODULES = {"screener.__main__", "screener.app", "screener.healthcheck"}
CORE = "screener.core"
CONCERNS = {"screener.mexc", "screener.redis", "screener.http", "screener.fleet"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    """The room a module lives in: `actors`, a root module, `screener` (the package's
    `__init__`, its version only), `screener.core` or one concern."""
    if module.startswith("actors"):
        return "actors"
    if module in ROOT_MODULES or module == "screener":
        return module
    room = ".".join(module.split(".")[:2])
    if room == CORE or room in CONCERNS:
        return room
    raise AssertionError(f"{module}: not in a sub-package (add it to one, or to this test)")


def layer(module: str) -> int:
    """0 the package's `__init__`, 1 core, 2 the concerns, 3 actors, 4 the composition root."""
    room = package_of(module)
    if room == "screener":
        return 0
    if room == CORE:
        return 1
    if room in CONCERNS:
        return 2
    if room == "actors":
        return 3
    return 4


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from screener import app` imports the module screener.app.
            for alias in node.names:
                inner = ROOT.joinpath(*node.module.split("."), alias.name)
                if inner.with_suffix(".py").is_file() or inner.is_dir():
                    found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("screener", "actors", "devtools")}


def test_imports_flow_one_way() -> None:
    """The composition root -> actors -> the concerns -> core. Actors never import each
    other, the root or HTTP; a concern imports core and itself, never another concern, an
    actor or the root."""
    wrong: list[str] = []
    for path in PRODUCTION:
        me = module_name(path)
        for other in sorted(imports(path)):
            if other.startswith("devtools"):
                wrong.append(f"{me} imports the development tool {other}")
                continue
            mine, theirs = package_of(me), package_of(other)
            if mine == "actors" and theirs == "actors":
                wrong.append(f"actor {me} imports actor {other}")
            elif mine == "actors" and theirs == "screener.http":
                wrong.append(f"actor {me} imports HTTP {other}")
            elif layer(other) > layer(me):
                wrong.append(f"{me} (layer {layer(me)}) imports {other} (layer {layer(other)})")
            elif mine in CONCERNS and theirs in CONCERNS and mine != theirs:
                wrong.append(f"{me} imports {other}, a module of another concern")
    assert not wrong, "\n".join(wrong)
    assert len(PRODUCTION) > 20  # the glob found the tree


def test_the_root_holds_only_the_composition_root() -> None:
    """Everything else lives in a room: screener/core/ or one concern's sub-package."""
    top = {p.stem for p in (ROOT / "screener").glob("*.py")}
    assert top == {"__init__", "__main__", "app", "healthcheck"}, sorted(top)
    rooms = {p.name for p in (ROOT / "screener").iterdir() if (p / "__init__.py").is_file()}
    assert {f"screener.{room}" for room in rooms} == {CORE, *CONCERNS}, sorted(rooms)


def test_models_and_config_stay_free_of_the_web_and_the_actors() -> None:
    for name in ("models", "config"):
        text = (ROOT / "screener" / "core" / f"{name}.py").read_text()
        for banned in ("import quart", "from quart", "from actors", "import actors"):
            assert banned not in text, f"screener/core/{name}.py: {banned}"


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
