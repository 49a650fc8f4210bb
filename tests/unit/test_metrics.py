"""Stats: the Prometheus exposition (parsed back with prometheus_client's own parser) and the
sliding windows, driven by a fake clock."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyproxy.metrics import (
    DURATION_BUCKETS,
    INJECTED_ABORT,
    Stats,
    cumulative_only,
    merge_expositions,
    parse_exposition,
    render_families,
    render_metrics,
    window_totals,
    workers_family,
)
from pyproxy.outcome import AttemptOutcome, RequestOutcome


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def outcome(route="shop", backend="stock/v1", status=200, flags="", duration=0.010):
    return RequestOutcome(start=0.0, route=route, backend=backend, status=status, flags=flags,
                          duration=duration, attempts=1)


def scrape(stats: Stats) -> dict:
    """name → (type, {(sample name, sorted labels): value})."""
    body, _ = render_metrics(stats)
    families = {}
    for family in text_string_to_metric_families(body.decode()):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        families[family.name] = (family.type, samples)
    return families


def labels(**kv) -> tuple:
    return tuple(sorted(kv.items()))


# --------------------------------------------------------------------------- exposition


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


# --------------------------------------------------------------------------- windows


def test_window_rate_success_rate_and_percentiles():
    clock = FakeClock(1000.0)
    stats = Stats(clock=clock)
    for second in range(10):  # 10 s × 20 requests: 18 fast successes, 2 slow 503s
        clock.now = 1000.0 + second + 0.5
        for _ in range(18):
            stats.record(outcome(duration=0.010))
        for _ in range(2):
            stats.record(outcome(status=503, flags="URX", duration=0.400))

    window = stats.window_stats("shop", "stock/v1")
    assert window["requests"] == 200
    assert window["rps"] == 20.0  # averaged over the 10 s seen so far, not the full 30
    assert window["success_rate"] == 90.0
    assert window["p50"] == pytest.approx(0.010, rel=0.25)
    assert window["p95"] == pytest.approx(0.400, rel=0.25)
    assert window["p99"] == pytest.approx(0.400, rel=0.25)
    assert window["p50"] <= window["p95"] <= window["p99"]


def test_percentiles_interpolate_within_fine_buckets():
    stats = Stats(clock=FakeClock())
    durations = [0.001 * i for i in range(1, 1001)]  # uniform 1 ms … 1 s
    for d in durations:
        stats.record(outcome(duration=d))
    window = stats.window_stats("shop", "stock/v1")
    assert window["p50"] == pytest.approx(0.500, rel=0.1)
    assert window["p95"] == pytest.approx(0.950, rel=0.1)
    assert window["p99"] == pytest.approx(0.990, rel=0.1)


def test_success_counts_injected_delays_but_not_other_flags():
    stats = Stats(clock=FakeClock())
    stats.record(outcome(status=200))
    stats.record(outcome(status=404))
    stats.record(outcome(status=200, flags="DI"))
    stats.record(outcome(status=503, flags="FI"))
    stats.record(outcome(status=400, flags="FI"))
    stats.record(outcome(status=500))
    stats.record(outcome(status=502, flags="DI,UC"))
    stats.record(outcome(status=200, flags="URX"))
    # The two injected aborts are the route's failures, not the backend's (their own row).
    assert stats.window_stats("shop", "stock/v1")["success_rate"] == pytest.approx(300 / 6)
    assert stats.window_stats("shop", INJECTED_ABORT)["success_rate"] == 0.0
    assert stats.route_stats()["shop"]["success_rate"] == pytest.approx(300 / 8)


def test_old_seconds_roll_out_of_the_window():
    clock = FakeClock(1000.0)
    stats = Stats(window=30, clock=clock)
    for _ in range(50):
        stats.record(outcome(status=503, duration=2.0))
    clock.now = 1029.9  # second 1000 is still inside (1029 - 30, 1029]
    assert stats.window_stats("shop", "stock/v1")["requests"] == 50

    clock.now = 1030.0  # now it has rolled out
    stats.record(outcome(status=200, duration=0.005))
    window = stats.window_stats("shop", "stock/v1")
    assert window["requests"] == 1
    assert window["success_rate"] == 100.0
    assert window["p99"] < 0.01
    assert window["rps"] == pytest.approx(1 / 30, abs=0.001)


def test_a_reused_slot_forgets_the_second_it_held():
    clock = FakeClock(1000.0)
    stats = Stats(window=5, clock=clock)
    stats.record(outcome(status=500))
    clock.now = 1005.0  # same ring slot as 1000
    stats.record(outcome(status=200))
    window = stats.window_stats("shop", "stock/v1")
    assert (window["requests"], window["success_rate"]) == (1, 100.0)


def test_idle_window_reports_no_data_rather_than_perfect_health():
    clock = FakeClock(1000.0)
    stats = Stats(clock=clock)
    assert stats.window_stats("shop", "stock/v1") == {
        "requests": 0, "rps": 0.0, "success_rate": None, "p50": None, "p95": None, "p99": None}
    stats.record(outcome())
    clock.now = 2000.0
    window = stats.window_stats("shop", "stock/v1")
    assert window["requests"] == 0 and window["success_rate"] is None and window["p99"] is None


def test_snapshot_routes_merges_configured_weights_and_observed_share():
    clock = FakeClock(1000.0)
    stats = Stats(clock=clock)
    stats.weights_provider = lambda: [("shop", "stock/v1", 0.9), ("shop", "stock/v2", 0.1),
                                      ("cart", "cart", 1.0)]
    for _ in range(3):
        stats.record(outcome(backend="stock/v1"))
    stats.record(outcome(backend="stock/v2", status=503))
    stats.record(outcome(backend="stock/v0"))  # removed from config, still in the window

    routes = stats.snapshot_routes()
    assert set(routes) == {"shop", "cart"}
    shop = routes["shop"]
    assert set(shop) == {"stock/v1", "stock/v2", "stock/v0"}
    assert shop["stock/v1"]["weight"] == 0.9 and shop["stock/v1"]["share"] == 0.6
    assert shop["stock/v2"]["weight"] == 0.1 and shop["stock/v2"]["share"] == 0.2
    assert shop["stock/v2"]["success_rate"] == 0.0
    assert shop["stock/v0"]["weight"] is None and shop["stock/v0"]["share"] == 0.2
    assert routes["cart"]["cart"] == {"requests": 0, "rps": 0.0, "success_rate": None, "p50": None,
                                      "p95": None, "p99": None, "weight": 1.0, "share": None}
    assert shop["stock/v1"] == {**stats.window_stats("shop", "stock/v1"),
                                "weight": 0.9, "share": 0.6}

    clock.now = 1100.0  # everything rolled out: the unconfigured backend disappears
    assert set(stats.snapshot_routes()["shop"]) == {"stock/v1", "stock/v2"}


def test_injected_aborts_are_a_row_of_the_route_and_count_against_it_not_a_backend():
    """Request scope: answered before the split (no backend). Attempt scope: the backend was
    picked but never answered. Either way, the requests are the route's failures, shown as an
    ``INJECTED_ABORT`` row whose share adds up with the backends' to 100 %."""
    clock = FakeClock(1000.0)
    stats = Stats(clock=clock)
    stats.weights_provider = lambda: [("shop", "stock/v1", 1.0)]
    for _ in range(6):
        stats.record(outcome(backend="stock/v1"))
    for _ in range(3):
        stats.record(outcome(backend="", status=503, flags="FI"))  # request scope
    stats.record(outcome(backend="stock/v1", status=503, flags="URX,FI"))  # attempt scope
    stats.record(outcome(backend="", status=503, flags="DI,FI"))  # delayed, then aborted

    shop = stats.snapshot_routes()["shop"]
    assert set(shop) == {"stock/v1", INJECTED_ABORT}
    assert (shop["stock/v1"]["requests"], shop["stock/v1"]["success_rate"]) == (6, 100.0)
    assert (shop[INJECTED_ABORT]["requests"], shop[INJECTED_ABORT]["success_rate"]) == (5, 0.0)
    assert shop[INJECTED_ABORT]["weight"] is None
    assert shop["stock/v1"]["share"] + shop[INJECTED_ABORT]["share"] == pytest.approx(1.0)
    whole = stats.route_stats(["shop", "idle"])
    assert whole["shop"]["requests"] == 11
    assert whole["shop"]["success_rate"] == pytest.approx(600 / 11, abs=1e-3)
    assert whole["idle"]["requests"] == 0 and whole["idle"]["success_rate"] is None
    # The canary's interval counts of the candidate leave them out.
    totals = stats.totals("shop", "stock/v1")
    assert (totals.requests, totals.successes) == (6, 6)

    # Prometheus keeps the labels as they were: the backend picked (if any) and the flag.
    samples = scrape(stats)["pyproxy_requests"][1]
    def requests(**labels):
        return samples[("pyproxy_requests_total", tuple(sorted(
            {"route": "shop", "backend": "", "code": "503", **labels}.items())))]
    assert requests(flag="FI") == 3 and requests(flag="DI,FI") == 1
    assert requests(backend="stock/v1", flag="URX,FI") == 1


def test_route_stats_add_up_every_worker():
    clock = FakeClock(1000.0)
    leader, other = Stats(clock=clock), Stats(clock=clock)
    leader.record(outcome())
    other.record(outcome(backend="", status=503, flags="FI"))
    other.record(outcome(backend="", status=503, flags="FI"))
    peer: dict = {}
    for export in other.export_windows():
        peer.setdefault((export["route"], export["backend"]), []).append(export)
    leader.peer_windows = lambda: peer
    whole = leader.route_stats()["shop"]
    assert (whole["requests"], whole["success_rate"]) == (3, pytest.approx(100 / 3, abs=1e-3))
    injected = leader.snapshot_routes()["shop"][INJECTED_ABORT]
    assert injected["share"] == pytest.approx(2 / 3, abs=1e-4)


def test_window_values_are_json_numbers():
    stats = Stats(clock=FakeClock())
    stats.record(outcome(duration=0.123))
    window = stats.window_stats("shop", "stock/v1")
    assert all(v is None or (isinstance(v, (int, float)) and math.isfinite(v))
               for v in window.values())


# --------------------------------------------------------------------------- --workers N


def _families(stats: Stats) -> list:
    return parse_exposition(render_metrics(stats)[0].decode())


def _merged(*workers) -> dict:
    """Merge, render and parse back: name → (type, {(sample name, labels): value})."""
    families = {}
    text = render_families(merge_expositions(list(workers))).decode()
    for family in text_string_to_metric_families(text):
        families[family.name] = (family.type, {(s.name, tuple(sorted(s.labels.items()))): s.value
                                               for s in family.samples})
    return families


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
    before = leader.totals("shop", "stock/v1")

    peer = {}
    for export in other.export_windows():  # what GET /api/v1/windows carries, as JSON
        peer.setdefault((export["route"], export["backend"]), []).append(export)
    leader.peer_windows = lambda: peer
    window = leader.window_stats("shop", "stock/v1")
    assert (window["requests"], window["rps"], window["success_rate"]) == (25, 5.0, 80.0)
    assert window["p99"] == pytest.approx(0.400, rel=0.1)
    routes = leader.snapshot_routes()
    assert routes["shop"]["stock/v1"]["requests"] == 25
    totals = leader.totals("shop", "stock/v1")
    assert (totals.requests, totals.successes) == (25, 20)
    assert totals.since(before, 5.0)["requests"] == 10  # the other worker's, added in
    assert leader.window_stats("shop", "stock/v1")["requests"] == 25  # own window untouched
    leader.peer_windows = None
    assert leader.window_stats("shop", "stock/v1")["requests"] == 15


def test_peer_seconds_age_out_and_an_exited_workers_totals_stay():
    clock = FakeClock(1000.0)
    leader, other = Stats(window=5, clock=clock), Stats(window=5, clock=clock)
    for _ in range(4):
        other.record(outcome())
    exported = other.export_windows()
    retired = window_totals(exported + exported)  # two exited workers' worth
    assert retired["seconds"] == [] and retired["totals"][:2] == [8, 8]

    leader.peer_windows = lambda: {("shop", "stock/v1"): exported}
    clock.now = 1010.0  # second 1000 is out of the window by now
    assert leader.window_stats("shop", "stock/v1")["requests"] == 0
    assert leader.totals("shop", "stock/v1").requests == 4
    leader.peer_windows = lambda: {("shop", "stock/v1"): [retired]}
    assert leader.totals("shop", "stock/v1").requests == 8
