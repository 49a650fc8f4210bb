"""Endpoint choice inside one backend: round robin, random, least request, consistent hash.

Pure over a tuple of endpoint states; the random draws come from an injected RNG and the
least-request balancer reads each endpoint's ``active`` count.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Sequence
from random import Random
from typing import Protocol, TypeVar


class _Endpoint(Protocol):
    @property
    def active(self) -> int: ...  # requests in flight (least_request compares them)
    @property
    def address(self) -> str: ...  # host:port (consistent_hash places it on the ring)


E = TypeVar("E", bound=_Endpoint)


class Balancer(Protocol):
    """Picks one of a backend's endpoints (never given an empty sequence)."""

    kind: str

    def pick(self, endpoints: Sequence[E], rng: Random, key: str | None = None) -> E: ...


def _hash64(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class RoundRobin:
    kind = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def pick(self, endpoints: Sequence[E], rng: Random, key: str | None = None) -> E:
        index = self._next % len(endpoints)
        self._next = index + 1
        return endpoints[index]


class RandomPick:
    kind = "random"

    def pick(self, endpoints: Sequence[E], rng: Random, key: str | None = None) -> E:
        return endpoints[int(rng.random() * len(endpoints))]


class LeastRequest:
    """Power of two choices: of two random endpoints, the one with fewer active requests."""

    kind = "least_request"

    def pick(self, endpoints: Sequence[E], rng: Random, key: str | None = None) -> E:
        if len(endpoints) == 1:
            return endpoints[0]
        a = endpoints[int(rng.random() * len(endpoints))]
        b = endpoints[int(rng.random() * len(endpoints))]
        return a if a.active <= b.active else b


class ConsistentHash:
    """A hash ring (160 points per endpoint): a key keeps its endpoint while the set of
    endpoints is stable, and only ~1/N of keys move when one leaves."""

    kind = "consistent_hash"
    POINTS = 160

    def __init__(self) -> None:
        self._ring_for: tuple[str, ...] = ()
        self._points: list[int] = []
        self._owners: list[int] = []

    def _build(self, endpoints: Sequence[_Endpoint]) -> None:
        ring = sorted((_hash64(f"{ep.address}#{i}"), n)
                      for n, ep in enumerate(endpoints) for i in range(self.POINTS))
        self._points = [p for p, _ in ring]
        self._owners = [n for _, n in ring]
        self._ring_for = tuple(ep.address for ep in endpoints)

    def pick(self, endpoints: Sequence[E], rng: Random, key: str | None = None) -> E:
        if key is None:
            return endpoints[int(rng.random() * len(endpoints))]
        if tuple(ep.address for ep in endpoints) != self._ring_for:
            self._build(endpoints)
        index = bisect_left(self._points, _hash64(key))
        if index == len(self._points):
            index = 0
        return endpoints[self._owners[index]]


def make_balancer(kind: str) -> Balancer:
    balancers: dict[str, type[Balancer]] = {
        "round_robin": RoundRobin, "random": RandomPick, "least_request": LeastRequest,
        "consistent_hash": ConsistentHash}
    return balancers[kind]()
