"""deploy/compose for real: ``docker-compose up`` of the storefront -> stockmanager -> zipkin
lab with pyproxy and Prometheus, driven as its README says.

The stack runs under a project name of its own, so compose creates the network the
containers talk on and ``down`` removes it. The test reaches only the ports compose
publishes on 127.0.0.1 (free ones, through PYPROXY_PORT, PYPROXY_ADMIN_PORT and
PROMETHEUS_PORT). pyproxy's route directory is a copy of deploy/compose/pyproxy, put over the
shipped one by a compose override file, so editing it never touches the repository.
stockmanager 0.0.2 starts healthy here (STOCKMANAGER_V2_ERROR_RATE=0) so that "no failed
request" means what it says; the tests run in file order and share the one stack.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.containers.support import REPO, docker, free_port, wait_for
from tests.stats_bounds import assert_binomial
from tests.support.metrics import metric_value
from tests.support.processes import http

COMPOSE_DIR = REPO / "deploy" / "compose"
DASHBOARD = REPO / "deploy" / "grafana" / "pyproxy-dashboard.json"
V2 = "stockmanagerv0-0-2"
pytestmark = pytest.mark.containers
TOKEN = "compose-lab-test-token"


class Lab:
    def __init__(self, root: Path):
        self.project = f"pyproxy-lab-{uuid.uuid4().hex[:8]}"
        self.config_dir = root / "pyproxy"
        shutil.copytree(COMPOSE_DIR / "pyproxy", self.config_dir)
        # The container's uid 10001 reads the copy: world-readable like a git checkout.
        for path in [root, self.config_dir, *self.config_dir.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.override = root / "override.yml"
        self.override.write_text(yaml.safe_dump({"services": {
            "pyproxy": {"volumes": [f"{self.config_dir}:/etc/pyproxy:ro"]}}}))
        self.port, self.admin, self.prometheus = free_port(), free_port(), free_port()
        self.env = {**os.environ, "PYPROXY_ADMIN_TOKEN": TOKEN,
                    "PYPROXY_PORT": str(self.port), "PYPROXY_ADMIN_PORT": str(self.admin),
                    "PROMETHEUS_PORT": str(self.prometheus),
                    "STOCKMANAGER_V2_ERROR_RATE": "0"}

    def compose(self, *args: str, timeout: float = 180,
                **env: str) -> subprocess.CompletedProcess[str]:
        compose = shutil.which("docker-compose")
        assert compose, "docker-compose is not installed (apt-get install docker-compose)"
        result = subprocess.run(
            [compose, "-p", self.project, "-f", str(COMPOSE_DIR / "docker-compose.yml"),
             "-f", str(self.override), *args],
            capture_output=True, text=True, timeout=timeout, cwd=COMPOSE_DIR,
            env={**self.env, **env})
        assert result.returncode == 0, f"docker-compose {' '.join(args)}:\n{result.stderr}"
        return result

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def metrics(self) -> str:
        return http(f"http://127.0.0.1:{self.admin}/metrics", timeout=5)[2].decode()

    def generation(self) -> float:
        return metric_value(self.metrics(), "pyproxy_config_generation")

    def services(self) -> dict[str, dict]:
        body = http(f"http://127.0.0.1:{self.admin}/api/v1/services", timeout=5)[2]
        return {s["name"]: s for s in json.loads(body)["services"]}

    def edit(self, name: str, old: str, new: str) -> None:
        """Save a route file as an editor does: write a new file, rename it over the old."""
        path = self.config_dir / name
        text = path.read_text()
        assert old in text, (old, name)
        self.save(name, text.replace(old, new))

    def save(self, name: str, text: str) -> None:
        temporary = self.config_dir / f".{name}.swp"  # dotfiles are not config
        temporary.write_text(text)
        temporary.chmod(0o644)
        os.replace(temporary, self.config_dir / name)

    def settled(self, before: float) -> None:
        """Wait until edits made after generation ``before`` are loaded (reloads of saves
        close together may be one) and the last reload succeeded."""
        wait_for(lambda: self.generation() > before, "the edit reloaded", timeout=20)
        seen = self.generation()
        for _ in range(10):  # quiet for 1.5 s: no reload still coming
            time.sleep(1.5)
            now = self.generation()
            if now == seen:
                break
            seen = now
        assert metric_value(self.metrics(), "pyproxy_config_last_reload_success") == 1

    def restore(self) -> None:
        """The shipped route files again, each saved as an editor saves it."""
        for shipped in sorted((COMPOSE_DIR / "pyproxy").glob("*.yaml")):
            if (self.config_dir / shipped.name).read_text() != shipped.read_text():
                self.save(shipped.name, shipped.read_text())


@pytest.fixture(scope="module")
def lab(images: None) -> Iterator[Lab]:
    root = Path(tempfile.mkdtemp(prefix="pyproxy-lab-"))
    lab = Lab(root)
    try:
        lab.compose("up", "-d")
        wait_for(lambda: http(f"http://127.0.0.1:{lab.admin}/readyz", timeout=2)[0] == 200,
                 "pyproxy /readyz", timeout=60)
        wait_for(lambda: http(lab.url("/store/stocklevel"), timeout=5)[0] == 200,
                 "the storefront through pyproxy", timeout=60)
        yield lab
    finally:
        logs = subprocess.run(["docker-compose", "-p", lab.project, "-f",
                               str(COMPOSE_DIR / "docker-compose.yml"), "logs", "--tail", "20"],
                              capture_output=True, text=True, timeout=60, env=lab.env)
        print(logs.stdout[-6000:])
        subprocess.run(["docker-compose", "-p", lab.project, "-f",
                        str(COMPOSE_DIR / "docker-compose.yml"), "down", "-v",
                        "--remove-orphans", "--timeout", "30"],
                       capture_output=True, timeout=120, env=lab.env, check=False)
        shutil.rmtree(root, ignore_errors=True)


def stockmanager_version(reply: dict) -> str:
    """The stockmanager that served a storefront reply (fake-service's upstream_calls)."""
    call = next(iter(reply["upstream_calls"].values()))
    return str(call["body"]["name"])


def storefront_versions(lab: Lab, count: int) -> Counter[str]:
    """Which stockmanager served each of ``count`` GETs; every one must succeed."""
    def one(_: int) -> str:
        status, _headers, body = http(lab.url("/store/stocklevel"), timeout=15)
        assert status == 200, body[:300]
        return stockmanager_version(json.loads(body))

    with ThreadPoolExecutor(8) as pool:
        return Counter(pool.map(one, range(count)))


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n{text}")


def test_traffic_through_the_published_port_follows_the_90_10_split(
        lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    versions = storefront_versions(lab, 400)
    report(capsys, f"split 90/10: {dict(versions)} of 400")
    assert set(versions) == {"stockmanager-v1", "stockmanager-v2"}
    assert_binomial(versions["stockmanager-v2"], 400, 0.10)


def test_editing_the_bind_mounted_route_file_moves_the_split_with_no_failed_request(
        lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def traffic() -> None:
        deadline = time.monotonic() + 60  # bounded even if the test body fails
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                statuses[http(lab.url("/store/stocklevel"), timeout=15)[0]] += 1
            except OSError:
                statuses[0] += 1  # no response at all

    senders = [threading.Thread(target=traffic) for _ in range(4)]
    for sender in senders:
        sender.start()
    try:
        time.sleep(1)
        before = lab.generation()
        lab.edit("10-stockmanager.yaml", "subset: v1, weight: 90", "subset: v1, weight: 50")
        lab.edit("10-stockmanager.yaml", "subset: v2, weight: 10", "subset: v2, weight: 50")
        wait_for(lambda: lab.generation() >= before + 1, "the edited file reloaded", timeout=20)
        time.sleep(2)  # traffic on the new config too
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=20)
    weight = metric_value(lab.metrics(), "pyproxy_backend_weight", route="stockmanager",
                          backend="stockmanager/v2")
    versions = storefront_versions(lab, 300)
    report(capsys, f"reload 90/10 -> 50/50: {sum(statuses.values())} requests during the edit, "
                   f"statuses {dict(statuses)}; after: {dict(versions)} of 300")
    assert set(statuses) == {200}, statuses
    assert weight == pytest.approx(0.5)
    assert_binomial(versions["stockmanager-v2"], 300, 0.50)


def test_a_headless_locust_run_passes_its_own_checks(
        lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locust = Path(sys.executable).parent / "locust"
    assert locust.exists(), "locust is in the test extras (pip install -e '.[test]')"
    prefix = tmp_path / "lab"
    result = subprocess.run(
        [str(locust), "-f", str(REPO / "loadtests" / "locustfile.py"), "StorefrontUser",
         "--headless", "-u", "5", "-r", "5", "-t", "20s", "--rate", "25",
         "--host", lab.url(""), "--csv", str(prefix), "--only-summary",
         "--loglevel", "WARNING"],
        capture_output=True, text=True, timeout=80, cwd=tmp_path)
    rows = (prefix.parent / f"{prefix.name}_stats.csv").read_text().splitlines()
    aggregated = next(row for row in rows if ",Aggregated," in row)
    report(capsys, f"locust StorefrontUser 20 s: {aggregated}")
    # locust exits 1 when any request failed the locustfile's checks.
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def test_three_replicas_of_0_0_2_are_three_endpoints_and_the_dead_one_is_ejected(
        lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    lab.restore()  # back to the shipped 90/10
    # Two more healthy replicas, then -- containers created from then on get the new flags,
    # --no-recreate keeps the rest -- a third that answers 503 to everything.
    lab.compose("up", "-d", "--no-recreate", "--scale", f"{V2}=2")
    lab.compose("up", "-d", "--no-recreate", "--scale", f"{V2}=3",
                STOCKMANAGER_V2_ERROR_RATE="1", STOCKMANAGER_V2_ERROR_CODE="503")
    network = f"{lab.project}_lab"
    dead = []
    for container in lab.compose("ps", "-q", V2).stdout.split():
        state = json.loads(docker("inspect", container).stdout)[0]
        if "503" in state["Args"]:
            dead.append(state["NetworkSettings"]["Networks"][network]["IPAddress"] + ":8081")
    assert len(dead) == 1, dead

    def v2_endpoints() -> list[dict]:
        endpoints = lab.services()["stockmanager"]["endpoints"]
        return [e for e in endpoints if e["labels"].get("version") == "0.0.2"]

    wait_for(lambda: len(v2_endpoints()) == 3, "3 endpoints for 0.0.2", timeout=30)
    tester = {"Host": "stockmanager", "end-user": "tester"}  # the route to 0.0.2 only

    during: Counter[int] = Counter()

    def dead_ejected() -> bool:
        during[http(lab.url("/stocklevel"), headers=tester, timeout=10)[0]] += 1
        return any(e["address"] == dead[0] and e["ejected"] for e in v2_endpoints())

    wait_for(dead_ejected, f"{dead[0]} ejected", timeout=30, interval=0.1)
    retried = metric_value(lab.metrics(), "pyproxy_retries_total", route="stockmanager-tester")
    served: Counter[str] = Counter()
    for _ in range(60):
        status, headers, body = http(lab.url("/stocklevel"), headers=tester, timeout=10)
        assert status == 200, (status, headers.get("x-pyproxy-endpoint"), body[:200])
        served[headers["x-pyproxy-endpoint"]] += 1
    endpoints = v2_endpoints()
    report(capsys, "scaled 0.0.2 to 3: " + ", ".join(
        f"{e['address']} from {e['resolved_from']} ejected={e['ejected']}" for e in endpoints)
        + f"; until ejected: statuses {dict(during)} ({retried:.0f} retried); "
        f"then 60/60 requests 200, served by {dict(served)}")
    # The dead replica's 503s were retried on the others: no caller saw one.
    assert set(during) == {200} and retried >= 1, (during, retried)
    assert len(served) == 2 and dead[0] not in served, served
    assert {e["address"] for e in endpoints if not e["ejected"]} == set(served)


def test_the_labs_chaos_shadow_and_overload_steps(
        lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    """What the rest of the dashboard shows, done as the README's steps do it: edit, save,
    watch; then back. Chaos aborts half of zipkin's calls, a shadow copies stockmanager's
    traffic to 0.0.2, and a one-request limit on zipkin overflows its circuit breaker."""
    before = lab.generation()
    zipkin = (lab.config_dir / "20-zipkin.yaml").read_text()
    lab.save("20-zipkin.yaml", zipkin.replace("percent: 0}", "percent: 50}").replace(
        'address: "zipkin-backend:9411"',
        'address: "zipkin-backend:9411"\n    connection_pool: '
        '{max_requests: 1, max_pending_requests: 0}'))
    lab.edit("10-stockmanager.yaml", "    sticky: {header: end-user}\n",
             "    sticky: {header: end-user}\n"
             "    mirror: {service: stockmanager, subset: v2, percent: 50}\n")
    lab.settled(before)

    def burst(_: int) -> int:
        return http(lab.url("/store/stocklevel"), timeout=15)[0]

    with ThreadPoolExecutor(8) as pool:
        statuses = Counter(pool.map(burst, range(80)))
    metrics = lab.metrics()
    faults = metric_value(metrics, "pyproxy_faults_injected_total", route="zipkin")
    overflows = metric_value(metrics, "pyproxy_circuit_breaker_overflows_total",
                             service="zipkin")
    mirrored = metric_value(metrics, "pyproxy_mirror_requests_total", route="stockmanager")
    lab.restore()
    report(capsys, f"chaos/shadow/overload: 80 storefront calls {dict(statuses)}; "
                   f"faults {faults:.0f}, breaker overflows {overflows:.0f}, "
                   f"mirrored {mirrored:.0f}")
    assert faults > 0 and overflows > 0 and mirrored > 0
    # Storefront errors only (its calls fail when zipkin's do); pyproxy answered every call.
    assert set(statuses) <= {200, 500}, statuses


def promql(expr: str) -> str:
    """A dashboard expression as Grafana sends it: its variables filled in."""
    if expr.startswith("label_values("):  # Grafana's, not PromQL: the series that carry it
        metric, label = (part.strip() for part in expr[len("label_values("):-1].split(","))
        return f"group by ({label}) ({metric})"
    # $__rate_interval with a 5 s scrape interval is 20 s; 1m keeps a few samples in it.
    return expr.replace("$__rate_interval", "1m").replace('"$route"', '".*"')


def test_every_dashboard_query_returns_data_from_the_labs_prometheus(
        lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.deploy.test_grafana_dashboard import dashboard, expressions

    queries = sorted({promql(expr) for expr in expressions(dashboard())})
    api = f"http://127.0.0.1:{lab.prometheus}/api/v1/query?query="
    answered: set[str] = set()  # a query that returned data once (scrapes come every 5 s)

    def all_answer() -> bool:
        http(lab.url("/store/stocklevel"), timeout=10)  # keep the rates above zero
        for query in set(queries) - answered:
            status, _, body = http(api + urllib.parse.quote(query), timeout=10)
            assert status == 200, (query, body[:300])
            if json.loads(body)["data"]["result"]:
                answered.add(query)
        return answered == set(queries)

    try:
        wait_for(all_answer, "every dashboard query answered", timeout=60, interval=2)
    finally:
        report(capsys, f"Prometheus: {len(answered)}/{len(queries)} dashboard queries "
                       f"return data; empty: {sorted(set(queries) - answered)}")


def test_docker_compose_down_leaves_nothing_running(lab: Lab) -> None:
    lab.compose("down", "-v", "--remove-orphans", "--timeout", "30")
    label = f"label=com.docker.compose.project={lab.project}"
    assert docker("ps", "-a", "-q", "--filter", label).stdout.split() == []
    assert docker("network", "ls", "-q", "--filter", label).stdout.split() == []
    assert docker("volume", "ls", "-q", "--filter", label).stdout.split() == []
