"""One change costs O(changed objects): loadtests/kubernetes_scale.py at a small size, its
counts checked. (The full size, 1,000 HTTPRoutes and 5,000 endpoints, is a benchmark run
by hand: ``python loadtests/kubernetes_scale.py``.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "loadtests" / "kubernetes_scale.py"
ROUTES = 40


@pytest.fixture(scope="module")
def measured() -> dict[str, float]:
    # The script's own deadline stops pyproxy; the timeout here is only a backstop.
    done = subprocess.run([sys.executable, str(SCRIPT), "--routes", str(ROUTES), "--pods", "3",
                           "--json", "--deadline", "90"], capture_output=True, text=True,
                          timeout=150)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_route_imported_at_start(measured):
    assert measured["imports_at_ready"] >= ROUTES


def test_a_status_only_change_reimports_no_route(measured):
    assert measured["status_change_reimported"] == 0


def test_a_pod_change_reimports_no_route(measured):
    assert measured["endpoint_change_reimported"] == 0


def test_a_route_change_reimports_only_that_route(measured):
    assert measured["route_change_reimported"] <= 1
