"""Split, stickiness table and balancers: pure, with pinned draws and seeded RNGs."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pyproxy.traffic import failover
from pyproxy.traffic.balancer import ConsistentHash, LeastRequest, RoundRobin, make_balancer
from pyproxy.traffic.split import WeightedSplit
from pyproxy.traffic.sticky import StickyTable, set_cookie_header
from tests.stats_bounds import assert_binomial


def test_pick_boundaries():
    split = WeightedSplit(["a", "b", "c"], [90, 10, 0])
    assert split.pick(0.0) == "a"
    assert split.pick(0.8999) == "a"
    assert split.pick(0.9) == "b"
    assert split.pick(0.99999) == "b"  # weight 0 is never picked, even at the top edge


def test_zero_weight_in_the_middle_is_skipped():
    split = WeightedSplit(["a", "b", "c"], [1, 0, 1])
    assert {split.pick(d / 1000) for d in range(1000)} == {"a", "c"}


def test_all_zero_gives_none_and_single_needs_no_draw():
    assert WeightedSplit(["a", "b"], [0, 0]).pick(0.5) is None
    assert WeightedSplit(["a", "b"], [0, 3]).pick(0.0) == "b"


def test_shares_and_validation():
    split = WeightedSplit(["a", "b"], [1, 4])
    assert split.share(0) == pytest.approx(0.2) and split.share(1) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        WeightedSplit(["a"], [-1])


def test_seeded_split_distribution():
    rng = random.Random(42)
    split = WeightedSplit(["v1", "v2"], [90, 10])
    counts = Counter(split.pick(rng.random()) for _ in range(10000))
    assert_binomial(counts["v2"], 10000, 0.1)


def test_sticky_table_is_an_lru():
    table = StickyTable(capacity=2)
    table.pin("a", "v1")
    table.pin("b", "v2")
    assert table.get("a") == "v1"  # touches a
    table.pin("c", "v1")  # evicts b, the least recently used
    assert table.get("b") is None and table.get("a") == "v1" and len(table) == 2


def test_set_cookie_header():
    name, value = set_cookie_header("s", "svc/v2", 3600)
    assert name == "set-cookie" and value.startswith("s=svc/v2; Path=/; Max-Age=3600")


class Ep:
    def __init__(self, address, active=0):
        self.address, self.active = address, active


def test_round_robin_cycles():
    eps = [Ep("a"), Ep("b"), Ep("c")]
    rr = RoundRobin()
    assert [rr.pick(eps, random.Random()).address for _ in range(6)] == list("abcabc")


def test_least_request_prefers_idle():
    eps = [Ep("busy", 100), Ep("idle", 0)]
    lr = LeastRequest()
    rng = random.Random(1)
    picks = Counter(lr.pick(eps, rng).address for _ in range(1000))
    # two draws both land on "busy" only with probability 1/4
    assert_binomial(picks["busy"], 1000, 0.25)


def test_consistent_hash_is_stable_and_moves_few_keys():
    eps = [Ep(f"10.0.0.{i}:80") for i in range(5)]
    ch = ConsistentHash()
    rng = random.Random()
    before = {k: ch.pick(eps, rng, f"user{k}").address for k in range(1000)}
    assert before == {k: ch.pick(eps, rng, f"user{k}").address for k in range(1000)}
    after = {k: ch.pick(eps[:4], rng, f"user{k}").address for k in range(1000)}
    moved = sum(1 for k in before if before[k] != after[k])
    assert moved == sum(1 for v in before.values() if v == "10.0.0.4:80")  # only the lost node's


def test_make_balancer_kinds():
    for kind in ("round_robin", "random", "least_request", "consistent_hash"):
        assert make_balancer(kind).kind == kind


def test_a_zero_ttl_sticky_cookie_is_a_session_cookie():
    _, value = set_cookie_header("s", "svc/v1", 0)
    assert "Max-Age" not in value and value.startswith("s=svc/v1; Path=/")


# ---------------------------------------------------------------------------- failover


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
