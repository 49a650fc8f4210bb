"""An HTTPRoute's weights moved 100/0 → 50/50 → 0/100 by writing the object, as a
progressive-delivery tool does: after each step the status is current and the traffic
split lies within binomial bounds."""

from __future__ import annotations

from tests.integration.kubernetes.cluster import (
    burst,
    eventually,
    served_weights,
    start_proxy,
    stop_proxy,
    write_config,
)
from tests.stats_bounds import assert_binomial

N = 1000


async def test_weights_step_through_the_route_object(kube, cluster, backends, tmp_path):
    v1, v2 = await backends("v1", "v2")
    cluster.shop_canary(v1, v2)
    proxy = await start_proxy(write_config(tmp_path, kube))
    try:
        for w1, w2 in ((100, 0), (50, 50), (0, 100)):
            cluster.set_weights("shop", (w1, w2))

            async def applied(w1: int = w1, w2: int = w2) -> bool:
                return await served_weights(proxy) == {"shop-v1": w1, "shop-v2": w2}

            await eventually(applied, f"{w1}/{w2} applied")
            tally = await burst(proxy.url + "/", N)
            assert tally.failed == 0, tally
            assert_binomial(tally.names["v2"], N, w2 / 100)
            await eventually(lambda: cluster.status_current("shop"),
                             f"status observedGeneration current after {w1}/{w2}")
    finally:
        await stop_proxy(proxy)
