"""The benchmark's closed-candle figures, read from the service's /metrics text as the
bench parses it: counts by outcome, and the delay quantile interpolated in the histogram's
buckets the way Prometheus's histogram_quantile does."""

from __future__ import annotations

import pytest

from devtools.bench.measure import CandleFigures


def metrics(buckets: dict[str, float]) -> dict[str, float]:
    return {
        'screener_candles_published_total{source="mexc"}': 97.0,
        'screener_candles_published_total{source="mexc-rest-kline"}': 3.0,
        "screener_candles_skipped_total": 2.0,
        'screener_candles_dropped_total{reason="expired"}': 1.0,
        'screener_candles_dropped_total{reason="absent"}': 1.0,
        "screener_candle_late_pushes_total": 4.0,
        **{f'screener_candle_delay_seconds_bucket{{le="{le}"}}': n for le, n in buckets.items()},
    }


def test_counts_by_outcome() -> None:
    figures = CandleFigures.of(metrics({"+Inf": 0.0}))
    assert (figures["live"], figures["rest"], figures["skipped"]) == (97.0, 3.0, 2.0)
    assert (figures["dropped"], figures["late"]) == (2.0, 4.0)
    assert figures.delay_quantile(0.99) is None  # no sample: no figure


def test_the_delay_quantile_is_interpolated_within_its_bucket() -> None:
    figures = CandleFigures.of(metrics({"0.5": 50.0, "1.0": 90.0, "2.0": 100.0, "+Inf": 100.0}))
    assert figures.delay_quantile(0.5) == pytest.approx(0.5)
    assert figures.delay_quantile(0.99) == pytest.approx(1.9)
    assert figures.delay_quantile(0.25) == pytest.approx(0.25)
