"""Failover between a route's backends when the one drawn has no available endpoint."""

from __future__ import annotations

import random
from collections import Counter

from pyproxy.traffic import failover
from pyproxy.traffic.split import WeightedSplit
from tests.stats_bounds import assert_binomial


def _never_drawn() -> float:
    raise AssertionError("no draw is needed with at most one backend left")


def test_failover_goes_to_the_only_other_available_backend_without_a_draw():
    split = WeightedSplit(["v1", "v2"], [90, 10])
    assert failover.failover_target(split, "v2", lambda b: b != "v2", _never_drawn) == "v1"
    assert failover.failover_target(split, "v1", lambda b: b != "v1", _never_drawn) == "v2"


def test_failover_redraws_over_the_others_in_proportion_to_their_weights():
    split = WeightedSplit(["v1", "v2", "v3"], [60, 10, 30])
    rng = random.Random(3)
    picks = Counter(failover.failover_target(split, "v2", lambda b: b != "v2", rng.random)
                    for _ in range(10000))
    assert set(picks) == {"v1", "v3"}
    assert_binomial(picks["v3"], 10000, 30 / 90)


def test_failover_skips_unavailable_and_zero_weight_backends():
    split = WeightedSplit(["v1", "v2", "v3", "v4"], [50, 0, 25, 25])
    available = {"v1": False, "v2": True, "v3": False, "v4": True}
    # v2 is available but has weight 0: it gets no traffic, failed over or not.
    assert failover.failover_target(split, "v3", available.__getitem__, _never_drawn) == "v4"


def test_failover_gives_none_when_nothing_else_is_available():
    split = WeightedSplit(["v1", "v2"], [90, 10])
    assert failover.failover_target(split, "v2", lambda b: False, _never_drawn) is None
    only = WeightedSplit(["v1"], [1])
    assert failover.failover_target(only, "v1", lambda b: True, _never_drawn) is None


def test_failover_compares_backends_by_identity():
    # Two backends may look alike (equal values); the unavailable one is the object drawn.
    first, second = ["svc"], ["svc"]
    split = WeightedSplit([first, second], [1, 1])
    assert failover.failover_target(split, first, lambda b: True, _never_drawn) is second


def test_can_fail_over_needs_the_policy_and_two_backends_with_traffic():
    assert failover.can_fail_over("failover", (90.0, 10.0))
    assert not failover.can_fail_over("failover", (100.0, 0.0))
    assert not failover.can_fail_over("failover", (1.0,))
    assert not failover.can_fail_over("panic", (90.0, 10.0))
    assert not failover.can_fail_over("fail", (90.0, 10.0))


def test_every_policy_has_a_description():
    assert failover.DEFAULT in failover.POLICIES
    assert all(failover.describe(policy) for policy in failover.POLICIES)
