"""``pyproxy run --workers N``: real processes sharing a real port on 127.0.0.1.

Which worker served what is read from each worker itself: the leader's own live windows at
``GET /api/v1/windows`` on the public admin, worker 1's at its private admin, whose address
it registers in the state directory (``workers/1.json``). Requests go over fresh connections
so that the kernel's ``SO_REUSEPORT`` hash spreads them over both workers.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import aiohttp

from tests.integration.test_process import _write_config
from tests.support.backends import free_port
from tests.support.harness import ProxyProcess
from tests.support.metrics import metric_value


def _workers(state_dir) -> dict[int, tuple[int, str]]:
    """Worker index → (pid, private admin URL), from the state directory's registry."""
    found = {}
    for path in (state_dir / "workers").glob("*.json"):
        entry = json.loads(path.read_text())
        found[int(path.stem)] = (entry["pid"], entry["admin"])
    return found


async def _eventually(check, what: str, timeout: float = 5.0):
    """Poll the coroutine function ``check`` until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _get_json(url: str):
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as r:
            return await r.json()


async def _get_text(url: str) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as r:
            return await r.text()


async def _send(url: str, count: int) -> list[tuple[int, str]]:
    """``count`` GETs, each on a new connection: (status, the answering backend's name)."""
    results = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(count):
            async with session.get(url) as r:
                body = await r.read()
                name = json.loads(body)["name"] if r.content_type == "application/json" else ""
                results.append((r.status, name))
    return results


async def _served(admin_url: str, backend: str | None = None) -> int:
    """Requests this one worker has finished (its own window totals)."""
    answer = await _get_json(admin_url + "/api/v1/windows")
    return sum(w["totals"][0] for w in answer["windows"]
               if backend is None or w["backend"] == backend)


async def _start(proxy: ProxyProcess) -> ProxyProcess:
    return await asyncio.to_thread(proxy.start)


async def _two_workers(tmp_path, echo_factory, **top):
    """A --workers 2 proxy over backends v1 and v2 (50/50) with its state in tmp_path/state."""
    v1, v2 = await echo_factory("v1"), await echo_factory("v2")
    config = tmp_path / "pyproxy.yaml"
    _write_config(config, [("v1", v1.port), ("v2", v2.port)], weights=(50, 50), **top)
    state = tmp_path / "state"
    proxy = await _start(ProxyProcess(config, workers=2, extra_args=("--state-dir", state)))
    return proxy, state, (v1, v2)


async def test_both_workers_serve_and_metrics_add_up(tmp_path, echo_factory):
    proxy, state, _ = await _two_workers(tmp_path, echo_factory)
    try:
        results = await _send(proxy.url + "/", 60)
        assert [status for status, _ in results] == [200] * 60
        (pid, worker_1), = [v for k, v in _workers(state).items() if k == 1]
        leader = await _get_json(proxy.admin_url + "/api/v1/windows")
        assert leader["pid"] != pid  # two processes
        served = await _eventually(
            lambda: _both_counted(proxy.admin_url, worker_1, 60), "both workers' counts")
        text = await _get_text(proxy.admin_url + "/metrics")
        # The live view (dashboard, pyproxy status) counts both workers too.
        routes = await _eventually(lambda: _routes_counting(proxy.admin_url, 60),
                                   "the leader's merged windows")
    finally:
        assert proxy.stop() == 0
    print(f"\nworkers: 60 requests on fresh connections, leader served {served[0]}, "
          f"worker 1 {served[1]}")
    assert served[0] > 0 and served[1] > 0
    assert metric_value(text, "pyproxy_requests_total") == 60
    assert metric_value(text, "pyproxy_requests_total", route="main", code="200") == 60
    assert metric_value(text, "pyproxy_request_duration_seconds_count") == 60
    assert metric_value(text, "pyproxy_backend_weight", backend="svc/v1") == 0.5  # once
    assert metric_value(text, "pyproxy_workers", state="up") == 2
    assert metric_value(text, "pyproxy_workers", state="down") == 0
    assert sum(b["requests"] for b in routes["routes"][0]["backends"]) == 60


async def _both_counted(leader_url: str, worker_url: str, total: int):
    counts = (await _served(leader_url), await _served(worker_url))
    return counts if sum(counts) == total else None


async def _routes_counting(admin_url: str, total: int):
    routes = await _get_json(admin_url + "/api/v1/routes")
    return routes if sum(b["requests"] or 0 for b in routes["routes"][0]["backends"]) == total \
        else None


async def test_a_weight_override_applies_on_every_worker(tmp_path, echo_factory):
    proxy, state, _ = await _two_workers(tmp_path, echo_factory)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.put(proxy.admin_url + "/api/v1/routes/main/weights",
                                   json={"weights": {"svc/v1": 0, "svc/v2": 100}}) as r:
                assert r.status == 200
        worker_1 = _workers(state)[1][1]

        async def overridden():
            routes = await _get_json(worker_1 + "/api/v1/routes")
            return routes["routes"][0]["override"] is not None
        await _eventually(overridden, "worker 1 to apply the override", timeout=2)
        results = await _send(proxy.url + "/", 40)
        assert results == [(200, "v2")] * 40
        served = await _eventually(
            lambda: _both_counted(proxy.admin_url, worker_1, 40), "both workers' counts")
        assert served[0] > 0 and served[1] > 0  # each worker sent its share to v2 only
        assert await _served(worker_1, "svc/v1") == 0

        async with aiohttp.ClientSession() as session:  # a worker's own admin is read-only
            async with session.delete(worker_1 + "/api/v1/routes/main/weights") as r:
                assert r.status == 403
    finally:
        assert proxy.stop() == 0


async def test_a_fault_hits_every_worker_and_expires_on_every_worker(tmp_path, echo_factory):
    proxy, state, _ = await _two_workers(tmp_path, echo_factory)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.admin_url + "/api/v1/faults", json={
                    "route": "main", "abort": {"status": 503}, "duration": "4s"}) as r:
                assert r.status == 201
                expires = (await r.json())["expires"]
        worker_1 = _workers(state)[1][1]

        async def faulted():
            return (await _get_json(worker_1 + "/api/v1/faults"))["faults"]
        await _eventually(faulted, "worker 1 to apply the fault", timeout=1)
        results = await _send(proxy.url + "/", 30)
        assert [status for status, _ in results] == [503] * 30
        merged = await _get_text(proxy.admin_url + "/metrics")
        own_1 = await _get_text(worker_1 + "/metrics")  # worker 1's own exposition

        async def faulted_not():
            return not await faulted()

        async def ended():
            (status, _), = await _send(proxy.url + "/", 1)
            return status == 200
        await _eventually(ended, "the fault to expire", timeout=expires - time.time() + 2)
        assert time.time() >= expires  # not before its time
        # ... and within moments on worker 1 too, not at its next once-a-second tick
        await _eventually(faulted_not, "worker 1 to end it", timeout=0.2)
        later = await _send(proxy.url + "/", 20)
    finally:
        assert proxy.stop() == 0
    injected = metric_value(merged, "pyproxy_faults_injected_total", route="main", kind="abort")
    by_worker_1 = metric_value(own_1, "pyproxy_faults_injected_total", route="main")
    assert injected == 30 and 0 < by_worker_1 < 30  # both injected it
    assert [status for status, _ in later] == [200] * 20  # and both let it go


async def test_killed_workers_are_restarted_and_keep_the_shared_state(tmp_path, echo_factory):
    proxy, state, _ = await _two_workers(tmp_path, echo_factory)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.put(proxy.admin_url + "/api/v1/routes/main/weights",
                                   json={"weights": {"svc/v1": 100}}) as r:
                assert r.status == 200
        for index in (1, 0):  # worker 1, then the leader with the public admin
            old_pid = _workers(state)[index][0] if index else \
                (await _get_json(proxy.admin_url + "/api/v1/windows"))["pid"]
            os.kill(old_pid, signal.SIGKILL)

            async def replaced(index: int = index, old_pid: int = old_pid) -> bool:
                try:
                    text = await _get_text(proxy.admin_url + "/metrics")
                    pid = (await _get_json(proxy.admin_url + "/api/v1/windows"))["pid"]
                except aiohttp.ClientError:
                    return False  # the leader's admin is back within a moment
                new_pid = _workers(state)[1][0] if index else pid
                return new_pid != old_pid and metric_value(text, "pyproxy_workers",
                                                           state="up") == 2
            await _eventually(replaced, f"worker {index} to be restarted")
            assert proxy.proc.poll() is None  # the supervisor carries on
            results = await _send(proxy.url + "/", 30)
            assert results == [(200, "v1")] * 30  # the override came back from the state file
    finally:
        assert proxy.stop() == 0
    log = proxy.stderr_text()
    assert "worker 1 (pid" in log and "was killed by SIGKILL" in log
    assert "worker 0 (pid" in log and "starting it again" in log


async def test_sigterm_drains_every_worker_then_exits_0(tmp_path, echo_factory):
    proxy, state, (v1, v2) = await _two_workers(
        tmp_path, echo_factory, timeouts={"drain_delay": "300ms", "drain_timeout": "5s"})
    worker_1 = _workers(state)[1][1]
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        # 20 connections: that all land on one worker has odds 2 × 2⁻²⁰
        slow = [asyncio.ensure_future(session.get(proxy.url + "/sleep/1.5")) for _ in range(20)]

        async def all_upstream():
            return v1.requests + v2.requests == 20
        await _eventually(all_upstream, "the slow requests to reach the backends")
        in_flight_1 = metric_value(await _get_text(worker_1 + "/metrics"),
                                   "pyproxy_active_requests")
        proxy.proc.send_signal(signal.SIGTERM)

        async def not_ready():
            async with session.get(proxy.admin_url + "/readyz") as r:
                return r.status == 503
        await _eventually(not_ready, "/readyz to turn 503", timeout=1)
        responses = await asyncio.gather(*slow)
        statuses = [r.status for r in responses]
        for r in responses:
            r.release()
    code = await asyncio.to_thread(proxy.proc.wait, 10)
    print(f"\nworkers: SIGTERM with 20 requests in flight ({in_flight_1:.0f} on worker 1): "
          f"{set(statuses)}, exit {code}")
    assert 0 < in_flight_1 < 20  # both workers had requests to finish
    assert statuses == [200] * 20
    assert code == 0
    log = proxy.stderr_text()
    assert "worker 0: SIGTERM: draining" in log and "worker 1: SIGTERM: draining" in log


async def test_an_invalid_config_exits_2_before_any_worker_starts(tmp_path):
    config = tmp_path / "pyproxy.yaml"
    _write_config(config, [("v1", 9)], weights=(-1,))
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "pyproxy", "run", "-c", str(config),
                         "--workers", "2", "--listen", f"127.0.0.1:{free_port()}",
                         "--admin", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=15)
    assert result.returncode == 2
    assert f"{config}:" in result.stderr and "routes[0].backends[0].weight" in result.stderr
    assert "started (pid" not in result.stderr


async def test_workers_that_cannot_start_make_the_supervisor_give_up(tmp_path, echo_factory):
    v1 = await echo_factory("v1")
    config = tmp_path / "pyproxy.yaml"
    _write_config(config, [("v1", v1.port)], weights=(1,), timeouts={"drain_delay": "100ms"})
    admin_port = free_port()
    taken = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", admin_port)
    try:  # the leader cannot bind the admin address: it exits at once, every time
        started = time.monotonic()
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "pyproxy", "run", "-c", str(config),
                             "--workers", "2", "--listen", f"127.0.0.1:{free_port()}",
                             "--admin", f"127.0.0.1:{admin_port}"],
            capture_output=True, text=True, timeout=20)
        took = time.monotonic() - started
    finally:
        taken.close()
    print(f"\nworkers: admin address taken: gave up after {took:.1f}s")
    assert result.returncode == 1
    assert "cannot listen on admin" in result.stderr
    assert "worker 0 exited 5 times in a row within 5s of starting" in result.stderr
    assert "giving up" in result.stderr
    assert "worker 1 (pid" in result.stderr  # the other worker was stopped, not left behind


async def test_reload_and_sighup_reach_every_worker(tmp_path, echo_factory):
    proxy, state, (v1, v2) = await _two_workers(tmp_path, echo_factory)
    worker_1 = _workers(state)[1][1]
    try:
        _write_config(tmp_path / "pyproxy.yaml", [("v1", v1.port), ("v2", v2.port)],
                      weights=(100, 0))
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.admin_url + "/api/v1/reload") as r:
                answer = await r.json()
        assert (answer["result"], answer["generation"]) == ("success", 2)  # the leader's

        async def generation_2():
            return (await _get_json(worker_1 + "/api/v1/config"))["generation"] == 2
        await _eventually(generation_2, "worker 1 to reload")
        assert await _send(proxy.url + "/", 20) == [(200, "v1")] * 20
        proxy.proc.send_signal(signal.SIGHUP)
        log = await asyncio.wait_for(_log_until(proxy, "worker 0: SIGHUP reload",
                                                "worker 1: SIGHUP reload"), 10)
    finally:
        assert proxy.stop() == 0
    assert "SIGHUP: every worker reloads its config" in log


async def _log_until(proxy: ProxyProcess, *needles: str) -> str:
    """The proxy's stderr up to the line where every needle has been seen."""
    def read() -> str:
        lines: list[str] = []
        while not all(any(n in line for line in lines) for n in needles):
            line = proxy.proc.stderr.readline().decode()
            if not line:
                break
            lines.append(line)
        return "".join(lines)
    return await asyncio.to_thread(read)


async def test_state_survives_a_restart_with_a_state_dir(tmp_path, echo_factory):
    v1, v2 = await echo_factory("v1"), await echo_factory("v2")
    config = tmp_path / "pyproxy.yaml"
    _write_config(config, [("v1", v1.port), ("v2", v2.port)], weights=(50, 50),
                  extra_route={"name": "flaky", "match": [{"path": {"prefix": "/flaky"}}],
                               "backends": [{"service": "svc", "subset": "v1"}]})
    state = tmp_path / "state"
    first = await _start(ProxyProcess(config, workers=2, extra_args=("--state-dir", state)))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.put(first.admin_url + "/api/v1/routes/main/weights",
                                   json={"weights": {"svc/v2": 1}}) as r:
                assert r.status == 200
            async with session.post(first.admin_url + "/api/v1/faults", json={
                    "route": "flaky", "abort": {"status": 418}, "duration": "60s"}) as r:
                fault = await r.json()
    finally:
        assert first.stop() == 0

    again = await _start(ProxyProcess(config, workers=2, extra_args=("--state-dir", state)))
    try:
        faults = (await _get_json(again.admin_url + "/api/v1/faults"))["faults"]
        worker_1_routes = await _get_json(_workers(state)[1][1] + "/api/v1/routes")
        main = await _send(again.url + "/", 20)
        flaky = await _send(again.url + "/flaky", 20)
    finally:
        assert again.stop() == 0
    assert [(f["route"], f["expires"]) for f in faults] == [("flaky", fault["expires"])]
    override = next(r for r in worker_1_routes["routes"] if r["name"] == "main")["override"]
    assert override["weights"] == {"svc/v2": 1}
    assert main == [(200, "v2")] * 20
    assert [status for status, _ in flaky] == [418] * 20


async def test_canary_progress_survives_the_leaders_restart(tmp_path, echo_factory):
    canary = {"name": "main", "route": "main", "primary": "svc/v1", "candidate": "svc/v2",
              "interval": "500ms", "step_weight": 10, "max_weight": 50, "min_requests": 5}
    proxy, state, _ = await _two_workers(tmp_path, echo_factory, canaries=[canary])
    try:
        async def started():
            (c,) = (await _get_json(proxy.admin_url + "/api/v1/canaries"))["canaries"]
            return c["phase"] == "progressing"
        await _eventually(started, "the canary to start")
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.admin_url + "/api/v1/canaries/main/pause") as r:
                before = await r.json()
        leader = (await _get_json(proxy.admin_url + "/api/v1/windows"))["pid"]
        os.kill(leader, signal.SIGKILL)

        async def resumed():
            try:
                (c,) = (await _get_json(proxy.admin_url + "/api/v1/canaries"))["canaries"]
            except aiohttp.ClientError:
                return None
            return c if c["events"][-1]["message"].startswith("resumed after a restart") \
                else None
        after = await _eventually(resumed, "the restarted leader's canary")
        worker_1 = await _get_json(_workers(state)[1][1] + "/api/v1/routes")
    finally:
        assert proxy.stop() == 0
    assert (after["phase"], after["step"], after["candidate_weight"]) == \
        ("paused", before["step"], before["candidate_weight"]) == ("paused", 1, 10)
    assert [e["message"] for e in after["events"][:-1]] == \
        [e["message"] for e in before["events"]]
    override = worker_1["routes"][0]["override"]  # the canary's weights reach every worker
    assert (override["source"], override["weights"]) == ("canary", {"svc/v1": 90, "svc/v2": 10})
