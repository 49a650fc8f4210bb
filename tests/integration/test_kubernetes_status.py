"""In-cluster mode's writes against the fake API server (tests/support/fake_kube), through
the real ``KubeClient``: status written back (no write when nothing changed,
``observedGeneration`` current after a spec change, 409 retried, others' entries kept),
two replicas electing one leader on a Lease, and ``set-weight`` written to the HTTPRoute so
that a second replica follows it."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest_asyncio

from pyproxy.canary.controller import CanaryController
from pyproxy.demo.fake_service import start_fake_service
from pyproxy.discovery.kubernetes.client import KubeClient
from pyproxy.discovery.kubernetes.lease import LeaderElection, run_election
from pyproxy.discovery.kubernetes.report import ImportResult, ObjectKey, ObjectReport, parent_key
from pyproxy.discovery.kubernetes.resources import GATEWAY, GATEWAY_CLASS, HTTP_ROUTE, LEASE
from pyproxy.discovery.kubernetes.status import CONTROLLER_NAME, StatusWriter
from pyproxy.discovery.kubernetes.writeback import KubeRuntimeStore, route_origins, spec_weights
from pyproxy.overrides import Overrides
from tests.integration import test_kubernetes_provider as provider_tests
from tests.integration.test_kubernetes_provider import _equals, backends, eventually
from tests.support.fake_kube import FakeKube

NS = "shop"
__all__ = ["backends"]  # the echo backends fixture, shared with the provider's tests
RESOURCES = {"HTTPRoute": HTTP_ROUTE, "Gateway": GATEWAY, "GatewayClass": GATEWAY_CLASS}


@pytest_asyncio.fixture
async def kube() -> AsyncIterator[FakeKube]:
    async with FakeKube(bookmark_interval=0.2) as k:
        yield k


@pytest_asyncio.fixture
async def client(kube: FakeKube, tmp_path: Path) -> AsyncIterator[KubeClient]:
    c = await KubeClient.connect(str(kube.kubeconfig_path(tmp_path)))
    try:
        yield c
    finally:
        await c.close()


def gateway_objects(kube: FakeKube) -> None:
    kube.apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                "metadata": {"name": "pyproxy"},
                "spec": {"controllerName": CONTROLLER_NAME}})
    kube.apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "pyproxy", "namespace": NS},
                "spec": {"gatewayClassName": "pyproxy",
                         "listeners": [{"name": "http", "protocol": "HTTP", "port": 8080}]}})


def httproute(v1: int, v2: int) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "stockmanager", "namespace": NS},
            "spec": {"parentRefs": [{"name": "pyproxy"}],  # the fake defaults group and kind
                     "hostnames": ["stockmanager"],
                     "rules": [{"backendRefs": [
                         {"name": "stockmanager-v1", "port": 8081, "weight": v1},
                         {"name": "stockmanager-v2", "port": 8081, "weight": v2}]}]}}


def report_for(kube: FakeKube) -> ObjectReport:
    """What the provider would record for the objects as stored now: all accepted."""
    route = kube.get("HTTPRoute", NS, "stockmanager")
    generation = route["metadata"]["generation"]
    report = ObjectReport()
    report.update({
        ObjectKey("HTTPRoute", NS, "stockmanager"): {
            parent_key(ref, NS): ImportResult(True, True, "Accepted", "", generation)
            for ref in route["spec"]["parentRefs"]},
        ObjectKey("Gateway", NS, "pyproxy"): {None: ImportResult(True, True, "Accepted", "",
                                                                 1)}}, ())
    return report


def status_puts(kube: FakeKube) -> int:
    return kube.count_requests("PUT", contains="/status")


async def write_everything(writer: StatusWriter, kube: FakeKube) -> int:
    return await writer.write_all([
        ("GatewayClass", kube.get("GatewayClass", "", "pyproxy")),
        ("Gateway", kube.get("Gateway", NS, "pyproxy")),
        ("HTTPRoute", kube.get("HTTPRoute", NS, "stockmanager"))])


async def test_status_follows_every_spec_change_and_skips_no_op_writes(kube, client):
    gateway_objects(kube)
    kube.apply(httproute(100, 0))
    writer = StatusWriter(client, RESOURCES, report_for(kube))
    assert await write_everything(writer, kube) == 3
    route = kube.get("HTTPRoute", NS, "stockmanager")
    [entry] = route["status"]["parents"]
    # copied exactly as the API server stores it, defaults included: Flagger compares whole
    assert entry["parentRef"] == route["spec"]["parentRefs"][0] == {
        "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "pyproxy"}
    assert {c["type"]: (c["status"], c["observedGeneration"]) for c in entry["conditions"]} \
        == {"Accepted": ("True", 1), "ResolvedRefs": ("True", 1)}
    gateway = kube.get("Gateway", NS, "pyproxy")
    assert gateway["status"]["listeners"][0]["attachedRoutes"] == 1
    assert kube.get("GatewayClass", "", "pyproxy")["status"]["conditions"][0]["status"] \
        == "True"

    puts = status_puts(kube)
    assert await write_everything(writer, kube) == 0
    assert status_puts(kube) == puts, "nothing changed: no write"

    since = entry["conditions"][0]["lastTransitionTime"]
    for step, (v1, v2) in enumerate([(50, 50), (0, 100)], start=2):
        kube.apply(httproute(v1, v2))
        route = kube.get("HTTPRoute", NS, "stockmanager")
        assert route["metadata"]["generation"] == step
        writer.report = report_for(kube)
        assert await writer.write("HTTPRoute", route) is True
        [entry] = kube.get("HTTPRoute", NS, "stockmanager")["status"]["parents"]
        assert [c["observedGeneration"] for c in entry["conditions"]] == [step, step]
        assert entry["conditions"][0]["lastTransitionTime"] == since  # still True


async def test_a_conflict_is_retried_and_another_controllers_entry_kept(kube, client):
    gateway_objects(kube)
    kube.apply(httproute(100, 0))
    writer = StatusWriter(client, RESOURCES, report_for(kube))
    watched = kube.get("HTTPRoute", NS, "stockmanager")  # the copy our watch delivered
    # meanwhile another implementation writes its own entry: our copy is now stale
    theirs = {"parentRef": {"name": "istio", "group": "gateway.networking.k8s.io",
                            "kind": "Gateway"},
              "controllerName": "istio.io/gateway-controller",
              "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                              "message": "", "observedGeneration": 1,
                              "lastTransitionTime": "2026-12-07T00:00:00Z"}]}
    kube.apply({**watched, "status": {"parents": [theirs]}})
    assert await writer.write("HTTPRoute", watched) is True
    assert writer.conflicts == 1
    parents = kube.get("HTTPRoute", NS, "stockmanager")["status"]["parents"]
    assert [p["controllerName"] for p in parents] == ["istio.io/gateway-controller",
                                                      CONTROLLER_NAME]


async def test_two_replicas_elect_one_leader_and_hand_over(kube, tmp_path):
    clients = [await KubeClient.connect(str(kube.kubeconfig_path(tmp_path / name)))
               for name in ("a", "b")]
    try:
        elections = [LeaderElection(f"pyproxy-{name}", NS, duration=1.5, renew_deadline=1.0,
                                    renew=0.1) for name in ("a", "b")]
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        tasks = [asyncio.create_task(run_election(c, LEASE, e))
                 for c, e in zip(clients, elections, strict=True)]
        await asyncio.sleep(0.8)
        leaders = [e for e in elections if e.is_leader()]
        assert len(leaders) == 1
        lease = kube.get("Lease", NS, "pyproxy-leader")
        assert lease["spec"]["holderIdentity"] == leaders[0].identity
        first = elections.index(leaders[0])
        tasks[first].cancel()  # the leader's pod ends: it releases the Lease
        await asyncio.gather(tasks[first], return_exceptions=True)
        await asyncio.sleep(0.5)
        other = elections[1 - first]
        assert other.is_leader()
        lease = kube.get("Lease", NS, "pyproxy-leader")
        assert lease["spec"]["holderIdentity"] == other.identity
        assert lease["spec"]["leaseTransitions"] == 1
        tasks[1 - first].cancel()
        await asyncio.gather(tasks[1 - first], return_exceptions=True)
    finally:
        for c in clients:
            await c.close()


async def test_a_leader_whose_client_closed_first_stops_cleanly(kube, tmp_path):
    """On shutdown the provider may close the shared client before the election's task is
    cancelled: releasing the Lease then fails with a KubeApiError the election handles (it
    used to be aiohttp's RuntimeError, logged as a failed background task)."""
    client = await KubeClient.connect(str(kube.kubeconfig_path(tmp_path)))
    election = LeaderElection("pyproxy-a", NS, duration=1.5, renew_deadline=1.0, renew=0.1)
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    task = asyncio.create_task(run_election(client, LEASE, election))
    try:
        for _ in range(50):
            if election.is_leader():
                break
            await asyncio.sleep(0.05)
        assert election.is_leader()
    finally:
        await client.close()
        task.cancel()
        results = await asyncio.gather(task, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    # Not released (the client was gone): the Lease expires by itself.
    assert kube.get("Lease", NS, "pyproxy-leader")["spec"]["holderIdentity"] == "pyproxy-a"


async def test_set_weight_is_written_to_the_httproute_and_followed_by_another_replica(
        kube, client):
    gateway_objects(kube)
    kube.apply(httproute(100, 0))

    def routes() -> dict:
        objects = kube.list_objects("HTTPRoute", NS)  # what each replica's watch delivered
        origins = route_origins(["stockmanager-0"], objects)
        by_name = {o["metadata"]["name"]: o for o in objects}
        return {r: (o, copy.deepcopy(by_name[o.name])) for r, o in origins.items()}

    replicas = []
    for _ in range(2):
        overrides = Overrides(refresh=lambda: None)
        overrides.set_routes({"stockmanager-0": ["stockmanager-v1", "stockmanager-v2"]})
        replicas.append((overrides, KubeRuntimeStore(client, routes, overrides)))
    (a, store_a), (b, store_b) = replicas

    a.set_weights("stockmanager-0", {"stockmanager-v1": 0, "stockmanager-v2": 100})
    await store_a.flush()
    route = kube.get("HTTPRoute", NS, "stockmanager")
    assert spec_weights(route, routes()["stockmanager-0"][0]) == {"stockmanager-v1": 0,
                                                                  "stockmanager-v2": 100}
    assert route["metadata"]["generation"] == 2  # a spec change: status must follow it
    assert store_b.restore() is True
    assert b.weights["stockmanager-0"].weights == {"stockmanager-v1": 0, "stockmanager-v2": 100}

    b.clear_weights("stockmanager-0")  # from the other replica: back to the configured split
    await store_b.flush()
    store_a.restore()
    assert "stockmanager-0" not in a.weights
    route = kube.get("HTTPRoute", NS, "stockmanager")
    assert [r["weight"] for r in route["spec"]["rules"][0]["backendRefs"]] == [100, 0]
    assert "pyproxy.dev/runtime" not in route["metadata"].get("annotations", {})


# --------------------------------------------------------------------------- two replicas


async def test_two_replicas_one_leader_status_current_and_set_weight_seen_by_both(
        tmp_path, backends, monkeypatch):
    """Two real pyproxies (``server.serve``) on one fake API server: one holds the Lease and
    writes status (observedGeneration current after each spec change); ``set-weight`` on
    either is written to the HTTPRoute and both serve it within a second."""
    async with FakeKube() as kube, aiohttp.ClientSession() as session:
        provider_tests.base_objects(kube, backends)
        kube.apply(provider_tests.http_route("shop", {"v1": 100, "v2": 0}))
        replicas = []
        for name in ("a", "b"):
            monkeypatch.setenv("POD_NAME", f"pyproxy-{name}")  # the Lease identity
            replicas.append(await provider_tests.start(tmp_path / name, kube))
        try:
            for replica in replicas:
                await eventually(lambda r=replica: _equals(r.ready(session), 200))

            def holder() -> str | None:
                lease = kube.get_or_none("Lease", provider_tests.NS, "pyproxy-leader")
                return lease["spec"]["holderIdentity"] if lease else None

            await eventually(_async(lambda: holder() in ("pyproxy-a", "pyproxy-b")))

            def observed() -> list[int]:
                route = kube.get("HTTPRoute", provider_tests.NS, "shop")
                return [c["observedGeneration"] for p in route.get("status", {}).get(
                    "parents", []) for c in p["conditions"]]

            for generation, weights in ((1, None), (2, {"v1": 50, "v2": 50}),
                                        (3, {"v1": 0, "v2": 100})):
                if weights is not None:
                    kube.apply(provider_tests.http_route("shop", weights))
                await eventually(_async(lambda g=generation: observed() == [g, g]))
            status_writes = kube.count_requests("PUT", contains="/status")
            await asyncio.sleep(0.6)
            assert kube.count_requests("PUT", contains="/status") == status_writes, \
                "nothing changed: no status write"

            # set-weight on one replica: written to the object, both follow.
            async with session.put(f"{replicas[1].admin}/api/v1/routes/shop-0/weights",
                                   json={"weights": {"v1": 100, "v2": 0},
                                         "source": "cli"}) as response:
                assert response.status == 200, await response.text()
            def weights() -> list[int]:
                route = kube.get("HTTPRoute", provider_tests.NS, "shop")
                return [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]]

            await eventually(_async(lambda: weights() == [100, 0]), timeout=1.0)
            for replica in replicas:
                await eventually(lambda r=replica: _equals(r.hits(session, 5), {"v1": 5}),
                                 timeout=1.0)

            async def override_source() -> str | None:
                async with session.get(f"{replicas[0].admin}/api/v1/routes") as response:
                    described = await response.json()
                [shop] = [r for r in described["routes"] if r["name"] == "shop-0"]
                return (shop["override"] or {}).get("source")

            # the other replica's table shows who set it, from the object's annotation
            await eventually(lambda: _equals(override_source(), "cli"), timeout=1.0)
            # cleared on the other replica: the split the object had before comes back
            async with session.delete(
                    f"{replicas[0].admin}/api/v1/routes/shop-0/weights") as response:
                assert response.status == 200, await response.text()
            for replica in replicas:
                await eventually(lambda r=replica: _equals(r.hits(session, 5), {"v2": 5}),
                                 timeout=1.0)
            await eventually(_async(lambda: observed() == [5, 5]))

            # A fault set on one replica is stored on the object: both inject it, and it
            # ends on both at its deadline by itself.
            async with session.post(f"{replicas[1].admin}/api/v1/faults",
                                    json={"route": "shop-0", "abort": {"status": 503},
                                          "percent": 100, "duration": "2s"}) as response:
                assert response.status == 201, await response.text()
            for replica in replicas:
                await eventually(lambda r=replica: _equals(r.hits(session, 3), {"503": 3}),
                                 timeout=1.0)
            for replica in replicas:
                await eventually(lambda r=replica: _equals(r.hits(session, 3), {"v2": 3}),
                                 timeout=3.0)
        finally:
            for replica in replicas:
                await provider_tests.stop(replica)


def _async(check):
    async def run():
        return check()
    return run


async def test_set_weight_on_a_route_flagger_owns_is_refused_with_the_owner(tmp_path, backends):
    async with FakeKube() as kube, aiohttp.ClientSession() as session:
        provider_tests.base_objects(kube, backends)
        route = provider_tests.http_route("shop", {"v1": 100, "v2": 0})
        route["metadata"]["ownerReferences"] = [{
            "apiVersion": "flagger.app/v1beta1", "kind": "Canary", "name": "shop",
            "uid": "0b5e6c1e-0000-4000-8000-000000000001", "controller": True}]
        kube.apply(route)
        replica = await provider_tests.start(tmp_path, kube)
        try:
            await eventually(lambda: _equals(replica.ready(session), 200))
            async with session.put(f"{replica.admin}/api/v1/routes/shop-0/weights",
                                   json={"weights": {"v2": 100}}) as response:
                assert response.status == 400
                assert "Canary shop (ownerReferences)" in await response.text()
            stored = kube.get("HTTPRoute", provider_tests.NS, "shop")
            assert [b["weight"] for b in stored["spec"]["rules"][0]["backendRefs"]] == [100, 0]
            assert await replica.hits(session, 3) == {"v1": 3}
        finally:
            await provider_tests.stop(replica)


async def test_a_canary_stood_down_with_the_lease_resumes_where_it_stood(proxy_factory):
    """Leadership lost: ``run`` is cancelled and ``stand_down`` forgets the runners but keeps
    their state; leadership regained: ``run`` resumes each canary at its step."""
    from tests.integration.test_canary import Load, shop_config, view, wait_for

    fakes = [await start_fake_service(name) for name in ("shop-v1", "shop-v2")]
    try:
        proxy = await proxy_factory(shop_config(*fakes, interval=0.3,
                                                step_weights=(10, 20, 30, 40), max_weight=40))
        controller = CanaryController(proxy.runtime, proxy.stats, poll=0.05)
        controller.sync()  # the canary starts now, not at the first poll
        task = asyncio.create_task(controller.run())
        async with Load(proxy.url):
            await wait_for(lambda: view(controller)["step"] >= 2, 5, "a second step")
        controller.command("shop", "pause")
        before = view(controller)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        controller.stand_down()
        assert controller.describe_all() == {"canaries": []}
        task = asyncio.create_task(controller.run())
        try:
            await wait_for(lambda: bool(controller.describe_all()["canaries"]), 2,
                           "the canary back")
            after = view(controller)
            assert (after["phase"], after["step"], after["candidate_weight"]) == \
                (before["phase"], before["step"], before["candidate_weight"])
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        for fake in fakes:
            await fake.close()
