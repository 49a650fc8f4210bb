"""What a route does when the backend it drew has no endpoint to send to.

A backend (a service or one subset of it) is *unavailable* when none of its endpoints can
take a request: every one is ejected by outlier detection or failing its health check (and
the service's panic threshold did not step in), or its subset selects no endpoint at all.
The route's ``when_backend_unavailable`` decides what the request drawn for it gets:

- ``failover`` (the default): the draw is repeated over the route's *other* backends that
  are available, in proportion to their weights, so a broken canary never fails users.
  What broke it is still counted against it: the failures that got its endpoints ejected
  were its own requests. Backends of weight 0 get nothing, as in the split itself. With
  nowhere to go, the request gets the 503 ``UH`` it would have had anyway.
- ``panic``: the request goes to the backend's endpoints anyway, ejected or unhealthy
  ones included (Envoy's panic routing, for one backend at a time).
- ``fail``: 503 with response flag ``UH`` (Envoy's behaviour with panic routing off, and
  Linkerd's "failfast").

A sticky client pinned to an unavailable backend fails over the same way, request by
request, and keeps its pin: it is back on its own backend as soon as that has an endpoint
again. A new client is pinned to what it drew, not to where it was failed over to, so the
sticky population keeps the configured split.

Pure: availability and the random draw are passed in, so tests use plain values and a
seeded RNG.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

from pyproxy.traffic.split import WeightedSplit

WhenUnavailable = Literal["failover", "panic", "fail"]
"""The values of ``routes[].when_backend_unavailable``."""

POLICIES: tuple[WhenUnavailable, ...] = ("failover", "panic", "fail")
DEFAULT: WhenUnavailable = "failover"

T = TypeVar("T")


def can_fail_over(policy: WhenUnavailable, weights: tuple[float, ...]) -> bool:
    """Whether a route may ever fail over: its policy says so and at least two of its
    backends get traffic (with one, there is nowhere else to go). Decided when the route
    is compiled, so single-backend routes pay nothing per request."""
    return policy == "failover" and sum(1 for weight in weights if weight > 0) > 1


def failover_target(split: WeightedSplit[T], unavailable: T, is_available: Callable[[T], bool],
                    draw: Callable[[], float]) -> T | None:
    """The backend to send a request to instead of ``unavailable``: drawn over the split's
    other choices of weight > 0 for which ``is_available`` holds, in proportion to their
    weights; None when there is none.

    ``draw`` (a uniform draw in [0, 1), e.g. ``Random.random``) is called only when more
    than one backend is left to choose from."""
    choices: list[T] = []
    weights: list[float] = []
    for choice, weight in zip(split.choices, split.weights, strict=True):
        if weight > 0 and choice is not unavailable and is_available(choice):
            choices.append(choice)
            weights.append(weight)
    if not choices:
        return None
    if len(choices) == 1:
        return choices[0]
    return WeightedSplit(choices, weights).pick(draw())


_DESCRIPTIONS: dict[str, str] = {
    "failover": "its share goes to the other available backends, by weight (503 UH if none)",
    "panic": "its share goes to its endpoints anyway, ejected or unhealthy ones included",
    "fail": "its share is answered 503 UH",
}


def describe(policy: str) -> str:
    """What happens to an unavailable backend's share, for ``pyproxy validate``,
    ``pyproxy explain`` and ``pyproxy status`` (which reads the policy from the admin API)."""
    return _DESCRIPTIONS.get(policy, f"unknown policy {policy!r}")
