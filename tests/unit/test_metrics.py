"""Request metrics are summed in plain numbers and published by flush(): same numbers as direct."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, Histogram

from gateway.observability.metrics import BUCKETS, GaugeSampler
from gateway.observability.request_metrics import RequestMetrics, method_label


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=40))
def test_flushed_histogram_equals_direct_observations(values: list[float]) -> None:
    route = f"r-{uuid.uuid4().hex[:8]}"
    reference = Histogram(
        f"reference_{uuid.uuid4().hex[:8]}", "reference", buckets=BUCKETS, registry=None
    )
    batched = RequestMetrics()
    for value in values:
        batched.request_done(route, "GET", 200, value)
        reference.observe(value)
    assert sample("gateway_request_duration_seconds_count", route=route) == 0
    batched.flush()
    (family,) = reference.collect()
    expected = {s.labels.get("le"): s.value for s in family.samples}
    for bound in [*BUCKETS, float("inf")]:
        le = "+Inf" if bound == float("inf") else str(bound)
        got = sample("gateway_request_duration_seconds_bucket", route=route, le=le)
        assert got == expected[le]
    total = sample("gateway_request_duration_seconds_sum", route=route)
    assert abs(total - sum(values)) <= 1e-9 * max(1.0, sum(values))
    assert sample(
        "gateway_requests_total", route=route, method="GET", status_class="2xx", protocol="http1"
    ) == len(values)


def test_flush_publishes_once_and_resets() -> None:
    route, upstream = f"r-{uuid.uuid4().hex[:8]}", f"u-{uuid.uuid4().hex[:8]}"
    batched = RequestMetrics()
    batched.request_done(route, "BREW", 503, 0.2)
    batched.upstream_failed(upstream, "timeout")
    batched.upstream_failed(upstream, "timeout")
    batched.upstream_answered(upstream, 0.1)
    batched.flush()
    batched.flush()  # nothing new: nothing added twice
    assert method_label("BREW") == "other"
    assert (
        sample(
            "gateway_requests_total",
            route=route,
            method="other",
            status_class="5xx",
            protocol="http1",
        )
        == 1
    )
    assert sample("gateway_upstream_errors_total", upstream=upstream, kind="timeout") == 2
    assert sample("gateway_upstream_request_duration_seconds_count", upstream=upstream) == 1


def test_gauge_sampler_reports_event_loop_tasks() -> None:
    sampler = GaugeSampler(lambda: 0, lambda: 0, tuple, tasks=lambda: 17)
    sampler.sample()
    assert sample("gateway_event_loop_tasks") == 17
