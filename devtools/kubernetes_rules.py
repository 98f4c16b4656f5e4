"""Writes the Kubernetes PrometheusRule (docker/kubernetes/base/prometheusrule.yaml) from the
compose stack's alert rules (docker/monitoring/alerts.yml), so the two carry the same alerts.

A PrometheusRule's `spec` is a Prometheus rule file, so the rule file's text goes under
`spec:` as it is, indented, its comments included: no YAML library rewrites an expression.
`make kubernetes-rules` runs it after alerts.yml changes; tests/system/test_kubernetes.py
fails while the rendered rule's groups differ from alerts.yml's.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "docker" / "monitoring" / "alerts.yml"
RULE = ROOT / "docker" / "kubernetes" / "base" / "prometheusrule.yaml"

HEAD = """\
# GENERATED from docker/monitoring/alerts.yml by `make kubernetes-rules`: edit that file, not
# this one (tests/system/test_kubernetes.py fails while they differ). The Prometheus
# Operator loads it into every Prometheus whose ruleSelector matches its labels
# (docs/operations.md, "Running on Kubernetes").
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: screener
  labels:
    app.kubernetes.io/name: screener
spec:
"""


def rule_text(alerts: str) -> str:
    """The PrometheusRule whose spec is the rule file `alerts`, its lines indented by two
    (less the file's opening comment, which speaks of compose)."""
    lines = alerts.splitlines()
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)
    body = [f"  {line}" if line.strip() else "" for line in lines]
    return HEAD + "\n".join(body).rstrip("\n") + "\n"


def main() -> int:
    new = rule_text(ALERTS.read_text())
    if RULE.exists() and RULE.read_text() == new:
        return 0
    RULE.write_text(new)
    print(f"kubernetes-rules: rewrote {RULE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
