"""Run-time control through the real CLI against a live proxy process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from tests.support.harness import ProxyProcess

TOKEN = "t0ken-for-tests"


def _config(path, v1, v2):
    path.write_text(yaml.safe_dump({
        "admin": {"token": "${PYPROXY_ADMIN_TOKEN}"},
        "debug_headers": True,
        "access_log": {"format": "off"},
        "services": {"svc": {
            "endpoints": [{"address": f"127.0.0.1:{v1.port}", "labels": {"v": "1"}},
                          {"address": f"127.0.0.1:{v2.port}", "labels": {"v": "2"}}],
            "subsets": {"v1": {"v": "1"}, "v2": {"v": "2"}}}},
        "routes": [{"name": "main",
                    "backends": [{"service": "svc", "subset": "v1", "weight": 90},
                                 {"service": "svc", "subset": "v2", "weight": 10}]}],
    }))


def _cli_sync(proxy: ProxyProcess, *args, token: str | None = TOKEN) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYPROXY_ADMIN": proxy.admin_url}
    env.pop("PYPROXY_ADMIN_TOKEN", None)
    if token is not None:
        env["PYPROXY_ADMIN_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "pyproxy", *args], env=env,
                          capture_output=True, text=True, timeout=30)


async def _cli(proxy, *args, token: str | None = TOKEN):
    # The echo backends run on this test's event loop: blocking calls go to a thread.
    return await asyncio.to_thread(_cli_sync, proxy, *args, token=token)


async def _hit(proxy, n):
    return await asyncio.to_thread(_hit_sync, proxy, n)


def _hit_sync(proxy: ProxyProcess, n: int) -> list[tuple[int, str]]:
    out = []
    for _ in range(n):
        try:
            with urllib.request.urlopen(proxy.url + "/", timeout=5) as r:
                out.append((r.status, r.headers["x-pyproxy-backend"]))
        except urllib.error.HTTPError as e:
            out.append((e.code, e.headers["x-pyproxy-flags"]))
    return out


async def test_set_weight_survives_reload_until_cleared(tmp_path, echo_factory):
    v1, v2 = await echo_factory("v1"), await echo_factory("v2")
    config = tmp_path / "pyproxy.yaml"
    _config(config, v1, v2)
    proxy = ProxyProcess(config, env={"PYPROXY_ADMIN_TOKEN": TOKEN}).start()
    try:
        done = await _cli(proxy, "set-weight", "main", "svc/v1=0", "svc/v2=100")
        assert done.returncode == 0, done.stderr
        assert "svc/v2 100%" in done.stdout
        assert {b for _, b in await _hit(proxy, 30)} == {"svc/v2"}

        status = await _cli(proxy, "status")
        assert status.returncode == 0 and "100%*" in status.stdout and "--clear" in status.stdout

        # An unrelated edit reloads the config; the override stays.
        config.write_text(config.read_text() + "\n# touched\n")
        await asyncio.sleep(1.5)
        assert {b for _, b in await _hit(proxy, 20)} == {"svc/v2"}

        assert (await _cli(proxy, "set-weight", "main", "--clear")).returncode == 0
        assert {b for _, b in await _hit(proxy, 60)} == {"svc/v1", "svc/v2"}

        bad = await _cli(proxy, "set-weight", "main", "nope=1")
        assert bad.returncode == 1 and "its backends: svc/v1, svc/v2" in bad.stderr
    finally:
        proxy.stop()


async def test_time_boxed_fault_removes_itself(tmp_path, echo_factory):
    v1, v2 = await echo_factory("v1"), await echo_factory("v2")
    config = tmp_path / "pyproxy.yaml"
    _config(config, v1, v2)
    proxy = ProxyProcess(config, env={"PYPROXY_ADMIN_TOKEN": TOKEN}).start()
    try:
        done = await _cli(proxy, "fault", "main", "--abort", "503", "--percent", "100",
                          "--for", "2s")
        assert done.returncode == 0, done.stderr
        started = time.monotonic()
        assert await _hit(proxy, 10) == [(503, "FI")] * 10
        listed = await _cli(proxy, "fault", "list")
        assert "main: abort 503 on 100.0%" in listed.stdout
        while time.monotonic() - started < 2.5:
            await asyncio.sleep(0.1)
        assert all(status == 200 for status, _ in await _hit(proxy, 10))
        assert (await _cli(proxy, "fault", "list")).stdout.strip() == "no active faults"
    finally:
        proxy.stop()


async def test_mutations_need_the_token(tmp_path, echo_factory):
    v1, v2 = await echo_factory("v1"), await echo_factory("v2")
    config = tmp_path / "pyproxy.yaml"
    _config(config, v1, v2)
    proxy = ProxyProcess(config, env={"PYPROXY_ADMIN_TOKEN": TOKEN}).start()
    try:
        missing = await _cli(proxy, "set-weight", "main", "svc/v2=1", token=None)
        assert missing.returncode == 1 and "set PYPROXY_ADMIN_TOKEN" in missing.stderr
        wrong = await _cli(proxy, "set-weight", "main", "svc/v2=1", token="wrong")
        assert wrong.returncode == 1 and "does not match" in wrong.stderr
        request = urllib.request.Request(proxy.admin_url + "/api/v1/faults", method="DELETE")
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
        assert refused.value.code == 401
        assert (await _cli(proxy, "status", token=None)).returncode == 0  # reading needs no token
    finally:
        proxy.stop()


def test_admin_beyond_loopback_without_token_refuses_to_start(tmp_path):
    config = tmp_path / "pyproxy.yaml"
    config.write_text("admin: {listen: 0.0.0.0:19901}\nroutes: []\n")
    done = subprocess.run([sys.executable, "-m", "pyproxy", "run", "-c", str(config)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "without a token" in done.stderr


async def test_explain_through_the_admin_shows_live_weights(tmp_path, echo_factory):
    v1, v2 = await echo_factory("v1"), await echo_factory("v2")
    config = tmp_path / "pyproxy.yaml"
    _config(config, v1, v2)
    proxy = ProxyProcess(config, env={"PYPROXY_ADMIN_TOKEN": TOKEN}).start()
    try:
        assert (await _cli(proxy, "set-weight", "main", "svc/v1=1", "svc/v2=3")).returncode == 0
        done = await _cli(proxy, "explain", "--admin", proxy.admin_url, "--host", "x",
                          "--path", "/a", "--json")
        result = json.loads(done.stdout)
        assert result["route"] == "main"
        assert [b["probability"] for b in result["backends"]] == [0.25, 0.75]
        assert result["override"] == {"svc/v1": 1.0, "svc/v2": 3.0}
    finally:
        proxy.stop()
