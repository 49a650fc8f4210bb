"""A real ``pyproxy run`` process: reload under load, metrics, SIGHUP, SIGTERM.

Streaming with bounded memory (issue 2: 200 MiB; here 1 GiB) is tests/load T6."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import ProxyProcess
from tests.support.metrics import metric_value

MIB = 1024 * 1024


def _atomic_write(path, text: str) -> None:
    """Write then rename, as editors and ConfigMap updates do: no half-written reads."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _write_config(path, backends: list[tuple[str, int]], weights=(90, 10), *, extra_route=None,
                  **top) -> None:
    config = {
        "access_log": {"format": "off"},
        "services": {
            "svc": {
                "endpoints": [{"address": f"127.0.0.1:{port}", "labels": {"version": name}}
                              for name, port in backends],
                "subsets": {name: {"version": name} for name, _ in backends},
            }
        },
        "routes": ([extra_route] if extra_route else []) + [{
            "name": "main",
            "backends": [{"service": "svc", "subset": name, "weight": w}
                         for (name, _), w in zip(backends, weights, strict=False)],
        }],
        **top,
    }
    _atomic_write(path, yaml.safe_dump(config, sort_keys=False))


async def _steady_load(url: str, stop: asyncio.Event, results: list, workers: int = 4) -> None:
    async def worker(session):
        while not stop.is_set():
            try:
                async with session.get(url) as r:
                    await r.read()
                    results.append(r.status)
            except aiohttp.ClientError as exc:
                results.append(repr(exc))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(workers)))


async def _admin_json(session, url):
    async with session.get(url) as r:
        return await r.json()


async def test_reload_under_load_20_rewrites_some_invalid(tmp_path, echo_factory):
    v1, v2 = await echo_factory("v1"), await echo_factory("v2")
    config = tmp_path / "routes.yaml"
    backends = [("v1", v1.port), ("v2", v2.port)]
    _write_config(config, backends, weights=(90, 10))
    proxy = ProxyProcess(tmp_path).start()
    stop = asyncio.Event()
    results: list = []
    load = asyncio.ensure_future(_steady_load(proxy.url + "/", stop, results))
    rejected_errors = []
    try:
        async with aiohttp.ClientSession() as admin:
            for i in range(20):
                before = await _admin_json(admin, proxy.admin_url + "/api/v1/config")
                invalid = i % 4 == 3
                if invalid:
                    _atomic_write(config, config.read_text().replace("weight: ", "weight: -", 1))
                else:
                    _write_config(config, backends, weights=(100 - 5 * i, 5 * i))
                # wait for the watcher to pick the change up
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                    view = await _admin_json(admin, proxy.admin_url + "/api/v1/config")
                    if view["last_reload"]["time"] != before["last_reload"]["time"]:
                        break
                else:
                    raise AssertionError(f"rewrite {i} was not reloaded")
                last = view["last_reload"]
                if invalid:
                    assert last["result"] == "failure"
                    rejected_errors.extend(last["errors"])
                    assert view["generation"] == before["generation"]  # the last good one serves
                else:
                    assert last["result"] == "success", last
                await asyncio.sleep(0.1)
            metrics = await (await admin.get(proxy.admin_url + "/metrics")).text()
    finally:
        stop.set()
        await load
        assert proxy.stop() == 0

    assert len(results) > 200
    failures = [r for r in results if r != 200]
    print(f"\nT2/T3: {len(results)} requests during 20 rewrites ({len(rejected_errors)} errors "
          f"reported for the 5 invalid ones), {len(failures)} failed")
    assert failures == [], f"{len(failures)} failed requests during reloads: {failures[:5]}"
    assert len(rejected_errors) >= 5
    for error in rejected_errors:
        assert f"{config}:" in error and "routes[0].backends[0].weight" in error, error
    assert metric_value(metrics, "pyproxy_config_reloads_total", result="failure") == 5
    assert metric_value(metrics, "pyproxy_config_reloads_total", result="success") >= 15


async def test_metrics_names_and_labels_as_the_spec_says(tmp_path, echo_factory):
    v1, v2 = await echo_factory("v1"), await echo_factory("v2")
    config = tmp_path / "pyproxy.yaml"
    _write_config(config, [("v1", v1.port), ("v2", v2.port)], weights=(90, 10),
                  extra_route={"name": "faulty", "match": [{"path": {"prefix": "/faulty"}}],
                               "backends": [{"service": "svc", "subset": "v1"}],
                               "fault": {"abort": {"status": 503, "percent": 100}}})
    proxy = ProxyProcess(config).start()
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(20):
                async with session.get(proxy.url + "/x") as r:
                    assert r.status == 200
            async with session.get(proxy.url + "/faulty") as r:
                assert r.status == 503
            async with session.get(proxy.admin_url + "/metrics") as r:
                text = await r.text()
    finally:
        proxy.stop()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    expected = {
        "pyproxy_requests": ("counter", {"route", "backend", "code", "flag"}),
        "pyproxy_request_duration_seconds": ("histogram", {"route", "backend"}),
        "pyproxy_upstream_requests": ("counter", {"service", "endpoint", "code"}),
        "pyproxy_faults_injected": ("counter", {"route", "kind"}),
        "pyproxy_backend_weight": ("gauge", {"route", "backend"}),
        "pyproxy_active_requests": ("gauge", {"route"}),
        "pyproxy_config_reloads": ("counter", {"result"}),
        "pyproxy_config_last_reload_success": ("gauge", set()),
        "pyproxy_config_generation": ("gauge", set()),
    }
    for name, (kind, labels) in expected.items():
        assert name in families, name
        assert families[name].type == kind, name
        for sample in families[name].samples:
            assert set(sample.labels) - {"le"} <= labels, (name, sample.labels)
    assert metric_value(text, "pyproxy_requests_total", route="main", code="200") == 20
    assert metric_value(text, "pyproxy_requests_total", route="faulty", code="503", flag="FI") == 1
    assert metric_value(text, "pyproxy_faults_injected_total", route="faulty", kind="abort") == 1
    assert metric_value(text, "pyproxy_backend_weight", route="main", backend="svc/v1") == 0.9
    assert metric_value(text, "pyproxy_request_duration_seconds_count", route="main") == 20
    for sample in families["pyproxy_requests"].samples:
        assert not sample.labels.get("path") and "/" not in sample.labels["route"]


async def test_sigterm_drains_in_flight_requests(tmp_path, echo_factory):
    echo = await echo_factory("echo")
    config = tmp_path / "pyproxy.yaml"
    _write_config(config, [("v1", echo.port)], weights=(1,),
                  timeouts={"drain_delay": "300ms", "drain_timeout": "5s"})
    proxy = ProxyProcess(config).start()
    async with aiohttp.ClientSession() as session:
        slow = [asyncio.ensure_future(session.get(proxy.url + "/sleep/1.0")) for _ in range(5)]
        await asyncio.sleep(0.3)
        proxy.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.1)
        async with session.get(proxy.admin_url + "/readyz") as r:
            assert r.status == 503  # not ready at once
        responses = await asyncio.gather(*slow)
        print(f"\nT4: SIGTERM with 5 requests in flight: statuses "
              f"{[r.status for r in responses]}, /readyz 503 at once")
        assert [r.status for r in responses] == [200] * 5
        for r in responses:
            assert json.loads(await r.read())["path"] == "/sleep/1.0"
    assert proxy.proc.wait(10) == 0


async def test_sighup_reload_and_access_log_lines_are_json(tmp_path, echo_factory):
    v1, v2 = await echo_factory("v1"), await echo_factory("v2")
    config = tmp_path / "pyproxy.yaml"
    _write_config(config, [("v1", v1.port), ("v2", v2.port)], weights=(100, 0),
                  access_log={"format": "json"})
    log = tmp_path / "access.log"
    proxy = ProxyProcess(config, stdout=log).start()
    try:
        async with aiohttp.ClientSession() as session:
            traced = {"x-request-id": "rid-1", "traceparent": "00-a-b-01"}
            async with session.get(proxy.url + "/before?q=1", headers=traced) as r:
                assert json.loads(await r.read())["name"] == "v1"
            # An explicit SIGHUP reload runs on its own (the watcher also reloads files; the
            # log line says which path did the work).
            proxy.proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            _write_config(config, [("v1", v1.port), ("v2", v2.port)], weights=(0, 100),
                          access_log={"format": "json"})
            for _ in range(50):
                await asyncio.sleep(0.1)
                async with session.get(proxy.url + "/after") as r:
                    if json.loads(await r.read())["name"] == "v2":
                        break
            else:
                raise AssertionError("the rewritten config was not reloaded")
    finally:
        assert proxy.stop() == 0
    stderr = proxy.stderr_text()
    assert "SIGHUP: reloading the config" in stderr
    assert "SIGHUP reload: unchanged (generation 1)" in stderr
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    first = lines[0]
    assert set(first) >= {"time", "request_id", "method", "host", "path", "route", "backend",
                          "endpoint", "status", "flags", "attempts", "duration_ms", "bytes_in",
                          "bytes_out"}
    assert (first["request_id"], first["path"], first["route"], first["backend"],
            first["status"], first["attempts"]) == ("rid-1", "/before", "main", "svc/v1", 200, 1)
    assert first["endpoint"] == f"127.0.0.1:{v1.port}" and first["bytes_out"] > 0
    assert any(line["backend"] == "svc/v2" for line in lines)
