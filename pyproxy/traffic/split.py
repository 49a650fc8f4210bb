"""Weighted choice of a backend: relative weights, weight 0 gets no new traffic.

Pure: the caller supplies the random draw, so tests pin it with a seeded RNG.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class WeightedSplit(Generic[T]):
    __slots__ = ("_cumulative", "_only", "choices", "total", "weights")

    def __init__(self, choices: Sequence[T], weights: Sequence[float]):
        if len(choices) != len(weights):
            raise ValueError("one weight per choice")
        if any(w < 0 for w in weights):
            raise ValueError("weights must be non-negative")
        self.choices = tuple(choices)
        self.weights = tuple(float(w) for w in weights)
        self.total = sum(self.weights)
        cumulative, running = [], 0.0
        for w in self.weights:
            running += w
            cumulative.append(running)
        self._cumulative = cumulative
        live = [c for c, w in zip(self.choices, self.weights, strict=True) if w > 0]
        # A single live choice needs no draw at all (the common plain route).
        self._only = live[0] if len(live) == 1 else None

    def pick(self, draw: float) -> T | None:
        """The choice for a uniform draw in [0, 1); None when every weight is 0."""
        if self._only is not None:
            return self._only
        if self.total <= 0:
            return None
        index = bisect_right(self._cumulative, draw * self.total)
        # Skip zero-weight entries that share a boundary (and guard draw*total == total).
        while index < len(self.choices) and self.weights[index] == 0:
            index += 1
        return self.choices[min(index, len(self.choices) - 1)]

    def share(self, index: int) -> float:
        """The configured share (0..1) of choice ``index``."""
        return self.weights[index] / self.total if self.total else 0.0

    def weight_of(self, choice: T) -> float:
        for c, w in zip(self.choices, self.weights, strict=True):
            if c is choice or c == choice:
                return w
        return 0.0
