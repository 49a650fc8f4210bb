"""Injected faults are visible as failures: a route with a 50 % abort fault from the config
file, over a real echo backend, served by a real ``pyproxy run`` process.

What callers saw (their 503s) must be what every view says: the route's success rate in
``GET /api/v1/routes`` and ``pyproxy status`` counts the injected aborts, which appear as
their own "injected abort (fault)" row whose share adds up with the backend's to 100 %;
``/metrics`` counts them under ``flag="FI"``; ``pyproxy fault list`` and
``GET /api/v1/faults`` list the config's fault beside run-time ones, with their source.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import yaml

from pyproxy.metrics.windows import INJECTED_ABORT
from tests.stats_bounds import assert_binomial
from tests.support.harness import ProxyProcess, metric_value

TOKEN = "t0ken-for-tests"
REQUESTS = 400


def _config(path, backend) -> None:
    path.write_text(yaml.safe_dump({
        "admin": {"token": "${PYPROXY_ADMIN_TOKEN}"},
        "debug_headers": True,
        "access_log": {"format": "off"},
        "services": {"svc": {"endpoints": [{"address": backend.address}]}},
        "routes": [
            {"name": "flaky", "match": [{"path": {"prefix": "/flaky"}}],
             "backends": [{"service": "svc"}],
             "fault": {"abort": {"status": 503, "percent": 50}}},
            {"name": "main", "backends": [{"service": "svc"}]},
        ],
    }))


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def _hit_sync(url: str, n: int) -> list[tuple[int, str]]:
    """(status, response flags) of ``n`` sequential requests."""
    out = []
    for _ in range(n):
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
                out.append((response.status, response.headers["x-pyproxy-flags"] or ""))
        except urllib.error.HTTPError as error:
            error.read()
            out.append((error.code, error.headers["x-pyproxy-flags"] or ""))
    return out


def _cli_sync(proxy: ProxyProcess, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYPROXY_ADMIN": proxy.admin_url, "PYPROXY_ADMIN_TOKEN": TOKEN}
    return subprocess.run([sys.executable, "-m", "pyproxy", *args], env=env,
                          capture_output=True, text=True, timeout=30)


async def _cli(proxy: ProxyProcess, *args: str) -> subprocess.CompletedProcess:
    # The echo backend runs on this test's event loop: blocking calls go to a thread.
    return await asyncio.to_thread(_cli_sync, proxy, *args)


async def _json(url: str) -> dict:
    return json.loads(await asyncio.to_thread(_get, url))


def _row(status: str, route: str, backend: str) -> list[str]:
    """The ``pyproxy status`` row of (route, backend), split on runs of two spaces or more
    (names hold single spaces)."""
    for line in status.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[:2] == [route, backend]:
            return cells
    raise AssertionError(f"no row {route} / {backend} in:\n{status}")


async def test_injected_aborts_count_against_the_route_in_every_view(tmp_path, echo_factory):
    backend = await echo_factory("v1")
    config = tmp_path / "pyproxy.yaml"
    _config(config, backend)
    proxy = ProxyProcess(config, env={"PYPROXY_ADMIN_TOKEN": TOKEN}).start()
    try:
        results = await asyncio.to_thread(_hit_sync, proxy.url + "/flaky", REQUESTS)
        aborted = sum(1 for status, flags in results if (status, flags) == (503, "FI"))
        served = sum(1 for status, _ in results if status == 200)
        assert aborted + served == REQUESTS
        assert_binomial(aborted, REQUESTS, 0.5)
        assert backend.requests == served  # the backend never saw an aborted request

        routes = await _json(proxy.admin_url + "/api/v1/routes")
        status = await _cli(proxy, "status")
        metrics = (await asyncio.to_thread(_get, proxy.admin_url + "/metrics")).decode()
    finally:
        proxy.stop()

    flaky = next(r for r in routes["routes"] if r["name"] == "flaky")
    # The route, as its callers saw it: every request in the window, the aborts as failures.
    assert flaky["stats"]["requests"] == REQUESTS
    assert flaky["stats"]["success_rate"] == pytest.approx(100 * served / REQUESTS, abs=1e-3)
    assert_binomial(round(flaky["stats"]["success_rate"] * REQUESTS / 100), REQUESTS, 0.5)
    # The injected row: its own share, 0 % success; with the backend's it makes 100 %.
    injected = flaky["injected_abort"]
    assert injected["label"] == INJECTED_ABORT
    assert (injected["status"], injected["percent"]) == (503, 50.0)
    assert (injected["requests"], injected["success_rate"]) == (aborted, 0.0)
    assert_binomial(round(injected["observed_share"] * REQUESTS), REQUESTS, 0.5)
    [svc] = flaky["backends"]
    assert (svc["requests"], svc["success_rate"]) == (served, 100.0)
    assert svc["observed_share"] + injected["observed_share"] == pytest.approx(1.0, abs=1e-3)
    # A route without a fault has no injected row.
    main = next(r for r in routes["routes"] if r["name"] == "main")
    assert main["injected_abort"] is None and main["stats"]["requests"] == 0

    # pyproxy status: the route's own row and the injected row, labelled as such.
    assert status.returncode == 0, status.stderr
    whole = _row(status.stdout, "flaky", "(all requests)")
    assert whole[5] == f"{100 * served / REQUESTS:.1f}%"
    row = _row(status.stdout, "flaky", INJECTED_ABORT)
    assert row[3] == f"{round(100 * aborted / REQUESTS)}%" and row[5] == "0.0%"
    assert _row(status.stdout, "flaky", "svc")[5] == "100.0%"
    assert "! flaky: abort 503 on 50.0% (set in the config)" in status.stdout

    # Prometheus: the same requests, under the labels they always had.
    assert metric_value(metrics, "pyproxy_requests_total", route="flaky", backend="",
                        code="503", flag="FI") == aborted
    assert metric_value(metrics, "pyproxy_faults_injected_total", route="flaky",
                        kind="abort") == aborted
    assert metric_value(metrics, "pyproxy_requests_total", route="flaky", backend="svc",
                        code="200", flag="") == served


async def test_an_attempt_scoped_abort_is_the_routes_failure_not_the_backends(tmp_path,
                                                                              echo_factory):
    """With ``scope: attempt`` the backend is picked before the abort: Prometheus keeps that
    backend label, but the live views (and so the canary judge) do not hold the abort
    against a backend that never saw the request."""
    backend = await echo_factory("v1")
    config = tmp_path / "pyproxy.yaml"
    config.write_text(yaml.safe_dump({
        "debug_headers": True,
        "access_log": {"format": "off"},
        "services": {"svc": {"endpoints": [{"address": backend.address}]}},
        "routes": [{"name": "flaky", "backends": [{"service": "svc"}],
                    "fault": {"abort": {"status": 503, "percent": 100}, "scope": "attempt"}}],
    }))
    proxy = ProxyProcess(config).start()
    try:
        results = await asyncio.to_thread(_hit_sync, proxy.url + "/", 20)
        routes = await _json(proxy.admin_url + "/api/v1/routes")
        metrics = (await asyncio.to_thread(_get, proxy.admin_url + "/metrics")).decode()
    finally:
        proxy.stop()
    assert results == [(503, "FI")] * 20 and backend.requests == 0
    [flaky] = routes["routes"]
    injected = flaky["injected_abort"]
    assert (injected["requests"], injected["observed_share"]) == (20, 1.0)
    assert flaky["stats"]["success_rate"] == 0.0
    [svc] = flaky["backends"]
    assert (svc["requests"], svc["success_rate"], svc["observed_share"]) == (0, None, 0.0)
    assert metric_value(metrics, "pyproxy_requests_total", route="flaky", backend="svc",
                        code="503", flag="FI") == 20


async def test_fault_list_shows_config_and_run_time_faults(tmp_path, echo_factory):
    backend = await echo_factory("v1")
    config = tmp_path / "pyproxy.yaml"
    _config(config, backend)
    proxy = ProxyProcess(config, env={"PYPROXY_ADMIN_TOKEN": TOKEN}).start()
    try:
        listed = await _cli(proxy, "fault", "list")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.strip() == f"flaky: abort 503 on 50.0% (config, {config})"

        added = await _cli(proxy, "fault", "main", "--delay", "10ms", "--for", "60s")
        assert added.returncode == 0, added.stderr
        replaced = await _cli(proxy, "fault", "flaky", "--abort", "500", "--for", "60s")
        assert replaced.returncode == 0, replaced.stderr
        faults = (await _json(proxy.admin_url + "/api/v1/faults"))["faults"]
        listed = await _cli(proxy, "fault", "list")
    finally:
        proxy.stop()

    by_source = {(f["route"], f["source"]): f for f in faults}
    assert set(by_source) == {("main", "run time"), ("flaky", "run time"), ("flaky", "config")}
    timed = by_source[("flaky", "run time")]
    assert timed["active"] and timed["abort"] == {"status": 500, "percent": 100.0}
    assert 0 < timed["remaining_s"] <= 60 and timed["expires"] > timed["since"]
    configured = by_source[("flaky", "config")]
    assert configured["abort"] == {"status": 503, "percent": 50.0}
    assert (configured["file"], configured["active"], configured["expires"]) == (str(config),
                                                                                False, None)
    lines = listed.stdout.splitlines()
    assert re.fullmatch(r"main: delay 0\.01s on 100\.0%, (59|60)s left \(run time\)", lines[0])
    assert re.fullmatch(r"flaky: abort 500 on 100\.0%, (59|60)s left \(run time\)", lines[1])
    assert lines[2] == (f"flaky: abort 503 on 50.0% (config, {config}) — replaced by the "
                        "run-time fault while that lasts")
