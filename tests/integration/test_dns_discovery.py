"""DNS discovery over real loopback sockets: one name, three fake-service backends on
127.0.0.1, 127.0.0.2 and 127.0.0.3 (Linux routes all of 127.0.0.0/8 to loopback) on the
same port, as three containers behind ``docker-compose up --scale``. The name resolves
through a resolver the test controls; everything else is the real proxy."""

from __future__ import annotations

import asyncio
import collections
import random
import socket

import aiohttp
import pytest

from pyproxy.admin.views import status_table
from pyproxy.config.model import (
    Backend,
    Config,
    ConnectionPool,
    DnsDiscovery,
    Endpoint,
    HealthCheck,
    LoadBalancer,
    OutlierDetection,
    Route,
    Service,
)
from pyproxy.control import ProxyControl
from pyproxy.demo.fake_service import FakeService, start_fake_service
from pyproxy.discovery.dns import DnsWatcher
from tests.stats_bounds import assert_binomial
from tests.support.backends import free_port

ADDRESSES = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


class Resolver:
    """``stockmanager-v2`` → ``answer``; or a resolution failure while ``failing``."""

    def __init__(self) -> None:
        self.answer = list(ADDRESSES)
        self.failing = False

    async def __call__(self, host: str, port: int) -> list[str]:
        assert host == "stockmanager-v2"
        if self.failing:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return list(self.answer)


async def start_three(latency: float = 0.0) -> tuple[int, list[FakeService]]:
    """The three backends on one port (a free one on 127.0.0.1; tried again if another
    loopback address has it taken)."""
    for _ in range(5):
        port = free_port()
        started: list[FakeService] = []
        try:
            for address in ADDRESSES:
                started.append(await start_fake_service(
                    f"v2@{address}", host=address, port=port, latency=latency,
                    rng=random.Random(7)))
        except OSError:
            for backend in started:
                await backend.close()
            continue
        return port, started
    raise RuntimeError("no port free on all three loopback addresses")


@pytest.fixture
async def backends():
    made: list[FakeService] = []

    async def make(latency: float = 0.0) -> tuple[int, list[FakeService]]:
        port, started = await start_three(latency)
        made.extend(started)
        return port, started

    yield make
    for backend in made:
        await backend.close()


def dns_config(port: int, **policies) -> Config:
    service = Service("stockmanager",
                      (Endpoint("stockmanager-v2", port, {"version": "0.0.2"}),),
                      subsets={"v2": {"version": "0.0.2"}},
                      discovery=DnsDiscovery(interval=0.2), **policies)
    return Config(services={"stockmanager": service},
                  routes=(Route("stock", backends=(Backend("stockmanager", "v2"),)),))


async def start(proxy_factory, config: Config, resolver: Resolver):
    proxy = await proxy_factory(config)
    dns = DnsWatcher(proxy.runtime, resolver)
    assert await dns.step() is True
    return proxy, dns


async def get(session: aiohttp.ClientSession, proxy, path: str = "/stock") -> tuple[int, str]:
    async with session.get(proxy.url + path) as response:
        body = await response.json(content_type=None)
        return response.status, body.get("name", "")


async def test_balancing_spreads_over_every_address(backends, proxy_factory):
    port, _ = await backends()
    proxy, _ = await start(proxy_factory, dns_config(port, load_balancer=LoadBalancer("random")),
                           Resolver())
    endpoints = proxy.runtime.current.routes["stock"].backends[0].endpoints
    assert [ep.address for ep in endpoints] == [f"{a}:{port}" for a in ADDRESSES]
    n = 600
    async with aiohttp.ClientSession() as session:
        results = [await get(session, proxy) for _ in range(n)]
    assert all(status == 200 for status, _ in results)
    counts = collections.Counter(name for _, name in results)
    for address in ADDRESSES:
        assert_binomial(counts[f"v2@{address}"], n, 1 / 3)


async def test_the_failing_address_is_ejected_while_the_others_serve(backends, proxy_factory):
    port, started = await backends()
    config = dns_config(port, outlier_detection=OutlierDetection(
        consecutive_5xx=3, interval=0.5, base_ejection_time=30, max_ejection_percent=50))
    proxy, dns = await start(proxy_factory, config, Resolver())
    failing = started[1]
    failing.error_rate = 1.0
    async with aiohttp.ClientSession() as session:
        results = [await get(session, proxy) for _ in range(60)]
    failures = [r for r in results if r[0] != 200]
    assert len(failures) == 3  # consecutive_5xx, then ejected
    last = results[-30:]
    assert all(status == 200 for status, _ in last)
    assert {name for _, name in last} == {"v2@127.0.0.1", "v2@127.0.0.3"}
    # /api/v1/services: one row per address, each with the name it came from.
    control = ProxyControl([], None, proxy.runtime, proxy.stats, proxy.listener, {})
    control.dns = dns
    [service] = control.describe_services()["services"]
    rows = {row["address"]: row for row in service["endpoints"]}
    assert list(rows) == [f"{a}:{port}" for a in ADDRESSES]
    assert all(row["resolved_from"] == f"stockmanager-v2:{port}" for row in rows.values())
    assert rows[f"127.0.0.2:{port}"]["ejected"] is True
    assert service["discovery"]["names"][0]["addresses"] == ADDRESSES
    # pyproxy status: the name and its addresses under the table.
    text = status_table(control.describe_routes(), control.describe_services())
    assert (f"stockmanager stockmanager-v2:{port} (DNS, every 0.2s): "
            "127.0.0.1, 127.0.0.2, 127.0.0.3") in text
    assert f"stockmanager 127.0.0.2:{port} (consecutive_5xx)" in text


async def test_the_answer_shrinks_under_load_without_a_failed_request(backends, proxy_factory):
    port, started = await backends(latency=0.02)  # requests in flight at every moment
    resolver = Resolver()
    proxy, dns = await start(proxy_factory, dns_config(port), resolver)
    leaving = started[2]
    [leaving_state] = [ep for ep in proxy.runtime.current.routes["stock"].backends[0].endpoints
                       if ep.address == f"127.0.0.3:{port}"]
    statuses: collections.Counter[int] = collections.Counter()
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            status, _ = await get(session, proxy)
            statuses[status] += 1

    async with aiohttp.ClientSession() as session:
        clients = [asyncio.ensure_future(client(session)) for _ in range(8)]
        await asyncio.sleep(0.5)
        assert leaving.requests > 0
        resolver.answer = ADDRESSES[:2]
        await asyncio.sleep(0.25)  # the name is due again
        assert await dns.step() is True
        # In-flight requests on the removed address finish; then no new one arrives.
        await asyncio.sleep(0.1)
        drained_at = leaving.requests
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*clients)
    assert leaving.requests == drained_at
    # Drained: its keep-alive connections closed once their requests ended, so they hold
    # no circuit-breaker slot.
    assert leaving_state.pool.open == 0 and leaving_state.pool.retired
    assert set(statuses) == {200} and statuses[200] > 50
    assert [ep.address for ep in proxy.runtime.current.config.services["stockmanager"].endpoints
            ] == [f"{a}:{port}" for a in ADDRESSES[:2]]


async def test_resolution_failing_keeps_the_last_good_answer(backends, proxy_factory):
    port, started = await backends()
    resolver = Resolver()
    proxy, dns = await start(proxy_factory, dns_config(port), resolver)
    resolver.failing = True
    await asyncio.sleep(0.25)
    assert await dns.step() is False
    assert dns.answers.names[("stockmanager", "stockmanager-v2", port)].error is not None
    async with aiohttp.ClientSession() as session:
        results = [await get(session, proxy) for _ in range(30)]
    assert all(status == 200 for status, _ in results)
    assert {name for _, name in results} == {f"v2@{a}" for a in ADDRESSES}  # round robin
    assert all(backend.requests == 10 for backend in started)


async def test_health_checks_probe_each_address(backends, proxy_factory):
    port, started = await backends()
    config = dns_config(port, health_check=HealthCheck(interval=0.1, timeout=0.5,
                                                        unhealthy_threshold=1))
    proxy, _ = await start(proxy_factory, config, Resolver())
    checker = proxy.runtime.services["stockmanager"].checker
    assert checker is not None
    assert set(checker.describe()) == {f"{a}:{port}" for a in ADDRESSES}
    await started[0].close()  # one container stops: its probes fail, the others pass
    gone = f"127.0.0.1:{port}"
    for _ in range(100):
        if not checker.is_healthy(gone):
            break
        await asyncio.sleep(0.05)
    assert not checker.is_healthy(gone)
    async with aiohttp.ClientSession() as session:
        results = [await get(session, proxy) for _ in range(20)]
    assert all(status == 200 for status, _ in results)
    assert {name for _, name in results} == {"v2@127.0.0.2", "v2@127.0.0.3"}


async def test_the_breaker_counts_each_address_as_an_endpoint(backends, proxy_factory):
    """An endpoint with no connection may always open its first one (docs/admin-api.md):
    with max_connections 1, each of the three addresses still gets one, so three slow
    requests in parallel are served by three containers instead of overflowing."""
    port, _ = await backends(latency=0.3)
    config = dns_config(port, connection_pool=ConnectionPool(max_connections=1,
                                                             pending_timeout=0.05))
    proxy, _ = await start(proxy_factory, config, Resolver())
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(get(session, proxy) for _ in range(3)))
    assert sorted(results) == [(200, f"v2@{a}") for a in ADDRESSES]
    breaker = proxy.runtime.services["stockmanager"].breaker.snapshot()
    assert breaker["connections"]["active"] == 3 and breaker["connections"]["above_max"] == 2
    assert breaker["overflows"] == {}
