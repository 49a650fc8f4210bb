"""The automated canary against real backends under steady client load.

Most tests run the real pipeline in-process (``InProcessProxy``) with a ``CanaryController``
on the same loop; one drives a real ``pyproxy run`` through the admin API, the CLI and
``/metrics`` (parsed with prometheus_client's parser), Linkerd-compatible series included.
Backends are ``pyproxy fake-service`` instances; webhooks an in-process aiohttp server.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import sys
import time

import aiohttp
import pytest
import pytest_asyncio
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from pyproxy.canary.controller import CanaryController
from pyproxy.config.model import Backend, Canary, CanaryChecks, Config, Route, Webhook
from pyproxy.demo.fake_service import start_fake_service
from pyproxy.metrics.linkerd import LINKERD_LATENCY_BUCKETS_MS
from tests.support.harness import ProxyProcess, service
from tests.support.metrics import metric_value

HOST = "shop"


# ---------------------------------------------------------------------------- helpers


class Load:
    """Steady client load (``rps`` requests a second) through the proxy until stopped."""

    def __init__(self, url: str, rps: float = 150):
        self.url = url
        self.rps = rps
        self.statuses: collections.Counter = collections.Counter()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Load:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        inflight: set[asyncio.Task] = set()
        connector = aiohttp.TCPConnector(limit=50)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def one():
                try:
                    async with session.get(self.url + "/stock", headers={"Host": HOST}) as r:
                        await r.read()
                        self.statuses[r.status] += 1
                except aiohttp.ClientError:
                    self.statuses["error"] += 1
            try:
                loop = asyncio.get_running_loop()
                next_at = loop.time()
                while True:
                    task = loop.create_task(one())
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                    next_at += 1 / self.rps
                    await asyncio.sleep(max(0.0, next_at - loop.time()))
            finally:
                for task in inflight:
                    task.cancel()
                await asyncio.gather(*inflight, return_exceptions=True)


async def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def shop_config(v1, v2, **canary_kw) -> Config:
    fields = dict(name="shop", route="shop", primary="shop/v1", candidate="shop/v2",
                  interval=1.0, step_weight=10, max_weight=50, threshold=2, min_requests=5,
                  checks=CanaryChecks(success_rate_min=99, latency_p99_max=0.5))
    fields.update(canary_kw)
    svc = service("shop", (v1, {"version": "1"}), (v2, {"version": "2"}),
                  subsets={"v1": {"version": "1"}, "v2": {"version": "2"}})
    route = Route(name="shop", hosts=(HOST,),
                  backends=(Backend("shop", "v1", 90), Backend("shop", "v2", 10)))
    return Config(services={"shop": svc}, routes=(route,), canaries=(Canary(**fields),))


@pytest_asyncio.fixture
async def fake_factory():
    started = []

    async def make(name: str, error_rate: float = 0.0, seed: int = 1):
        fake = await start_fake_service(name, error_rate=error_rate, rng=random.Random(seed))
        started.append(fake)
        return fake

    yield make
    for fake in started:
        await fake.close()


@pytest_asyncio.fixture
async def canary_proxy(proxy_factory):
    """``await canary_proxy(config)`` → (proxy, controller), the controller running."""
    running = []

    async def start(config: Config):
        proxy = await proxy_factory(config)
        controller = CanaryController(proxy.runtime, proxy.stats, poll=0.05)
        controller.sync()  # the canaries start now, not at the first poll
        running.append(asyncio.get_running_loop().create_task(controller.run()))
        return proxy, controller

    yield start
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


def view(controller, name: str = "shop") -> dict:
    return next(c for c in controller.describe_all()["canaries"] if c["name"] == name)


def phase_is(controller, phase: str):
    return lambda: view(controller)["phase"] == phase


# ---------------------------------------------------------------------------- the loop


async def test_a_failing_candidate_is_rolled_back_to_zero_by_itself(fake_factory, canary_proxy):
    v1 = await fake_factory("shop-v1")
    v2 = await fake_factory("shop-v2", error_rate=0.5, seed=7)
    proxy, controller = await canary_proxy(shop_config(v1, v2, interval=1.0, threshold=2))
    async with Load(proxy.url):
        await wait_for(phase_is(controller, "rolled_back"), 8, "the rollback")
        served = v2.requests
        await asyncio.sleep(0.5)
    c = view(controller)
    assert (c["candidate_weight"], c["primary_weight"], c["failed_checks"]) == (0, 100, 2)
    assert c["step"] == 1  # it never got past its first step
    assert c["last_check"]["verdict"] == "fail"
    assert "success rate" in c["last_check"]["reasons"][0]
    assert 20 <= c["last_check"]["candidate"]["success_rate"] <= 80
    assert [e["phase"] for e in c["events"]] == ["initializing", "progressing", "progressing",
                                                 "rolling_back", "rolled_back"]
    override = proxy.runtime.overrides.weights["shop"]
    assert (override.source, override.weights) == ("canary", {"shop/v1": 100, "shop/v2": 0})
    assert v2.requests - served <= 10  # only requests already in flight at the rollback


async def test_a_healthy_candidate_is_promoted_through_every_step(fake_factory, canary_proxy):
    v1 = await fake_factory("shop-v1")
    v2 = await fake_factory("shop-v2")
    proxy, controller = await canary_proxy(
        shop_config(v1, v2, step_weights=(10, 25, 50), max_weight=50))
    async with Load(proxy.url) as load:
        await wait_for(phase_is(controller, "promoted"), 10, "the promotion")
        await asyncio.sleep(0.3)
        served = v1.requests
        await asyncio.sleep(0.5)
    c = view(controller)
    assert [e["weight"] for e in c["events"]] == [0, 10, 25, 50, 100, 100]
    assert [e["phase"] for e in c["events"]][-2:] == ["promoting", "promoted"]
    assert (c["candidate_weight"], c["step"], c["failed_checks"]) == (100, 3, 0)
    assert c["checks"] == {"pass": 3}
    assert proxy.runtime.overrides.weights["shop"].weights == {"shop/v1": 0, "shop/v2": 100}
    assert v1.requests == served  # the primary gets nothing any more
    assert set(load.statuses) == {200}


async def test_a_window_without_traffic_does_not_advance(fake_factory, canary_proxy):
    v1 = await fake_factory("shop-v1")
    v2 = await fake_factory("shop-v2")
    proxy, controller = await canary_proxy(shop_config(v1, v2, interval=0.5))
    await wait_for(lambda: view(controller)["checks"].get("no_data", 0) >= 3, 5,
                   "three idle intervals")
    c = view(controller)
    assert (c["phase"], c["candidate_weight"], c["step"], c["failed_checks"]) == \
        ("progressing", 10, 1, 0)
    assert c["last_check"]["verdict"] == "no_data"
    assert c["last_check"]["reasons"] == ["0 requests < min_requests 5"]
    assert "holding at 10%" in c["events"][-1]["message"]
    async with Load(proxy.url):  # traffic comes back: it moves again
        await wait_for(lambda: view(controller)["candidate_weight"] > 10, 5, "a step")


# ---------------------------------------------------------------------------- webhooks


class Hooks:
    """An in-process webhook receiver: records every call; answers are programmable."""

    def __init__(self):
        self.calls: list[dict] = []
        self.answers: dict[str, list[int]] = {}  # type → statuses to answer, in turn
        self.default: dict[str, int] = {"rollback": 404}
        self.runner: web.AppRunner | None = None

    async def start(self) -> Hooks:
        app = web.Application()
        app.router.add_post("/{kind}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    def url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.port}/{kind}"

    def kinds(self) -> list[str]:
        return [c["type"] for c in self.calls]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(body)
        queue = self.answers.get(body["type"])
        status = queue.pop(0) if queue else self.default.get(body["type"], 200)
        return web.Response(status=status)

    async def close(self):
        await self.runner.cleanup()


@pytest_asyncio.fixture
async def hooks():
    receiver = await Hooks().start()
    yield receiver
    await receiver.close()


async def test_confirm_promotion_denies_then_allows(fake_factory, canary_proxy, hooks):
    v1 = await fake_factory("shop-v1")
    v2 = await fake_factory("shop-v2")
    hooks.answers["confirm-promotion"] = [403, 403]
    webhooks = tuple(Webhook(kind, hooks.url(kind), timeout=2.0) for kind in (
        "pre-rollout", "rollout", "confirm-promotion", "post-rollout", "rollback"))
    proxy, controller = await canary_proxy(shop_config(
        v1, v2, interval=0.5, step_weights=(20, 50), max_weight=50, webhooks=webhooks))
    async with Load(proxy.url):
        await wait_for(phase_is(controller, "waiting_promotion"), 6, "the confirmation gate")
        assert view(controller)["candidate_weight"] == 50
        await wait_for(phase_is(controller, "promoted"), 6, "the promotion")
    kinds = hooks.kinds()
    assert kinds[0] == "rollback" and kinds[1] == "pre-rollout"
    assert kinds.count("confirm-promotion") == 3  # denied, denied, allowed
    assert kinds.count("post-rollout") == 1 and kinds[-1] == "post-rollout"
    assert "rollout" in kinds
    first = hooks.calls[1]
    assert first == {"name": "shop", "type": "pre-rollout", "phase": "initializing",
                     "route": "shop", "primary": "shop/v1", "candidate": "shop/v2",
                     "weight": 0.0, "failed_checks": 0}
    last = hooks.calls[-1]
    assert (last["phase"], last["weight"]) == ("promoting", 100.0)
    messages = [e["message"] for e in view(controller)["events"]]
    assert sum("waiting for confirm-promotion" in m for m in messages) == 1


async def test_a_rollback_webhook_answering_200_rolls_back_now(fake_factory, canary_proxy,
                                                               hooks):
    v1 = await fake_factory("shop-v1")
    v2 = await fake_factory("shop-v2")
    proxy, controller = await canary_proxy(shop_config(
        v1, v2, interval=0.3, webhooks=(Webhook("rollback", hooks.url("rollback")),)))
    await wait_for(lambda: hooks.kinds().count("rollback") >= 2, 5, "rollback polling")
    assert view(controller)["phase"] == "progressing"
    hooks.default["rollback"] = 200
    await wait_for(phase_is(controller, "rolled_back"), 5, "the rollback")
    assert "rollback webhook asked for a rollback" in view(controller)["events"][-2]["message"]
    assert proxy.runtime.overrides.weights["shop"].weights["shop/v2"] == 0


async def test_a_slow_pre_rollout_hook_times_out_and_counts_as_a_failed_check(
        fake_factory, canary_proxy):
    v1 = await fake_factory("shop-v1")
    v2 = await fake_factory("shop-v2")

    release = asyncio.Event()

    async def slow(request):
        await release.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        proxy, controller = await canary_proxy(shop_config(
            v1, v2, interval=0.2, threshold=5,
            webhooks=(Webhook("pre-rollout", url, timeout=0.2),)))
        await wait_for(lambda: view(controller)["failed_checks"] >= 1, 3, "a failed check")
        c = view(controller)
        assert (c["phase"], c["candidate_weight"]) == ("initializing", 0)
        assert "timed out after 0.2s" in c["events"][-1]["message"]
        assert proxy.runtime.overrides.weights["shop"].weights == {"shop/v1": 100, "shop/v2": 0}
    finally:
        release.set()
        await runner.cleanup()


# ---------------------------------------------------------------------------- control


async def test_commands_and_an_operator_override(fake_factory, canary_proxy):
    v1 = await fake_factory("shop-v1")
    v2 = await fake_factory("shop-v2")
    proxy, controller = await canary_proxy(shop_config(v1, v2, interval=0.3))
    await wait_for(phase_is(controller, "progressing"), 3, "the start")

    # Someone sets the weights by hand: the canary pauses instead of fighting.
    proxy.runtime.overrides.set_weights("shop", {"shop/v1": 50, "shop/v2": 50}, source="cli")
    await wait_for(phase_is(controller, "paused"), 3, "the pause")
    assert "changed by weights set by cli" in view(controller)["events"][-1]["message"]
    await asyncio.sleep(0.5)
    assert proxy.runtime.overrides.weights["shop"].weights == {"shop/v1": 50, "shop/v2": 50}

    c = controller.command("shop", "resume")  # hands the route back to the canary
    assert c["phase"] == "progressing"
    assert proxy.runtime.overrides.weights["shop"].source == "canary"
    assert proxy.runtime.overrides.weights["shop"].weights["shop/v2"] == c["candidate_weight"]

    assert controller.command("shop", "pause")["phase"] == "paused"
    c = controller.command("shop", "promote")
    assert (c["phase"], c["candidate_weight"]) == ("promoting", 100)
    await wait_for(phase_is(controller, "promoted"), 3, "the promotion")
    from pyproxy.canary.analysis import CommandRefused
    from pyproxy.canary.controller import CanaryNotFound
    with pytest.raises(CommandRefused, match="it is promoted"):
        controller.command("shop", "abort")
    with pytest.raises(CanaryNotFound, match="canaries: shop"):
        controller.command("nope", "abort")


async def test_reload_restarts_a_changed_canary_and_a_removed_one_lets_go(fake_factory,
                                                                          canary_proxy):
    v1 = await fake_factory("shop-v1")
    v2 = await fake_factory("shop-v2")
    config = shop_config(v1, v2, interval=0.3, threshold=1)
    proxy, controller = await canary_proxy(config)
    await wait_for(phase_is(controller, "progressing"), 3, "the start")
    assert controller.command("shop", "abort")["phase"] == "rolling_back"
    await wait_for(phase_is(controller, "rolled_back"), 3, "the abort")

    proxy.reload(shop_config(v1, v2, interval=0.3, threshold=2))  # a new definition
    await wait_for(lambda: view(controller)["phase"] == "progressing", 3, "the restart")
    assert view(controller)["failed_checks"] == 0

    proxy.reload(Config(services=config.services, routes=config.routes))  # canary removed
    await wait_for(lambda: not controller.describe_all()["canaries"], 3, "the stop")
    assert "shop" not in proxy.runtime.overrides.weights  # the configured 90/10 serves again


async def test_a_restarted_controller_resumes_where_the_canary_stood(fake_factory,
                                                                    proxy_factory):
    # With a state file (--state-dir, --workers N) the leader saves export() on every change
    # and a restarted leader starts its controller with it; here both ends are in-process.
    v1 = await fake_factory("shop-v1")
    v2 = await fake_factory("shop-v2")
    config = shop_config(v1, v2, interval=0.3, step_weights=(10, 20, 30, 40), max_weight=40)
    proxy = await proxy_factory(config)
    changes = []
    first = CanaryController(proxy.runtime, proxy.stats, poll=0.05,
                             on_change=lambda: changes.append(1))
    first.sync()
    task = asyncio.get_running_loop().create_task(first.run())
    try:
        async with Load(proxy.url):
            await wait_for(lambda: view(first)["step"] >= 2, 5, "a second step")
        first.command("shop", "pause")
        saved = first.export()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert changes  # every step and command is a reason to write the state file
    assert saved["shop"]["phase"] == "paused" and saved["shop"]["definition"]

    second = CanaryController(proxy.runtime, proxy.stats, poll=0.05, saved=saved)
    second.sync()
    task = asyncio.get_running_loop().create_task(second.run())
    try:
        c = view(second)
        assert (c["phase"], c["step"], c["candidate_weight"], c["paused_from"]) == \
            ("paused", saved["shop"]["step"], saved["shop"]["weight"], "progressing")
        assert c["events"][-1]["message"] == \
            f"resumed after a restart at {saved['shop']['weight']:g}%"
        assert second.export()["shop"]["step"] == saved["shop"]["step"]
        assert second.command("shop", "resume")["phase"] == "progressing"
        async with Load(proxy.url):
            await wait_for(phase_is(second, "promoted"), 5, "the promotion")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    proxy.reload(shop_config(v1, v2, interval=0.3, max_weight=20))  # a new definition
    third = CanaryController(proxy.runtime, proxy.stats, poll=0.05, saved=second.export())
    third.sync()
    try:
        assert (view(third)["phase"], view(third)["step"]) == ("initializing", 0)  # over again
    finally:
        await third.aclose()


# ---------------------------------------------------------------------------- the real thing


def _write_config(path, v1, v2, linkerd: bool = True) -> None:
    path.write_text(yaml.safe_dump({
        "access_log": {"format": "off"},
        "metrics": {"linkerd_compat": linkerd},
        "services": {"stockmanager": {
            "endpoints": [
                {"address": f"127.0.0.1:{v1.port}",
                 "labels": {"version": "0.0.1", "deployment": "stockmanager-primary",
                            "namespace": "shop"}},
                {"address": f"127.0.0.1:{v2.port}",
                 "labels": {"version": "0.0.2", "deployment": "stockmanager",
                            "namespace": "shop"}}],
            "subsets": {"v1": {"version": "0.0.1"}, "v2": {"version": "0.0.2"}}}},
        "routes": [{"name": "stockmanager", "hosts": [HOST], "backends": [
            {"service": "stockmanager", "subset": "v1", "weight": 90},
            {"service": "stockmanager", "subset": "v2", "weight": 10}]}],
        "canaries": [{"name": "stockmanager", "route": "stockmanager",
                      "primary": "stockmanager/v1", "candidate": "stockmanager/v2",
                      "interval": "1s", "step_weight": 10, "max_weight": 50, "threshold": 2,
                      "min_requests": 5,
                      "checks": {"success_rate_min": 99, "latency_p99_max": "500ms"}}],
    }))


async def _cli(proxy: ProxyProcess, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "PYPROXY_ADMIN": proxy.admin_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pyproxy", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


async def _get(session, url) -> tuple[int, object]:
    async with session.get(url) as r:
        return r.status, (await r.json() if r.content_type == "application/json"
                          else await r.text())


async def test_pyproxy_run_rolls_back_through_api_cli_and_metrics(fake_factory, tmp_path):
    v1 = await fake_factory("stockmanager-v1")
    v2 = await fake_factory("stockmanager-v2", error_rate=0.5, seed=3)
    _write_config(tmp_path / "canary.yaml", v1, v2)
    proxy = ProxyProcess(tmp_path / "canary.yaml")
    await asyncio.to_thread(proxy.start)
    try:
        async with aiohttp.ClientSession() as session, Load(proxy.url):
            code, out, err = await _cli(proxy, "canary", "status")
            assert code == 0, err
            assert out.startswith("stockmanager: stockmanager/v1 -> stockmanager/v2 on route "
                                  "stockmanager\n")

            async def phase():
                _, body = await _get(session, proxy.admin_url + "/api/v1/canaries")
                return body["canaries"][0]["phase"]

            deadline = time.monotonic() + 10
            while await phase() != "rolled_back":
                assert time.monotonic() < deadline, "no rollback"
                await asyncio.sleep(0.1)
            _, metrics_text = await _get(session, proxy.admin_url + "/metrics")

        async with aiohttp.ClientSession() as session:
            _, body = await _get(session, proxy.admin_url + "/api/v1/canaries")
            c = body["canaries"][0]
            assert {"name", "route", "primary", "candidate", "phase", "candidate_weight", "step",
                    "failed_checks", "last_check", "events"} <= set(c)
            assert (c["phase"], c["candidate_weight"], c["failed_checks"]) == \
                ("rolled_back", 0, 2)
            _, routes = await _get(session, proxy.admin_url + "/api/v1/routes")
            route = routes["routes"][0]
            assert route["override"]["source"] == "canary"  # reported, files untouched

            # Commands: refused once the analysis ended (409); unknown names are 404.
            async with session.post(proxy.admin_url + "/api/v1/canaries/stockmanager/promote",
                                    json={}) as r:
                assert r.status == 409
                assert "rolled back" in (await r.json())["error"]
            async with session.post(proxy.admin_url + "/api/v1/canaries/nope/pause",
                                    json={}) as r:
                assert r.status == 404
            async with session.post(proxy.admin_url + "/api/v1/canaries/stockmanager/explode",
                                    json={}) as r:
                assert r.status == 404

        code, out, err = await _cli(proxy, "canary", "status", "stockmanager")
        assert code == 0, err
        assert "rolled_back: candidate 0%, primary 100%" in out
        assert "failed checks 2/2" in out
        code, out, err = await _cli(proxy, "canary", "promote")
        assert code == 1 and "409" in err and "rolled back" in err
        code, out, err = await _cli(proxy, "canary", "pause", "nope")
        assert code == 1 and "no canary nope; canaries: stockmanager" in err
    finally:
        proxy.stop()

    # The canary series, parsed with prometheus_client's own parser.
    families = {f.name: f for f in text_string_to_metric_families(metrics_text)}
    assert metric_value(metrics_text, "pyproxy_canary_weight", canary="stockmanager") == 0
    assert metric_value(metrics_text, "pyproxy_canary_phase", canary="stockmanager",
                        phase="rolled_back") == 1
    assert metric_value(metrics_text, "pyproxy_canary_phase", canary="stockmanager",
                        phase="progressing") == 0
    assert metric_value(metrics_text, "pyproxy_canary_failed_checks", canary="stockmanager") == 2
    for to in ("initializing", "progressing", "rolling_back", "rolled_back"):
        assert metric_value(metrics_text, "pyproxy_canary_transitions_total",
                            canary="stockmanager", to=to) == 1
    assert metric_value(metrics_text, "pyproxy_canary_checks_total", canary="stockmanager",
                        result="fail") == 2

    # Linkerd-compatible series: what Flagger's linkerd provider queries.
    assert families["response"].type == "counter"
    assert families["response_latency_ms"].type == "histogram"

    def flagger(labels: dict, failure: bool | None = None) -> float:
        total = 0.0
        for sample in families["response"].samples:
            if all(sample.labels.get(k) == v for k, v in labels.items()) and (
                    failure is None or (sample.labels["classification"] == "failure") == failure):
                total += sample.value
        return total

    target = {"namespace": "shop", "deployment": "stockmanager", "direction": "inbound"}
    success_rate = flagger(target, failure=False) / flagger(target) * 100
    assert 20 <= success_rate <= 80  # the 50%-failing candidate, as Flagger would see it
    primary = {"namespace": "shop", "deployment": "stockmanager-primary",
               "direction": "inbound"}
    assert flagger(primary, failure=True) == 0 and flagger(primary) > 0
    # the outbound view carries the same counts under dst_* labels
    assert flagger({"dst_deployment": "stockmanager", "dst_service": "stockmanager",
                    "dst_namespace": "shop", "direction": "outbound"}) == flagger(target)
    assert {s.labels["status_code"] for s in families["response"].samples
            if s.labels.get("deployment") == "stockmanager"} == {"200", "500"}

    buckets = [s for s in families["response_latency_ms"].samples
               if s.name == "response_latency_ms_bucket" and s.labels.get("direction") ==
               "inbound" and s.labels["deployment"] == "stockmanager"]
    assert [s.labels["le"] for s in buckets] == \
        [str(b) for b in LINKERD_LATENCY_BUCKETS_MS] + ["+Inf"]
    assert buckets[-1].value == flagger(target)
    assert json.dumps(LINKERD_LATENCY_BUCKETS_MS) == json.dumps(
        (1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000, 3000, 4000,
         5000, 10000, 20000, 30000, 40000, 50000))


async def test_linkerd_series_are_off_unless_enabled(fake_factory, tmp_path):
    v1 = await fake_factory("stockmanager-v1")
    v2 = await fake_factory("stockmanager-v2")
    _write_config(tmp_path / "canary.yaml", v1, v2, linkerd=False)
    proxy = ProxyProcess(tmp_path / "canary.yaml")
    await asyncio.to_thread(proxy.start)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(proxy.url + "/", headers={"Host": HOST}) as r:
                assert r.status == 200
            _, text = await _get(session, proxy.admin_url + "/metrics")
    finally:
        proxy.stop()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "response" not in names and "response_latency_ms" not in names
    assert "pyproxy_canary_weight" in names
