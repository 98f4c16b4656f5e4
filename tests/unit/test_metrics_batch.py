"""`observe_many` leaves a histogram exactly as one `observe` per amount would."""

from __future__ import annotations

from importlib import metadata

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from screener.core.compat import PROMETHEUS_CLIENT_VERIFIED, observe_many
from screener.core.metrics import LATENCY_BUCKETS, Metrics


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=50))
def test_batch_observe_equals_one_observe_per_amount(amounts: list[float]) -> None:
    one, batch = Metrics(), Metrics()
    for amount in amounts:
        one.publish_latency.observe(amount)
    observe_many(batch.publish_latency, amounts)
    assert _histogram(one) == _histogram(batch)


def test_the_bounds_themselves_fall_in_their_own_bucket() -> None:
    one, batch = Metrics(), Metrics()
    for bound in LATENCY_BUCKETS:
        one.publish_latency.observe(bound)
    observe_many(batch.publish_latency, LATENCY_BUCKETS)
    assert _histogram(one) == _histogram(batch)
    assert f'le="+Inf"}} {len(LATENCY_BUCKETS)}.0' in _histogram(batch)


def _histogram(metrics: Metrics) -> str:
    text = generate_latest(metrics.registry).decode()
    return "\n".join(line for line in text.splitlines() if "push_to_publish" in line)


def test_the_installed_prometheus_client_is_a_release_observe_many_was_verified_on() -> None:
    installed = metadata.version("prometheus-client")
    assert installed in PROMETHEUS_CLIENT_VERIFIED, (
        f"prometheus-client {installed} is not one of {PROMETHEUS_CLIENT_VERIFIED}, the releases "
        "screener.core.compat.observe_many was verified on. Check in prometheus_client/metrics.py "
        "that Histogram still keeps `_upper_bounds`, `_buckets` (one counter value per bound) "
        "and `_sum`, that the other tests here pass, then add the release."
    )
