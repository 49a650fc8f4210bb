"""A small cluster on the fake API server, for the in-cluster end-to-end tests.

``Cluster`` writes what a real cluster's users and controllers would: a GatewayClass and
Gateway for pyproxy, Services, one EndpointSlice per "pod" (each pod is a real echo
backend on its own 127.0.0.1 port, and a slice's port applies to all its endpoints, so a
pod per slice is how differing ports are expressed — as during a real port change), and
HTTPRoutes with weights. ``start_proxy`` runs ``pyproxy run`` against it through a
kubeconfig; ``Traffic`` sends requests and counts which pod answered.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.backends import EchoBackend
from tests.support.fake_kube import GATEWAY_GROUP, FakeKube, Obj
from tests.support.harness import ProxyProcess
from tests.support.metrics import metric_value

CONTROLLER = "pyproxy.dev/gateway-controller"
NS = "default"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # how a slice names its Service


class FailingPod(EchoBackend):
    """An echo backend that answers ``status`` to everything while ``failing`` is set."""

    def __init__(self, name: str, status: int = 503):
        super().__init__(name)
        self.failing = True
        self.status = status

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.failing:
            self.requests += 1
            return web.Response(status=self.status, text=self.name)
        return await super()._handle(request)


class Cluster:
    def __init__(self, kube: FakeKube, namespace: str = NS):
        self.kube = kube
        self.ns = namespace

    # --- the platform team's objects ----------------------------------------------------

    def gateway(self, name: str = "public", class_name: str = "pyproxy") -> None:
        self.kube.apply({"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": "GatewayClass",
                         "metadata": {"name": class_name},
                         "spec": {"controllerName": CONTROLLER}})
        self.kube.apply({"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": "Gateway",
                         "metadata": {"name": name, "namespace": self.ns},
                         "spec": {"gatewayClassName": class_name, "listeners": [
                             {"name": "http", "port": 80, "protocol": "HTTP",
                              "allowedRoutes": {"namespaces": {"from": "Same"}}}]}})

    # --- the application's objects -------------------------------------------------------

    def service(self, name: str, port: int = 80) -> None:
        self.kube.apply({"apiVersion": "v1", "kind": "Service",
                         "metadata": {"name": name, "namespace": self.ns},
                         "spec": {"selector": {"app": name}, "ports": [
                             {"name": "http", "port": port, "targetPort": "http",
                              "protocol": "TCP"}]}})

    def add_pod(self, service: str, pod: str, backend: EchoBackend, *, ready: bool = True,
                terminating: bool = False) -> None:
        """The pod's EndpointSlice, as the EndpointSlice controller writes it."""
        conditions = {"ready": ready and not terminating, "serving": ready,
                      "terminating": terminating}
        self.kube.apply({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-{pod}", "namespace": self.ns,
                         "labels": {SERVICE_NAME_LABEL: service,
                                    "endpointslice.kubernetes.io/managed-by":
                                        "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": backend.port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": conditions,
                           "targetRef": {"kind": "Pod", "namespace": self.ns, "name": pod}}]})

    def remove_pod(self, service: str, pod: str) -> None:
        self.kube.delete("EndpointSlice", self.ns, f"{service}-{pod}")

    def httproute(self, name: str, backends: Iterable[tuple[str, int]], *,
                  gateway: str = "public", hostnames: list[str] | None = None,
                  path: str = "/") -> Obj:
        spec: Obj = {"parentRefs": [{"name": gateway}],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                                "backendRefs": [{"name": svc, "port": 80, "weight": w}
                                                for svc, w in backends]}]}
        if hostnames:
            spec["hostnames"] = hostnames
        return self.kube.apply({"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": "HTTPRoute",
                                "metadata": {"name": name, "namespace": self.ns},
                                "spec": spec})

    def shop_canary(self, v1: EchoBackend, v2: EchoBackend) -> None:
        """The scene most tests start from: the gateway, Services shop-v1 and shop-v2 with
        one pod each, and HTTPRoute shop sending everything to shop-v1 (100/0)."""
        self.gateway()
        for service, pod in (("shop-v1", v1), ("shop-v2", v2)):
            self.service(service)
            self.add_pod(service, pod.name, pod)
        self.httproute("shop", [("shop-v1", 100), ("shop-v2", 0)])

    def set_weights(self, route: str, weights: Iterable[int]) -> Obj:
        """What a progressive-delivery tool does: rewrite the backendRefs' weights."""
        obj = self.kube.get("HTTPRoute", self.ns, route)
        for ref, weight in zip(obj["spec"]["rules"][0]["backendRefs"], weights, strict=True):
            ref["weight"] = weight
        return self.kube.apply(obj)

    def route_parents(self, route: str) -> list[Obj]:
        """Our controller's entries in the route's status.parents."""
        obj = self.kube.get("HTTPRoute", self.ns, route)
        return [p for p in (obj.get("status") or {}).get("parents") or []
                if p.get("controllerName") == CONTROLLER]

    def condition(self, route: str, kind: str) -> Obj | None:
        for parent in self.route_parents(route):
            for cond in parent.get("conditions") or []:
                if cond.get("type") == kind:
                    return dict(cond)
        return None

    def status_current(self, route: str) -> bool:
        """Accepted is True and its observedGeneration is the route's generation."""
        generation = self.kube.get("HTTPRoute", self.ns, route)["metadata"]["generation"]
        accepted = self.condition(route, "Accepted")
        return bool(accepted and accepted.get("status") == "True"
                    and accepted.get("observedGeneration") == generation)


def write_config(directory: Path, kube: FakeKube, *, namespaces: tuple[str, ...] = (NS,),
                 extra: str = "", use_token_file: bool = False, watch_timeout: str = "30s",
                 idle_timeout: str = "5s", batch_delay: str = "50ms") -> Path:
    """A pyproxy config whose only source of routes is the fake API server."""
    kubeconfig = kube.kubeconfig_path(directory / "kube", use_token_file=use_token_file)
    lines = ["kubernetes:", f"  kubeconfig: {json.dumps(str(kubeconfig))}",
             f"  namespaces: {json.dumps(list(namespaces))}",
             f"  watch_timeout: {watch_timeout}", f"  idle_timeout: {idle_timeout}",
             f"  batch_delay: {batch_delay}"]
    path = directory / "pyproxy.yaml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


async def start_proxy(config: Path, *, timeout: float = 20.0, env: dict[str, str] | None = None,
                      ) -> ProxyProcess:
    """``pyproxy run -c config`` until /readyz; started from a thread, because the fake API
    server runs on this event loop and must answer while pyproxy starts."""
    proxy = ProxyProcess(config, env=env)
    return await asyncio.to_thread(proxy.start, timeout)


async def stop_proxy(proxy: ProxyProcess) -> int:
    return await asyncio.to_thread(proxy.stop)


async def eventually(check: Callable[[], bool | Awaitable[bool]], what: str,
                     timeout: float = 10.0, interval: float = 0.05) -> float:
    """Poll ``check`` until it is true; the seconds it took."""
    started = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(interval)


@dataclass
class Tally:
    names: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + len(self.errors)

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != 200) + len(self.errors)


async def _one(session: aiohttp.ClientSession, url: str, tally: Tally,
               headers: dict[str, str] | None) -> None:
    try:
        async with session.get(url, headers=headers) as response:
            body = await response.read()
            tally.statuses[response.status] += 1
            if response.status == 200:
                tally.names[json.loads(body)["name"]] += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.errors.append(f"{type(exc).__name__}: {exc}")


async def burst(url: str, n: int, *, concurrency: int = 20,
                headers: dict[str, str] | None = None) -> Tally:
    """``n`` requests as fast as ``concurrency`` connections allow."""
    tally = Tally()
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def worker(count: int) -> None:
            for _ in range(count):
                await _one(session, url, tally, headers)

        per, extra = divmod(n, concurrency)
        await asyncio.gather(*(worker(per + (i < extra)) for i in range(concurrency)))
    return tally


class SteadyLoad:
    """Requests at a fixed rate until stopped (an open loop: one task per request, so a slow
    answer does not lower the rate)."""

    def __init__(self, url: str, rate: float, headers: dict[str, str] | None = None):
        self.url = url
        self.rate = rate
        self.headers = headers
        self.tally = Tally()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SteadyLoad:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            start = loop.time()
            sent = 0
            while not self._stop.is_set():
                due = start + sent / self.rate
                delay = due - loop.time()
                if delay > 0:
                    try:
                        await asyncio.wait_for(self._stop.wait(), delay)
                        break
                    except TimeoutError:
                        pass
                task = loop.create_task(_one(session, self.url, self.tally, self.headers))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            if pending:
                await asyncio.gather(*pending)


async def start_backends(names: Iterable[str]) -> dict[str, EchoBackend]:
    started = {}
    for name in names:
        started[name] = await EchoBackend(name).start()
    return started


async def admin_json(proxy: ProxyProcess, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(proxy.admin_url + path) as r:
        return await r.json()


async def served_weights(proxy: ProxyProcess) -> dict[str, float]:
    """backend → configured weight, over every route the proxy serves now."""
    routes = (await admin_json(proxy, "/api/v1/routes"))["routes"]
    return {b["backend"]: b["configured_weight"] for r in routes for b in r["backends"]}


async def served_endpoints(proxy: ProxyProcess, service: str) -> set[str]:
    services = (await admin_json(proxy, "/api/v1/services"))["services"]
    return {e["address"] for s in services if s["name"] == service for e in s["endpoints"]}


async def metric(proxy: ProxyProcess, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as session, \
            session.get(proxy.admin_url + "/metrics") as r:
        return metric_value(await r.text(), name, **labels)
