"""Traffic mirroring: fire-and-forget copies that can never hurt the primary request."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from pyproxy.config.model import Backend, Config, Mirror, Route
from tests.stats_bounds import assert_binomial
from tests.support.backends import free_port
from tests.support.harness import service


def _config(primary, shadow, percent: float) -> Config:
    return Config(services={"primary": service("primary", primary),
                            "shadow": service("shadow", shadow)},
                  routes=(Route("main", backends=(Backend("primary"),),
                                mirrors=(Mirror("shadow", percent=percent),)),))


async def test_every_request_is_mirrored_with_a_shadow_host(echo_factory, proxy_factory):
    primary, shadow = await echo_factory("primary"), await echo_factory("shadow")
    proxy = await proxy_factory(_config(primary, shadow, 100))
    async with aiohttp.ClientSession() as session:
        for i in range(20):
            async with session.post(proxy.url + f"/orders/{i}", data=b"x" * 100,
                                    headers={"Host": "shop"}) as r:
                assert r.status == 200 and json.loads(await r.read())["name"] == "primary"
    for _ in range(100):
        if shadow.requests == 20:
            break
        await asyncio.sleep(0.02)
    assert shadow.requests == 20
    assert set(shadow.hosts) == {"shop-shadow"} and set(primary.hosts) == {"shop"}
    await asyncio.sleep(0.05)
    assert proxy.stats_value("pyproxy_mirror_requests_total", route="main", backend="shadow",
                             result="success") == 20


async def test_mirror_percentage_is_drawn_per_request(echo_factory, proxy_factory):
    primary, shadow = await echo_factory("primary"), await echo_factory("shadow")
    proxy = await proxy_factory(_config(primary, shadow, 30), seed=9)
    async with aiohttp.ClientSession() as session:
        for _ in range(1000):
            async with session.get(proxy.url + "/") as r:
                await r.read()
    await asyncio.sleep(0.3)
    assert primary.requests == 1000
    assert_binomial(shadow.requests, 1000, 0.3)


async def test_a_dead_shadow_never_fails_the_primary(echo_factory, proxy_factory):
    primary = await echo_factory("primary")

    class Dead:
        port = free_port()

    proxy = await proxy_factory(_config(primary, Dead, 100))
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.get(proxy.url + "/") as r:
                assert r.status == 200
    await asyncio.sleep(0.2)
    assert proxy.stats_value("pyproxy_mirror_requests_total", result="failure") == 20


async def test_bodies_above_the_replay_limit_are_not_mirrored(echo_factory, proxy_factory):
    primary, shadow = await echo_factory("primary"), await echo_factory("shadow")
    proxy = await proxy_factory(_config(primary, shadow, 100))
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + "/big", data=b"y" * (256 * 1024)) as r:
            assert json.loads(await r.read())["body_bytes"] == 256 * 1024
    await asyncio.sleep(0.1)
    assert shadow.requests == 0
    assert proxy.stats_value("pyproxy_mirror_requests_total",
                             result="skipped_body_too_large") == 1


async def test_a_copy_with_no_endpoint_left_fails_and_frees_its_slot():
    """The copy picks its endpoint in its own task; if none is left by then (ejected since
    the route compiled) the copy is a counted failure and gives its in-flight slot back."""
    import random
    from types import SimpleNamespace

    from pyproxy.errors import NoHealthyUpstream
    from pyproxy.filters.mirror import Mirroring
    from pyproxy.messages import RequestHead

    recorded = []
    stats = SimpleNamespace(record_mirror=lambda *labels: recorded.append(labels),
                            record_attempt=lambda attempt: recorded.append(attempt))

    def no_endpoint(backend):
        raise NoHealthyUpstream(f"{backend.name} has no healthy endpoint")

    mirroring = Mirroring(stats, random.Random(1))
    shadow = SimpleNamespace(name="shadow", endpoints=("ejected",))
    head = RequestHead("GET", "/", "", "1.1", [("host", "shop")], "shop", "127.0.0.1")
    mirroring.send_copies("main", [(Mirror("shadow"), shadow)], head, b"", no_endpoint)
    assert mirroring.in_flight == 1
    for _ in range(10):
        await asyncio.sleep(0)
    assert mirroring.in_flight == 0
    assert recorded == [("main", "shadow", "failure")]
