"""Binomial bounds for statistical assertions (never "roughly")."""

from __future__ import annotations

import math

Z_999 = 3.2905  # two-sided 99.9%


def binomial_bounds(n: int, p: float, z: float = Z_999) -> tuple[float, float]:
    """The count interval a Binomial(n, p) lands in with ~99.9% probability (normal approx.,
    widened by one for continuity)."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - z * sd - 1, n * p + z * sd + 1


def assert_binomial(count: int, n: int, p: float) -> None:
    low, high = binomial_bounds(n, p)
    assert low <= count <= high, \
        f"{count}/{n} outside the 99.9% bound [{low:.0f}, {high:.0f}] for p={p}"
