"""--workers N: merging the workers' expositions and windows into one view."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyproxy.metrics.exposition import (
    parse_exposition,
    render_families,
    render_metrics,
    workers_family,
)
from pyproxy.metrics.merge import cumulative_only, merge_expositions, window_totals
from pyproxy.metrics.stats import Stats
from pyproxy.outcome import AttemptOutcome, RequestOutcome
from tests.support.clock import FakeClock
from tests.support.metrics import sample_table


def outcome(route="shop", backend="stock/v1", status=200, flags="", duration=0.010):
    return RequestOutcome(start=0.0, route=route, backend=backend, status=status, flags=flags,
                          duration=duration, attempts=1)


def labels(**kv) -> tuple:
    return tuple(sorted(kv.items()))


def _families(stats: Stats) -> list:
    return parse_exposition(render_metrics(stats)[0].decode())


def _merged(*workers) -> dict:
    """Merge, render and parse back: name → (type, {(sample name, labels): value})."""
    return sample_table(render_families(merge_expositions(list(workers))).decode())


def test_merged_counters_and_histograms_are_summed_per_label_set():
    leader, other = Stats(), Stats()
    for _ in range(3):
        leader.record(outcome(duration=0.002))
    leader.record(outcome(status=503, flags="URX", duration=0.3))
    for _ in range(4):
        other.record(outcome(duration=0.004))
    other.record(outcome(route="cart", backend="cart", duration=0.004))
    other.record_attempt(AttemptOutcome("stock", "10.0.0.1:80", 200))

    merged = _merged(_families(leader), _families(other))
    kind, requests = merged["pyproxy_requests"]
    assert kind == "counter"
    total = "pyproxy_requests_total"
    assert requests[(total, labels(backend="stock/v1", code="200", flag="", route="shop"))] == 7
    assert requests[(total, labels(backend="stock/v1", code="503", flag="URX", route="shop"))] == 1
    assert requests[(total, labels(backend="cart", code="200", flag="", route="cart"))] == 1
    _, upstream = merged["pyproxy_upstream_requests"]
    assert sum(upstream.values()) == 1  # a series only one worker has is kept as it is

    kind, durations = merged["pyproxy_request_duration_seconds"]
    assert kind == "histogram"
    shop = labels(backend="stock/v1", route="shop")
    assert durations[("pyproxy_request_duration_seconds_count", shop)] == 8
    assert durations[("pyproxy_request_duration_seconds_sum", shop)] == pytest.approx(0.322)
    bucket = "pyproxy_request_duration_seconds_bucket"
    assert durations[(bucket, labels(backend="stock/v1", le="0.0025", route="shop"))] == 3
    assert durations[(bucket, labels(backend="stock/v1", le="0.005", route="shop"))] == 7
    assert durations[(bucket, labels(backend="stock/v1", le="+Inf", route="shop"))] == 8


def test_merged_gauges_follow_what_they_measure():
    leader, other = Stats(), Stats()
    leader.weights_provider = lambda: [("shop", "stock/v1", 0.9)]
    other.weights_provider = lambda: [("shop", "stock/v1", 0.5)]  # a worker lagging behind
    leader.ejections_provider = lambda: [("stock", "10.0.0.1:80", False)]
    other.ejections_provider = lambda: [("stock", "10.0.0.1:80", True)]
    leader.request_started("shop")
    other.request_started("shop")
    other.request_started("shop")
    leader.record_reload(True, 3)
    other.record_reload(False, 1)

    merged = _merged(_families(leader), _families(other))
    shop = labels(backend="stock/v1", route="shop")
    assert merged["pyproxy_backend_weight"][1] == {("pyproxy_backend_weight", shop): 0.9}
    assert merged["pyproxy_active_requests"][1] == {
        ("pyproxy_active_requests", labels(route="shop")): 3}
    assert merged["pyproxy_endpoint_ejected"][1] == {
        ("pyproxy_endpoint_ejected", labels(endpoint="10.0.0.1:80", service="stock")): 1}
    assert merged["pyproxy_config_last_reload_success"][1] == {
        ("pyproxy_config_last_reload_success", ()): 0}
    assert merged["pyproxy_config_generation"][1] == {("pyproxy_config_generation", ()): 3}
    assert merged["pyproxy_config_reloads"][1][
        ("pyproxy_config_reloads_total", labels(result="success"))] == 1


def test_an_exited_workers_counters_keep_counting_but_its_gauges_do_not():
    exited = Stats()
    exited.record(outcome())
    exited.request_started("shop")
    retired = cumulative_only(_families(exited))
    assert {f.type for f in retired} == {"counter", "histogram"}

    merged = _merged(_families(Stats()), retired)
    assert sum(merged["pyproxy_requests"][1].values()) == 1
    assert merged["pyproxy_active_requests"][1] == {}


def test_workers_family_counts_up_and_down():
    text = render_families([workers_family(2, 3)]).decode()
    (family,) = text_string_to_metric_families(text)
    assert (family.name, family.type) == ("pyproxy_workers", "gauge")
    assert {s.labels["state"]: s.value for s in family.samples} == {"up": 2, "down": 1}


def test_peer_windows_add_up_to_one_window_and_exact_totals():
    clock = FakeClock(1000.0)
    leader, other = Stats(clock=clock), Stats(clock=clock)
    for second in range(5):
        clock.now = 1000.0 + second + 0.5
        for _ in range(3):
            leader.record(outcome(duration=0.010))
        other.record(outcome(duration=0.010))
        other.record(outcome(status=503, duration=0.400))
    before = leader.windows.totals("shop", "stock/v1")

    peer = {}
    for export in other.windows.export():  # what GET /api/v1/windows carries, as JSON
        peer.setdefault((export["route"], export["backend"]), []).append(export)
    leader.windows.peers = lambda: peer
    window = leader.windows.summary("shop", "stock/v1")
    assert (window["requests"], window["rps"], window["success_rate"]) == (25, 5.0, 80.0)
    assert window["p99"] == pytest.approx(0.400, rel=0.1)
    routes = leader.windows.by_route([])
    assert routes["shop"]["stock/v1"]["requests"] == 25
    totals = leader.windows.totals("shop", "stock/v1")
    assert (totals.requests, totals.successes) == (25, 20)
    assert totals.since(before, 5.0)["requests"] == 10  # the other worker's, added in
    assert leader.windows.summary("shop", "stock/v1")["requests"] == 25  # own window untouched
    leader.windows.peers = None
    assert leader.windows.summary("shop", "stock/v1")["requests"] == 15


def test_peer_seconds_age_out_and_an_exited_workers_totals_stay():
    clock = FakeClock(1000.0)
    leader, other = Stats(window=5, clock=clock), Stats(window=5, clock=clock)
    for _ in range(4):
        other.record(outcome())
    exported = other.windows.export()
    retired = window_totals(exported + exported)  # two exited workers' worth
    assert retired["seconds"] == [] and list(retired["totals"][:2]) == [8, 8]

    leader.windows.peers = lambda: {("shop", "stock/v1"): exported}
    clock.now = 1010.0  # second 1000 is out of the window by now
    assert leader.windows.summary("shop", "stock/v1")["requests"] == 0
    assert leader.windows.totals("shop", "stock/v1").requests == 4
    leader.windows.peers = lambda: {("shop", "stock/v1"): [retired]}
    assert leader.windows.totals("shop", "stock/v1").requests == 8
