"""Active health checks: the pure state machine, and the prober against real loopback servers."""

from __future__ import annotations

import asyncio
import socket

import pytest
import pytest_asyncio
from aiohttp import web

from pyproxy.config.model import Endpoint, HealthCheck
from pyproxy.resilience.health import HealthChecker, HealthState

# ---------------------------------------------------------------------------- HealthState


# Probe results fed one by one; the expected (healthy, changed) after each.
@pytest.mark.parametrize("healthy_threshold, unhealthy_threshold, probes, expected", [
    (1, 3, "++", [(True, False), (True, False)]),
    (1, 3, "---", [(True, False), (True, False), (False, True)]),
    (1, 3, "--+---", [(True, False), (True, False), (True, False), (True, False),
                      (True, False), (False, True)]),
    (1, 1, "-+", [(False, True), (True, True)]),
    (2, 1, "-+-++", [(False, True), (False, False), (False, False), (False, False),
                     (True, True)]),
    (3, 2, "--++-+++", [(True, False), (False, True), (False, False), (False, False),
                        (False, False), (False, False), (False, False), (True, True)]),
    (1, 2, "----", [(True, False), (False, True), (False, False), (False, False)]),
])
def test_health_state_thresholds(healthy_threshold, unhealthy_threshold, probes, expected):
    state = HealthState(healthy_threshold, unhealthy_threshold)
    seen = []
    for probe in probes:
        changed = state.record(probe == "+")
        seen.append((state.healthy, changed))
    assert seen == expected


def test_health_state_starts_healthy_and_shows_its_counts():
    state = HealthState(2, 3)
    assert state.healthy
    state.record(False)
    assert repr(state) == "<HealthState healthy successes=0/2 failures=1/3>"


# ---------------------------------------------------------------------------- HealthChecker


class HealthBackend:
    """A loopback server whose ``/health`` answers ``status`` after ``delay`` seconds."""

    def __init__(self):
        self.status = 200
        self.delay = 0.0
        self.probes = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> HealthBackend:
        app = web.Application()
        app.router.add_get("/health", self._health)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port)

    async def _health(self, request: web.Request) -> web.Response:
        self.probes += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status, text="status")

    async def close(self) -> None:
        await self.runner.cleanup()


@pytest_asyncio.fixture
async def backends():
    started = []

    async def make() -> HealthBackend:
        backend = await HealthBackend().start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        await backend.close()


@pytest_asyncio.fixture
async def checkers():
    """Build checkers that are always stopped, even when a test fails."""
    made = []

    def make(*args, **kwargs) -> HealthChecker:
        checker = HealthChecker(*args, **kwargs)
        made.append(checker)
        return checker

    yield make
    for checker in made:
        await checker.stop()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAST = HealthCheck(path="/health", interval=0.02, timeout=0.5, healthy_threshold=2,
                   unhealthy_threshold=2)


class Changes:
    """Collects on_change calls and lets a test wait for the next one."""

    def __init__(self):
        self.seen: list[tuple[str, str, bool]] = []
        self._queue: asyncio.Queue = asyncio.Queue()

    def __call__(self, service: str, key: str, healthy: bool) -> None:
        self.seen.append((service, key, healthy))
        self._queue.put_nowait((service, key, healthy))

    async def next(self) -> tuple[str, str, bool]:
        async with asyncio.timeout(3):
            return await self._queue.get()


async def test_checker_follows_the_endpoint_flipping_between_200_and_500(backends, checkers):
    backend = await backends()
    changes = Changes()
    checker = checkers("stock", [backend.endpoint], FAST, on_change=changes)
    key = backend.endpoint.address
    assert checker.is_healthy(key)  # healthy before the first probe
    await checker.start()

    backend.status = 500
    assert await changes.next() == ("stock", key, False)
    assert not checker.is_healthy(key)
    assert checker.describe()[key]["last_result"] == "500"

    backend.status = 204
    assert await changes.next() == ("stock", key, True)
    assert checker.is_healthy(key)
    described = checker.describe()[key]
    assert described["healthy"] and described["last_result"] == "204"
    assert described["last_checked"] is not None

    await checker.stop()
    probes = backend.probes
    await asyncio.sleep(0.1)
    assert backend.probes == probes  # nothing probes after stop
    assert "stopped" in repr(checker)


@pytest.mark.parametrize("status", [301, 404, 503])
async def test_anything_but_2xx_fails(backends, checkers, status):
    backend = await backends()
    backend.status = status
    changes = Changes()
    policy = HealthCheck(interval=0.02, timeout=0.5, unhealthy_threshold=1)
    checker = checkers("stock", [backend.endpoint], policy, on_change=changes)
    await checker.start()
    assert (await changes.next())[2] is False


async def test_timeouts_and_refused_connections_fail(backends, checkers):
    slow = await backends()
    slow.delay = 0.3
    refused = Endpoint("127.0.0.1", closed_port())
    changes = Changes()
    policy = HealthCheck(interval=0.02, timeout=0.05, unhealthy_threshold=1)
    checker = checkers("stock", [slow.endpoint, refused], policy, on_change=changes)
    await checker.start()
    flipped = {(await changes.next())[1], (await changes.next())[1]}
    assert flipped == {slow.endpoint.address, refused.address}
    described = checker.describe()
    assert described[slow.endpoint.address]["last_result"] == "timeout"
    assert described[refused.address]["last_result"].startswith("ClientConnectorError")


async def test_update_keeps_surviving_state_probes_new_endpoints_and_stops_removed(
        backends, checkers):
    kept, removed, added = await backends(), await backends(), await backends()
    kept.status = 500
    changes = Changes()
    checker = checkers("stock", [kept.endpoint, removed.endpoint], FAST, on_change=changes)
    await checker.start()
    assert await changes.next() == ("stock", kept.endpoint.address, False)

    slower = HealthCheck(path="/health", interval=0.05, timeout=0.5, healthy_threshold=5,
                         unhealthy_threshold=2)
    checker.update([kept.endpoint, added.endpoint], slower)
    assert set(checker.describe()) == {kept.endpoint.address, added.endpoint.address}
    assert not checker.is_healthy(kept.endpoint.address)  # state carried over
    assert checker.is_healthy(removed.endpoint.address)  # no longer probed: no evidence

    async with asyncio.timeout(3):
        while added.probes == 0:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.02)  # let the cancelled probe of `removed` finish
    probes = removed.probes
    kept.status = 200
    await asyncio.sleep(0.15)
    assert removed.probes == probes
    # the new healthy_threshold (5) applies to the surviving endpoint
    assert not checker.is_healthy(kept.endpoint.address)
    assert await changes.next() == ("stock", kept.endpoint.address, True)


async def test_a_failing_on_change_callback_does_not_stop_probing(backends, checkers):
    backend = await backends()
    backend.status = 500
    calls = []

    def broken(service, key, healthy):
        calls.append(healthy)
        raise RuntimeError("bug in the caller")

    policy = HealthCheck(interval=0.02, timeout=0.5, unhealthy_threshold=1)
    checker = checkers("stock", [backend.endpoint], policy, on_change=broken)
    await checker.start()
    async with asyncio.timeout(3):
        while not calls:
            await asyncio.sleep(0.01)
    backend.status = 200
    async with asyncio.timeout(3):
        while len(calls) < 2:
            await asyncio.sleep(0.01)
    assert calls == [False, True]


async def test_update_before_start_and_repr(checkers):
    checker = checkers("stock", [Endpoint("127.0.0.1", closed_port())], FAST)
    checker.update([Endpoint("127.0.0.1", 1), Endpoint("::1", 2)], FAST)
    assert set(checker.describe()) == {"127.0.0.1:1", "::1:2"}
    assert repr(checker) == ("<HealthChecker stock /health every 0.02s endpoints=2 "
                             "unhealthy=[] stopped>")
