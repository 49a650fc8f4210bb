"""The Prometheus exposition of Stats, parsed back with prometheus_client's own parser."""

from __future__ import annotations

import pytest

from pyproxy.metrics.exposition import (
    render_metrics,
)
from pyproxy.metrics.stats import DURATION_BUCKETS, Stats
from pyproxy.outcome import AttemptOutcome, RequestOutcome
from tests.support.metrics import sample_table


def outcome(route="shop", backend="stock/v1", status=200, flags="", duration=0.010):
    return RequestOutcome(start=0.0, route=route, backend=backend, status=status, flags=flags,
                          duration=duration, attempts=1)


def scrape(stats: Stats) -> dict:
    """name → (type, {(sample name, sorted labels): value})."""
    return sample_table(render_metrics(stats)[0].decode())


def labels(**kv) -> tuple:
    return tuple(sorted(kv.items()))


def test_content_type_is_the_classic_text_format():
    _, content_type = render_metrics(Stats())
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"


def test_every_spec_family_is_exposed_even_before_traffic():
    body, _ = render_metrics(Stats())
    text = body.decode()
    for name, kind in [
        ("pyproxy_requests_total", "counter"),
        ("pyproxy_request_duration_seconds", "histogram"),
        ("pyproxy_upstream_requests_total", "counter"),
        ("pyproxy_retries_total", "counter"),
        ("pyproxy_faults_injected_total", "counter"),
        ("pyproxy_mirror_requests_total", "counter"),
        ("pyproxy_backend_weight", "gauge"),
        ("pyproxy_endpoint_ejected", "gauge"),
        ("pyproxy_endpoint_ejections_total", "counter"),
        ("pyproxy_circuit_breaker_overflows_total", "counter"),
        ("pyproxy_active_requests", "gauge"),
        ("pyproxy_config_reloads_total", "counter"),
        ("pyproxy_config_last_reload_success", "gauge"),
        ("pyproxy_config_generation", "gauge"),
    ]:
        assert f"# TYPE {name} {kind}\n" in text
    assert "_total_total" not in text


def test_requests_total_by_route_backend_code_and_flag():
    stats = Stats()
    stats.record(outcome(status=200))
    stats.record(outcome(status=200))
    stats.record(outcome(status=503, flags="UF"))
    stats.record(outcome(status=503, flags="DI,FI"))
    stats.record(outcome(route="", backend="", status=404, flags="NR"))
    stats.record(outcome(status=0))  # the client went away before any response

    kind, samples = scrape(stats)["pyproxy_requests"]
    assert kind == "counter"
    name = "pyproxy_requests_total"
    assert samples == {
        (name, labels(route="shop", backend="stock/v1", code="200", flag="")): 2.0,
        (name, labels(route="shop", backend="stock/v1", code="503", flag="UF")): 1.0,
        (name, labels(route="shop", backend="stock/v1", code="503", flag="DI,FI")): 1.0,
        (name, labels(route="", backend="", code="404", flag="NR")): 1.0,
        (name, labels(route="shop", backend="stock/v1", code="none", flag="")): 1.0,
    }


def test_duration_histogram_is_cumulative_with_count_and_sum():
    stats = Stats()
    durations = [0.0005, 0.001, 0.003, 0.2, 0.2, 7.0, 30.0]  # 0.001 sits exactly on a bound
    for d in durations:
        stats.record(outcome(duration=d))
    stats.record(outcome(backend="stock/v2", duration=0.05))

    kind, samples = scrape(stats)["pyproxy_request_duration_seconds"]
    assert kind == "histogram"
    v1 = {"route": "shop", "backend": "stock/v1"}
    buckets = {dict(key)["le"]: value for (name, key), value in samples.items()
               if name.endswith("_bucket") and dict(key)["backend"] == "stock/v1"}
    expected_le = [str(b) for b in DURATION_BUCKETS] + ["+Inf"]
    assert sorted(buckets, key=float) == sorted(expected_le, key=float)
    for le, value in buckets.items():
        assert value == sum(1 for d in durations if d <= float(le)), le
    assert buckets["0.001"] == 2
    assert buckets["+Inf"] == len(durations)
    assert samples[("pyproxy_request_duration_seconds_count", labels(**v1))] == len(durations)
    assert samples[("pyproxy_request_duration_seconds_sum", labels(**v1))] == pytest.approx(
        sum(durations))
    assert samples[("pyproxy_request_duration_seconds_count",
                    labels(route="shop", backend="stock/v2"))] == 1


def test_upstream_attempts_use_none_for_no_response():
    stats = Stats()
    stats.record_attempt(AttemptOutcome("stock", "10.0.0.5:8081", 200))
    stats.record_attempt(AttemptOutcome("stock", "10.0.0.5:8081", 0))
    stats.record_attempt(AttemptOutcome("stock", "10.0.0.5:8081", 0))

    kind, samples = scrape(stats)["pyproxy_upstream_requests"]
    assert kind == "counter"
    name = "pyproxy_upstream_requests_total"
    assert samples == {
        (name, labels(service="stock", endpoint="10.0.0.5:8081", code="200")): 1.0,
        (name, labels(service="stock", endpoint="10.0.0.5:8081", code="none")): 2.0,
    }


def test_retries_faults_mirrors_overflows_and_ejections():
    stats = Stats()
    stats.record_retry("shop", "stock/v1")
    stats.record_retry("shop", "stock/v1")
    stats.record_fault("shop", "delay")
    stats.record_fault("shop", "abort")
    stats.record_fault("shop", "abort")
    stats.record_mirror("shop", "stock/v2", "success")
    stats.record_overflow("stock", "max_pending_requests")
    stats.record_ejection("stock", "10.0.0.5:8081", "consecutive_5xx")

    families = scrape(stats)
    assert families["pyproxy_retries"][1] == {
        ("pyproxy_retries_total", labels(route="shop", backend="stock/v1")): 2.0}
    assert families["pyproxy_faults_injected"][1] == {
        ("pyproxy_faults_injected_total", labels(route="shop", kind="delay")): 1.0,
        ("pyproxy_faults_injected_total", labels(route="shop", kind="abort")): 2.0}
    assert families["pyproxy_mirror_requests"][1] == {
        ("pyproxy_mirror_requests_total",
         labels(route="shop", backend="stock/v2", result="success")): 1.0}
    assert families["pyproxy_circuit_breaker_overflows"][1] == {
        ("pyproxy_circuit_breaker_overflows_total",
         labels(service="stock", limit="max_pending_requests")): 1.0}
    assert families["pyproxy_endpoint_ejections"][1] == {
        ("pyproxy_endpoint_ejections_total",
         labels(service="stock", endpoint="10.0.0.5:8081", reason="consecutive_5xx")): 1.0}


def test_gauges_from_providers_are_read_at_scrape_time():
    stats = Stats()
    weights = [("shop", "stock/v1", 0.9), ("shop", "stock/v2", 0.1)]
    ejected = {("stock", "10.0.0.5:8081"): True, ("stock", "10.0.0.6:8081"): False}
    stats.weights_provider = lambda: weights
    stats.ejections_provider = lambda: [(s, e, x) for (s, e), x in ejected.items()]

    families = scrape(stats)
    assert families["pyproxy_backend_weight"] == ("gauge", {
        ("pyproxy_backend_weight", labels(route="shop", backend="stock/v1")): 0.9,
        ("pyproxy_backend_weight", labels(route="shop", backend="stock/v2")): 0.1})
    assert families["pyproxy_endpoint_ejected"] == ("gauge", {
        ("pyproxy_endpoint_ejected", labels(service="stock", endpoint="10.0.0.5:8081")): 1.0,
        ("pyproxy_endpoint_ejected", labels(service="stock", endpoint="10.0.0.6:8081")): 0.0})

    weights[:] = [("shop", "stock/v1", 0.5), ("shop", "stock/v2", 0.5)]
    ejected[("stock", "10.0.0.5:8081")] = False
    families = scrape(stats)
    assert families["pyproxy_backend_weight"][1][
        ("pyproxy_backend_weight", labels(route="shop", backend="stock/v1"))] == 0.5
    assert families["pyproxy_endpoint_ejected"][1][
        ("pyproxy_endpoint_ejected", labels(service="stock", endpoint="10.0.0.5:8081"))] == 0.0


def test_active_requests_gauge():
    stats = Stats()
    stats.request_started("shop")
    stats.request_started("shop")
    stats.request_started("cart")
    stats.request_finished("shop")
    stats.request_finished("cart")
    kind, samples = scrape(stats)["pyproxy_active_requests"]
    assert kind == "gauge"
    assert samples == {("pyproxy_active_requests", labels(route="shop")): 1.0,
                       ("pyproxy_active_requests", labels(route="cart")): 0.0}


def test_reload_metrics():
    stats = Stats()
    families = scrape(stats)
    assert families["pyproxy_config_reloads"][1] == {
        ("pyproxy_config_reloads_total", labels(result="success")): 0.0,
        ("pyproxy_config_reloads_total", labels(result="failure")): 0.0}
    assert families["pyproxy_config_last_reload_success"][1] == {
        ("pyproxy_config_last_reload_success", ()): 1.0}

    stats.record_reload(True, 2)
    stats.record_reload(False, 2)
    families = scrape(stats)
    assert families["pyproxy_config_reloads"][1] == {
        ("pyproxy_config_reloads_total", labels(result="success")): 1.0,
        ("pyproxy_config_reloads_total", labels(result="failure")): 1.0}
    assert families["pyproxy_config_last_reload_success"][1] == {
        ("pyproxy_config_last_reload_success", ()): 0.0}
    assert families["pyproxy_config_generation"][1] == {("pyproxy_config_generation", ()): 2.0}

    stats.record_reload(True, 3)
    families = scrape(stats)
    assert families["pyproxy_config_last_reload_success"][1] == {
        ("pyproxy_config_last_reload_success", ()): 1.0}
    assert families["pyproxy_config_generation"][1] == {("pyproxy_config_generation", ()): 3.0}


def test_each_stats_has_its_own_registry():
    first, second = Stats(), Stats()
    first.record(outcome())
    assert scrape(first)["pyproxy_requests"][1]
    assert scrape(second)["pyproxy_requests"][1] == {}
