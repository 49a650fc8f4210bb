"""Compile a Config into an immutable Snapshot, and swap snapshots atomically.

A snapshot holds everything a request needs, decided at load time: the route table with
compiled matchers, each route's split, and each backend's endpoints with their balancer.
Live state that must survive a reload (connection pools, per-endpoint counters, sticky pins)
lives in the ``Runtime`` and is looked up by stable keys while compiling, so in-flight
requests finish on the snapshot they started with and new ones see the new one. Weights and
faults set at run time (``overrides.py``) are compiled in the same way: a change recompiles
the current config.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import ssl
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyproxy.config.model import (
    Backend,
    Config,
    DirectResponse,
    Endpoint,
    Fault,
    HeaderRules,
    Mirror,
    PathMatch,
    Redirect,
    Retries,
    Rewrite,
    Route,
    Service,
    Sticky,
    UpstreamTLS,
)
from pyproxy.engine.pool import EndpointPool, UpstreamPools
from pyproxy.messages import RequestHead
from pyproxy.overrides import Overrides
from pyproxy.resilience.health import HealthChecker
from pyproxy.resilience.outlier import OutlierDetector, OutlierEvent
from pyproxy.routing.matchers import Predicate, compile_matches
from pyproxy.routing.table import RouteTable
from pyproxy.tasks import spawn_detached
from pyproxy.traffic import failover
from pyproxy.traffic.balancer import make_balancer
from pyproxy.traffic.split import WeightedSplit
from pyproxy.traffic.sticky import StickyTable
from pyproxy.upstream.attempt import Admission

logger = logging.getLogger("pyproxy.runtime")

# Envoy's default route timeout: without one, a black-holed upstream would hold the client.
DEFAULT_ROUTE_TIMEOUT = 15.0


class EndpointState:
    """One endpoint's live state; the same object across reloads while the endpoint exists."""

    __slots__ = ("active", "address", "endpoint", "pool", "service")

    def __init__(self, service: str, endpoint: Endpoint, pool: EndpointPool):
        self.service = service
        self.endpoint = endpoint
        self.address = endpoint.address
        self.pool = pool
        self.active = 0  # requests in flight (least_request reads it)

    def __repr__(self) -> str:
        return f"<EndpointState {self.service} {self.address} active={self.active}>"


class ServiceRuntime:
    """A service's live resilience state, the same object across reloads while the service
    exists: its admission (circuit breaker and pending queue), outlier detector and health
    checker."""

    def __init__(self, service: Service):
        self.name = service.name
        self.admission = Admission(service.name, service.connection_pool)
        self.breaker = self.admission.breaker  # read by the admin API
        self.detector: OutlierDetector | None = None
        self.checker: HealthChecker | None = None

    def update(self, service: Service) -> None:
        """Apply a (re)loaded service definition, keeping state for surviving endpoints."""
        keys = [ep.address for ep in service.endpoints]
        self.admission.update(service.connection_pool)
        policy = service.outlier_detection
        if policy is None:
            self.detector = None
        elif self.detector is None:
            self.detector = OutlierDetector(policy, keys)
        else:
            for event in self.detector.set_endpoints(keys, policy):
                logger.info("endpoint %s of %s returned: %s", event.key, self.name, event.reason)
        health = service.health_check
        if health is None:
            if self.checker is not None:
                _spawn(self.checker.stop(), f"health-stop-{self.name}")
                self.checker = None
        elif self.checker is None:
            self.checker = HealthChecker(self.name, service.endpoints, health,
                                         on_change=_log_health)
            _spawn(self.checker.start(), f"health-start-{self.name}")
        else:
            self.checker.update(service.endpoints, health)

    def available(self, endpoints: tuple[EndpointState, ...]) -> Sequence[EndpointState]:
        """The endpoints to balance over: not ejected and not failing health checks."""
        detector, checker = self.detector, self.checker
        if detector is not None:
            return detector.available(endpoints, key=_address,
                                      healthy=checker.is_healthy if checker else None)
        if checker is not None:
            return [ep for ep in endpoints if checker.is_healthy(ep.address)]
        return endpoints

    async def close(self) -> None:
        if self.checker is not None:
            await self.checker.stop()

    def __repr__(self) -> str:
        return f"<ServiceRuntime {self.name} {self.admission!r} {self.detector!r}>"


def _prefix_of(path: PathMatch) -> str:
    """The literal prefix a prefix match consumed (element-wise prefixes drop a trailing /)."""
    if path.kind == "segment_prefix":
        return path.value.rstrip("/") or "/"
    return path.value


def _address(endpoint: EndpointState) -> str:
    return endpoint.address


def _log_health(service: str, key: str, healthy: bool) -> None:
    logger.warning("health check: endpoint %s of %s is now %s", key, service,
                   "healthy" if healthy else "unhealthy")


def _spawn(coro: Coroutine[Any, Any, None], name: str) -> None:
    """Health checkers start and stop from compile() and swap(), which run inside the event
    loop — or offline (``pyproxy explain``, validate), where there is nothing to probe."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        coro.close()
        return
    spawn_detached(coro, name)


class CompiledBackend:
    __slots__ = (
        "balancer",
        "direct_status",
        "endpoints",
        "hash_on",
        "headers",
        "index",
        "name",
        "panic",
        "redirect",
        "response_headers",
        "rewrite",
        "rewrite_regex",
        "runtime",
        "service",
        "subset",
    )

    def __init__(self, backend: Backend, service: Service, endpoints: tuple[EndpointState, ...],
                 index: int, runtime: ServiceRuntime):
        self.name = backend.name
        self.runtime = runtime
        self.service = service
        self.subset = backend.subset
        self.endpoints = endpoints
        self.balancer = make_balancer(service.load_balancer.kind) if service else None
        self.hash_on = service.load_balancer.hash_on if service else None
        self.headers = backend.headers
        self.response_headers = backend.response_headers
        self.rewrite = backend.rewrite
        self.rewrite_regex = re.compile(backend.rewrite.path_regex[0]) if (
            backend.rewrite is not None and backend.rewrite.path_regex is not None) else None
        self.redirect = backend.redirect
        self.index = index
        self.direct_status = backend.direct_status
        # Its route's when_backend_unavailable is "panic": with no endpoint available, send
        # to all of them anyway (set by _compile_route; a mirror never panics).
        self.panic = False

    def has_available_endpoints(self) -> bool:
        """Whether it can take a request: an endpoint neither ejected nor failing its
        health check (or all of them in the service's panic mode), or a fixed answer."""
        return (self.direct_status is not None or self.redirect is not None
                or bool(self.runtime.available(self.endpoints)))

    def __repr__(self) -> str:
        return f"<CompiledBackend {self.name} endpoints={len(self.endpoints)}>"


@dataclass(eq=False)
class CompiledRoute:
    name: str
    hosts: tuple[str, ...]
    route: Route
    backends: tuple[CompiledBackend, ...]
    split: WeightedSplit[CompiledBackend]
    timeout: float | None
    sticky: Sticky | None = None
    sticky_table: StickyTable | None = None
    fault: Fault | None = None
    retries: Retries | None = None
    headers: HeaderRules | None = None
    rewrite: Rewrite | None = None
    rewrite_regex: re.Pattern[str] | None = None
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    mirrors: tuple[tuple[Mirror, CompiledBackend], ...] = ()
    path_prefixes: tuple[tuple[str, bool], ...] = ()  # (prefix, element-wise), longest first
    implicit: bool = False
    when_backend_unavailable: failover.WhenUnavailable = failover.DEFAULT
    _predicate: Predicate = field(default=lambda head: True, repr=False)
    # Only forwards, with nothing per attempt or per backend to do first: the pipeline's fast
    # path (Proxy.serve_now) may serve it.
    forward_only: bool = field(init=False, repr=False)
    # A request whose backend has no available endpoint may go to another backend.
    fails_over: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.fails_over = failover.can_fail_over(self.when_backend_unavailable,
                                                 self.split.weights)
        self.forward_only = (
            self.direct_response is None and self.redirect is None and not self.mirrors
            and (self.fault is None or self.fault.scope == "request")
            and all(backend.direct_status is None and backend.redirect is None
                    for backend in self.backends))

    def matches(self, head: RequestHead) -> bool:
        return self._predicate(head)

    def backend_named(self, name: str) -> CompiledBackend | None:
        for backend in self.backends:
            if backend.name == name:
                return backend
        return None

    def matched_prefix(self, path: str) -> str | None:
        for prefix, element_wise in self.path_prefixes:
            if path.startswith(prefix) and (
                    not element_wise or prefix == "/" or len(path) == len(prefix)
                    or path[len(prefix)] == "/"):
                return prefix
        return None


@dataclass(eq=False)
class Snapshot:
    """``config`` is what serves: ``declared`` (the files and command line) with each
    DNS-discovered endpoint name replaced by the endpoints of its last good answer."""

    generation: int
    config: Config
    table: RouteTable[CompiledRoute]
    routes: dict[str, CompiledRoute]
    declared: Config


# (service, host, port) of a DNS-discovered endpoint name → the addresses it resolved to.
ResolvedNames = Mapping[tuple[str, str, int], tuple[str, ...]]


class Runtime:
    """The current snapshot plus the state that outlives any one of them."""

    def __init__(self) -> None:
        self.pools = UpstreamPools()
        self._endpoints: dict[tuple[str, str, bool], EndpointState] = {}
        self._sticky_tables: dict[str, StickyTable] = {}
        self.snapshot: Snapshot | None = None
        self.generation = 0
        self.overrides = Overrides(self.refresh)
        self.services: dict[str, ServiceRuntime] = {}
        self._tls_contexts: dict[UpstreamTLS, ssl.SSLContext] = {}
        # The last good DNS answers, set by discovery/dns.py; applied by every compile.
        self.resolved: ResolvedNames = {}
        # During one compile: the endpoint states of each (service, subset), built once and
        # shared by every backend naming it (many routes over one big service stay linear).
        self._compiling: dict[tuple[str, str | None], tuple[EndpointState, ...]] = {}

    def compile(self, config: Config) -> Snapshot:
        """Build a snapshot for ``config``. Service state (pools, breakers, detectors) is
        created or updated as needed; the live snapshot itself is untouched until swap."""
        declared = config
        config = self._with_resolved(config)
        for service in config.services.values():
            if service.name not in self.services:
                self.services[service.name] = ServiceRuntime(service)
            self.services[service.name].update(service)
        self._compiling = {}
        try:
            routes = [self._compile_route(route, config) for route in config.routes]
            implicit = {
                name: self._compile_route(Route(name=name, backends=(Backend(service=name),)),
                                          config, implicit=True)
                for name in config.services
            }
        finally:
            self._compiling = {}
        table = RouteTable(routes, implicit)
        return Snapshot(self.generation + 1, config, table, {r.name: r for r in routes},
                        declared)

    def swap(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` current; requests already running keep their own reference."""
        self.snapshot = snapshot
        self.generation = snapshot.generation
        routes = {name: [b.name for b in route.backends] for name, route in snapshot.routes.items()}
        if self.overrides.set_routes(routes):
            self.refresh()
        live = {(s.name, ep.address, ep.tls) for s in snapshot.config.services.values()
                for ep in s.endpoints}
        for endpoint_key in [k for k in self._endpoints if k not in live]:
            # Removed: it drains. Requests already on it finish (they hold its pool), then
            # its connections close rather than idle (a DNS answer that shrank, a reload).
            gone = self._endpoints.pop(endpoint_key).endpoint
            self.pools.retire(endpoint_key[0], gone.host, gone.port, gone.tls)
        names = set(snapshot.routes)
        for route in [r for r in self._sticky_tables if r not in names]:
            del self._sticky_tables[route]
        for name in [n for n in self.services if n not in snapshot.config.services]:
            _spawn(self.services.pop(name).close(), f"service-close-{name}")

    def close(self) -> None:
        self.pools.close()

    async def aclose(self) -> None:
        for service in self.services.values():
            await service.close()
        self.close()

    def tick(self) -> list[tuple[str, OutlierEvent]]:
        """Once a second: return ejected endpoints whose time is up, expire faults."""
        events = []
        for service in self.services.values():
            if service.detector is not None:
                for event in service.detector.sweep():
                    logger.info("endpoint %s of %s returned after ejection", event.key,
                                service.name)
                    events.append((service.name, event))
        self.overrides.expire_faults()
        return events

    def ejections(self) -> Iterator[tuple[str, str, bool]]:
        """(service, endpoint, ejected) for ``pyproxy_endpoint_ejected``."""
        for service in list(self.services.values()):
            detector = service.detector
            if detector is not None:
                for key, state in detector.describe_all().items():
                    yield service.name, key, bool(state["ejected"])

    def endpoint_state(self, service: str, endpoint: Endpoint) -> EndpointState | None:
        return self._endpoints.get((service, endpoint.address, endpoint.tls))

    @property
    def current(self) -> Snapshot:
        """The snapshot serving now; there is one from the first ``swap`` on."""
        if self.snapshot is None:
            raise RuntimeError("no config has been swapped in yet")
        return self.snapshot

    def refresh(self) -> None:
        """Recompile the current config with the current overrides (same generation)."""
        snapshot = self.compile(self.current.declared)
        snapshot.generation = self.generation
        self.snapshot = snapshot

    def apply_resolved(self, resolved: ResolvedNames) -> None:
        """New DNS answers: recompile the declared config and swap, as a reload does (live
        state carried over), keeping the generation since no file changed. A removed
        address drains: requests already on it keep its pool; new ones never pick it."""
        self.resolved = resolved
        snapshot = self.compile(self.current.declared)
        snapshot.generation = self.generation
        self.swap(snapshot)

    def _with_resolved(self, config: Config) -> Config:
        """``config`` with each resolved endpoint name of a DNS-discovered service replaced
        by one endpoint per address (its labels inherited). A name with no answer yet stays
        one endpoint, connected to by name, as without discovery."""
        if not self.resolved:
            return config
        services = dict(config.services)
        for name, service in config.services.items():
            if service.discovery is None:
                continue
            endpoints: dict[tuple[str, bool], Endpoint] = {}
            for endpoint in service.endpoints:
                addresses = self.resolved.get((name, endpoint.host, endpoint.port))
                if not addresses:
                    endpoints.setdefault((endpoint.address, endpoint.tls), endpoint)
                    continue
                for address in addresses:
                    found = Endpoint(address, endpoint.port, endpoint.labels, endpoint.tls,
                                     hostname=endpoint.host)
                    # Two names with one address: one endpoint, the first name's labels.
                    endpoints.setdefault((found.address, found.tls), found)
            services[name] = dataclasses.replace(service, endpoints=tuple(endpoints.values()))
        return dataclasses.replace(config, services=services)

    # ------------------------------------------------------------------ compile helpers

    def _endpoint_state(self, service: Service, endpoint: Endpoint) -> EndpointState:
        key = (service.name, endpoint.address, endpoint.tls)
        state = self._endpoints.get(key)
        if state is None:
            pool = self.pools.get(service.name, endpoint.host, endpoint.port, endpoint.tls)
            service_runtime = self.services[service.name]
            pool.on_connection_closed = service_runtime.admission.connection_closed
            pool.on_connection_idle = service_runtime.admission.slot_freed
            state = self._endpoints[key] = EndpointState(service.name, endpoint, pool)
        else:
            state.endpoint = endpoint  # labels may have changed
        policy = service.connection_pool
        state.pool.connect_timeout = policy.connect_timeout
        state.pool.idle_timeout = policy.idle_timeout
        if endpoint.tls:
            state.pool.ssl_context = self._client_tls(service.tls)
            # A resolved address is still checked against (and sends SNI for) its name.
            state.pool.server_name = service.tls.server_name or endpoint.hostname
        return state

    def _client_tls(self, policy: UpstreamTLS) -> ssl.SSLContext | None:
        """One context per distinct policy (None: the engine's shared default)."""
        if policy == UpstreamTLS():
            return None
        context = self._tls_contexts.get(policy)
        if context is None:
            context = ssl.create_default_context(cafile=policy.ca)
            if not policy.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._tls_contexts[policy] = context
        return context

    def _compile_backend(self, backend: Backend, config: Config, index: int) -> CompiledBackend:
        if backend.direct_status is not None or backend.redirect is not None:
            # It answers by itself: nothing reads the service or runtime of such a backend.
            return CompiledBackend(backend, None, (), index, None)  # type: ignore[arg-type]
        service = config.services[backend.service]
        endpoints = self._compiling.get((service.name, backend.subset))
        if endpoints is None:
            endpoints = self._compiling[service.name, backend.subset] = tuple(
                self._endpoint_state(service, ep)
                for ep in service.subset_endpoints(backend.subset))
        return CompiledBackend(backend, service, endpoints, index, self.services[service.name])

    def _compile_route(self, route: Route, config: Config, implicit: bool = False) -> CompiledRoute:
        backends = [self._compile_backend(backend, config, index)
                    for index, backend in enumerate(route.backends)]
        override = None if implicit else self.overrides.weights.get(route.name)
        weights = [b.weight for b in route.backends] if override is None else \
            [override.weights.get(b.name, 0.0) for b in route.backends]
        split = WeightedSplit(backends, weights)
        for compiled in backends:
            compiled.panic = route.when_backend_unavailable == "panic"
        active_fault = None if implicit else self.overrides.faults.get(route.name)
        sticky_table = None
        if route.sticky is not None and route.sticky.header:
            sticky_table = self._sticky_tables.setdefault(route.name, StickyTable())
        # Longest first: a rewrite replaces the most specific prefix that matched.
        prefixes = tuple(sorted(((_prefix_of(m.path), m.path.kind == "segment_prefix")
                                 for m in route.matches if m.path is not None
                                 and m.path.kind in ("prefix", "segment_prefix")),
                                key=lambda item: len(item[0]), reverse=True))
        rewrite_regex = None
        if route.rewrite is not None and route.rewrite.path_regex is not None:
            rewrite_regex = re.compile(route.rewrite.path_regex[0])
        timeout = DEFAULT_ROUTE_TIMEOUT if route.timeout is None else (route.timeout or None)
        return CompiledRoute(
            name=route.name, hosts=route.hosts, route=route, backends=tuple(backends),
            split=split, timeout=timeout, sticky=route.sticky, sticky_table=sticky_table,
            fault=active_fault.fault if active_fault else route.fault, retries=route.retries,
            headers=route.headers,
            rewrite=route.rewrite, rewrite_regex=rewrite_regex, redirect=route.redirect,
            direct_response=route.direct_response,
            mirrors=tuple((m, self._compile_backend(Backend(m.service, m.subset), config, -1))
                          for m in route.mirrors),
            path_prefixes=prefixes, implicit=implicit, _predicate=compile_matches(route.matches),
            when_backend_unavailable=route.when_backend_unavailable,
        )

    # ------------------------------------------------------------------ read by metrics

    def backend_weights(self) -> Iterator[tuple[str, str, float]]:
        """(route, backend, configured share 0..1) for ``pyproxy_backend_weight``."""
        snapshot = self.snapshot
        if snapshot is None:
            return
        for route in snapshot.routes.values():
            for index, backend in enumerate(route.backends):
                yield route.name, backend.name, route.split.share(index)
