"""Outlier detection: eject an endpoint that keeps failing, return it when its time is up.

One ``OutlierDetector`` per service, over endpoint keys (``host:port``, the ``endpoint``
metric label). Pure: the pipeline reports each attempt's result, a tick calls ``sweep()``,
and time comes from an injected clock (``time.monotonic`` in production, a fake in tests).
Every state change is returned as an ``OutlierEvent`` so the caller can count and log it;
nothing here changes state on its own.

Semantics follow Envoy / Istio (``outlier_detection.proto``, ``DestinationRule``):

- **Detectors** run inline on every result. ``consecutive_5xx`` counts any 5xx response
  *and* gateway failures; ``consecutive_gateway_errors`` counts only 502/503/504 responses
  and local-origin failures (connect failure, reset, timeout). A non-gateway 5xx resets the
  gateway counter; a success resets both. 0 disables a detector. When both trip on the same
  result the reason is ``consecutive_gateway_errors`` (the more specific one, as Envoy).
- **Ejection time** is ``base_ejection_time × times_ejected``, capped at
  ``max_ejection_time``. ``times_ejected`` goes up by one per ejection and stops growing once
  the cap is reached (as Envoy), so a flapping endpoint's penalty grows, and it shrinks
  again by one for every ``interval`` during which the endpoint was never ejected.
- **Return**: ``sweep()`` returns an endpoint as soon as its time is up. It may be called
  as often as you like (the once-a-second tick); the ``times_ejected`` decrement happens at
  most once per ``interval``. (Envoy returns hosts only on its ``interval`` timer, so an
  ejection there lasts up to one interval longer than configured.)
- **Limits** — where we deliberately differ from Envoy. Envoy ejects only while
  ``(ejected + 1) / hosts ≤ max_ejection_percent``, so with 2–9 endpoints and the default
  10% it never ejects anything (envoyproxy/gateway#8140), and older versions ejected even
  when the percentage said no (envoy#3263). Here the percentage is rounded *down* but to at
  least one endpoint, and an absolute floor decides: never leave fewer than
  ``min_healthy_endpoints`` (at least 1) endpoints un-ejected. So a 2-endpoint service can
  eject one at any percentage above 0 (Envoy: only from 50%), 10 endpoints at 50% eject at
  most 5, and the last endpoint is never ejected. ``max_ejection_percent: 0`` turns
  ejection off. An endpoint refused ejection by a limit keeps its count, so it is ejected
  on its next failure once room frees up. Limits count the whole service (Istio applies
  them per subset, each subset being its own Envoy cluster), so a subset can lose all its
  endpoints while the service keeps some: see ``available()``.
- **Panic threshold** (percent, Istio ``minHealthPercent``; 0 = off): when the share of
  usable endpoints of a backend falls below it, ``available()`` spreads traffic over all of
  them, ejected ones included, rather than piling everything on the few left.
- Results for an ejected endpoint (traffic reaches it in panic mode, or was in flight) are
  ignored: its counters restart from zero when it returns, as Envoy's do.

Only the consecutive detectors exist; Envoy's success-rate and failure-percentage
detectors are not implemented.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict, TypeVar

from pyproxy.config.model import OutlierDetection

Result = Literal["success", "5xx", "gateway"]
"""What one attempt did to an endpoint; ``classify`` maps a status to it."""

T = TypeVar("T")

_GATEWAY = frozenset({502, 503, 504})
# Keeps float noise from rounding a whole endpoint away (375 × 18.4 / 100 = 68.99…97).
_EPSILON = 1e-9


def classify(status: int | None) -> Result:
    """An attempt's result from its response status; ``None`` when there was no response
    (connect failure, reset, timeout), which is a gateway failure.

    Only real attempts count: a circuit-breaker overflow or an injected fault never reached
    the endpoint and must not be recorded.
    """
    if status is None or status in _GATEWAY:
        return "gateway"
    return "5xx" if status >= 500 else "success"


@dataclass(frozen=True)
class OutlierEvent:
    """An endpoint was ejected or returned.

    ``reason``: ``consecutive_5xx`` / ``consecutive_gateway_errors`` for an ejection (the
    ``reason`` label of ``pyproxy_endpoint_ejections_total``); ``expired`` when its time was
    up, ``endpoints_changed`` when a smaller endpoint set forced it back (see
    ``set_endpoints``). ``until`` is on the detector's clock (None for a return).
    """

    key: str
    kind: Literal["ejected", "returned"]
    reason: str
    until: float | None
    times_ejected: int


class EndpointReport(TypedDict):
    """One endpoint's outlier state, as ``describe`` reports it (admin API, metrics)."""

    ejected: bool
    reason: str
    until: float | None
    remaining: float
    times_ejected: int
    consecutive_5xx: int
    consecutive_gateway_errors: int


class _Endpoint:
    __slots__ = (
        "clean",
        "consecutive_5xx",
        "consecutive_gateway",
        "reason",
        "times_ejected",
        "until",
    )

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.times_ejected = 0  # the ejection-time multiplier
        self.until: float | None = None  # ejected until (clock time); None = not ejected
        self.reason = ""  # why it is (or last was) ejected
        self.clean = True  # not ejected at any time since the last decrement pass


class OutlierDetector:
    """Consecutive-error ejection for one service's endpoints (see the module docstring).

    Pipeline use, per attempt to endpoint ``key``::

        event = detector.record(key, classify(status_or_None))
        if event: stats.record_ejection(service, key, event.reason); log(event)

    on the tick: ``for event in detector.sweep(): log(event)``; when picking an endpoint:
    ``candidates = detector.available(backend.endpoints, key=lambda e: e.address)``
    (empty → 503 UH); on reload: ``detector.set_endpoints(keys, new_policy)``.
    """

    def __init__(self, policy: OutlierDetection, keys: Iterable[str] = (), *,
                 clock: Callable[[], float] = time.monotonic):
        """``keys``: the service's endpoints (``host:port``), all of them: the limits are
        counted over the whole service."""
        self._policy = policy
        self._clock = clock
        self._endpoints: dict[str, _Endpoint] = {key: _Endpoint() for key in keys}
        self._ejected = 0
        self._last_decay = clock()

    @property
    def policy(self) -> OutlierDetection:
        return self._policy

    # ------------------------------------------------------------------ results

    def record(self, key: str, result: Result) -> OutlierEvent | None:
        """Count one attempt's result; returns the ejection it caused, if any.

        Unknown keys are ignored: an attempt that started before a reload removed its
        endpoint may finish after it.
        """
        state = self._endpoints.get(key)
        if state is None or state.until is not None:
            return None
        if result == "success":
            state.consecutive_5xx = 0
            state.consecutive_gateway = 0
            return None
        policy = self._policy
        state.consecutive_5xx += 1
        if result == "gateway":
            state.consecutive_gateway += 1
        else:
            state.consecutive_gateway = 0
        if 0 < policy.consecutive_gateway_errors <= state.consecutive_gateway:
            return self._eject(key, state, "consecutive_gateway_errors")
        if 0 < policy.consecutive_5xx <= state.consecutive_5xx:
            return self._eject(key, state, "consecutive_5xx")
        return None

    def _eject(self, key: str, state: _Endpoint, reason: str) -> OutlierEvent | None:
        if self._ejected >= self.max_ejected():
            return None
        policy = self._policy
        if policy.base_ejection_time * state.times_ejected < policy.max_ejection_time:
            state.times_ejected += 1
        duration = min(policy.base_ejection_time * state.times_ejected, policy.max_ejection_time)
        state.until = self._clock() + duration
        state.reason = reason
        state.clean = False
        state.consecutive_5xx = 0
        state.consecutive_gateway = 0
        self._ejected += 1
        return OutlierEvent(key, "ejected", reason, state.until, state.times_ejected)

    def max_ejected(self) -> int:
        """How many endpoints may be ejected at once (see "Limits" in the module docstring)."""
        policy = self._policy
        if policy.max_ejection_percent <= 0:
            return 0
        total = len(self._endpoints)
        by_percent = max(1, math.floor(total * policy.max_ejection_percent / 100 + _EPSILON))
        return max(0, min(by_percent, total - max(1, policy.min_healthy_endpoints)))

    # ------------------------------------------------------------------ time

    def sweep(self) -> list[OutlierEvent]:
        """Return endpoints whose time is up; once per ``interval``, lower the multiplier of
        endpoints that were not ejected at all during that interval. Call it on a tick."""
        now = self._clock()
        events = []
        for key, state in self._endpoints.items():
            if state.until is not None and state.until <= now:
                events.append(self._return(key, state, "expired"))
        if now - self._last_decay >= self._policy.interval:
            self._last_decay = now
            for state in self._endpoints.values():
                if state.until is None:
                    if state.clean and state.times_ejected > 0:
                        state.times_ejected -= 1
                    state.clean = True
        return events

    def _return(self, key: str, state: _Endpoint, reason: str) -> OutlierEvent:
        state.until = None
        self._ejected -= 1
        return OutlierEvent(key, "returned", reason, None, state.times_ejected)

    # ------------------------------------------------------------------ reads

    def is_ejected(self, key: str) -> bool:
        state = self._endpoints.get(key)
        return state is not None and state.until is not None

    def available(self, items: Sequence[T], key: Callable[[T], str] = str,
                  healthy: Callable[[str], bool] | None = None) -> Sequence[T]:
        """The items to balance over: those not ejected (and ``healthy(key)`` when given,
        e.g. an active ``HealthChecker.is_healthy``), or all of them in panic mode.

        ``key`` maps an item to its endpoint key (``lambda e: e.address``). Returns ``items``
        itself when nothing is excluded (the per-request fast path), and may return an empty
        list when every item is excluded and the panic threshold is 0: answer 503 UH then.
        """
        if self._ejected == 0 and healthy is None:
            return items
        endpoints = self._endpoints

        def keep(item: T) -> bool:
            name = key(item)
            state = endpoints.get(name)
            return (state is None or state.until is None) and (healthy is None or healthy(name))

        usable = [item for item in items if keep(item)]
        if len(usable) == len(items):
            return items
        if len(usable) * 100 < self._policy.panic_threshold * len(items):
            return items
        return usable

    def describe(self, key: str) -> EndpointReport:
        """``ejected``, ``reason`` (of the current or last ejection, "" if never),
        ``until`` (on the detector's clock — ``time.monotonic`` in production — None when
        not ejected), ``remaining`` (seconds until return, 0 when not ejected; add it to
        ``time.time()`` for a wall-clock time), ``times_ejected`` (the multiplier) and the
        two consecutive counters. Raises KeyError for an unknown key."""
        return self._describe(self._endpoints[key])

    def describe_all(self) -> dict[str, EndpointReport]:
        """``describe`` for every endpoint, in configured order (admin API, metrics)."""
        # One dict, read once: a reload swaps it whole, so a scrape from another thread
        # never sees a key vanish mid-iteration.
        endpoints = self._endpoints
        return {key: self._describe(state) for key, state in endpoints.items()}

    def _describe(self, state: _Endpoint) -> EndpointReport:
        until = state.until
        return {
            "ejected": until is not None,
            "reason": state.reason,
            "until": until,
            "remaining": max(0.0, until - self._clock()) if until is not None else 0.0,
            "times_ejected": state.times_ejected,
            "consecutive_5xx": state.consecutive_5xx,
            "consecutive_gateway_errors": state.consecutive_gateway,
        }

    # ------------------------------------------------------------------ reload

    def set_endpoints(self, keys: Iterable[str],
                      policy: OutlierDetection | None = None) -> list[OutlierEvent]:
        """Adopt a reloaded endpoint list (and policy, when given): surviving endpoints keep
        their state, new ones start clean, removed ones are forgotten.

        If the new set allows fewer ejections than are active (say an endpoint was removed
        and only ejected ones remain), the ones due back soonest return at once — never
        serve with every endpoint ejected — and are reported with reason
        ``endpoints_changed``.
        """
        if policy is not None:
            self._policy = policy
        old = self._endpoints
        self._endpoints = {key: old.get(key) or _Endpoint() for key in keys}
        ejected = sorted(((state.until, key) for key, state in self._endpoints.items()
                          if state.until is not None))
        self._ejected = len(ejected)
        excess = self._ejected - self.max_ejected()
        return [self._return(key, self._endpoints[key], "endpoints_changed")
                for _, key in ejected[:max(0, excess)]]

    def __repr__(self) -> str:
        ejected = ", ".join(f"{key} until={s.until:.1f} ({s.reason}, x{s.times_ejected})"
                            for key, s in self._endpoints.items() if s.until is not None)
        return (f"<OutlierDetector endpoints={len(self._endpoints)} "
                f"ejected={self._ejected}/{self.max_ejected()} [{ejected}]>")
