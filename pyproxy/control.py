"""The running proxy as the admin API and the CLI see it.

``ProxyControl`` owns reloads (parse → validate → compile → swap, keeping the last good
config), passes run-time weight overrides and time-boxed faults on to ``runtime.overrides``,
and describes the running proxy as plain JSON values for the admin API (``describe_*``:
routes with live stats, services with their endpoints, active faults, canaries, explain).
The CLI turns those into text in ``admin/views.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import time
from collections.abc import Mapping, Sequence
from typing import NotRequired, Protocol, TypedDict

from pyproxy.admin.views import ejection_times
from pyproxy.canary.controller import CanaryController, CanaryNotFound
from pyproxy.config.load import ConfigInvalid, LoadedConfig, load_config
from pyproxy.config.model import (
    AbortFault,
    Address,
    AdminConfig,
    Config,
    DelayFault,
    Fault,
    KubernetesConfig,
)
from pyproxy.discovery.dns import DnsWatcher
from pyproxy.engine.server import Listener
from pyproxy.errors import InvalidOverride
from pyproxy.explain import explain, request_head
from pyproxy.metrics.stats import Stats
from pyproxy.metrics.windows import INJECTED_ABORT
from pyproxy.overrides import ActiveFault
from pyproxy.runtime import Runtime
from pyproxy.workers.state_file import StateSync

logger = logging.getLogger("pyproxy")


class ConfigOverrides(TypedDict, total=False):
    """``pyproxy run --listen/--admin``: config values given on the command line, which
    outlive reloads."""

    listen: Address
    admin: AdminConfig
    kubernetes: KubernetesConfig  # pyproxy run --kubernetes


class ReloadResult(TypedDict):
    """What a reload did (``POST /api/v1/reload``, docs/admin-api.md)."""

    result: str  # success, failure or unchanged
    generation: int  # of the config serving afterwards
    errors: list[str]  # why a failed reload was rejected
    time: NotRequired[float]  # wall clock; not for "unchanged"


class ConfigSource(Protocol):
    """Where configs come from besides the files: in-cluster mode's provider, which builds
    each config from the files and the Kubernetes API and applies it with
    :meth:`ProxyControl.apply_built`."""

    @property
    def ready(self) -> bool: ...

    async def reload_files(self) -> ReloadResult: ...


class ProxyControl:
    """The running proxy as the admin API sees it: readiness, config and reloads."""

    def __init__(self, paths: Sequence[str], loaded: LoadedConfig, runtime: Runtime,
                 stats: Stats, listener: Listener, overrides: ConfigOverrides):
        self.paths = list(paths)
        self.loaded = loaded
        self.runtime = runtime
        self.stats = stats
        self.listener = listener
        self.overrides = overrides
        self.serving = False
        self.last_reload: ReloadResult = {"result": "success", "generation": runtime.generation,
                            "time": time.time(), "errors": []}
        self._reload_lock = asyncio.Lock()
        self.canaries: CanaryController | None = None  # set by the server
        self.shared: StateSync | None = None  # set by the server with a state directory
        self.dns: DnsWatcher | None = None  # set by the server
        self.source: ConfigSource | None = None  # set by the server in in-cluster mode

    def is_ready(self) -> bool:
        return self.serving and not self.listener.draining and (
            self.source is None or self.source.ready)

    def effective(self, loaded: LoadedConfig) -> Config:
        return dataclasses.replace(loaded.config, **self.overrides) if self.overrides \
            else loaded.config

    def describe_config(self) -> dict[str, object]:
        config = self.runtime.current.config
        view = {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
        view["generation"] = self.runtime.generation
        view["files"] = list(self.loaded.files)
        view["warnings"] = [str(w) for w in self.loaded.warnings]
        view["last_reload"] = self.last_reload
        return view

    async def reload(self) -> ReloadResult:
        """parse → validate → compile → swap; the last good config stays on any error.
        In in-cluster mode the files are combined with the API objects (``source``)."""
        if self.source is not None:
            return await self.source.reload_files()
        async with self._reload_lock:
            try:
                # YAML parsing is the slow part: keep it off the event loop.
                loaded: LoadedConfig | ConfigInvalid = await asyncio.to_thread(
                    load_config, self.paths)
            except ConfigInvalid as invalid:
                loaded = invalid
            return self._apply(loaded, force=False)

    async def apply_built(self, built: LoadedConfig | ConfigInvalid) -> ReloadResult:
        """Apply a config built elsewhere (in-cluster mode: the files and the Kubernetes
        API) exactly as a reload would: validated already, then compiled and swapped in,
        with the command line's overrides; a ConfigInvalid is rejected and the last good
        config keeps serving."""
        async with self._reload_lock:
            return self._apply(built, force=True)

    def _apply(self, loaded: LoadedConfig | ConfigInvalid, *, force: bool) -> ReloadResult:
        if isinstance(loaded, ConfigInvalid):
            errors = [str(issue) for issue in loaded.issues]
            for line in errors:
                logger.error("config reload rejected: %s", line)
            self.stats.record_reload(False, self.runtime.generation)
            self.last_reload = {"result": "failure", "generation": self.runtime.generation,
                                "time": time.time(), "errors": errors}
            return self.last_reload
        if loaded.digest == self.loaded.digest and not force:
            return {"result": "unchanged", "generation": self.runtime.generation,
                    "errors": []}
        config = self.effective(loaded)
        serving = self.runtime.current.config
        if config.listen != serving.listen:
            logger.warning("listen address changes need a restart; still on %s",
                           serving.listen)
            config = dataclasses.replace(config, listen=serving.listen)
        self.runtime.swap(self.runtime.compile(config))
        self.listener.timeouts = config.timeouts
        self.listener.limits = config.limits
        self.loaded = loaded
        self.stats.record_reload(True, self.runtime.generation)
        self.stats.linkerd_compat = config.metrics.linkerd_compat
        if self.canaries is not None:
            self.canaries.sync()  # added, changed and removed canaries: now, not next poll
        for warning in loaded.warnings:
            logger.warning("config: %s", warning)
        logger.info("config reloaded: generation %d", self.runtime.generation)
        self.last_reload = {"result": "success", "generation": self.runtime.generation,
                            "time": time.time(), "errors": []}
        return self.last_reload

    async def reload_all(self) -> ReloadResult:
        """``POST /api/v1/reload``: this process now; with ``--workers N`` the others too,
        when they see the request in the state file. The answer is this process's."""
        result = await self.reload()
        if self.shared is not None:
            self.shared.request_reload()
        return result

    # ------------------------------------------------------------------ descriptions (JSON)

    def describe_routes(self) -> dict[str, object]:
        """Per route: configured and effective weights, override, fault, live stats."""
        snapshot = self.runtime.current
        live = self.stats.windows.by_route(self.runtime.backend_weights())
        whole_routes = self.stats.windows.route_stats(snapshot.routes)
        routes = []
        for route in snapshot.routes.values():
            override = self.runtime.overrides.weights.get(route.name)
            stats = live.get(route.name, {})
            total = route.split.total
            backends: list[dict[str, object]] = []
            for index, backend in enumerate(route.backends):
                window = stats.get(backend.name) or self.stats.windows.summary(route.name,
                                                                            backend.name)
                backends.append({
                    "backend": backend.name,
                    "configured_weight": route.route.backends[index].weight,
                    "weight": route.split.weights[index],
                    "share": route.split.weights[index] / total if total else 0.0,
                    "observed_share": window.get("share"),
                    "rps": window.get("rps"), "success_rate": window.get("success_rate"),
                    "requests": window.get("requests"),
                    "p50": window.get("p50"), "p95": window.get("p95"), "p99": window.get("p99"),
                    "endpoints": [ep.address for ep in backend.endpoints],
                    "available": backend.has_available_endpoints(),
                })
            active = self.runtime.overrides.faults.get(route.name)
            routes.append({
                "name": route.name, "hosts": list(route.hosts),
                "override": None if override is None else {
                    "weights": override.weights, "source": override.source,
                    "since": override.since},
                "fault": None if route.fault is None else _describe_fault(route.fault),
                "runtime_fault": None if active is None else _describe_active_fault(active),
                "when_backend_unavailable": route.when_backend_unavailable,
                "backends": backends,
                # Every request of the route, injected aborts included: its callers' view.
                "stats": whole_routes[route.name],
                "injected_abort": _injected_abort_row(
                    route.fault, stats.get(INJECTED_ABORT)
                    or self.stats.windows.summary(route.name, INJECTED_ABORT)),
            })
        return {"window_seconds": self.stats.windows.size, "generation": self.runtime.generation,
                "routes": routes}

    def describe_services(self) -> dict[str, object]:
        services = []
        for service in self.runtime.current.config.services.values():
            live = self.runtime.services.get(service.name)
            detector = live.detector if live else None
            checker = live.checker if live else None
            health = checker.describe() if checker else {}
            endpoints = []
            for ep in service.endpoints:
                state = self.runtime.endpoint_state(service.name, ep)
                entry: dict[str, object] = {
                         "address": ep.address, "labels": dict(ep.labels),
                         # The name:port a DNS-discovered address came from.
                         "resolved_from": None if ep.hostname is None
                         else f"{ep.hostname}:{ep.port}",
                         "active_requests": state.active if state else 0,
                         "healthy": checker.is_healthy(ep.address) if checker else True,
                         "ejected": False}
                if ep.address in health:
                    entry["health_check"] = health[ep.address]
                if detector is not None:
                    outlier = detector.describe(ep.address)
                    entry["ejected"] = bool(outlier["ejected"])
                    entry["ejection"] = {
                        "reason": outlier["reason"], "times_ejected": outlier["times_ejected"],
                        # wall-clock (Unix, ISO 8601) and a countdown, for machines and people
                        **ejection_times(outlier["remaining"] if outlier["ejected"] else None,
                                         time.time())}
                endpoints.append(entry)
            services.append({"name": service.name, "endpoints": endpoints,
                             "subsets": {k: dict(v) for k, v in service.subsets.items()},
                             "load_balancer": service.load_balancer.kind,
                             "discovery": None if service.discovery is None else {
                                 "type": "dns", "interval_s": service.discovery.interval,
                                 "names": self.dns.describe(service.name) if self.dns else []},
                             "circuit_breaker": live.breaker.snapshot() if live else None})
        return {"services": services}

    def describe_canaries(self) -> dict[str, object]:
        return self.canaries.describe_all() if self.canaries is not None else {"canaries": []}

    def canary_command(self, name: str, action: str) -> dict[str, object]:
        """promote / abort / pause / resume; raises CanaryNotFound or CommandRefused."""
        if self.canaries is None:
            raise CanaryNotFound("no such canary; canaries: none configured")
        return self.canaries.command(name, action)

    def describe_faults(self) -> dict[str, list[dict[str, object]]]:
        """Run-time faults, then the faults the config sets on its routes; ``source`` says
        which (docs/admin-api.md). A run-time fault replaces its route's configured one while
        it lasts, so that one is listed with ``active: false``."""
        timed: list[dict[str, object]] = [
            {**_describe_active_fault(f), "source": "run time", "active": True}
            for f in self.runtime.overrides.faults.values()]
        return {"faults": timed + _config_faults(self.runtime, self.loaded.files)}

    def explain(self, host: str, path: str, method: str = "GET",
                headers: list[tuple[str, str]] | None = None) -> dict[str, object]:
        return explain(self.runtime.current, self.runtime,
                       request_head(host, path, method, headers))

    # ------------------------------------------------------------------ mutations

    def set_weights(self, route: str, weights: dict[str, float],
                    source: str = "api") -> dict[str, object]:
        self.runtime.overrides.set_weights(route, weights, source)
        return self.describe_routes()

    def clear_weights(self, route: str | None = None) -> list[str]:
        return self.runtime.overrides.clear_weights(route)

    def add_fault(self, route: str, duration: float, *, abort_status: int | None = None,
                  delay: float | None = None, percent: float = 100.0) -> dict[str, object]:
        if not 0 <= percent <= 100:
            raise InvalidOverride("percent must be within 0..100")
        if abort_status is not None and not 200 <= abort_status <= 599:
            raise InvalidOverride("abort status must be within 200..599")
        fault = Fault(abort=AbortFault(abort_status, percent) if abort_status else None,
                      delay=DelayFault(delay, percent) if delay else None)
        active = self.runtime.overrides.add_fault(route, fault, duration)
        # the dead-man's switch: at the deadline itself
        self.runtime.overrides.schedule_expiry(active)
        return _describe_active_fault(active)

    def clear_faults(self, route: str | None = None) -> list[str]:
        return self.runtime.overrides.clear_faults(route)


def _describe_fault(fault: Fault) -> dict[str, object]:
    return {"abort": None if fault.abort is None else {"status": fault.abort.status,
                                                       "percent": fault.abort.percent},
            "delay": None if fault.delay is None else {"fixed_s": fault.delay.fixed,
                                                       "percent": fault.delay.percent},
            "scope": fault.scope}


def _injected_abort_row(fault: Fault | None, window: Mapping[str, object]
                        ) -> dict[str, object] | None:
    """The route's requests answered by an injected abort, as a row beside its backends
    (``observed_share`` is over all the route's requests, like theirs); None while the route
    has no abort fault (or one at 0 %) and no such request in the window."""
    if not window.get("requests") and (fault is None or fault.abort is None
                                       or not fault.abort.percent):
        return None
    return {"label": INJECTED_ABORT,
            "status": None if fault is None or fault.abort is None else fault.abort.status,
            "percent": None if fault is None or fault.abort is None else fault.abort.percent,
            "observed_share": window.get("share"), "rps": window.get("rps"),
            "requests": window.get("requests"), "success_rate": window.get("success_rate"),
            "p50": window.get("p50"), "p95": window.get("p95"), "p99": window.get("p99")}


def _config_faults(runtime: Runtime, files: Sequence[str]) -> list[dict[str, object]]:
    """The faults the loaded config sets (the snapshot keeps each route's own
    ``Route``, so a run-time fault does not hide them). ``file`` is known when the config is
    one file; the model does not keep which of several files a route came from."""
    faults: list[dict[str, object]] = []
    for compiled in runtime.current.routes.values():
        fault = compiled.route.fault
        if fault is None or compiled.implicit:
            continue
        faults.append({"route": compiled.name, **(_describe_fault(fault)),
                       "header_triggered": bool(fault.header_secret),
                       "since": None, "expires": None, "remaining_s": None,
                       "source": "config", "file": files[0] if len(files) == 1 else None,
                       "active": compiled.name not in runtime.overrides.faults})
    return faults


def _describe_active_fault(active: ActiveFault) -> dict[str, object]:
    return {"route": active.route, **_describe_fault(active.fault), "since": active.since,
            "expires": active.expires, "remaining_s": round(active.remaining(), 3)}


def _plain(value: object) -> object:
    """Dataclasses → JSON-able dicts (tuples of pairs stay lists)."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)  # trusted_proxies
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


