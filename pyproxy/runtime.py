"""Compile a Config into an immutable Snapshot, and swap snapshots atomically.

A snapshot holds everything a request needs, decided at load time: the route table with
compiled matchers, each route's split, and each backend's endpoints with their balancer.
Live state that must survive a reload (connection pools, per-endpoint counters, sticky pins)
lives in the ``Runtime`` and is looked up by stable keys while compiling, so in-flight
requests finish on the snapshot they started with and new ones see the new one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pyproxy.config.model import (
    Backend, Config, Endpoint, Fault, HeaderRules, Mirror, Redirect, Retries, Rewrite, Route,
    Service, Sticky, DirectResponse,
)
from pyproxy.engine.upstream import EndpointPool, UpstreamPools
from pyproxy.routing.matchers import compile_matches
from pyproxy.routing.table import RouteTable
from pyproxy.traffic.balancer import make_balancer
from pyproxy.traffic.split import WeightedSplit
from pyproxy.traffic.sticky import StickyTable

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
    mirrors: tuple[Mirror, ...] = ()
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
        live = {(s.name, ep.address, ep.tls) for s in snapshot.config.services.values()
                for ep in s.endpoints}
        for key in [k for k in self._endpoints if k not in live]:
            del self._endpoints[key]
        names = set(snapshot.routes)
        for key in [k for k in self._sticky_tables if k not in names]:
            del self._sticky_tables[key]

    def close(self) -> None:
        self.pools.close()

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

    def _compile_route(self, route: Route, config: Config, implicit: bool = False) -> CompiledRoute:
        backends = []
        for index, backend in enumerate(route.backends):
            service = config.services[backend.service]
            endpoints = tuple(self._endpoint_state(service, ep)
                              for ep in service.subset_endpoints(backend.subset))
            backends.append(CompiledBackend(backend, service, endpoints, index))
        split = WeightedSplit(backends, [b.weight for b in route.backends])
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
            fault=route.fault, retries=route.retries, headers=route.headers,
            rewrite=route.rewrite, rewrite_regex=rewrite_regex, redirect=route.redirect,
            direct_response=route.direct_response, mirrors=route.mirrors,
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
