"""The dashboard's services section under DNS discovery, rendered by the real ``app.js`` in
Node (``render_dashboard.js``): the name as a row, the addresses it resolved to under it.
``localhost`` is the name, resolved by the system resolver of a real ``pyproxy run``."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.harness import ProxyProcess

ROOT = Path(__file__).resolve().parents[2]
APP_JS = ROOT / "pyproxy" / "admin" / "dashboard" / "app.js"
RENDER = Path(__file__).with_name("render_dashboard.js")
NODE = shutil.which("node") or shutil.which("nodejs")

pytestmark = pytest.mark.skipif(NODE is None, reason="no Node.js to run the dashboard's script")


def _render(admin_url: str) -> dict:
    assert NODE is not None
    done = subprocess.run([NODE, str(RENDER), str(APP_JS), admin_url],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_the_dashboard_shows_the_addresses_under_the_name(tmp_path, echo_factory):
    backend = await echo_factory("v2")
    port = int(backend.address.rsplit(":", 1)[1])
    expected = sorted({info[4][0] for info in socket.getaddrinfo("localhost", port,
                                                                  type=socket.SOCK_STREAM)})
    config = tmp_path / "pyproxy.yaml"
    config.write_text(yaml.safe_dump({
        "access_log": {"format": "off"},
        "services": {"stock": {"discovery": "dns",
                               "endpoints": [{"address": f"localhost:{port}",
                                              "labels": {"version": "v2"}}]}},
        "routes": [{"name": "stock", "backends": [{"service": "stock"}]}],
    }))
    proxy = ProxyProcess(config).start()
    try:
        page = await asyncio.to_thread(_render, proxy.admin_url)
    finally:
        proxy.stop()
    [service] = page["services"]
    name, *addresses = service["rows"]
    assert name["key"] == f"dns:localhost:{port}"
    count = len(expected)
    assert name["cells"] == [f"localhost:{port} · DNS, {count} address"
                             + ("" if count == 1 else "es")]
    assert sorted(row["cells"][0] for row in addresses) == sorted(f"{a}:{port}" for a in expected)
    assert all(row["cells"][1] == "version=v2" for row in addresses)
