"""Weighted splits, reloads of weights, fault percentages and stickiness over real sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import aiohttp

from pyproxy.config.model import (
    AbortFault,
    Backend,
    Config,
    DelayFault,
    Fault,
    Route,
    Sticky,
    StickyCookie,
)
from tests.stats_bounds import assert_binomial
from tests.support.harness import service


async def _names(url: str, n: int, concurrency: int = 20, headers=None) -> list[str]:
    names: list[str] = []

    async def worker(count: int, session: aiohttp.ClientSession) -> None:
        for _ in range(count):
            async with session.get(url, headers=headers) as response:
                body = await response.read()
                names.append(json.loads(body)["name"] if response.status == 200
                             else f"status:{response.status}")

    async with aiohttp.ClientSession() as session:
        per = n // concurrency
        await asyncio.gather(*(worker(per, session) for _ in range(concurrency)))
    return names


def _canary(v1, v2, w1: float, w2: float, **route_kw) -> Config:
    svc = service("stockmanager", (v1, {"version": "0.0.1"}), (v2, {"version": "0.0.2"}),
                  subsets={"v1": {"version": "0.0.1"}, "v2": {"version": "0.0.2"}})
    route = Route("stockmanager", backends=(Backend("stockmanager", "v1", w1),
                                            Backend("stockmanager", "v2", w2)), **route_kw)
    return Config(services={"stockmanager": svc}, routes=(route,))


async def test_90_10_split_then_reload_to_50_50(echo_factory, proxy_factory):
    v1, v2 = await echo_factory("v1"), await echo_factory("v2")
    proxy = await proxy_factory(_canary(v1, v2, 90, 10), seed=7)
    names = await _names(proxy.url + "/store/stocklevel", 5000)
    assert len(names) == 5000 and set(names) <= {"v1", "v2"}
    assert_binomial(names.count("v2"), 5000, 0.10)

    proxy.reload(_canary(v1, v2, 50, 50))
    names = await _names(proxy.url + "/store/stocklevel", 5000)
    assert_binomial(names.count("v2"), 5000, 0.50)


async def test_relative_weights_and_zero_weight(echo_factory, proxy_factory):
    v1, v2 = await echo_factory("v1"), await echo_factory("v2")
    proxy = await proxy_factory(_canary(v1, v2, 1, 4))
    names = await _names(proxy.url + "/", 2000)
    assert_binomial(names.count("v2"), 2000, 0.8)

    proxy.reload(_canary(v1, v2, 0, 500e-3))  # SMI-style 500m, v1 gets no new traffic
    assert set(await _names(proxy.url + "/", 200)) == {"v2"}


async def test_all_zero_weights_answer_503_uh(echo_factory, proxy_factory):
    v1, v2 = await echo_factory("v1"), await echo_factory("v2")
    config = _canary(v1, v2, 0, 0)
    config = dataclasses.replace(config, debug_headers=True)
    proxy = await proxy_factory(config)
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/") as response:
            assert response.status == 503
            assert response.headers["x-pyproxy-flags"] == "UH"
    assert v1.requests == v2.requests == 0


async def test_half_percent_abort_over_20000_requests(echo_factory, proxy_factory):
    v1, v2 = await echo_factory("v1"), await echo_factory("v2")
    fault = Fault(abort=AbortFault(status=503, percent=0.5))
    proxy = await proxy_factory(_canary(v1, v2, 100, 0, fault=fault), seed=11)
    names = await _names(proxy.url + "/", 20000, concurrency=40)
    aborted = names.count("status:503")
    assert_binomial(aborted, 20000, 0.005)
    assert aborted + names.count("v1") == 20000
    assert v1.requests == 20000 - aborted  # an aborted request never reaches the upstream


async def test_delay_and_abort_draw_independently(echo_factory, proxy_factory):
    v1, v2 = await echo_factory("v1"), await echo_factory("v2")
    fault = Fault(delay=DelayFault(fixed=0.001, percent=50),
                  abort=AbortFault(status=418, percent=50))
    proxy = await proxy_factory(dataclasses.replace(
        _canary(v1, v2, 100, 0, fault=fault), debug_headers=True), seed=3)
    flags = []
    async with aiohttp.ClientSession() as session:
        for _ in range(800):
            async with session.get(proxy.url + "/") as response:
                await response.read()
                flags.append((response.status, response.headers["x-pyproxy-flags"]))
    both = sum(1 for status, f in flags if status == 418 and "DI" in f)
    assert_binomial(both, 800, 0.25)  # independent draws: P(delay and abort) = 0.5 * 0.5
    assert all(f in ("-", "DI", "FI", "DI,FI") for _, f in flags)


async def test_sticky_cookie_clients_never_flip_while_weight_positive(echo_factory, proxy_factory):
    v1, v2 = await echo_factory("v1"), await echo_factory("v2")
    sticky = Sticky(cookie=StickyCookie(name="pyproxy-stockmanager", ttl=3600))
    proxy = await proxy_factory(_canary(v1, v2, 50, 50, sticky=sticky), seed=5)
    clients = []
    for _ in range(40):
        session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        clients.append(session)
    try:
        async def versions(session):
            seen = []
            for _ in range(5):
                async with session.get(proxy.url + "/") as response:
                    seen.append(json.loads(await response.read())["name"])
            return seen

        first = [await versions(s) for s in clients]
        assert all(len(set(seen)) == 1 for seen in first)
        drawn = {id(s): seen[0] for s, seen in zip(clients, first, strict=False)}
        assert set(drawn.values()) == {"v1", "v2"}

        # Raising v2 moves nobody who already drew; both weights stay > 0.
        proxy.reload(_canary(v1, v2, 10, 90, sticky=sticky))
        for s in clients:
            assert set(await versions(s)) == {drawn[id(s)]}

        # v1 drops to 0: its clients must move, v2's clients stay.
        proxy.reload(_canary(v1, v2, 0, 100, sticky=sticky))
        for s in clients:
            assert set(await versions(s)) == {"v2"}
    finally:
        for s in clients:
            await s.close()


async def test_sticky_header_pins_each_user(echo_factory, proxy_factory):
    v1, v2 = await echo_factory("v1"), await echo_factory("v2")
    proxy = await proxy_factory(_canary(v1, v2, 50, 50, sticky=Sticky(header="x-user-id")))
    pins = {}
    async with aiohttp.ClientSession() as session:
        for round_ in range(3):
            for user in range(30):
                async with session.get(proxy.url + "/", headers={"x-user-id": f"u{user}"}) as r:
                    name = json.loads(await r.read())["name"]
                pins.setdefault(user, name)
                assert pins[user] == name, f"user {user} flipped in round {round_}"
    assert set(pins.values()) == {"v1", "v2"}


async def test_direct_status_backend_answers_its_share(echo_factory, proxy_factory):
    """Gateway API: an invalid backendRef's share of traffic gets 500."""
    v1 = await echo_factory("v1")
    svc = service("svc", v1)
    route = Route("r", backends=(Backend("svc", weight=1),
                                 Backend("missing", weight=1, direct_status=500)))
    proxy = await proxy_factory(Config(services={"svc": svc}, routes=(route,)), seed=2)
    names = await _names(proxy.url + "/", 1000)
    assert_binomial(names.count("status:500"), 1000, 0.5)
    assert names.count("v1") + names.count("status:500") == 1000


async def test_route_response_headers_apply_to_direct_responses(echo_factory, proxy_factory):
    from pyproxy.config.model import DirectResponse, HeaderChanges, HeaderRules

    v1 = await echo_factory("v1")
    route = Route("maintenance", direct_response=DirectResponse(503, "down for maintenance"),
                  headers=HeaderRules(response=HeaderChanges(set=(("retry-after", "120"),))))
    proxy = await proxy_factory(Config(services={"svc": service("svc", v1)}, routes=(route,)))
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/") as r:
            assert r.status == 503 and r.headers["retry-after"] == "120"
            assert await r.text() == "down for maintenance"
