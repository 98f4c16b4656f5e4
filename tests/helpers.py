"""Helpers every kind of test shares (fixtures live in the conftest.py files).

`sample`: one value of a service's Prometheus registry, read the way Prometheus reads it.
`ranked`: a ranking in the snapshots, as HTTP reads it (one gainer, one loser)."""

from __future__ import annotations

from screener.core.metrics import Metrics
from screener.core.models import Ranking, SymbolStat
from screener.core.snapshot import Views

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


def ranked(views: Views, wall_ts: float = 1_770_330_480.5) -> None:
    """A ranking of two symbols in `views`: A_USDT up 2.5 %, B_USDT down 1 %."""
    views.ranking.set(
        Ranking(
            wall_ts=wall_ts,
            lookback_min=15,
            gainers=(SymbolStat(symbol="A_USDT", change_pct=2.5, price=1.5e-8),),
            losers=(SymbolStat(symbol="B_USDT", change_pct=-1.0, price=98_765.4),),
            ranked=2,
        )
    )
