"""The weighted split: pinned draws at the boundaries, zero weights, a seeded distribution."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pyproxy.traffic.split import WeightedSplit
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
