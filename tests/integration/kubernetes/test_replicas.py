"""Two pyproxy processes on one fake API server: one leader on the Lease, and run-time
changes — ``pyproxy set-weight`` on either replica, the leader's canary rolling back —
written to the HTTPRoute, so both serve them within one second."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from tests.integration.kubernetes.cluster import (
    FailingPod,
    SteadyLoad,
    eventually,
    served_weights,
    start_proxy,
    stop_proxy,
    write_config,
)

LEASE = "pyproxy-leader"


async def _two_replicas(kube, tmp_path, extra: str = ""):
    replicas = []
    for name in ("a", "b"):
        config = write_config(tmp_path / name, kube, extra=extra)
        replicas.append(await start_proxy(config, env={"POD_NAME": f"pyproxy-{name}"}))
    return replicas


def _holder(kube) -> str | None:
    lease = kube.get_or_none("Lease", "default", LEASE)
    return lease["spec"].get("holderIdentity") if lease else None


async def _both_serve(replicas, expected: dict[str, float], what: str,
                      timeout: float) -> float:
    async def check() -> bool:
        for replica in replicas:
            if await served_weights(replica) != expected:
                return False
        return True
    return await eventually(check, what, timeout=timeout, interval=0.02)


async def test_one_leader_and_set_weight_seen_by_both(kube, cluster, backends, tmp_path):
    v1, v2 = await backends("v1", "v2")
    cluster.shop_canary(v1, v2)
    replicas = await _two_replicas(kube, tmp_path)
    try:
        await eventually(lambda: _holder(kube) in ("pyproxy-a", "pyproxy-b"), "a leader")
        leader = _holder(kube)
        await eventually(lambda: cluster.status_current("shop"), "status written")
        # Only the leader writes status.
        status_writes = [r for r in kube.requests if r.method == "PUT"
                         and r.path.endswith("/status")]
        assert status_writes, "no status write"
        await asyncio.sleep(1.0)  # a few renewals: the Lease stays where it is
        assert _holder(kube) == leader

        follower = replicas[1] if leader == "pyproxy-a" else replicas[0]
        started = time.monotonic()
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "pyproxy", "set-weight", "shop-0",
                             "shop-v1=0", "shop-v2=100", "--admin", follower.admin_url],
            capture_output=True, text=True, timeout=10, env=os.environ)
        assert done.returncode == 0, done.stdout + done.stderr
        took = await _both_serve(replicas, {"shop-v1": 0, "shop-v2": 100},
                                 "set-weight served by both", timeout=1.0)
        weights = [b["weight"] for b in
                   kube.get("HTTPRoute", "default", "shop")["spec"]["rules"][0]["backendRefs"]]
        assert weights == [0, 100]  # the route object is the one truth
        print(f"set-weight on the follower: both replicas serve it {took:.2f}s after the "
              f"command returned ({time.monotonic() - started:.2f}s after it started)")
    finally:
        for replica in replicas:
            await stop_proxy(replica)


CANARY = """
canaries:
  - name: shop
    route: shop-0
    primary: shop-v1
    candidate: shop-v2
    interval: 500ms
    step_weight: 20
    max_weight: 60
    threshold: 2
    min_requests: 5
    checks: {success_rate_min: 99}
"""


async def test_a_canary_rollback_is_seen_by_both(kube, cluster, backends, tmp_path):
    """The leader's canary steps a failing candidate up, judges it, and rolls it back to 0:
    the rollback is written to the HTTPRoute and both replicas stop sending to it within a
    second of the write."""
    [v1] = await backends("v1")
    v2 = await FailingPod("v2", status=500).start()
    try:
        cluster.shop_canary(v1, v2)
        replicas = await _two_replicas(kube, tmp_path, extra=CANARY)
        try:
            def candidate_weight() -> int:
                route = kube.get("HTTPRoute", "default", "shop")
                return route["spec"]["rules"][0]["backendRefs"][1]["weight"]

            async with SteadyLoad(replicas[0].url + "/", 50), \
                    SteadyLoad(replicas[1].url + "/", 50):
                await eventually(lambda: candidate_weight() > 0, "the canary's first step",
                                 timeout=15)
                await eventually(lambda: candidate_weight() == 0, "the rollback written",
                                 timeout=15, interval=0.01)
                took = await _both_serve(replicas, {"shop-v1": 100, "shop-v2": 0},
                                         "the rollback served by both", timeout=1.0)
            print(f"canary rollback: both replicas serve it {took:.2f}s after it was written")
        finally:
            for replica in replicas:
                await stop_proxy(replica)
    finally:
        await v2.close()
