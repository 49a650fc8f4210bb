"""What the dashboard shows for a route with an injected abort fault, rendered by the real
``app.js`` in Node (``render_dashboard.js``: a minimal DOM, fetch against a live admin), so
this runs where Chromium does not (``test_dashboard.py`` needs it).

The route card's success rate and the KPI count the injected aborts as failures; the
backend table has an "injected abort (fault)" row beside the backend, whose observed shares
add up to 100 %; the observed split bar names the injected segment.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.stats_bounds import assert_binomial
from tests.support.harness import ProxyProcess

ROOT = Path(__file__).resolve().parents[2]
APP_JS = ROOT / "pyproxy" / "admin" / "dashboard" / "app.js"
RENDER = Path(__file__).with_name("render_dashboard.js")
NODE = shutil.which("node") or shutil.which("nodejs")
REQUESTS = 300

pytestmark = pytest.mark.skipif(NODE is None, reason="no Node.js to run the dashboard's script")


def _hit_sync(url: str, n: int) -> int:
    """How many of ``n`` requests were answered 503."""
    aborted = 0
    for _ in range(n):
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
        except urllib.error.HTTPError as error:
            error.read()
            aborted += error.code == 503
    return aborted


def _render(admin_url: str) -> dict:
    done = subprocess.run([NODE, str(RENDER), str(APP_JS), admin_url],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _leading(text: str) -> float:
    """The number a cell's text starts with ("54%+0.1 pts" → 54.0)."""
    match = re.match(r"\s*([0-9.]+)", text)
    assert match, text
    return float(match.group(1))


async def test_the_dashboard_shows_injected_aborts_as_their_own_failing_row(tmp_path,
                                                                            echo_factory):
    backend = await echo_factory("v1")
    config = tmp_path / "pyproxy.yaml"
    config.write_text(yaml.safe_dump({
        "access_log": {"format": "off"},
        "services": {"svc": {"endpoints": [{"address": backend.address}]}},
        "routes": [{"name": "flaky", "backends": [{"service": "svc"}],
                    "fault": {"abort": {"status": 503, "percent": 50}}}],
    }))
    proxy = ProxyProcess(config).start()
    try:
        aborted = await asyncio.to_thread(_hit_sync, proxy.url + "/", REQUESTS)
        page = await asyncio.to_thread(_render, proxy.admin_url)
    finally:
        proxy.stop()
    assert_binomial(aborted, REQUESTS, 0.5)

    [card] = page["cards"]
    svc, injected = card["rows"]
    assert (svc["backend"], svc["injected"]) == ("svc", False)
    assert injected["injected"] and injected["cells"][0].startswith("injected abort (fault)")
    assert "abort 503 on 50% of requests" in injected["cells"][0]
    # Columns: name, target, observed, success, rps, p50, p95, p99, requests.
    assert injected["cells"][1] == "—" and _leading(injected["cells"][3]) == 0.0
    assert int(injected["cells"][8].replace(",", "")) == aborted
    assert _leading(svc["cells"][3]) == 100.0
    observed = _leading(injected["cells"][2]), _leading(svc["cells"][2])
    assert observed[0] == pytest.approx(100 * aborted / REQUESTS, abs=0.06)
    assert sum(observed) == pytest.approx(100, abs=0.11)
    assert "injected abort" in card["observed"]
    # The backend got its whole target of the requests the fault let through: no deviation.
    deviation = svc["cells"][2].split("%")[1]
    assert deviation.endswith(" pts") and abs(float(deviation[1:-4])) <= 0.2

    # The route's success rate and the KPI: what the callers saw, not the backend's 100 %.
    served = 100 * (REQUESTS - aborted) / REQUESTS
    rate = _leading(card["stats"].split("rps")[1])
    assert rate == pytest.approx(served, abs=0.06)
    assert _leading(page["kpis"]["success"]) == pytest.approx(served, abs=0.06)
    assert page["kpis"]["faults"] == "1"  # the config's fault is in effect
