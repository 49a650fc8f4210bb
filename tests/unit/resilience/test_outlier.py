"""Outlier detection: consecutive-error ejection, ejection time, limits, panic, reloads."""

from __future__ import annotations

import pytest

from pyproxy.config.model import OutlierDetection
from pyproxy.resilience.outlier import OutlierDetector, OutlierEvent, classify
from tests.support.clock import FakeClock


def keys(n: int) -> list[str]:
    return [f"10.0.0.{i}:8080" for i in range(1, n + 1)]


def detector(n: int = 3, clock: FakeClock | None = None, **policy) -> OutlierDetector:
    return OutlierDetector(OutlierDetection(**policy), keys(n), clock=clock or FakeClock())


A, B, C = keys(3)


@pytest.mark.parametrize("status, result", [
    (None, "gateway"), (502, "gateway"), (503, "gateway"), (504, "gateway"),
    (500, "5xx"), (501, "5xx"), (505, "5xx"), (599, "5xx"),
    (200, "success"), (302, "success"), (404, "success"), (429, "success"), (499, "success"),
])
def test_classify(status, result):
    assert classify(status) == result


# Each case: policy, results fed to one endpoint, index of the result that ejects it (None:
# never) and the reason.
@pytest.mark.parametrize("policy, results, ejected_at, reason", [
    ({"consecutive_5xx": 3}, ["5xx", "5xx", "5xx"], 2, "consecutive_5xx"),
    ({"consecutive_5xx": 3}, ["5xx", "5xx", "success", "5xx", "5xx"], None, None),
    ({"consecutive_5xx": 3}, ["5xx", "5xx", "success", "5xx", "5xx", "5xx"], 5,
     "consecutive_5xx"),
    # gateway failures count toward consecutive_5xx too
    ({"consecutive_5xx": 3}, ["gateway", "5xx", "gateway"], 2, "consecutive_5xx"),
    ({"consecutive_5xx": 0, "consecutive_gateway_errors": 2}, ["gateway", "gateway"], 1,
     "consecutive_gateway_errors"),
    # a non-gateway 5xx breaks a gateway streak, and does not count toward it
    ({"consecutive_5xx": 0, "consecutive_gateway_errors": 2}, ["gateway", "5xx", "gateway"],
     None, None),
    ({"consecutive_5xx": 0, "consecutive_gateway_errors": 2}, ["5xx"] * 5, None, None),
    # both trip together: the more specific reason wins
    ({"consecutive_5xx": 3, "consecutive_gateway_errors": 3}, ["gateway"] * 3, 2,
     "consecutive_gateway_errors"),
    ({"consecutive_5xx": 2, "consecutive_gateway_errors": 3}, ["gateway"] * 3, 1,
     "consecutive_5xx"),
    ({"consecutive_5xx": 0, "consecutive_gateway_errors": 0}, ["gateway", "5xx"] * 10, None,
     None),
    ({"consecutive_5xx": 1}, ["success", "success", "5xx"], 2, "consecutive_5xx"),
])
def test_consecutive_detectors(policy, results, ejected_at, reason):
    d = detector(**policy)
    events = [d.record(A, result) for result in results]
    ejections = [(i, e.reason) for i, e in enumerate(events) if e is not None]
    if ejected_at is None:
        assert ejections == [] and not d.is_ejected(A)
    else:
        assert ejections == [(ejected_at, reason)] and d.is_ejected(A)


def test_ejection_event_and_describe():
    clock = FakeClock(1000.0)
    d = detector(clock=clock, consecutive_5xx=2, base_ejection_time=30)
    d.record(A, "5xx")
    assert d.describe(A) == {"ejected": False, "reason": "", "until": None, "remaining": 0.0,
                             "times_ejected": 0, "consecutive_5xx": 1,
                             "consecutive_gateway_errors": 0}
    event = d.record(A, "5xx")
    assert event == OutlierEvent(A, "ejected", "consecutive_5xx", 1030.0, 1)
    clock.advance(10)
    assert d.describe(A) == {"ejected": True, "reason": "consecutive_5xx", "until": 1030.0,
                             "remaining": 20.0, "times_ejected": 1, "consecutive_5xx": 0,
                             "consecutive_gateway_errors": 0}
    assert set(d.describe_all()) == {A, B, C}
    assert "ejected=1/1" in repr(d) and A in repr(d) and "consecutive_5xx" in repr(d)
    with pytest.raises(KeyError):
        d.describe("10.9.9.9:1")


def test_results_for_unknown_or_ejected_endpoints_are_ignored():
    d = detector(consecutive_5xx=1)
    assert d.record("10.9.9.9:1", "5xx") is None
    assert d.record(A, "5xx") is not None
    for _ in range(5):  # in-flight or panic-mode traffic to an ejected endpoint
        assert d.record(A, "5xx") is None
    assert d.describe(A)["consecutive_5xx"] == 0


def test_returns_when_time_is_up_and_counts_restart():
    clock = FakeClock()
    d = detector(clock=clock, consecutive_5xx=2, base_ejection_time=30, interval=10)
    d.record(A, "5xx")
    d.record(A, "5xx")
    clock.advance(29.9)
    assert d.sweep() == [] and d.is_ejected(A)
    clock.advance(0.1)
    assert d.sweep() == [OutlierEvent(A, "returned", "expired", None, 1)]
    assert not d.is_ejected(A)
    assert d.record(A, "5xx") is None  # a fresh streak is needed
    assert d.record(A, "5xx") is not None


def eject(d: OutlierDetector, key: str) -> OutlierEvent:
    event = None
    while event is None:
        event = d.record(key, "5xx")
    return event


@pytest.mark.parametrize("base, cap, durations", [
    (30, 300, [30, 60, 90, 120]),
    (30, 100, [30, 60, 90, 100, 100, 100]),
    (10, 10, [10, 10, 10]),
    (30, 10, [10, 10]),  # a cap below the base is still the cap
])
def test_ejection_time_grows_with_each_ejection_and_is_capped(base, cap, durations):
    clock = FakeClock()
    # a long interval: no decrement between these back-to-back ejections
    d = detector(clock=clock, consecutive_5xx=1, base_ejection_time=base,
                 max_ejection_time=cap, interval=100000)
    seen = []
    for _ in durations:
        event = eject(d, A)
        seen.append(event.until - clock.now)
        clock.now = event.until
        assert [e.kind for e in d.sweep()] == ["returned"]
    assert seen == durations
    # the multiplier stops growing at the cap, so recovery does not take forever
    assert d.describe(A)["times_ejected"] <= -(-cap // base)


def test_multiplier_decrements_once_per_clean_interval_never_below_zero():
    clock = FakeClock(1000)
    d = detector(clock=clock, consecutive_5xx=1, base_ejection_time=1, interval=10)
    for _ in range(3):  # three ejections back to back, all within the first interval
        event = eject(d, A)
        clock.now = event.until
        d.sweep()
    assert clock.now == 1006 and d.describe(A)["times_ejected"] == 3
    clock.now = 1010
    d.sweep()  # A was ejected during this interval: no decrement
    assert d.describe(A)["times_ejected"] == 3
    history = []
    for _ in range(5):
        clock.advance(10)
        d.sweep()
        history.append(d.describe(A)["times_ejected"])
    assert history == [2, 1, 0, 0, 0]


def test_sweeps_between_intervals_do_not_decrement():
    clock = FakeClock(1000)
    d = detector(clock=clock, consecutive_5xx=1, base_ejection_time=1, interval=10)
    event = eject(d, A)
    clock.now = event.until
    d.sweep()
    for _ in range(9):  # the once-a-second tick
        clock.advance(1)
        d.sweep()
    assert d.describe(A)["times_ejected"] == 1  # first interval: A was ejected in it
    for _ in range(10):
        clock.advance(1)
        d.sweep()
    assert d.describe(A)["times_ejected"] == 0


def test_the_multiplier_sets_the_next_ejection_time():
    clock = FakeClock(1000)
    d = detector(clock=clock, consecutive_5xx=1, base_ejection_time=30, interval=10)
    for _ in range(2):  # 30 s, then 60 s; each return coincides with an interval sweep
        event = eject(d, A)
        clock.now = event.until
        d.sweep()
    assert clock.now == 1090 and d.describe(A)["times_ejected"] == 2
    clock.advance(10)
    d.sweep()  # (1090, 1100] was clean: 2 → 1
    assert d.describe(A)["times_ejected"] == 1
    event = eject(d, A)
    assert (event.times_ejected, event.until - clock.now) == (2, 60)


@pytest.mark.parametrize("n, percent, min_healthy, expected", [
    (1, 50, 1, 0),      # never the last endpoint
    (1, 100, 0, 0),     # ... even when min_healthy_endpoints is 0
    (2, 50, 1, 1),
    (2, 10, 1, 1),      # 10% of 2 rounds up to one (Envoy ejects none: 1/2 > 10%)
    (3, 50, 1, 1),
    (4, 50, 1, 2),
    (10, 50, 1, 5),
    (10, 70, 1, 7),
    (375, 18.4, 1, 69),  # float noise: 375 × 18.4 / 100 = 68.99…
    (10, 29, 1, 2),
    (10, 100, 1, 9),
    (10, 50, 8, 2),     # min_healthy_endpoints is stricter than the percentage
    (3, 100, 3, 0),
    (5, 0, 1, 0),       # 0% turns ejection off
])
def test_max_ejected(n, percent, min_healthy, expected):
    d = detector(n, max_ejection_percent=percent, min_healthy_endpoints=min_healthy)
    assert d.max_ejected() == expected


def test_two_endpoints_at_fifty_percent_eject_one_never_the_last():
    d = detector(2, consecutive_5xx=1, max_ejection_percent=50)
    a, b = keys(2)
    assert d.record(a, "5xx") is not None
    for _ in range(10):
        assert d.record(b, "5xx") is None
    assert d.is_ejected(a) and not d.is_ejected(b)


def test_ten_endpoints_at_fifty_percent_eject_at_most_five():
    d = detector(10, consecutive_5xx=1, max_ejection_percent=50)
    for _ in range(3):
        for key in keys(10):
            d.record(key, "gateway")
    assert sum(d.is_ejected(key) for key in keys(10)) == 5


def test_an_endpoint_refused_by_the_limit_is_ejected_on_its_next_failure_once_room_frees():
    clock = FakeClock()
    d = detector(2, clock=clock, consecutive_5xx=3, base_ejection_time=30, interval=10)
    a, b = keys(2)
    eject(d, a)
    for _ in range(3):
        assert d.record(b, "5xx") is None  # at the limit
    clock.advance(30)
    assert [e.key for e in d.sweep()] == [a]
    event = d.record(b, "5xx")  # one more failure, not three
    assert event is not None and event.key == b
    assert d.record(a, "success") is None


# Endpoints excluded (ejected or failing active checks) out of 4, panic threshold, and
# how many endpoints available() offers.
@pytest.mark.parametrize("excluded, panic, offered", [
    (0, 50, 4),
    (2, 50, 2),   # 50% usable is not below 50%
    (3, 50, 4),   # 25% < 50%: spread over all
    (3, 0, 1),    # panic off
    (4, 0, 0),    # nothing usable, panic off: the pipeline answers 503 UH
    (4, 10, 4),
    (1, 80, 4),   # 75% < 80%
])
def test_panic_threshold(excluded, panic, offered):
    d = detector(4, consecutive_5xx=1, max_ejection_percent=100, min_healthy_endpoints=1,
                 panic_threshold=panic)
    all_keys = keys(4)
    # at most 3 of 4 can be ejected; a fourth is excluded by a failing active check
    for key in all_keys[:min(excluded, 3)]:
        d.record(key, "5xx")
    failing_checks = set(all_keys[3:excluded])
    got = d.available(all_keys, healthy=lambda key: key not in failing_checks)
    assert len(got) == offered
    if 0 < offered < 4:
        assert not any(d.is_ejected(key) for key in got)


class Ep:
    def __init__(self, address: str):
        self.address = address


def test_available_maps_items_to_keys_and_returns_the_input_when_nothing_is_excluded():
    d = detector(3, consecutive_5xx=1)
    items = tuple(Ep(k) for k in keys(3))
    assert d.available(items, key=lambda e: e.address) is items
    assert d.available(items, key=lambda e: e.address, healthy=lambda k: True) is items
    d.record(B, "5xx")
    assert [e.address for e in d.available(items, key=lambda e: e.address)] == [A, C]
    subset = items[1:2]  # a backend whose only endpoint is ejected; panic off
    assert d.available(subset, key=lambda e: e.address) == []


def test_set_endpoints_keeps_state_of_surviving_endpoints():
    clock = FakeClock()
    d = detector(3, clock=clock, consecutive_5xx=3)
    eject(d, A)
    d.record(B, "5xx")
    d.record(B, "5xx")
    new = "10.0.0.9:8080"
    assert d.set_endpoints([A, B, new]) == []
    assert set(d.describe_all()) == {A, B, new}
    assert d.is_ejected(A) and d.describe(A)["times_ejected"] == 1
    assert d.record(B, "5xx") is None  # the limit (1 of 3) is taken by A
    assert d.describe(B)["consecutive_5xx"] == 3
    assert d.describe(new)["consecutive_5xx"] == 0
    with pytest.raises(KeyError):
        d.describe(C)
    d.set_endpoints([A, B, new], OutlierDetection(consecutive_5xx=3, max_ejection_percent=100))
    assert d.record(B, "5xx") is not None  # new policy: room for a second ejection


def test_set_endpoints_never_leaves_every_endpoint_ejected():
    clock = FakeClock()
    d = detector(4, clock=clock, consecutive_5xx=1, max_ejection_percent=100)
    a, b, c, _dd = keys(4)
    for key, at in ((a, 0), (b, 1), (c, 2)):
        clock.now = 1000 + at
        d.record(key, "5xx")
    events = d.set_endpoints([a, b, c])  # the healthy one was removed
    assert events == [OutlierEvent(a, "returned", "endpoints_changed", None, 1)]
    assert [d.is_ejected(k) for k in (a, b, c)] == [False, True, True]
    assert "ejected=2/2" in repr(d)
