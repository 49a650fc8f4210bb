"""In-cluster mode against the fake API server: a real pyproxy (``server.serve``) on
loopback reads HTTPRoutes, Services and EndpointSlices and routes real traffic to them.

The end-to-end scenarios of docs/kubernetes.md (binomial bounds, churn under load,
replicas) live in tests/integration/kubernetes/; these check the provider's own duties:
readiness, one swap per batch, per-pod endpoints, a rejected object next to good ones,
and recovery from 410, restarts and token rotation.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pyproxy import server
from tests.support.backends import EchoBackend, free_port
from tests.support.fake_kube import FakeKube

pytestmark = pytest.mark.asyncio

NS = "default"


def gateway_class() -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "pyproxy"},
            "spec": {"controllerName": "pyproxy.dev/gateway-controller"}}


def gateway() -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "public", "namespace": NS},
            "spec": {"gatewayClassName": "pyproxy",
                     "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}


def http_route(name: str, weights: dict[str, int], host: str = "shop.test") -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"parentRefs": [{"name": "public"}], "hostnames": [host],
                     "rules": [{"backendRefs": [{"name": service, "port": 80, "weight": weight}
                                                for service, weight in weights.items()]}]}}


def service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def endpoint_slice(name: str, service_name: str, backends: list[EchoBackend], *,
                   ready: bool = True) -> dict[str, Any]:
    # Every backend listens on 127.0.0.1 with its own port: one slice per backend port.
    assert len({b.port for b in backends}) <= 1
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": NS,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": backends[0].port if backends else 1,
                       "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready},
                           "targetRef": {"kind": "Pod", "name": f"{service_name}-{b.port}"}}
                          for b in backends]}


class Running:
    def __init__(self, kube: FakeKube, proxy: str, admin: str, task: asyncio.Task[int]):
        self.kube = kube
        self.proxy = proxy
        self.admin = admin
        self.task = task

    async def ready(self, session: aiohttp.ClientSession) -> int:
        async with session.get(f"{self.admin}/readyz") as response:
            return response.status

    async def hits(self, session: aiohttp.ClientSession, count: int,
                   host: str = "shop.test") -> dict[str, int]:
        """Which backend answered each of ``count`` requests (by the echo's name)."""
        seen: dict[str, int] = {}
        for _ in range(count):
            async with session.get(f"{self.proxy}/", headers={"Host": host}) as response:
                text = await response.text()
                name = json.loads(text).get("name", "?") if response.status == 200 else \
                    str(response.status)
                seen[name] = seen.get(name, 0) + 1
        return seen


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            result = await check()
            if result:
                return result
        except (AssertionError, aiohttp.ClientError):
            if asyncio.get_running_loop().time() > deadline:
                raise
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, EchoBackend]]:
    found = {name: await EchoBackend(name).start() for name in ("v1", "v2", "v3")}
    yield found
    for backend in found.values():
        await backend.close()


async def start(tmp_path: Path, kube: FakeKube, extra: str = "") -> Running:
    kubeconfig = kube.kubeconfig_path(tmp_path / "kube", use_token_file=True)
    config = tmp_path / "pyproxy.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{free_port()}\nadmin: {{listen: '127.0.0.1:{free_port()}'}}\n"
        "access_log: {format: 'off'}\n"
        f"kubernetes: {{kubeconfig: '{kubeconfig}', namespaces: [{NS}], "
        "batch_delay: 50ms, watch_timeout: 5s, idle_timeout: 2s}\n" + extra)
    started: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    task = asyncio.get_running_loop().create_task(server.serve([str(config)], started=started))
    await asyncio.wait([started, task], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    assert started.done(), f"pyproxy did not start: {task.result() if task.done() else ''}"
    bound, admin = started.result()
    return Running(kube, f"http://127.0.0.1:{bound[1]}", f"http://127.0.0.1:{admin[1]}", task)


async def stop(running: Running) -> None:
    running.task.cancel()
    await asyncio.gather(running.task, return_exceptions=True)


def base_objects(kube: FakeKube, backends: dict[str, EchoBackend]) -> None:
    kube.apply(gateway_class())
    kube.apply(gateway())
    for name in ("v1", "v2"):
        kube.apply(service(name))
        kube.apply(endpoint_slice(f"{name}-a", name, [backends[name]]))


async def test_routes_and_endpoints_come_from_the_api(tmp_path: Path,
                                                      backends: dict[str, EchoBackend]) -> None:
    async with FakeKube() as kube, aiohttp.ClientSession() as session:
        base_objects(kube, backends)
        kube.apply(http_route("shop", {"v1": 100, "v2": 0}))
        running = await start(tmp_path, kube)
        try:
            await eventually(lambda: _equals(running.ready(session), 200))
            assert await running.hits(session, 10) == {"v1": 10}
            # 100/0 → 0/100: one watch event, and every request follows.
            kube.apply(http_route("shop", {"v1": 0, "v2": 100}))
            await eventually(lambda: _equals(running.hits(session, 5), {"v2": 5}))
            # The pod behind v2 is replaced: the new one serves, the old one gets nothing.
            kube.apply(endpoint_slice("v2-a", "v2", [backends["v3"]]))
            await eventually(lambda: _equals(running.hits(session, 5), {"v3": 5}))
            # An HTTPRoute the importers reject (a negative weight) is left out; the others
            # keep serving.
            bad = http_route("broken", {"v1": -1}, host="broken.test")
            kube.apply(bad)
            kube.apply(http_route("other", {"v1": 1}, host="other.test"))
            await eventually(lambda: _equals(running.hits(session, 3, "other.test"),
                                             {"v1": 3}))
            assert await running.hits(session, 3, "broken.test") == {"404": 3}
            assert await running.hits(session, 3) == {"v3": 3}
            async with session.get(f"{running.admin}/metrics") as response:
                metrics = await response.text()
            assert 'pyproxy_kubernetes_objects{kind="HTTPRoute",result="rejected"} 1.0' in \
                metrics
        finally:
            await stop(running)


async def test_not_ready_until_every_kind_is_listed(tmp_path: Path,
                                                    backends: dict[str, EchoBackend]) -> None:
    async with FakeKube() as kube, aiohttp.ClientSession() as session:
        base_objects(kube, backends)
        kube.apply(http_route("shop", {"v1": 1}))
        kube.throttle(8, retry_after=1)  # the first lists get 429 and wait Retry-After
        running = await start(tmp_path, kube)
        try:
            assert await running.ready(session) == 503
            await eventually(lambda: _equals(running.ready(session), 200), timeout=15)
            assert await running.hits(session, 3) == {"v1": 3}
        finally:
            await stop(running)


async def test_survives_410_restart_stall_and_token_rotation(
        tmp_path: Path, backends: dict[str, EchoBackend]) -> None:
    async with FakeKube(too_old_watch_as_event=True) as kube, \
            aiohttp.ClientSession() as session:
        base_objects(kube, backends)
        kube.apply(http_route("shop", {"v1": 1}))
        running = await start(tmp_path, kube)
        try:
            await eventually(lambda: _equals(running.ready(session), 200))
            # History compacted: every watch gets a 410 ERROR event and lists again; a
            # route deleted meanwhile is gone (its DELETED synthesised from the new list).
            kube.apply(http_route("gone-soon", {"v2": 1}, host="gone.test"))
            await eventually(lambda: _equals(running.hits(session, 2, "gone.test"),
                                             {"v2": 2}))
            kube.stall_watches()
            kube.delete("HTTPRoute", NS, "gone-soon")
            kube.compact()
            kube.unstall_watches()
            await eventually(lambda: _equals(running.hits(session, 2, "gone.test"),
                                             {"404": 2}))
            # The API server restarts: watches resume and see changes made after.
            await kube.restart(downtime=0.3)
            kube.apply(http_route("shop", {"v2": 1}))
            await eventually(lambda: _equals(running.hits(session, 3), {"v2": 3}))
            # A stalled stream is dropped after the idle timeout (2s) and resumed.
            opened = kube.count_requests("GET", watch=True)
            kube.stall_watches()
            await asyncio.sleep(2.6)
            assert kube.count_requests("GET", watch=True) > opened
            kube.unstall_watches()
            # Token rotated, the old one refused: the file is re-read, the next change
            # still arrives.
            kube.rotate_token()
            kube.apply(http_route("shop", {"v1": 1}))
            await eventually(lambda: _equals(running.hits(session, 3), {"v1": 3}), timeout=15)
            assert await running.ready(session) == 200
        finally:
            await stop(running)


async def _equals(awaitable: Any, expected: object) -> bool:
    return bool(await awaitable == expected)


async def test_a_pod_that_leaves_finishes_its_requests_and_gets_no_new_ones(
        tmp_path: Path, backends: dict[str, EchoBackend]) -> None:
    async with FakeKube() as kube, aiohttp.ClientSession() as session:
        base_objects(kube, backends)
        kube.apply(http_route("shop", {"v1": 1}))
        running = await start(tmp_path, kube)
        try:
            await eventually(lambda: _equals(running.ready(session), 200))

            async def slow() -> tuple[int, str]:
                async with session.get(f"{running.proxy}/sleep/1.5",
                                       headers={"Host": "shop.test"}) as response:
                    return response.status, json.loads(await response.text())["name"]

            in_flight = asyncio.get_running_loop().create_task(slow())
            await asyncio.sleep(0.3)  # the request is at v1's only pod
            kube.apply(endpoint_slice("v1-a", "v1", [backends["v3"]]))  # the pod is replaced
            await eventually(lambda: _equals(running.hits(session, 3), {"v3": 3}))
            before = backends["v1"].requests
            assert await running.hits(session, 5) == {"v3": 5}
            assert backends["v1"].requests == before  # no new request for the old pod
            assert await in_flight == (200, "v1")  # and the one it had finished
        finally:
            await stop(running)


async def test_an_empty_cluster_is_ready_and_answers_404(tmp_path: Path) -> None:
    async with FakeKube() as kube, aiohttp.ClientSession() as session:
        running = await start(tmp_path, kube)
        try:
            await eventually(lambda: _equals(running.ready(session), 200))
            assert await running.hits(session, 1) == {"404": 1}
        finally:
            await stop(running)


async def test_a_burst_of_changes_is_one_swap(tmp_path: Path,
                                              backends: dict[str, EchoBackend]) -> None:
    async with FakeKube() as kube, aiohttp.ClientSession() as session:
        base_objects(kube, backends)
        running = await start(tmp_path, kube)
        try:
            await eventually(lambda: _equals(running.ready(session), 200))
            before = await _generation(session, running)
            for index in range(20):
                kube.apply(http_route(f"r{index}", {"v1": 1}, host=f"r{index}.test"))
            await eventually(lambda: _equals(running.hits(session, 1, "r19.test"), {"v1": 1}))
            assert await running.hits(session, 1, "r0.test") == {"v1": 1}
            # 20 events within the batch window: one swap (two if the window split them).
            assert await _generation(session, running) - before <= 2
        finally:
            await stop(running)


async def _generation(session: aiohttp.ClientSession, running: Running) -> float:
    async with session.get(f"{running.admin}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith("pyproxy_config_generation "):
                return float(line.split()[1])
    raise AssertionError("no pyproxy_config_generation")
