"""The monitoring profile: Prometheus's config and alert rules as promtool reads them (and
their unit tests, docker/monitoring/alerts_test.yml), the Grafana dashboard's queries against
the service's own registry, compose.yaml with `--profile monitoring`, and a real Prometheus
(Debian's `prometheus` package) scraping a real screener with the repository's config.

Real tools because hand-checking PromQL or Prometheus's config schema would not catch what
they reject. Each check skips only when its tool is missing, saying what to install.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from devtools.devredis import RedisServer
from devtools.simulator import SimConfig
from screener.core.metrics import Metrics
from tests.system.service_harness import running, simulator
from tests.system.test_packaging import compose, compose_project, memory_bytes, run_compose

__all__ = ["compose"]  # the fixture, imported to be used here

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "docker" / "monitoring"
PROMETHEUS_YML = MONITORING / "prometheus.yml"
ALERTS_YML = MONITORING / "alerts.yml"
ALERTS_TEST_YML = MONITORING / "alerts_test.yml"
GRAFANA = MONITORING / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "screener.json"
DATASOURCE = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
NEED_PROMTOOL = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: apt-get install prometheus (CI installs it)"
)
SERIES = re.compile(r"\b(?:screener|process)_[a-z0-9_]+\b")
QUOTED = re.compile(r'"[^"]*"')  # label values such as job="screener_ws": no series
MONITORS = ("prometheus", "grafana")


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


# --- Prometheus config and rules -------------------------------------------------------------


@NEED_PROMTOOL
def test_prometheus_config_passes_promtool() -> None:
    result = promtool("check", "config", PROMETHEUS_YML.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


@NEED_PROMTOOL
def test_alert_rules_pass_promtool() -> None:
    result = promtool("check", "rules", ALERTS_YML.name)
    assert result.returncode == 0, result.stdout + result.stderr


@NEED_PROMTOOL
def test_alert_rules_unit_tests_pass() -> None:
    """Stale feed fires a minute after the last push is 60 s old (a pushing feed never
    does); Redis down fires after a minute at 0 and clears when it is back."""
    result = promtool("test", "rules", ALERTS_TEST_YML.name)
    assert result.returncode == 0, result.stdout + result.stderr


def registry_series() -> set[str]:
    """Every series name the service exposes (`_total`, `_bucket`, ... included)."""
    return {sample.name for m in Metrics().registry.collect() for sample in m.samples}


def unknown_series(expressions: list[str]) -> set[str]:
    known = registry_series()
    used = {name for expr in expressions for name in SERIES.findall(QUOTED.sub("", expr))}
    assert used, "no screener_* or process_* series in the queries"
    return {name for name in used if name not in known and not name.startswith("process_")}


def alert_rules() -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml")
    groups = yaml.safe_load(ALERTS_YML.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_use_only_existing_metrics() -> None:
    rules = alert_rules()
    assert unknown_series([rule["expr"] for rule in rules]) == set()
    for rule in rules:
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]


# --- the Grafana dashboard -------------------------------------------------------------------


def dashboard_panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_dashboard_queries_use_only_existing_metrics() -> None:
    panels = dashboard_panels()
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    assert unknown_series(exprs) == set()
    joined = "\n".join(exprs)
    for shown in (
        "rate(screener_messages_received_total[1m])",
        "screener_push_to_publish_seconds_bucket",
        "screener_http_request_duration_seconds_bucket",
        "process_resident_memory_bytes",
    ):
        assert shown in joined, shown


def test_dashboard_uses_the_provisioned_datasource() -> None:
    yaml = pytest.importorskip("yaml")
    [source] = yaml.safe_load(DATASOURCE.read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090"  # the compose service
    for panel in dashboard_panels():
        uids = {panel["datasource"]["uid"], *(t["datasource"]["uid"] for t in panel["targets"])}
        assert uids == {source["uid"]}, panel["title"]


# --- compose.yaml ----------------------------------------------------------------------------


def monitoring_project(directory: Path, grafana_password: str) -> Path:
    project = compose_project(directory, password="not-a-real-secret")
    with (project / ".env").open("a") as env:
        env.write(f"GRAFANA_ADMIN_PASSWORD={grafana_password}\n")
    return project


def test_compose_monitoring_profile_renders(compose: list[str], tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    project = monitoring_project(tmp_path, "not-a-real-grafana-secret")
    result = run_compose(compose, project, "--profile", "monitoring", "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name in MONITORS:
        svc = services[name]
        assert svc["profiles"] == ["monitoring"], name
        image, _, tag = svc["image"].partition(":")
        assert image in {"prom/prometheus", "grafana/grafana-oss"}, name
        assert tag, f"{name}: pin the image tag"
        assert tag != "latest", f"{name}: pin the image tag"
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert 128 << 20 <= memory_bytes(svc["mem_limit"]) <= 1 << 30, name
        assert svc["healthcheck"]["test"], name
        for port in svc["ports"]:
            published = port if isinstance(port, str) else f"{port['host_ip']}:{port['published']}"
            assert published.startswith("127.0.0.1:"), f"{name} published beyond loopback"
    grafana = services["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "not-a-real-grafana-secret"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    mounts = "\n".join(map(str, services["prometheus"]["volumes"]))
    assert "docker/monitoring/prometheus.yml" in mounts
    assert "docker/monitoring/alerts.yml" in mounts
    # The stack's own services are there too, untouched by the profile.
    assert services["screener_ws"]["read_only"] is True


def test_grafana_refuses_to_start_without_admin_password(
    compose: list[str], tmp_path: Path
) -> None:
    """The container's entrypoint guard, run by a real shell: empty password, exit 1 with
    the reason, before Grafana would start; with one, it goes on to exec Grafana's /run.sh
    (absent here, hence 127)."""
    yaml = pytest.importorskip("yaml")
    project = monitoring_project(tmp_path, "")
    result = run_compose(compose, project, "--profile", "monitoring", "config")
    assert result.returncode == 0, result.stderr  # the rest of the stack still renders
    grafana = yaml.safe_load(result.stdout)["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] in ("", None)
    shell, flag, script, *args = grafana["entrypoint"]
    command = [shell, flag, script.replace("$$", "$"), *args]  # what the container runs

    def start(password: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "GF_SECURITY_ADMIN_PASSWORD": password}
        return subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=10, check=False
        )

    refused = start("")
    assert refused.returncode == 1
    assert "set GRAFANA_ADMIN_PASSWORD in .env" in refused.stderr
    assert start("secret").returncode == 127  # went on to `exec /run.sh`


# --- a real Prometheus scraping a real screener ----------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def prometheus_config(directory: Path, target: str) -> Path:
    """The repository's prometheus.yml, scraping `target` every second as `screener_ws`
    (the REST job's DNS discovery is dropped: no compose network here), beside alerts.yml."""
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    [ws] = [job for job in config["scrape_configs"] if job["job_name"] == "screener_ws"]
    ws["static_configs"] = [{"targets": [target]}]
    config["scrape_configs"] = [ws]
    shutil.copy(ALERTS_YML, directory / "alerts.yml")
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


async def query(client: httpx.AsyncClient, promql: str) -> list[dict[str, Any]]:
    answer = (await client.get("/api/v1/query", params={"query": promql})).json()
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


@pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus missing: apt-get install prometheus (CI installs it)"
)
async def test_prometheus_scrapes_the_service(redis_server: RedisServer, tmp_path: Path) -> None:
    assert PROMETHEUS is not None
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    with trio.fail_after(20):
        async with (
            simulator(SimConfig(symbols=5, rate_per_s=50)) as (_, sim),
            running(sim, redis_server.port) as (svc, _),
        ):
            config = prometheus_config(tmp_path, f"127.0.0.1:{svc.http_port}")
            prom = await trio.lowlevel.open_process(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                    # Polling another process's HTTP API: there is nothing to wait on.
                    while True:
                        try:
                            ready = (await client.get("/-/ready")).status_code == 200
                            # Until ready, Prometheus answers 503 in plain text.
                            up = await query(client, 'up{job="screener_ws"}') if ready else []
                            fed = (
                                await query(client, "screener_messages_received_total > 0")
                                if ready
                                else []
                            )
                        except httpx.TransportError:
                            up, fed = [], []  # not listening yet
                        if up and up[0]["value"][1] == "1" and fed:
                            break
                        assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()
                        await trio.sleep(0.2)
                    assert up[0]["metric"]["instance"] == f"127.0.0.1:{svc.http_port}"
                    for series in (
                        'screener_events_published_total{channel="market_data"}',
                        "screener_push_to_publish_seconds_bucket",
                        "screener_last_push_timestamp_seconds",
                        "process_resident_memory_bytes",
                    ):
                        assert await query(client, series), series
                    rules = (await client.get("/api/v1/rules")).json()["data"]["groups"]
            finally:
                prom.kill()
                with trio.move_on_after(10) as reaping:
                    reaping.shield = True
                    await prom.wait()
                log.close()
    loaded = {rule["name"]: rule["health"] for group in rules for rule in group["rules"]}
    assert loaded.keys() == {rule["alert"] for rule in alert_rules()}
    assert set(loaded.values()) <= {"ok", "unknown"}, loaded
