"""A short headless locust run of loadtests/locustfile.py, judged on locust's own CSV.

Locust reports each request under the backend that answered it (pyproxy's
``x-pyproxy-backend``), so its stats CSV alone must show the 90/10 canary split (within a
99.9 % binomial bound) and each version's failure rate: 0.0.1 never fails, 0.0.2 about half
of the time. Two more runs check the dark-launch tester and sticky users against the compose
lab's stockmanager routes, and the storefront user against ``pyproxy demo``.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy.support import DEPLOY, REPO, copy_config, tool
from tests.stats_bounds import assert_binomial, binomial_bounds
from tests.support.backends import free_port
from tests.support.harness import ProxyProcess
from tests.support.processes import wait_status

LOCUSTFILE = REPO / "loadtests" / "locustfile.py"
CANARY_CONFIG = REPO / "config" / "canary-90-10.yaml"


def start_stockmanagers(processes) -> tuple[int, int]:
    """stockmanager 0.0.1 (healthy) and 0.0.2 (fails 50 %) as `pyproxy fake-service`s."""
    v1, v2 = free_port(), free_port()
    processes.fake_service("stockmanager-v1", v1)
    processes.fake_service("stockmanager-v2", v2, "--error-rate", "0.5")
    for port in (v1, v2):
        wait_status(f"http://127.0.0.1:{port}/health")
    return v1, v2


def run_locust(tmp_path: Path, name: str, host: str, users: list[str], seconds: int,
               *extra: str) -> dict[str, dict[str, str]]:
    """Run locust headless; returns its stats CSV rows by Name (the Aggregated row too)."""
    locust = tool("locust")
    prefix = tmp_path / name
    argv = [locust, "-f", str(LOCUSTFILE), *users, "--headless", "-u", "10", "-r", "10",
            "-t", f"{seconds}s", "--host", host, "--csv", str(prefix), "--only-summary",
            "--exit-code-on-error", "0", "--loglevel", "WARNING", *extra]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30,
                            cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, f"locust failed:\n{result.stdout}\n{result.stderr}"
    with open(f"{prefix}_stats.csv", newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    assert "Aggregated" in rows, rows
    return rows


def failures(tmp_path: Path, name: str) -> list[dict[str, str]]:
    with open(tmp_path / f"{name}_failures.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def counts(rows: dict[str, dict[str, str]], name: str) -> tuple[int, int]:
    row = rows.get(name)
    return (int(row["Request Count"]), int(row["Failure Count"])) if row else (0, 0)


def test_canary_split_and_failure_rates_from_locust_csv(tmp_path, processes):
    tool("locust")
    v1, v2 = start_stockmanagers(processes)
    config = copy_config(CANARY_CONFIG, tmp_path / "config",
                         {"127.0.0.1:8081": f"127.0.0.1:{v1}", "127.0.0.1:8082": f"127.0.0.1:{v2}"})
    proxy = ProxyProcess(config).start()
    try:
        rows = run_locust(tmp_path, "canary", proxy.url, ["CanaryUser"], 10, "--rate", "100")
    finally:
        assert proxy.stop() == 0
    names = set(rows) - {"Aggregated"}
    assert names == {"canary stockmanager/v1", "canary stockmanager/v2"}, names
    v1_total, v1_failed = counts(rows, "canary stockmanager/v1")
    v2_total, v2_failed = counts(rows, "canary stockmanager/v2")
    total = v1_total + v2_total
    assert total == int(rows["Aggregated"]["Request Count"])
    assert total >= 300, f"only {total} requests in 10 s at --rate 100"
    assert total <= 100 * 10 * 1.2, f"{total} requests: --rate 100 did not pace the run"
    assert_binomial(v2_total, total, 0.10)  # the 90/10 split
    assert v1_failed == 0  # 0.0.1 is healthy
    assert_binomial(v2_failed, v2_total, 0.50)  # 0.0.2 fails half of its requests
    errors = {row["Error"] for row in failures(tmp_path, "canary")}
    # The backend's own 500s; no proxy flag (no UF/UC/UO...): pyproxy itself failed nothing.
    assert len(errors) == 1 and "HTTP 500" in str(errors) and "flags" not in str(errors), errors


def test_tester_and_sticky_users_on_the_compose_lab_routes(tmp_path, processes):
    tool("locust")
    v1, v2 = start_stockmanagers(processes)
    config = copy_config(DEPLOY / "compose" / "pyproxy", tmp_path / "config", {
        "stockmanagerv0-0-1:8081": f"127.0.0.1:{v1}",
        "stockmanagerv0-0-2:8081": f"127.0.0.1:{v2}"})
    proxy = ProxyProcess(config, env={"PYPROXY_ADMIN_TOKEN": "smoke-test"}).start()
    try:
        rows = run_locust(tmp_path, "lab", proxy.url, ["TesterUser", "StickyUser"], 5,
                          "--rate", "60")
    finally:
        assert proxy.stop() == 0
    tester = {name for name in rows if name.startswith("tester ")}
    assert tester == {"tester stockmanager/v2"}, rows.keys()  # dark launch: only 0.0.2
    tester_total, tester_failed = counts(rows, "tester stockmanager/v2")
    assert tester_total >= 50
    assert_binomial(tester_failed, tester_total, 0.50)
    sticky = {name for name in rows if name.startswith("sticky ")}
    assert sticky and sticky <= {"sticky stockmanager/v1", "sticky stockmanager/v2"}, sticky
    moved = [row for row in failures(tmp_path, "lab") if "moved" in row["Error"]]
    assert not moved, moved  # the cookie kept every sticky user on its first version
    assert counts(rows, "sticky stockmanager/v1")[1] == 0


def test_storefront_user_against_the_demo(tmp_path):
    """`pyproxy demo --scenario canary`: the storefront's replies name the stockmanager."""
    tool("locust")
    port, admin = free_port(), free_port()
    demo = subprocess.Popen([sys.executable, "-m", "pyproxy", "demo", "--scenario", "canary",
                             "--port", str(port), "--admin-port", str(admin), "--load", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 40
        for line in demo.stdout:
            if line.startswith("Ready."):
                break
            assert time.monotonic() < deadline, "the demo did not get ready"
        else:
            pytest.fail("the demo exited before it was ready")
        rows = run_locust(tmp_path, "storefront", f"http://127.0.0.1:{port}",
                          ["StorefrontUser"], 5, "--rate", "60")
    finally:
        demo.terminate()
        demo.communicate(timeout=30)
    names = set(rows) - {"Aggregated"}
    assert names <= {"storefront stockmanager-v1", "storefront stockmanager-v2"}, names
    v1_total, v1_failed = counts(rows, "storefront stockmanager-v1")
    v2_total, v2_failed = counts(rows, "storefront stockmanager-v2")
    assert v1_total + v2_total >= 100
    low, high = binomial_bounds(v1_total + v2_total, 0.10)
    assert low <= v2_total <= high
    assert v1_failed == 0
    assert v2_failed <= v2_total
