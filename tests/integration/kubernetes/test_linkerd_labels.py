"""In-cluster mode labels the Linkerd-compatible series as Flagger's linkerd provider
queries them (docs/metrics.md, "Where the workload labels come from"): a backend's
``namespace`` is its Service's, its ``deployment`` the one its pods' names (from the
EndpointSlices' ``targetRef``) belong to, so Flagger's ``podinfo-canary`` Service reports
``deployment="podinfo"``; the outbound series carry pyproxy's own pod from the downward API.
"""

from __future__ import annotations

from tests.integration.kubernetes.cluster import (
    Cluster,
    burst,
    eventually,
    metric,
    served_weights,
    start_proxy,
    stop_proxy,
    write_config,
)

NS = "test"
PROXY_POD = "pyproxy-6f7b9c8d5c-kq2zt"
N = 200


async def test_flagger_services_report_their_deployments(kube, backends, tmp_path):
    cluster = Cluster(kube, NS)
    primary, canary = await backends("primary", "canary")
    cluster.gateway()
    # Flagger's Services; the pods as a Deployment names them (DEPLOYMENT-HASH-SUFFIX)
    for service, pod, backend in (("podinfo-primary", "podinfo-primary-7d9c8b5f6-x2x9z", primary),
                                  ("podinfo-canary", "podinfo-5b8c9d7f4d-q8w2k", canary)):
        cluster.service(service)
        cluster.add_pod(service, pod, backend)
    cluster.httproute("podinfo", [("podinfo-primary", 50), ("podinfo-canary", 50)])
    config = write_config(tmp_path, kube, namespaces=(NS,),
                          extra="metrics: {linkerd_compat: true}\n")
    proxy = await start_proxy(config, env={"POD_NAMESPACE": NS, "POD_NAME": PROXY_POD})
    try:
        async def applied() -> bool:
            return await served_weights(proxy) == {"podinfo-primary": 50,
                                                   "podinfo-canary": 50}

        await eventually(applied, "the split served")
        tally = await burst(proxy.url + "/", N)
        assert tally.failed == 0, tally
        for deployment, name in (("podinfo", "canary"), ("podinfo-primary", "primary")):
            assert await metric(proxy, "response_total", direction="inbound", namespace=NS,
                                deployment=deployment) == tally.names[name]
        assert await metric(proxy, "response_total", direction="outbound",
                            dst_namespace=NS, dst_deployment="podinfo",
                            dst_service="podinfo-canary", namespace=NS,
                            deployment="pyproxy", pod=PROXY_POD) == tally.names["canary"]
        assert await metric(proxy, "response_latency_ms_count", direction="inbound",
                            namespace=NS, deployment="podinfo") == tally.names["canary"]
    finally:
        await stop_proxy(proxy)
