"""The sliding windows behind the dashboard and canary analysis, driven by a fake clock."""

from __future__ import annotations

import math

import pytest

from pyproxy.metrics.exposition import render_metrics
from pyproxy.metrics.stats import Stats
from pyproxy.metrics.windows import INJECTED_ABORT
from pyproxy.outcome import RequestOutcome
from tests.support.clock import FakeClock
from tests.support.metrics import sample_table


def outcome(route="shop", backend="stock/v1", status=200, flags="", duration=0.010):
    return RequestOutcome(start=0.0, route=route, backend=backend, status=status, flags=flags,
                          duration=duration, attempts=1)


def test_window_rate_success_rate_and_percentiles():
    clock = FakeClock(1000.0)
    stats = Stats(clock=clock)
    for second in range(10):  # 10 s × 20 requests: 18 fast successes, 2 slow 503s
        clock.now = 1000.0 + second + 0.5
        for _ in range(18):
            stats.record(outcome(duration=0.010))
        for _ in range(2):
            stats.record(outcome(status=503, flags="URX", duration=0.400))

    window = stats.windows.summary("shop", "stock/v1")
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
    window = stats.windows.summary("shop", "stock/v1")
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
    assert stats.windows.summary("shop", "stock/v1")["success_rate"] == pytest.approx(300 / 6)
    assert stats.windows.summary("shop", INJECTED_ABORT)["success_rate"] == 0.0
    assert stats.windows.route_stats()["shop"]["success_rate"] == pytest.approx(300 / 8)


def test_old_seconds_roll_out_of_the_window():
    clock = FakeClock(1000.0)
    stats = Stats(window=30, clock=clock)
    for _ in range(50):
        stats.record(outcome(status=503, duration=2.0))
    clock.now = 1029.9  # second 1000 is still inside (1029 - 30, 1029]
    assert stats.windows.summary("shop", "stock/v1")["requests"] == 50

    clock.now = 1030.0  # now it has rolled out
    stats.record(outcome(status=200, duration=0.005))
    window = stats.windows.summary("shop", "stock/v1")
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
    window = stats.windows.summary("shop", "stock/v1")
    assert (window["requests"], window["success_rate"]) == (1, 100.0)


def test_idle_window_reports_no_data_rather_than_perfect_health():
    clock = FakeClock(1000.0)
    stats = Stats(clock=clock)
    assert stats.windows.summary("shop", "stock/v1") == {
        "requests": 0, "rps": 0.0, "success_rate": None, "p50": None, "p95": None, "p99": None}
    stats.record(outcome())
    clock.now = 2000.0
    window = stats.windows.summary("shop", "stock/v1")
    assert window["requests"] == 0 and window["success_rate"] is None and window["p99"] is None


def test_by_route_merges_configured_weights_and_observed_share():
    clock = FakeClock(1000.0)
    stats = Stats(clock=clock)
    stats.weights_provider = lambda: [("shop", "stock/v1", 0.9), ("shop", "stock/v2", 0.1),
                                      ("cart", "cart", 1.0)]
    for _ in range(3):
        stats.record(outcome(backend="stock/v1"))
    stats.record(outcome(backend="stock/v2", status=503))
    stats.record(outcome(backend="stock/v0"))  # removed from config, still in the window

    routes = stats.windows.by_route(stats.weights_provider())
    assert set(routes) == {"shop", "cart"}
    shop = routes["shop"]
    assert set(shop) == {"stock/v1", "stock/v2", "stock/v0"}
    assert shop["stock/v1"]["weight"] == 0.9 and shop["stock/v1"]["share"] == 0.6
    assert shop["stock/v2"]["weight"] == 0.1 and shop["stock/v2"]["share"] == 0.2
    assert shop["stock/v2"]["success_rate"] == 0.0
    assert shop["stock/v0"]["weight"] is None and shop["stock/v0"]["share"] == 0.2
    assert routes["cart"]["cart"] == {"requests": 0, "rps": 0.0, "success_rate": None, "p50": None,
                                      "p95": None, "p99": None, "weight": 1.0, "share": None}
    assert shop["stock/v1"] == {**stats.windows.summary("shop", "stock/v1"),
                                "weight": 0.9, "share": 0.6}

    clock.now = 1100.0  # everything rolled out: the unconfigured backend disappears
    weights = stats.weights_provider()
    assert set(stats.windows.by_route(weights)["shop"]) == {"stock/v1", "stock/v2"}


def test_injected_aborts_are_a_row_of_the_route_and_count_against_it_not_a_backend():
    """Request scope: answered before the split (no backend). Attempt scope: the backend was
    picked but never answered. Either way, the requests are the route's failures, shown as an
    ``INJECTED_ABORT`` row whose share adds up with the backends' to 100 %."""
    clock = FakeClock(1000.0)
    stats = Stats(clock=clock)
    weights = [("shop", "stock/v1", 1.0)]
    for _ in range(6):
        stats.record(outcome(backend="stock/v1"))
    for _ in range(3):
        stats.record(outcome(backend="", status=503, flags="FI"))  # request scope
    stats.record(outcome(backend="stock/v1", status=503, flags="URX,FI"))  # attempt scope
    stats.record(outcome(backend="", status=503, flags="DI,FI"))  # delayed, then aborted

    shop = stats.windows.by_route(weights)["shop"]
    assert set(shop) == {"stock/v1", INJECTED_ABORT}
    assert (shop["stock/v1"]["requests"], shop["stock/v1"]["success_rate"]) == (6, 100.0)
    assert (shop[INJECTED_ABORT]["requests"], shop[INJECTED_ABORT]["success_rate"]) == (5, 0.0)
    assert shop[INJECTED_ABORT]["weight"] is None
    share_v1, share_injected = shop["stock/v1"]["share"], shop[INJECTED_ABORT]["share"]
    assert share_v1 is not None and share_injected is not None
    assert share_v1 + share_injected == pytest.approx(1.0)
    whole = stats.windows.route_stats(["shop", "idle"])
    assert whole["shop"]["requests"] == 11
    assert whole["shop"]["success_rate"] == pytest.approx(600 / 11, abs=1e-3)
    assert whole["idle"]["requests"] == 0 and whole["idle"]["success_rate"] is None
    # The canary's interval counts of the candidate leave them out.
    totals = stats.windows.totals("shop", "stock/v1")
    assert (totals.requests, totals.successes) == (6, 6)

    # Prometheus keeps the labels as they were: the backend picked (if any) and the flag.
    samples = sample_table(render_metrics(stats)[0].decode())["pyproxy_requests"][1]

    def requests(**labels: str) -> float:
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
    for export in other.windows.export():
        peer.setdefault((export["route"], export["backend"]), []).append(export)
    leader.windows.peers = lambda: peer
    whole = leader.windows.route_stats()["shop"]
    assert (whole["requests"], whole["success_rate"]) == (3, pytest.approx(100 / 3, abs=1e-3))
    injected = leader.windows.by_route([])["shop"][INJECTED_ABORT]
    assert injected["share"] == pytest.approx(2 / 3, abs=1e-4)


def test_window_values_are_json_numbers():
    stats = Stats(clock=FakeClock())
    stats.record(outcome(duration=0.123))
    window = stats.windows.summary("shop", "stock/v1")
    assert all(v is None or (isinstance(v, (int, float)) and math.isfinite(v))
               for v in window.values())
