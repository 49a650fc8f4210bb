"""Compile a Config into an immutable Snapshot, and swap snapshots atomically.

A snapshot holds everything a request needs, decided at load time: the route table with
compiled matchers, each route's split, and each backend's endpoints with their balancer.
Live state that must survive a reload (connection pools, per-endpoint counters, sticky pins)
lives in the ``Runtime`` and is looked up by stable keys while compiling, so in-flight
requests finish on the snapshot they started with and new ones see the new one.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

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
from pyproxy.engine.upstream import EndpointPool, UpstreamPools
from pyproxy.errors import InvalidOverride
from pyproxy.resilience.breaker import CircuitBreaker
from pyproxy.resilience.budget import RetryBudget
from pyproxy.resilience.health import HealthChecker
from pyproxy.resilience.outlier import OutlierDetector, OutlierEvent
from pyproxy.routing.matchers import compile_matches
from pyproxy.routing.table import RouteTable
from pyproxy.traffic import failover
from pyproxy.traffic.balancer import make_balancer
from pyproxy.traffic.split import WeightedSplit
from pyproxy.traffic.sticky import StickyTable

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
    exists: circuit breaker counters, outlier detector, health checker, and the requests
    waiting for a connection slot."""

    def __init__(self, service: Service):
        self.name = service.name
        # Retries can never amplify an outage: 20% of active requests, at least 3 at once.
        self.breaker = CircuitBreaker(service.connection_pool, RetryBudget())
        self.detector: OutlierDetector | None = None
        self.checker: HealthChecker | None = None
        self.pending_timeout = service.connection_pool.pending_timeout
        self._slot_waiters: list[asyncio.Future] = []

    def update(self, service: Service) -> None:
        """Apply a (re)loaded service definition, keeping state for surviving endpoints."""
        keys = [ep.address for ep in service.endpoints]
        self.breaker.set_limits(service.connection_pool, RetryBudget())
        self.pending_timeout = service.connection_pool.pending_timeout
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

    def available(self, endpoints: tuple[EndpointState, ...]):
        """The endpoints to balance over: not ejected and not failing health checks."""
        detector, checker = self.detector, self.checker
        if detector is not None:
            return detector.available(endpoints, key=_address,
                                      healthy=checker.is_healthy if checker else None)
        if checker is not None:
            return [ep for ep in endpoints if checker.is_healthy(ep.address)]
        return endpoints

    # A request waiting for a connection slot (max_connections reached) is woken when a
    # connection goes back to a pool or closes.
    async def wait_for_slot(self, timeout: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        finally:
            if waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)

    def slot_freed(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def connection_closed(self) -> None:
        self.breaker.connection_closed()
        self.slot_freed()

    async def close(self) -> None:
        if self.checker is not None:
            await self.checker.stop()

    def __repr__(self) -> str:
        return f"<ServiceRuntime {self.name} {self.breaker!r} {self.detector!r}>"


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


_background: set[asyncio.Task] = set()


def _spawn(coro, name: str) -> None:
    """Health checkers start and stop from compile(), which runs inside the event loop."""
    try:
        task = asyncio.get_running_loop().create_task(coro, name=name)
    except RuntimeError:
        coro.close()  # no loop (offline explain/validate): nothing to probe
        return
    _background.add(task)
    task.add_done_callback(_background.discard)


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
        self.index = index
        self.direct_status = backend.direct_status
        # Its route's when_backend_unavailable is "panic": with no endpoint available, send
        # to all of them anyway (set by _compile_route; a mirror never panics).
        self.panic = False

    def has_available_endpoints(self) -> bool:
        """Whether it can take a request: an endpoint neither ejected nor failing its
        health check (or all of them in the service's panic mode), or a fixed answer."""
        return self.direct_status is not None or bool(self.runtime.available(self.endpoints))

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
    rewrite_regex: re.Pattern | None = None
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    mirrors: tuple[tuple[Mirror, CompiledBackend], ...] = ()
    path_prefixes: tuple[tuple[str, bool], ...] = ()  # (prefix, element-wise), longest first
    implicit: bool = False
    when_backend_unavailable: failover.WhenUnavailable = failover.DEFAULT
    _predicate: object = field(default=None, repr=False)
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
            and all(backend.direct_status is None for backend in self.backends))

    def matches(self, head) -> bool:
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
        self.services: dict[str, ServiceRuntime] = {}
        self._tls_contexts: dict[UpstreamTLS, ssl.SSLContext] = {}
        # Called after each change made through the methods below (weights set or cleared,
        # faults added or cleared); not when faults expire or a reload prunes overrides.
        # With a state file, the leader writes it from here (``shared_state``).
        self.on_change: Callable[[], None] | None = None

    def compile(self, config: Config) -> Snapshot:
        """Build a snapshot for ``config``. Service state (pools, breakers, detectors) is
        created or updated as needed; the live snapshot itself is untouched until swap."""
        for service in config.services.values():
            if service.name not in self.services:
                self.services[service.name] = ServiceRuntime(service)
            self.services[service.name].update(service)
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
        self.expire_faults()
        return events

    def ejections(self):
        """(service, endpoint, ejected) for ``pyproxy_endpoint_ejected``."""
        for service in list(self.services.values()):
            detector = service.detector
            if detector is not None:
                for key, state in detector.describe_all().items():
                    yield service.name, key, bool(state["ejected"])

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
        self._changed()

    def clear_weights(self, route: str | None = None) -> list[str]:
        cleared = [r for r in self.weight_overrides if route is None or r == route]
        for r in cleared:
            del self.weight_overrides[r]
            logger.info("weight override of route %s cleared", r)
        if cleared:
            self.refresh()
            self._changed()
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
        self._changed()
        return active

    def clear_faults(self, route: str | None = None) -> list[str]:
        cleared = [r for r in self.faults if route is None or r == route]
        for r in cleared:
            del self.faults[r]
            logger.info("fault on route %s cleared", r)
        if cleared:
            self.refresh()
            self._changed()
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

    def schedule_expiry(self, fault: ActiveFault) -> None:
        """End ``fault`` at its deadline rather than at the next tick. A few milliseconds
        after it: event-loop timers may fire up to a millisecond early (uvloop counts whole
        milliseconds), and ``expire_faults`` compares with the wall clock."""
        asyncio.get_running_loop().call_later(fault.remaining() + 0.005, self.expire_faults)

    def restore(self, weights: Mapping[str, WeightOverride],
                faults: Mapping[str, ActiveFault]) -> None:
        """Replace every run-time override at once: state another worker set, or an earlier
        run saved (``shared_state``). Faults whose time is up are left out; what no longer
        fits the config is dropped, as on a reload."""
        now = time.time()
        self.weight_overrides = dict(weights)
        self.faults = {route: fault for route, fault in faults.items() if fault.expires > now}
        self._prune_overrides(self.snapshot)
        self.refresh()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

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
            pool = self.pools.get(service.name, endpoint.host, endpoint.port, endpoint.tls)
            service_runtime = self.services[service.name]
            pool.on_connection_closed = service_runtime.connection_closed
            pool.on_connection_idle = service_runtime.slot_freed
            state = self._endpoints[key] = EndpointState(service.name, endpoint, pool)
        else:
            state.endpoint = endpoint  # labels may have changed
        policy = service.connection_pool
        state.pool.connect_timeout = policy.connect_timeout
        state.pool.idle_timeout = policy.idle_timeout
        if endpoint.tls:
            state.pool.ssl_context = self._client_tls(service.tls)
            state.pool.server_name = service.tls.server_name
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
        if backend.direct_status is not None:
            return CompiledBackend(backend, None, (), index, None)
        service = config.services[backend.service]
        endpoints = tuple(self._endpoint_state(service, ep)
                          for ep in service.subset_endpoints(backend.subset))
        return CompiledBackend(backend, service, endpoints, index, self.services[service.name])

    def _compile_route(self, route: Route, config: Config, implicit: bool = False) -> CompiledRoute:
        backends = [self._compile_backend(backend, config, index)
                    for index, backend in enumerate(route.backends)]
        override = None if implicit else self.weight_overrides.get(route.name)
        weights = [b.weight for b in route.backends] if override is None else \
            [override.weights.get(b.name, 0.0) for b in route.backends]
        split = WeightedSplit(backends, weights)
        for compiled in backends:
            compiled.panic = route.when_backend_unavailable == "panic"
        active_fault = None if implicit else self.faults.get(route.name)
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
            fault=active_fault.fault if active_fault else route.fault, retries=route.retries, headers=route.headers,
            rewrite=route.rewrite, rewrite_regex=rewrite_regex, redirect=route.redirect,
            direct_response=route.direct_response,
            mirrors=tuple((m, self._compile_backend(Backend(m.service, m.subset), config, -1))
                          for m in route.mirrors),
            path_prefixes=prefixes, implicit=implicit, _predicate=compile_matches(route.matches),
            when_backend_unavailable=route.when_backend_unavailable,
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
