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
    done = subprocess.run([sys.executable, str(SCRIPT), "--routes", str(ROUTES), "--pods", "3",
                           "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_route_imported_once_at_start(measured):
    assert measured["imports_at_ready"] == ROUTES


@pytest.mark.xfail(strict=True, reason=(
    "provider: a status write changes only status (and resourceVersion), but the MODIFIED "
    "event it sets off rebuilds the whole config: the leader's first status pass over N "
    "routes re-imports every route about N/batch times (1,000 routes: 28 rebuilds, 29,000 "
    "imports, 17 s of CPU after ready)"))
def test_our_own_status_writes_reimport_no_route(measured):
    assert measured["imports_settled"] == measured["imports_at_ready"]


def test_a_pod_change_reimports_no_route(measured):
    assert measured["endpoint_change_reimported"] == 0


@pytest.mark.xfail(strict=True, reason=(
    "provider: a change to one HTTPRoute runs the importers over every HTTPRoute "
    "(translate.manifest_documents rebuilds each HTTPRoute manifest and assemble imports "
    "them all), so one change costs O(all routes), not O(changed)"))
def test_a_route_change_reimports_only_that_route(measured):
    assert measured["route_change_reimported"] <= 1
