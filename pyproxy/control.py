"""The running proxy as the admin API and the CLI see it.

``ProxyControl`` owns reloads (parse → validate → compile → swap, keeping the last good
config), run-time weight overrides and time-boxed faults, and renders the views the admin
API serves: routes with live stats, services with their endpoints, active faults, explain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence

from pyproxy.admin.views import ejection_times
from pyproxy.canary.controller import CanaryController, CanaryNotFound
from pyproxy.config.load import ConfigInvalid, LoadedConfig, load_config
from pyproxy.config.model import AbortFault, Config, DelayFault, Fault
from pyproxy.engine.downstream import Listener
from pyproxy.errors import InvalidOverride
from pyproxy.explain import explain, request_head
from pyproxy.metrics import Stats
from pyproxy.runtime import Runtime
from pyproxy.shared_state import StateSync

logger = logging.getLogger("pyproxy")


class ProxyControl:
    """The running proxy as the admin API sees it: readiness, config and reloads."""

    def __init__(self, paths: Sequence[str], loaded: LoadedConfig, runtime: Runtime,
                 stats: Stats, listener: Listener, overrides: dict):
        self.paths = list(paths)
        self.loaded = loaded
        self.runtime = runtime
        self.stats = stats
        self.listener = listener
        self.overrides = overrides
        self.serving = False
        self.last_reload = {"result": "success", "generation": runtime.generation,
                            "time": time.time(), "errors": []}
        self._reload_lock = asyncio.Lock()
        self.canaries: CanaryController | None = None  # set by the server
        self.shared: StateSync | None = None  # set by the server with a state directory

    def is_ready(self) -> bool:
        return self.serving and not self.listener.draining

    def effective(self, loaded: LoadedConfig) -> Config:
        return dataclasses.replace(loaded.config, **self.overrides) if self.overrides \
            else loaded.config

    def config_view(self) -> dict:
        view = _plain(self.runtime.snapshot.config)
        view["generation"] = self.runtime.generation
        view["files"] = list(self.loaded.files)
        view["warnings"] = [str(w) for w in self.loaded.warnings]
        view["last_reload"] = self.last_reload
        return view

    async def reload(self) -> dict:
        """parse → validate → compile → swap; the last good config stays on any error."""
        async with self._reload_lock:
            try:
                # YAML parsing is the slow part: keep it off the event loop.
                loaded = await asyncio.to_thread(load_config, self.paths)
            except ConfigInvalid as invalid:
                errors = [str(issue) for issue in invalid.issues]
                for line in errors:
                    logger.error("config reload rejected: %s", line)
                self.stats.record_reload(False, self.runtime.generation)
                self.last_reload = {"result": "failure", "generation": self.runtime.generation,
                                    "time": time.time(), "errors": errors}
                return self.last_reload
            if loaded.digest == self.loaded.digest:
                return {"result": "unchanged", "generation": self.runtime.generation,
                        "errors": []}
            config = self.effective(loaded)
            if config.listen != self.runtime.snapshot.config.listen:
                logger.warning("listen address changes need a restart; still on %s",
                               self.runtime.snapshot.config.listen)
                config = dataclasses.replace(config, listen=self.runtime.snapshot.config.listen)
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

    async def reload_all(self) -> dict:
        """``POST /api/v1/reload``: this process now; with ``--workers N`` the others too,
        when they see the request in the state file. The answer is this process's."""
        result = await self.reload()
        if self.shared is not None:
            self.shared.request_reload()
        return result

    # ------------------------------------------------------------------ views

    def routes_view(self) -> dict:
        """Per route: configured and effective weights, override, fault, live stats."""
        snapshot = self.runtime.snapshot
        live = self.stats.snapshot_routes()
        routes = []
        for route in snapshot.routes.values():
            override = self.runtime.weight_overrides.get(route.name)
            stats = live.get(route.name, {})
            total = route.split.total
            backends = []
            for index, backend in enumerate(route.backends):
                window = stats.get(backend.name) or self.stats.window_stats(route.name,
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
            active = self.runtime.faults.get(route.name)
            routes.append({
                "name": route.name, "hosts": list(route.hosts),
                "override": None if override is None else {
                    "weights": override.weights, "source": override.source,
                    "since": override.since},
                "fault": _fault_view(route.fault),
                "runtime_fault": None if active is None else _active_fault_view(active),
                "when_backend_unavailable": route.when_backend_unavailable,
                "backends": backends,
            })
        return {"window_seconds": self.stats.window, "generation": self.runtime.generation,
                "routes": routes}

    def services_view(self) -> dict:
        services = []
        for service in self.runtime.snapshot.config.services.values():
            live = self.runtime.services.get(service.name)
            detector = live.detector if live else None
            checker = live.checker if live else None
            health = checker.describe() if checker else {}
            endpoints = []
            for ep in service.endpoints:
                state = self.runtime.endpoint_state(service.name, ep)
                entry = {"address": ep.address, "labels": dict(ep.labels),
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
                             "circuit_breaker": live.breaker.snapshot() if live else None})
        return {"services": services}

    def canaries_view(self) -> dict:
        return self.canaries.view() if self.canaries is not None else {"canaries": []}

    def canary_command(self, name: str, action: str) -> dict:
        """promote / abort / pause / resume; raises CanaryNotFound or CommandRefused."""
        if self.canaries is None:
            raise CanaryNotFound("no such canary; canaries: none configured")
        return self.canaries.command(name, action)

    def faults_view(self) -> dict:
        return {"faults": [_active_fault_view(f) for f in self.runtime.faults.values()]}

    def explain(self, host: str, path: str, method: str = "GET",
                headers: list[tuple[str, str]] | None = None) -> dict:
        return explain(self.runtime.snapshot, self.runtime,
                       request_head(host, path, method, headers))

    # ------------------------------------------------------------------ mutations

    def set_weights(self, route: str, weights: dict[str, float], source: str = "api") -> dict:
        self.runtime.set_weights(route, weights, source)
        return self.routes_view()

    def clear_weights(self, route: str | None = None) -> list[str]:
        return self.runtime.clear_weights(route)

    def add_fault(self, route: str, duration: float, *, abort_status: int | None = None,
                  delay: float | None = None, percent: float = 100.0) -> dict:
        if not 0 <= percent <= 100:
            raise InvalidOverride("percent must be within 0..100")
        if abort_status is not None and not 200 <= abort_status <= 599:
            raise InvalidOverride("abort status must be within 200..599")
        fault = Fault(abort=AbortFault(abort_status, percent) if abort_status else None,
                      delay=DelayFault(delay, percent) if delay else None)
        active = self.runtime.add_fault(route, fault, duration)
        self.runtime.schedule_expiry(active)  # the dead-man's switch: at the deadline itself
        return _active_fault_view(active)

    def clear_faults(self, route: str | None = None) -> list[str]:
        return self.runtime.clear_faults(route)


def _fault_view(fault: Fault | None) -> dict | None:
    if fault is None:
        return None
    return {"abort": None if fault.abort is None else {"status": fault.abort.status,
                                                       "percent": fault.abort.percent},
            "delay": None if fault.delay is None else {"fixed_s": fault.delay.fixed,
                                                       "percent": fault.delay.percent},
            "scope": fault.scope}


def _active_fault_view(active) -> dict:
    return {"route": active.route, **_fault_view(active.fault), "since": active.since,
            "expires": active.expires, "remaining_s": round(active.remaining(), 3)}


def _plain(value):
    """Dataclasses → JSON-able dicts (tuples of pairs stay lists)."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


