"""Helpers every kind of test shares (fixtures live in the conftest.py files).

`sample`: one value of a service's Prometheus registry, read the way Prometheus reads it."""

from __future__ import annotations

from screener.core.metrics import Metrics

# The sample names a metric family yields besides its own name.
SUFFIXES = ("", "_total", "_created", "_count", "_sum", "_bucket", "_info")


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """The sample `name` with `labels` of `metrics`' registry.

    A labelled child not created yet reads 0 (a counter before its first increment, as
    Prometheus sees it). A name that no registered metric yields fails at once, so a typo
    cannot pass for a zero."""
    value = metrics.registry.get_sample_value(name, labels)
    if value is not None:
        return value
    known = {family.name + suffix for family in metrics.registry.collect() for suffix in SUFFIXES}
    assert name in known, f"no metric yields the sample {name!r}"
    return 0.0
