"""Retries, circuit breaking, outlier ejection and health checks against misbehaving
backends on loopback."""

from __future__ import annotations

import asyncio
import json
import random

import aiohttp
from aiohttp import web

from pyproxy.config.model import (
    AbortFault,
    Backend,
    Backoff,
    Config,
    ConnectionPool,
    Fault,
    HealthCheck,
    OutlierDetection,
    Retries,
    Route,
)
from tests.stats_bounds import assert_binomial
from tests.support.harness import service


class Flaky:
    """A backend that fails a fraction of requests with 500 (the seeds' stockmanager v0.0.2),
    or sleeps, or flips its /health answer."""

    def __init__(self, name: str, error_rate: float = 0.0, seed: int = 0, delay: float = 0.0):
        self.name, self.error_rate, self.delay = name, error_rate, delay
        self.rng = random.Random(seed)
        self.requests = 0
        self.healthy = True
        self.port = 0

    async def start(self):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def _handle(self, request):
        if request.path == "/health":
            return web.Response(status=200 if self.healthy else 503)
        self.requests += 1
        await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.rng.random() < self.error_rate:
            return web.Response(status=500, text=f"{self.name} failed")
        return web.Response(text=json.dumps({"name": self.name}))

    async def close(self):
        await self.runner.cleanup()


async def _statuses(url: str, n: int, concurrency: int = 1, **kw) -> list[int]:
    out: list[int] = []

    async def worker(session, count):
        for _ in range(count):
            async with session.get(url, **kw) as r:
                await r.read()
                out.append(r.status)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session, n // concurrency) for _ in range(concurrency)))
    return out


def _route(**kw) -> Route:
    return Route("main", backends=(Backend("svc"),), **kw)


async def test_retries_lift_a_50_percent_failing_backend_to_87_5(proxy_factory):
    flaky = await Flaky("v2", error_rate=0.5, seed=1).start()
    try:
        fast = Backoff(base=0.001, max=0.002)
        without = await proxy_factory(Config(services={"svc": service("svc", flaky)},
                                             routes=(_route(),)))
        statuses = await _statuses(without.url + "/", 2000, concurrency=10)
        assert_binomial(statuses.count(200), 2000, 0.5)

        retries = Retries(attempts=2, retry_on=("5xx",), backoff=fast)
        with_retries = await proxy_factory(Config(services={"svc": service("svc", flaky)},
                                                  routes=(_route(retries=retries),)))
        # Two clients stay inside the retry budget (at least 3 retries at once).
        statuses = await _statuses(with_retries.url + "/", 2000, concurrency=2)
        assert_binomial(statuses.count(200), 2000, 0.875)  # 1 - 0.5**3
        exhausted = with_retries.stats_value("pyproxy_requests_total", flag="URX")
        assert exhausted == statuses.count(500)  # every final failure says retries ran out
        assert with_retries.stats_value("pyproxy_retries_total", route="main") > 0
        print(f"\nclient success rate with attempts=2: {statuses.count(200) / 20:.1f}%")
    finally:
        await flaky.close()


async def test_the_retry_budget_keeps_retries_from_amplifying_an_outage(proxy_factory):
    dead = await Flaky("dead", error_rate=1.0, delay=0.05).start()
    try:
        retries = Retries(attempts=3, retry_on=("5xx",), backoff=Backoff(0.001, 0.001))
        proxy = await proxy_factory(Config(services={"svc": service("svc", dead)},
                                           routes=(_route(retries=retries),)))
        statuses = await _statuses(proxy.url + "/", 200, concurrency=20)
        assert statuses == [500] * 200
        # Unbounded, 200 requests x 4 tries = 800 upstream requests; the budget allows at
        # most 3 retries in flight next to 20 requests (20% of 20 = 4 → at least 3, at most 4).
        assert dead.requests < 200 * 1.5
        assert proxy.stats_value("pyproxy_circuit_breaker_overflows_total",
                                 limit="retry_budget") > 0
    finally:
        await dead.close()


async def test_a_retry_goes_to_another_endpoint(proxy_factory):
    bad = await Flaky("bad", error_rate=1.0).start()
    good = await Flaky("good").start()
    try:
        retries = Retries(attempts=1, retry_on=("5xx",), backoff=Backoff(0.001, 0.001))
        proxy = await proxy_factory(Config(services={"svc": service("svc", bad, good)},
                                           routes=(_route(retries=retries),), debug_headers=True))
        async with aiohttp.ClientSession() as session:
            for _ in range(20):
                async with session.get(proxy.url + "/") as r:
                    assert r.status == 200 and json.loads(await r.read())["name"] == "good"
        assert bad.requests == 10  # round robin sends half the first tries there, never a retry
    finally:
        await bad.close()
        await good.close()


async def test_large_post_bodies_are_never_retried(proxy_factory):
    bad = await Flaky("bad", error_rate=1.0).start()
    try:
        retries = Retries(attempts=3, retry_on=("5xx",), buffer_bytes=1024)
        proxy = await proxy_factory(Config(services={"svc": service("svc", bad)},
                                           routes=(_route(retries=retries),)))
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + "/", data=b"z" * 4096) as r:
                assert r.status == 500
            assert bad.requests == 1
            async with session.post(proxy.url + "/", data=b"z" * 512) as r:
                assert r.status == 500
            assert bad.requests == 1 + 4  # small enough to replay: first try + 3 retries
    finally:
        await bad.close()


async def test_injected_abort_is_not_retried_unless_scoped_per_attempt(proxy_factory):
    ok = await Flaky("ok").start()
    try:
        retries = Retries(attempts=2, retry_on=("5xx",), backoff=Backoff(0.001, 0.001))
        abort = AbortFault(status=503, percent=50)
        per_request = await proxy_factory(Config(
            services={"svc": service("svc", ok)},
            routes=(_route(retries=retries, fault=Fault(abort=abort)),)), seed=4)
        statuses = await _statuses(per_request.url + "/", 1000)
        assert_binomial(statuses.count(503), 1000, 0.5)  # a client-side fault: never retried

        per_attempt = await proxy_factory(Config(
            services={"svc": service("svc", ok)},
            routes=(_route(retries=retries, fault=Fault(abort=abort, scope="attempt")),)), seed=4)
        statuses = await _statuses(per_attempt.url + "/", 1000)
        assert_binomial(statuses.count(503), 1000, 0.125)  # each attempt draws again
    finally:
        await ok.close()


async def test_circuit_breaker_overflow_is_an_immediate_503_uo(proxy_factory):
    """Istio's circuit-breaking task: maxConnections 1, http1MaxPendingRequests 1."""
    slow = await Flaky("slow", delay=0.3).start()
    try:
        pool = ConnectionPool(max_connections=1, max_pending_requests=1, pending_timeout=5.0)
        proxy = await proxy_factory(Config(
            services={"svc": service("svc", slow, connection_pool=pool)},
            routes=(_route(),), debug_headers=True))
        async with aiohttp.ClientSession() as session:
            async def one():
                loop = asyncio.get_running_loop()
                started = loop.time()
                async with session.get(proxy.url + "/") as r:
                    await r.read()
                    return r.status, r.headers.get("x-pyproxy-overloaded"), \
                        r.headers["x-pyproxy-flags"], loop.time() - started

            results = await asyncio.gather(*(one() for _ in range(5)))
        ok = [r for r in results if r[0] == 200]
        overflowed = [r for r in results if r[0] == 503]
        assert len(ok) == 2  # one on the connection, one queued behind it
        assert len(overflowed) == 3
        assert all(r[1] == "true" and r[2] == "UO" for r in overflowed)
        assert all(r[3] < 0.25 for r in overflowed)  # refused at once, not after the slow call
        assert proxy.stats_value("pyproxy_circuit_breaker_overflows_total", service="svc",
                                 limit="max_pending_requests") == 3
        assert slow.requests == 2
    finally:
        await slow.close()


async def test_max_requests_overflows(proxy_factory):
    slow = await Flaky("slow", delay=0.3).start()
    try:
        pool = ConnectionPool(max_requests=2)
        proxy = await proxy_factory(Config(
            services={"svc": service("svc", slow, connection_pool=pool)}, routes=(_route(),)))
        statuses = await _statuses(proxy.url + "/", 4, concurrency=4)
        assert sorted(statuses) == [200, 200, 503, 503]
        assert proxy.stats_value("pyproxy_circuit_breaker_overflows_total",
                                 limit="max_requests") == 2
    finally:
        await slow.close()


async def test_outlier_ejection_and_return(proxy_factory):
    """Istio-style outlier task: one of three endpoints always fails."""
    good1, good2 = await Flaky("good1").start(), await Flaky("good2").start()
    bad = await Flaky("bad", error_rate=1.0).start()
    try:
        policy = OutlierDetection(consecutive_5xx=3, interval=0.5, base_ejection_time=1.5,
                                  max_ejection_percent=50)
        proxy = await proxy_factory(Config(
            services={"svc": service("svc", good1, good2, bad, outlier_detection=policy)},
            routes=(_route(),)))
        statuses = await _statuses(proxy.url + "/", 30)
        assert bad.requests == 3  # ejected on its third consecutive 5xx
        assert statuses.count(500) == 3
        assert proxy.stats_value("pyproxy_endpoint_ejections_total", service="svc",
                                 endpoint=f"127.0.0.1:{bad.port}",
                                 reason="consecutive_5xx") == 1
        assert proxy.stats_value("pyproxy_endpoint_ejected",
                                 endpoint=f"127.0.0.1:{bad.port}") == 1

        during = bad.requests
        await _statuses(proxy.url + "/", 60)
        assert bad.requests - during == 0  # nothing reaches it inside the ejection window

        await asyncio.sleep(1.6)
        proxy.runtime.tick()  # the server's once-a-second tick
        assert proxy.stats_value("pyproxy_endpoint_ejected",
                                 endpoint=f"127.0.0.1:{bad.port}") == 0
        await _statuses(proxy.url + "/", 9)
        assert bad.requests > during  # back in rotation after base_ejection_time
    finally:
        for backend in (good1, good2, bad):
            await backend.close()


async def test_health_checks_take_an_endpoint_out_of_rotation(proxy_factory):
    a, b = await Flaky("a").start(), await Flaky("b").start()
    try:
        check = HealthCheck(path="/health", interval=0.1, timeout=0.5, unhealthy_threshold=2,
                            healthy_threshold=1)
        proxy = await proxy_factory(Config(
            services={"svc": service("svc", a, b, health_check=check)}, routes=(_route(),)))
        b.healthy = False
        await asyncio.sleep(0.6)
        before = b.requests
        statuses = await _statuses(proxy.url + "/", 20)
        assert statuses == [200] * 20 and b.requests == before

        b.healthy = True
        await asyncio.sleep(0.4)
        await _statuses(proxy.url + "/", 20)
        assert b.requests > before
    finally:
        await a.close()
        await b.close()
