"""Compile a Config into an immutable Snapshot, and swap snapshots atomically.

A snapshot holds everything a request needs, decided at load time: the route table with
compiled matchers, each route's split, and each backend's endpoints with their balancer.
Live state that must survive a reload (connection pools, per-endpoint counters, sticky pins)
lives in the ``Runtime`` and is looked up by stable keys while compiling, so in-flight
requests finish on the snapshot they started with and new ones see the new one.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field, replace

from pyproxy.config.model import (
    Backend, Config, Endpoint, Fault, HeaderRules, Mirror, Redirect, Retries, Rewrite, Route,
    Service, Sticky, DirectResponse,
)
from pyproxy.engine.upstream import EndpointPool, UpstreamPools
from pyproxy.errors import InvalidOverride
from pyproxy.routing.matchers import compile_matches
from pyproxy.routing.table import RouteTable
from pyproxy.traffic.balancer import make_balancer
from pyproxy.traffic.split import WeightedSplit
from pyproxy.traffic.sticky import StickyTable

logger = logging.getLogger("pyproxy.runtime")

# Envoy's default route timeout: without one, a black-holed upstream would hold the client.
DEFAULT_ROUTE_TIMEOUT = 15.0


class EndpointState:
    """One endpoint's live state; the same object across reloads while the endpoint exists."""

    __slots__ = ("service", "endpoint", "address", "pool", "active")

    def __init__(self, service: str, endpoint: Endpoint, pool: EndpointPool):
        self.service = service
        self.endpoint = endpoint
        self.address = endpoint.address
        self.pool = pool
        self.active = 0  # requests in flight (least_request reads it)

    def __repr__(self) -> str:
        return f"<EndpointState {self.service} {self.address} active={self.active}>"


class CompiledBackend:
    __slots__ = ("name", "service", "subset", "endpoints", "balancer", "hash_on", "headers",
                 "index")

    def __init__(self, backend: Backend, service: Service, endpoints: tuple[EndpointState, ...],
                 index: int):
        self.name = backend.name
        self.service = service
        self.subset = backend.subset
        self.endpoints = endpoints
        self.balancer = make_balancer(service.load_balancer.kind)
        self.hash_on = service.load_balancer.hash_on
        self.headers = backend.headers
        self.index = index

    def __repr__(self) -> str:
        return f"<CompiledBackend {self.name} endpoints={len(self.endpoints)}>"


@dataclass(eq=False)
class CompiledRoute:
    name: str
    hosts: tuple[str, ...]
    route: Route
    backends: tuple[CompiledBackend, ...]
    split: WeightedSplit
    timeout: float | None
    sticky: Sticky | None = None
    sticky_table: StickyTable | None = None
    fault: Fault | None = None
    retries: Retries | None = None
    headers: HeaderRules | None = None
    rewrite: Rewrite | None = None
    rewrite_regex: re.Pattern | None = None
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    mirrors: tuple[tuple[Mirror, CompiledBackend], ...] = ()
    path_prefixes: tuple[str, ...] = ()
    implicit: bool = False
    _predicate: object = field(default=None, repr=False)

    def matches(self, head) -> bool:
        return self._predicate(head)

    def backend_named(self, name: str) -> CompiledBackend | None:
        for backend in self.backends:
            if backend.name == name:
                return backend
        return None

    def matched_prefix(self, path: str) -> str | None:
        for prefix in self.path_prefixes:
            if path.startswith(prefix):
                return prefix
        return None


@dataclass
class WeightOverride:
    """Weights set at run time (CLI, admin API, canary): they replace the route's configured
    split until cleared, and survive reloads while the route and its backends exist."""

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


@dataclass(eq=False)
class Snapshot:
    generation: int
    config: Config
    table: RouteTable
    routes: dict[str, CompiledRoute]


class Runtime:
    """The current snapshot plus the state that outlives any one of them."""

    def __init__(self):
        self.pools = UpstreamPools()
        self._endpoints: dict[tuple[str, str, bool], EndpointState] = {}
        self._sticky_tables: dict[str, StickyTable] = {}
        self.snapshot: Snapshot | None = None
        self.generation = 0
        self.weight_overrides: dict[str, WeightOverride] = {}
        self.faults: dict[str, ActiveFault] = {}

    def compile(self, config: Config) -> Snapshot:
        """Build a snapshot for ``config`` (pure of side effects on the live snapshot)."""
        routes = [self._compile_route(route, config) for route in config.routes]
        implicit = {
            name: self._compile_route(Route(name=name, backends=(Backend(service=name),)),
                                      config, implicit=True)
            for name in config.services
        }
        table = RouteTable(routes, implicit)
        return Snapshot(self.generation + 1, config, table, {r.name: r for r in routes})

    def swap(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` current; requests already running keep their own reference."""
        self.snapshot = snapshot
        self.generation = snapshot.generation
        if self._prune_overrides(snapshot):
            self.refresh()
        live = {(s.name, ep.address, ep.tls) for s in snapshot.config.services.values()
                for ep in s.endpoints}
        for key in [k for k in self._endpoints if k not in live]:
            del self._endpoints[key]
        names = set(snapshot.routes)
        for key in [k for k in self._sticky_tables if k not in names]:
            del self._sticky_tables[key]

    def close(self) -> None:
        self.pools.close()

    def endpoint_state(self, service: str, endpoint: Endpoint) -> EndpointState | None:
        return self._endpoints.get((service, endpoint.address, endpoint.tls))

    # ------------------------------------------------------------------ run-time overrides

    def refresh(self) -> None:
        """Recompile the current config with the current overrides (same generation)."""
        snapshot = self.compile(self.snapshot.config)
        snapshot.generation = self.generation
        self.snapshot = snapshot

    def set_weights(self, route: str, weights: dict[str, float], source: str = "api") -> None:
        """Override a route's split; raises InvalidOverride naming what is wrong."""
        compiled = self.snapshot.routes.get(route)
        if compiled is None:
            raise InvalidOverride(f"no such route; routes: {', '.join(self.snapshot.routes)}")
        known = [b.name for b in compiled.backends]
        for name, weight in weights.items():
            if name not in known:
                raise InvalidOverride(f"unknown backend for route {compiled.name}; "
                                 f"its backends: {', '.join(known)}")
            if not isinstance(weight, (int, float)) or weight < 0:
                raise InvalidOverride("weights must be non-negative numbers")
        if not weights:
            raise InvalidOverride("give at least one BACKEND=WEIGHT")
        self.weight_overrides[route] = WeightOverride(dict(weights), source)
        logger.info("weights of route %s set by %s: %s", route, source, weights)
        self.refresh()

    def clear_weights(self, route: str | None = None) -> list[str]:
        cleared = [r for r in self.weight_overrides if route is None or r == route]
        for r in cleared:
            del self.weight_overrides[r]
            logger.info("weight override of route %s cleared", r)
        if cleared:
            self.refresh()
        return cleared

    def add_fault(self, route: str, fault: Fault, duration: float) -> ActiveFault:
        if route not in self.snapshot.routes:
            raise InvalidOverride(f"no such route; routes: {', '.join(self.snapshot.routes)}")
        if fault.delay is None and fault.abort is None:
            raise InvalidOverride("a fault needs an abort or a delay")
        if not 0 < duration <= 24 * 3600:
            raise InvalidOverride("duration must be between 0 and 24h")
        active = ActiveFault(route, fault, time.time() + duration)
        self.faults[route] = active
        logger.info("fault on route %s for %.1fs: %s", route, duration, fault)
        self.refresh()
        return active

    def clear_faults(self, route: str | None = None) -> list[str]:
        cleared = [r for r in self.faults if route is None or r == route]
        for r in cleared:
            del self.faults[r]
            logger.info("fault on route %s cleared", r)
        if cleared:
            self.refresh()
        return cleared

    def expire_faults(self, now: float | None = None) -> list[str]:
        """Remove faults whose time is up (called on a tick and at each deadline)."""
        now = time.time() if now is None else now
        expired = [r for r, f in self.faults.items() if f.expires <= now]
        for r in expired:
            del self.faults[r]
            logger.info("fault on route %s expired", r)
        if expired:
            self.refresh()
        return expired

    def _prune_overrides(self, snapshot: Snapshot) -> bool:
        """Overrides whose route or backends vanished in a reload go with them."""
        pruned = False
        for route, override in list(self.weight_overrides.items()):
            compiled = snapshot.routes.get(route)
            names = {b.name for b in compiled.backends} if compiled else set()
            if not set(override.weights) <= names:
                del self.weight_overrides[route]
                pruned = True
                logger.warning("weight override of route %s dropped: the route or a backend "
                               "is gone from the config", route)
        for route in [r for r in self.faults if r not in snapshot.routes]:
            del self.faults[route]
            pruned = True
            logger.warning("fault on route %s dropped: the route is gone", route)
        return pruned

    # ------------------------------------------------------------------ compile helpers

    def _endpoint_state(self, service: Service, endpoint: Endpoint) -> EndpointState:
        key = (service.name, endpoint.address, endpoint.tls)
        state = self._endpoints.get(key)
        if state is None:
            pool = self.pools.get(endpoint.host, endpoint.port, endpoint.tls)
            state = self._endpoints[key] = EndpointState(service.name, endpoint, pool)
        else:
            state.endpoint = endpoint  # labels may have changed
        policy = service.connection_pool
        state.pool.connect_timeout = policy.connect_timeout
        state.pool.idle_timeout = policy.idle_timeout
        return state

    def _compile_backend(self, backend: Backend, config: Config, index: int) -> CompiledBackend:
        service = config.services[backend.service]
        endpoints = tuple(self._endpoint_state(service, ep)
                          for ep in service.subset_endpoints(backend.subset))
        return CompiledBackend(backend, service, endpoints, index)

    def _compile_route(self, route: Route, config: Config, implicit: bool = False) -> CompiledRoute:
        backends = [self._compile_backend(backend, config, index)
                    for index, backend in enumerate(route.backends)]
        override = None if implicit else self.weight_overrides.get(route.name)
        weights = [b.weight for b in route.backends] if override is None else \
            [override.weights.get(b.name, 0.0) for b in route.backends]
        split = WeightedSplit(backends, weights)
        active_fault = None if implicit else self.faults.get(route.name)
        sticky_table = None
        if route.sticky is not None and route.sticky.header:
            sticky_table = self._sticky_tables.setdefault(route.name, StickyTable())
        prefixes = tuple(m.path.value for m in route.matches
                         if m.path is not None and m.path.kind == "prefix")
        rewrite_regex = None
        if route.rewrite is not None and route.rewrite.path_regex is not None:
            rewrite_regex = re.compile(route.rewrite.path_regex[0])
        timeout = DEFAULT_ROUTE_TIMEOUT if route.timeout is None else (route.timeout or None)
        return CompiledRoute(
            name=route.name, hosts=route.hosts, route=route, backends=tuple(backends),
            split=split, timeout=timeout, sticky=route.sticky, sticky_table=sticky_table,
            fault=active_fault.fault if active_fault else route.fault, retries=route.retries, headers=route.headers,
            rewrite=route.rewrite, rewrite_regex=rewrite_regex, redirect=route.redirect,
            direct_response=route.direct_response,
            mirrors=tuple((m, self._compile_backend(Backend(m.service, m.subset), config, -1))
                          for m in route.mirrors),
            path_prefixes=prefixes, implicit=implicit, _predicate=compile_matches(route.matches),
        )

    # ------------------------------------------------------------------ read by metrics

    def backend_weights(self):
        """(route, backend, configured share 0..1) for ``pyproxy_backend_weight``."""
        snapshot = self.snapshot
        if snapshot is None:
            return
        for route in snapshot.routes.values():
            for index, backend in enumerate(route.backends):
                yield route.name, backend.name, route.split.share(index)
