"""The run-time override table: weights and faults set while the proxy runs (admin API,
``pyproxy weights``/``fault``, the canary), on top of the config.

An override replaces its route's configured split, or fault, until cleared; a fault also
ends by itself at its deadline (a dead-man's switch for chaos experiments). Overrides live
in memory, survive reloads while their route (and backends) still exist, and are never
written back to the config files. With a state directory they are also kept in the state
file (``workers/state_file.py``), through ``on_change`` and ``restore``.

The runtime reads the table while compiling a snapshot and gives it the routes of each new
config (``set_routes``); after each change the table asks the runtime to recompile
(``refresh``).

In-cluster mode (docs/kubernetes.md) adds ``shared``: each change made here is also written
to the route's Kubernetes object, which every replica watches, and a route another
controller manages is refused (``SharedOverrides.check``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pyproxy.config.model import Fault
from pyproxy.errors import InvalidOverride

logger = logging.getLogger("pyproxy.runtime")

MAX_FAULT_DURATION = 24 * 3600.0  # seconds: a forgotten fault must not outlive a day


@dataclass
class WeightOverride:
    """Weights set at run time (admin API, ``pyproxy weights``, a canary): they replace the
    route's configured split until cleared, and survive reloads while the route and its
    backends exist."""

    weights: dict[str, float]  # backend name → weight; backends not named get 0
    source: str = "api"
    since: float = field(default_factory=time.time)


@dataclass
class ActiveFault:
    """A time-boxed fault: it replaces the route's configured fault until ``expires``
    (wall clock), then removes itself — a dead-man's switch for chaos experiments."""

    route: str
    fault: Fault
    expires: float
    since: float = field(default_factory=time.time)

    def remaining(self, now: float | None = None) -> float:
        return max(0.0, self.expires - (time.time() if now is None else now))


class SharedOverrides(Protocol):
    """Where run-time changes go so that every replica follows them: the route objects in
    the Kubernetes API (``discovery/kubernetes/writeback.py``)."""

    def check(self, route: str) -> None:
        """Raise InvalidOverride when ``route`` may not be changed here (another
        controller manages it)."""

    def changed(self, route: str) -> None:
        """The route's weight override or fault changed in the table: write it out."""


class Overrides:
    """Route name → weight override, and route name → active fault."""

    def __init__(self, refresh: Callable[[], None]):
        self._refresh = refresh  # recompile the current config with the current overrides
        self.weights: dict[str, WeightOverride] = {}
        self.faults: dict[str, ActiveFault] = {}
        # route → its backend names, in the config now serving (``set_routes``)
        self._routes: dict[str, tuple[str, ...]] = {}
        # Called after each change made through the methods below (weights set or cleared,
        # faults added or cleared); not when faults expire or a reload prunes overrides.
        # With a state file, the leader writes it from here (``workers/state_file.py``).
        self.on_change: Callable[[], None] | None = None
        self.shared: SharedOverrides | None = None  # in-cluster mode: the route objects

    def set_routes(self, routes: Mapping[str, Sequence[str]]) -> bool:
        """The routes (→ backend names) of a new config. Overrides whose route or backends
        vanished go with them; True when any did (the caller recompiles)."""
        self._routes = {route: tuple(backends) for route, backends in routes.items()}
        return self._prune()

    def set_weights(self, route: str, weights: dict[str, float], source: str = "api") -> None:
        """Override a route's split; raises InvalidOverride naming what is wrong."""
        known = self._backends(route)
        for name, weight in weights.items():
            if name not in known:
                raise InvalidOverride(f"unknown backend for route {route}; "
                                      f"its backends: {', '.join(known)}")
            if not isinstance(weight, (int, float)) or weight < 0:
                raise InvalidOverride("weights must be non-negative numbers")
        if not weights:
            raise InvalidOverride("give at least one BACKEND=WEIGHT")
        if self.shared is not None:
            self.shared.check(route)
        self.weights[route] = WeightOverride(dict(weights), source)
        logger.info("weights of route %s set by %s: %s", route, source, weights)
        self._refresh()
        self._changed(route)

    def clear_weights(self, route: str | None = None) -> list[str]:
        """Clear one route's override, or every one (``route=None``); the routes cleared."""
        cleared = [r for r in self.weights if route is None or r == route]
        for r in cleared:
            del self.weights[r]
            logger.info("weight override of route %s cleared", r)
        if cleared:
            self._refresh()
            self._changed(*cleared)
        return cleared

    def add_fault(self, route: str, fault: Fault, duration: float) -> ActiveFault:
        """Inject ``fault`` on ``route`` for ``duration`` seconds; raises InvalidOverride."""
        self._backends(route)
        if fault.delay is None and fault.abort is None:
            raise InvalidOverride("a fault needs an abort or a delay")
        if not 0 < duration <= MAX_FAULT_DURATION:
            raise InvalidOverride("duration must be between 0 and 24h")
        if self.shared is not None:
            self.shared.check(route)
        active = ActiveFault(route, fault, time.time() + duration)
        self.faults[route] = active
        logger.info("fault on route %s for %.1fs: %s", route, duration, fault)
        self._refresh()
        self._changed(route)
        return active

    def clear_faults(self, route: str | None = None) -> list[str]:
        """Clear one route's fault, or every one (``route=None``); the routes cleared."""
        cleared = [r for r in self.faults if route is None or r == route]
        for r in cleared:
            del self.faults[r]
            logger.info("fault on route %s cleared", r)
        if cleared:
            self._refresh()
            self._changed(*cleared)
        return cleared

    def expire_faults(self, now: float | None = None) -> list[str]:
        """Remove faults whose time is up (called on a tick and at each deadline)."""
        now = time.time() if now is None else now
        expired = [r for r, f in self.faults.items() if f.expires <= now]
        for r in expired:
            del self.faults[r]
            logger.info("fault on route %s expired", r)
        if expired:
            self._refresh()
        return expired

    def schedule_expiry(self, fault: ActiveFault) -> None:
        """End ``fault`` at its deadline rather than at the next tick. A few milliseconds
        after it: event-loop timers may fire up to a millisecond early (uvloop counts whole
        milliseconds), and ``expire_faults`` compares with the wall clock."""
        asyncio.get_running_loop().call_later(fault.remaining() + 0.005, self.expire_faults)

    def restore(self, weights: Mapping[str, WeightOverride],
                faults: Mapping[str, ActiveFault]) -> None:
        """Replace every override at once: state another worker set, or an earlier run saved
        (``workers/state_file.py``). Faults whose time is up are left out; what no longer
        fits the config is dropped, as on a reload."""
        now = time.time()
        self.weights = dict(weights)
        self.faults = {route: fault for route, fault in faults.items() if fault.expires > now}
        self._prune()
        self._refresh()

    def _backends(self, route: str) -> tuple[str, ...]:
        backends = self._routes.get(route)
        if backends is None:
            raise InvalidOverride(f"no such route; routes: {', '.join(self._routes)}")
        return backends

    def _changed(self, *routes: str) -> None:
        if self.on_change is not None:
            self.on_change()
        if self.shared is not None:
            for route in routes:
                self.shared.changed(route)

    def _prune(self) -> bool:
        pruned = False
        for route, override in list(self.weights.items()):
            if not set(override.weights) <= set(self._routes.get(route, ())):
                del self.weights[route]
                pruned = True
                logger.warning("weight override of route %s dropped: the route or a backend "
                               "is gone from the config", route)
        for route in [r for r in self.faults if r not in self._routes]:
            del self.faults[route]
            pruned = True
            logger.warning("fault on route %s dropped: the route is gone", route)
        return pruned
