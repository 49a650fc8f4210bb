"""``when_backend_unavailable`` over real loopback sockets: a 90/10 canary whose v2 subset's
only endpoint fails every request until outlier detection ejects it."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime

import aiohttp
from aiohttp import web

from pyproxy.admin.views import explain_text, status_table
from pyproxy.canary.analysis import IntervalStats
from pyproxy.canary.controller import CanaryController
from pyproxy.config.model import (
    Backend,
    Canary,
    CanaryChecks,
    Config,
    OutlierDetection,
    Route,
    Sticky,
    StickyCookie,
)
from pyproxy.control import ProxyControl
from pyproxy.explain import explain, request_head
from tests.stats_bounds import assert_binomial
from tests.support.harness import InProcessProxy, service

ROUTE = "shop"


class Version:
    """A backend that answers its name, or 500 for every request when ``failing``."""

    def __init__(self, name: str, failing: bool = False):
        self.name, self.failing = name, failing
        self.requests = 0
        self.port = 0

    async def start(self) -> Version:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.failing:
            return web.Response(status=500, text=f"{self.name} failed")
        return web.Response(text=json.dumps({"name": self.name}))

    async def close(self) -> None:
        await self.runner.cleanup()


def _config(v1: Version, v2: Version, **route_kw) -> Config:
    # Ejected for a minute: the ejection lasts the whole test. Two endpoints at 50% may lose
    # one, so the v2 subset can lose its only endpoint while the service keeps v1's.
    policy = OutlierDetection(consecutive_5xx=3, base_ejection_time=60,
                              max_ejection_percent=50)
    svc = service("shop", (v1, {"version": "v1"}), (v2, {"version": "v2"}),
                  subsets={"v1": {"version": "v1"}, "v2": {"version": "v2"}},
                  outlier_detection=policy)
    route = Route(ROUTE, backends=(Backend("shop", "v1", 90), Backend("shop", "v2", 10)),
                  **route_kw)
    return Config(services={"shop": svc}, routes=(route,), debug_headers=True)


async def _eject_v2(proxy: InProcessProxy, v2: Version) -> None:
    """Send requests one at a time until v2's endpoint is ejected (its third 500)."""
    detector = proxy.runtime.services["shop"].detector
    async with aiohttp.ClientSession() as session:
        for _ in range(2000):
            async with session.get(proxy.url + "/") as response:
                await response.read()
            if detector.is_ejected(v2.address):
                break
    assert detector.is_ejected(v2.address) and v2.requests == 3


async def _results(url: str, n: int, concurrency: int = 10, **kw) -> list[tuple[int, str, str]]:
    """(status, backend that answered or the body, x-pyproxy-flags) per request."""
    out: list[tuple[int, str, str]] = []

    async def worker(session: aiohttp.ClientSession, count: int) -> None:
        for _ in range(count):
            async with session.get(url, **kw) as response:
                body = await response.text()
                name = json.loads(body)["name"] if response.status == 200 else body
                out.append((response.status, name, response.headers.get("x-pyproxy-flags", "")))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session, n // concurrency) for _ in range(concurrency)))
    return out


async def _started(proxy_factory, **route_kw):
    v1, v2 = await Version("v1").start(), await Version("v2", failing=True).start()
    proxy = await proxy_factory(_config(v1, v2, **route_kw), seed=5)
    await _eject_v2(proxy, v2)
    return v1, v2, proxy


async def test_failover_by_default_no_request_fails_after_the_ejection(proxy_factory):
    v1, v2, proxy = await _started(proxy_factory)
    try:
        results = await _results(proxy.url + "/", 2000)
        assert len(results) == 2000
        assert {status for status, _, _ in results} == {200}
        assert {name for _, name, _ in results} == {"v1"}
        assert v2.requests == 3  # nothing more reached the ejected endpoint
        failovers = proxy.stats_value("pyproxy_backend_failovers_total", route=ROUTE,
                                      from_backend="shop/v2", to_backend="shop/v1")
        assert_binomial(int(failovers), 2000, 0.10)  # v2's share of the draws, sent to v1
        # The judge's view: the failures that ejected v2 are v2's; failed-over requests v1's.
        assert proxy.stats_value("pyproxy_requests_total", backend="shop/v2", code="500") == 3
        assert proxy.stats_value("pyproxy_requests_total", backend="shop/v2", code="200") == 0
    finally:
        await v1.close()
        await v2.close()


async def test_fail_answers_503_uh_for_the_unavailable_share(proxy_factory):
    v1, v2, proxy = await _started(proxy_factory, when_backend_unavailable="fail")
    try:
        results = await _results(proxy.url + "/", 2000)
        unavailable = [r for r in results if r[0] == 503]
        assert all(flags == "UH" for _, _, flags in unavailable)
        assert_binomial(len(unavailable), 2000, 0.10)
        assert len(unavailable) + sum(1 for r in results if r[:2] == (200, "v1")) == 2000
        assert v2.requests == 3
        assert proxy.stats_value("pyproxy_backend_failovers_total") == 0
    finally:
        await v1.close()
        await v2.close()


async def test_panic_sends_the_share_to_the_ejected_endpoint(proxy_factory):
    v1, v2, proxy = await _started(proxy_factory, when_backend_unavailable="panic")
    try:
        results = await _results(proxy.url + "/", 2000)
        reached = v2.requests - 3
        assert_binomial(reached, 2000, 0.10)
        assert sum(1 for status, _, _ in results if status == 500) == reached
        assert not any(status == 503 for status, _, _ in results)
        # Its results are ignored while ejected: no second ejection, no count restarted.
        assert proxy.runtime.services["shop"].detector.describe(v2.address)["times_ejected"] == 1
    finally:
        await v1.close()
        await v2.close()


async def test_sticky_pins_fail_over_without_being_moved(proxy_factory):
    v1, v2 = await Version("v1").start(), await Version("v2", failing=True).start()
    try:
        by_header = await proxy_factory(_config(v1, v2, sticky=Sticky(header="x-user")), seed=5)
        await _eject_v2(by_header, v2)
        table = by_header.runtime.current.routes[ROUTE].sticky_table
        table.pin("alice", "shop/v2")
        results = await _results(by_header.url + "/", 20, concurrency=1,
                                 headers={"x-user": "alice"})
        assert results == [(200, "v1", "-")] * 20  # "-": no response flag
        assert table.get("alice") == "shop/v2"  # back on v2 as soon as it returns

        v2.requests = 0
        cookie = Sticky(cookie=StickyCookie("version"))
        by_cookie = await proxy_factory(_config(v1, v2, sticky=cookie), seed=5)
        await _eject_v2(by_cookie, v2)
        async with aiohttp.ClientSession() as session:
            async with session.get(by_cookie.url + "/",
                                   headers={"cookie": "version=shop/v2"}) as response:
                assert response.status == 200
                assert json.loads(await response.text())["name"] == "v1"
                assert "set-cookie" not in response.headers  # the pin is not rewritten
    finally:
        await v1.close()
        await v2.close()


async def test_views_show_the_ejection_and_the_policy(proxy_factory):
    v1, v2, proxy = await _started(proxy_factory)
    try:
        control = ProxyControl([], None, proxy.runtime, proxy.stats, proxy.listener, {})
        services = control.describe_services()
        endpoints = {ep["address"]: ep for ep in services["services"][0]["endpoints"]}
        ejection = endpoints[v2.address]["ejection"]
        assert endpoints[v2.address]["ejected"] and ejection["reason"] == "consecutive_5xx"
        now = time.time()
        assert now + 55 < ejection["until"] <= now + 60  # the raw Unix time stays
        assert 55 < ejection["seconds_left"] <= 60 and isinstance(ejection["seconds_left"], int)
        back_by = datetime.fromisoformat(ejection["until_utc"].replace("Z", "+00:00"))
        assert 0 <= back_by.timestamp() - ejection["until"] < 1  # whole seconds, rounded up
        assert endpoints[v1.address]["ejection"] == {
            "reason": "", "times_ejected": 0, "until": None, "until_utc": None,
            "seconds_left": None}
        routes = control.describe_routes()
        route = routes["routes"][0]
        assert route["when_backend_unavailable"] == "failover"
        assert [(b["backend"], b["available"]) for b in route["backends"]] == [
            ("shop/v1", True), ("shop/v2", False)]
        text = status_table(routes, services)
        hhmmss = ejection["until_utc"][11:19]
        assert (f"shop {v2.address} (consecutive_5xx): ejected, back in "
                f"{ejection['seconds_left']} s (at {hhmmss} UTC)") in text
        assert ("! shop: shop/v2 has no available endpoint; failover: its share goes to the "
                "other available backends, by weight (503 UH if none)") in text

        result = explain(proxy.runtime.current, proxy.runtime,
                         request_head("127.0.0.1", "/"))
        assert result["when_backend_unavailable"] == "failover"
        assert [(b["backend"], b["available"]) for b in result["backends"]] == [
            ("shop/v1", True), ("shop/v2", False)]
        text = explain_text(result)
        assert "shop/v2" in text and "[no available endpoint]" in text
        assert "if a backend has no available endpoint: failover" in text
    finally:
        await v1.close()
        await v2.close()


def test_failed_over_requests_count_as_the_backends_failures_for_the_judge():
    assert IntervalStats(10, 90.0, 0.2).with_failovers(0) == IntervalStats(10, 90.0, 0.2)
    assert IntervalStats(10, 90.0, 0.2).with_failovers(5) == IntervalStats(15, 60.0, 0.2)
    assert IntervalStats().with_failovers(4) == IntervalStats(4, 0.0, None)


async def test_a_canary_whose_endpoints_are_ejected_is_rolled_back_and_users_never_see_it(
        proxy_factory):
    """The candidate fails every request: three reach users, then its only endpoint is
    ejected, its share fails over to the primary, and the judge counts those failovers as
    the candidate's failures, so the canary rolls back instead of holding for no data."""
    v1, v2 = await Version("v1").start(), await Version("v2", failing=True).start()
    try:
        canary = Canary(name="shop", route=ROUTE, primary="shop/v1", candidate="shop/v2",
                        interval=0.5, step_weight=10, max_weight=50, threshold=2,
                        min_requests=5, checks=CanaryChecks(success_rate_min=99))
        config = _config(v1, v2)
        config = Config(services=config.services, routes=config.routes, canaries=(canary,))
        proxy = await proxy_factory(config, seed=5)
        controller = CanaryController(proxy.runtime, proxy.stats, poll=0.05)
        controller.sync()
        task = asyncio.get_running_loop().create_task(controller.run())
        try:
            statuses: list[int] = []
            async with aiohttp.ClientSession() as session:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    async with session.get(proxy.url + "/") as response:
                        await response.read()
                        statuses.append(response.status)
                    view = controller.describe_all()["canaries"][0]
                    if view["phase"] == "rolled_back":
                        break
                    await asyncio.sleep(0.005)
            assert view["phase"] == "rolled_back", view
            assert view["last_check"]["verdict"] == "fail"
            assert view["last_check"]["candidate"]["success_rate"] == 0.0
            assert statuses.count(500) == 3 == v2.requests  # only before the ejection
            assert set(statuses) == {200, 500}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await v1.close()
        await v2.close()
