"""The API server misbehaving while pyproxy serves: restarted mid-watch, a 410 storm, a
stalled stream, a token rotation, an invalid HTTPRoute. In each case traffic keeps flowing
on the last good config and the next change still arrives."""

from __future__ import annotations

import asyncio

from tests.integration.kubernetes.cluster import (
    SteadyLoad,
    burst,
    eventually,
    metric,
    served_weights,
    start_proxy,
    stop_proxy,
    write_config,
)


async def _canary_setup(cluster, backends) -> None:
    v1, v2 = await backends("v1", "v2")
    cluster.shop_canary(v1, v2)


def _weights_are(proxy, w1: int, w2: int):
    async def check() -> bool:
        return await served_weights(proxy) == {"shop-v1": w1, "shop-v2": w2}
    return check


async def test_api_server_restarted_mid_watch(kube, cluster, backends, tmp_path):
    await _canary_setup(cluster, backends)
    proxy = await start_proxy(write_config(tmp_path, kube))
    try:
        async with SteadyLoad(proxy.url + "/", 100) as load:
            await asyncio.sleep(0.3)
            await kube.restart(downtime=1.0)
            cluster.set_weights("shop", (0, 100))
            took = await eventually(_weights_are(proxy, 0, 100), "the change after the restart",
                                    timeout=20)
        assert load.tally.failed == 0, load.tally.statuses
        assert set(load.tally.names) <= {"v1", "v2"}
        print(f"restart: 1.0s down, change applied {took:.2f}s after the server was back; "
              f"{load.tally.total} requests, 0 failed")
    finally:
        await stop_proxy(proxy)


async def test_a_410_storm(kube, cluster, backends, tmp_path):
    """Compaction again and again (each one an ERROR 410 on every open watch, and every
    version expired): pyproxy lists again each time and ends on the latest weights."""
    await _canary_setup(cluster, backends)
    proxy = await start_proxy(write_config(tmp_path, kube))
    try:
        lists_before = kube.count_requests("GET", contains="httproutes", watch=False)
        async with SteadyLoad(proxy.url + "/", 50) as load:
            for step in range(10):
                cluster.set_weights("shop", (100 - 10 * step, 10 * step))
                kube.compact()
                await asyncio.sleep(0.2)
            cluster.set_weights("shop", (0, 100))
            await eventually(_weights_are(proxy, 0, 100), "the last weights after the storm",
                             timeout=20)
        assert load.tally.failed == 0, load.tally.statuses
        relists = kube.count_requests("GET", contains="httproutes", watch=False) - lists_before
        assert relists >= 1
        assert await metric(proxy, "pyproxy_kubernetes_relists_total", kind="HTTPRoute") >= 1
        print(f"410 storm: 10 compactions, {relists} lists of HTTPRoutes after the first")
    finally:
        await stop_proxy(proxy)


async def test_a_stalled_stream_is_dropped_and_resumed(kube, cluster, backends, tmp_path):
    """The open watches go silent (no events, no bookmarks, no end): after idle_timeout
    pyproxy drops them and resumes from the last version, and gets the held change."""
    await _canary_setup(cluster, backends)
    proxy = await start_proxy(write_config(tmp_path, kube, idle_timeout="2s"))
    try:
        kube.stall_watches()
        cluster.set_weights("shop", (0, 100))
        took = await eventually(_weights_are(proxy, 0, 100), "the change behind the stall",
                                timeout=10)
        assert took >= 1.5  # it did wait for the idle timeout, not a live stream
        print(f"stalled stream: change applied after {took:.2f}s (idle_timeout 2s)")
    finally:
        await stop_proxy(proxy)


async def test_a_rotated_token_is_used(kube, cluster, backends, tmp_path):
    """The token file is rewritten and the old token refused: the next requests (here the
    watches that a compaction forces to list again) carry the new one."""
    await _canary_setup(cluster, backends)
    proxy = await start_proxy(write_config(tmp_path, kube, use_token_file=True))
    try:
        kube.rotate_token()
        kube.compact()
        cluster.set_weights("shop", (0, 100))
        await eventually(_weights_are(proxy, 0, 100), "the change with the new token")
        refused = sum(1 for r in kube.requests if r.status == 401)
        assert refused <= 10, refused
        print(f"token rotation: {refused} requests refused with the old token")
    finally:
        await stop_proxy(proxy)


async def test_a_backendref_to_nothing_is_reported_and_answers_500(
        kube, cluster, backends, tmp_path):
    """Gateway API: a backendRef that resolves to nothing sets ResolvedRefs False
    (BackendNotFound) and the requests it would have had get 500; other routes serve."""
    await _canary_setup(cluster, backends)
    cluster.httproute("other", [("shop-v2", 1)], hostnames=["other.example"])
    proxy = await start_proxy(write_config(tmp_path, kube))
    try:
        cluster.httproute("other", [("no-such-service", 1)], hostnames=["other.example"])
        await eventually(lambda: (cluster.condition("other", "ResolvedRefs") or {}).get(
            "reason") == "BackendNotFound", "BackendNotFound on the route's status")
        tally = await burst(proxy.url + "/", 200)
        assert tally.failed == 0 and set(tally.names) == {"v1"}
        other = await burst(proxy.url + "/", 20, headers={"Host": "other.example"})
        assert other.statuses == {500: 20}
    finally:
        await stop_proxy(proxy)


async def test_an_invalid_httproute_is_reported_and_the_rest_keeps_serving(
        kube, cluster, backends, tmp_path):
    """A route the importer refuses (a filter without its settings; a real API server's CRD
    validation would refuse it too, a skewed CRD version may not) is reported on its
    status, Accepted False, and left out; every other route keeps serving."""
    await _canary_setup(cluster, backends)
    cluster.httproute("other", [("shop-v2", 1)], hostnames=["other.example"])
    proxy = await start_proxy(write_config(tmp_path, kube))
    try:
        broken = kube.get("HTTPRoute", "default", "other")
        broken["spec"]["rules"][0]["filters"] = [{"type": "RequestHeaderModifier"}]
        kube.apply(broken)
        await eventually(lambda: (cluster.condition("other", "Accepted") or {}).get(
            "status") == "False", "Accepted False on the route's status")
        accepted = cluster.condition("other", "Accepted")
        assert accepted is not None
        assert accepted["observedGeneration"] == kube.get(
            "HTTPRoute", "default", "other")["metadata"]["generation"]
        assert "RequestHeaderModifier" in accepted["message"]
        async with SteadyLoad(proxy.url + "/", 50) as load:
            await asyncio.sleep(1.0)
        assert load.tally.failed == 0 and set(load.tally.names) == {"v1"}
        assert cluster.status_current("shop")
        other = await burst(proxy.url + "/", 20, headers={"Host": "other.example"})
        print("the invalid route's host now gets", dict(other.statuses), dict(other.names))
    finally:
        await stop_proxy(proxy)
