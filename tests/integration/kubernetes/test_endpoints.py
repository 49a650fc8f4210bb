"""Pods from EndpointSlices, under real traffic: a rolling replacement at 200 rps fails no
request, and a pod answering 5xx is ejected by itself while its peers keep serving."""

from __future__ import annotations

import asyncio

from tests.integration.kubernetes.cluster import (
    FailingPod,
    SteadyLoad,
    burst,
    eventually,
    served_endpoints,
    start_proxy,
    stop_proxy,
    write_config,
)
from tests.support.backends import EchoBackend

RATE = 200  # requests per second during the churn


async def test_pods_replaced_one_by_one_under_load_fail_no_request(kube, cluster, backends,
                                                                   tmp_path):
    """A rolling update as Kubernetes does it: the new pod becomes ready, the old one turns
    terminating (not ready, still serving), leaves its EndpointSlice, and exits only after
    a grace period (its preStop sleep) so that in-flight requests finish."""
    old = await backends("old-1", "old-2", "old-3")
    cluster.gateway()
    cluster.service("shop")
    for pod in old:
        cluster.add_pod("shop", pod.name, pod)
    cluster.httproute("shop", [("shop", 1)])
    proxy = await start_proxy(write_config(tmp_path, kube))
    new: list[EchoBackend] = []
    timings = []
    try:
        await eventually(lambda: _has(proxy, "shop", old), "the three pods served")
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with SteadyLoad(proxy.url + "/", RATE) as load:
            await asyncio.sleep(0.5)
            for i, leaving in enumerate(old, 1):
                [arriving] = await backends(f"new-{i}")
                new.append(arriving)
                cluster.add_pod("shop", arriving.name, arriving)
                timings.append(await eventually(lambda a=arriving: _has(proxy, "shop", [a]),
                                                f"new-{i} served"))
                cluster.add_pod("shop", leaving.name, leaving, ready=False, terminating=True)
                await eventually(lambda gone=leaving: _lacks(proxy, "shop", gone),
                                 f"{leaving.name} no longer served")
                cluster.remove_pod("shop", leaving.name)
                await asyncio.sleep(0.5)  # the pod's grace period: in-flight requests end
                await leaving.close()
                await asyncio.sleep(0.5)  # a moment at the new size before the next step
            await asyncio.sleep(0.5)
        elapsed = loop.time() - started
        tally = load.tally
        assert tally.failed == 0, (tally.statuses, tally.errors[:5])
        # The load really ran throughout, at (nearly) the rate asked for.
        assert tally.total >= 0.8 * RATE * elapsed, (tally.total, elapsed)
        assert set(tally.names) == {"old-1", "old-2", "old-3", "new-1", "new-2", "new-3"}
        print(f"churn: {tally.total} requests in {elapsed:.1f}s, 0 failed; new pod served after "
              + ", ".join(f"{t:.2f}s" for t in timings))
    finally:
        await stop_proxy(proxy)


async def _has(proxy, service: str, pods) -> bool:
    return {p.address for p in pods} <= await served_endpoints(proxy, service)


async def _lacks(proxy, service: str, pod) -> bool:
    return pod.address not in await served_endpoints(proxy, service)


async def test_a_pod_answering_5xx_is_ejected_while_its_peers_serve(kube, cluster, backends,
                                                                    tmp_path):
    """Each pod is an endpoint: outlier detection (the file's policy for the Kubernetes
    Service) ejects the one bad pod, not the Service."""
    good = await backends("good-1", "good-2")
    bad = await FailingPod("bad").start()
    try:
        cluster.gateway()
        cluster.service("shop")
        for pod in (*good, bad):
            cluster.add_pod("shop", pod.name, pod)
        cluster.httproute("shop", [("shop", 1)])
        policy = ("services:\n  shop:\n    outlier_detection:\n      consecutive_5xx: 3\n"
                  "      interval: 100ms\n      base_ejection_time: 30s\n"
                  "      max_ejection_percent: 50\n")
        proxy = await start_proxy(write_config(tmp_path, kube, extra=policy))
        try:
            await eventually(lambda: _has(proxy, "shop", [*good, bad]), "three pods served")
            await burst(proxy.url + "/", 60, concurrency=3)  # the bad pod's 5xx get counted
            bad_before = bad.requests
            tally = await burst(proxy.url + "/", 300, concurrency=10)
            assert tally.failed == 0, tally.statuses
            assert set(tally.names) == {"good-1", "good-2"}
            assert bad.requests == bad_before  # ejected: it got nothing more
        finally:
            await stop_proxy(proxy)
    finally:
        await bad.close()
