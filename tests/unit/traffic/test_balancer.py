"""Endpoint balancers: round robin, least request, consistent hash, with seeded RNGs."""

from __future__ import annotations

import random
from collections import Counter

from pyproxy.traffic.balancer import ConsistentHash, LeastRequest, RoundRobin, make_balancer
from tests.stats_bounds import assert_binomial


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
