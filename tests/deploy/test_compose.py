"""deploy/compose: ``docker-compose config`` accepts the stack, and the same topology runs
without containers.

The replay reads docker-compose.yml and starts what it describes as plain processes on
127.0.0.1: every ``pyproxy fake-service`` service with its command, and the pyproxy service
with the image's CMD and its bind-mounted config directory. Container ports are remapped to
free loopback ports, the way ``-p`` publishes them; the compose network's DNS (service names
and aliases) is emulated for the fake services by a ``sitecustomize`` that resolves those
names to 127.0.0.1, so callers still send ``Host: stockmanager`` and ``Host: zipkin`` and
pyproxy routes on them exactly as in the containers. In pyproxy's config only the
``host:port`` of each endpoint is remapped. Prometheus, Grafana and locust are not started:
the test scrapes what Prometheus's scrape config names, the Grafana files are checked for
what they point at.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.deploy.support import DEPLOY, REPO, copy_config, tool
from tests.stats_bounds import assert_binomial
from tests.support.backends import free_port
from tests.support.metrics import metric_value
from tests.support.processes import http, wait_status

COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
TOKEN = "compose-test-token"

SITECUSTOMIZE = '''\
"""Test-only stand-in for the compose network's DNS: names in $PYPROXY_TEST_HOSTS resolve
to the addresses given there (aiohttp's default threaded resolver calls getaddrinfo)."""
import json, os, socket

_HOSTS = json.loads(os.environ.get("PYPROXY_TEST_HOSTS", "{}"))
_getaddrinfo = socket.getaddrinfo


def _resolve(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    return _getaddrinfo(_HOSTS.get(name, host), *args, **kwargs)


socket.getaddrinfo = _resolve
'''


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def image_cmd() -> list[str]:
    found = re.search(r"^CMD\s+(\[.*\])\s*$", (REPO / "Dockerfile").read_text(), re.M)
    assert found, "the Dockerfile has no exec-form CMD"
    return json.loads(found.group(1))


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` against ``env``."""
    def one(found: re.Match) -> str:
        name, op, arg = found.group(1), found.group(2), found.group(3) or ""
        current = env.get(name, "")
        if op == ":?" and not current:
            raise AssertionError(f"compose would refuse to start: {arg}")
        return current or (arg if op == ":-" else "")

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def is_fake_service(service: dict) -> bool:
    return service.get("command", [])[:2] == ["pyproxy", "fake-service"]


# --------------------------------------------------------------------------- validation


def test_docker_compose_config_accepts_the_stack():
    docker_compose = tool("docker-compose")
    env = {**os.environ, "PYPROXY_ADMIN_TOKEN": TOKEN}
    result = subprocess.run([docker_compose, "-f", str(COMPOSE_FILE), "config"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert set(rendered["services"]) >= {"pyproxy", "storefront", "stockmanagerv0-0-1",
                                         "stockmanagerv0-0-2", "zipkin-backend", "prometheus",
                                         "grafana", "locust"}
    # Without a token compose stops with our message instead of starting an admin API that
    # pyproxy would refuse to serve.
    env.pop("PYPROXY_ADMIN_TOKEN")
    refused = subprocess.run([docker_compose, "-f", str(COMPOSE_FILE), "config", "-q"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode != 0 and "PYPROXY_ADMIN_TOKEN" in refused.stderr


def test_compose_files_point_at_what_exists():
    stack = compose()
    for name, service in stack["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (COMPOSE_DIR / source).exists(), f"{name}: {source} does not exist"
    grafana = stack["services"]["grafana"]
    mounts = {v.split(":")[1]: COMPOSE_DIR / v.split(":")[0] for v in grafana["volumes"]}
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    directory, _, file = home.rpartition("/")
    assert (mounts[directory] / file).is_file(), home
    provider = yaml.safe_load((COMPOSE_DIR / "grafana/provisioning/dashboards/pyproxy.yaml")
                              .read_text())["providers"][0]
    assert provider["options"]["path"] in mounts
    datasource = yaml.safe_load((COMPOSE_DIR / "grafana/provisioning/datasources/"
                                 "prometheus.yaml").read_text())["datasources"][0]
    dashboard = json.loads((mounts[directory] / file).read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert uids <= {datasource["uid"], "${datasource}"}, uids
    pyproxy_cmd = image_cmd()
    config_dir = pyproxy_cmd[pyproxy_cmd.index("-c") + 1]
    assert any(v.split(":")[1] == config_dir for v in stack["services"]["pyproxy"]["volumes"])
    grace = stack["services"]["pyproxy"]["stop_grace_period"]
    timeouts = yaml.safe_load((COMPOSE_DIR / "pyproxy/00-proxy.yaml").read_text())["timeouts"]
    seconds = lambda text: float(text.rstrip("s"))  # noqa: E731
    assert seconds(grace) >= seconds(timeouts["drain_delay"]) + seconds(timeouts["drain_timeout"])


# --------------------------------------------------------------------------- replay


class Topology:
    """The compose services as loopback processes; see the module docstring."""

    def __init__(self, tmp_path: Path, processes):
        self.tmp = tmp_path
        self.processes = processes
        self.stack = compose()
        self.owner: dict[str, str] = {}  # DNS name (service or alias) → service
        for name, service in self.stack["services"].items():
            self.owner[name] = name
            networks = service.get("networks") or {}
            if isinstance(networks, dict):
                for network in networks.values():
                    for alias in (network or {}).get("aliases", []):
                        self.owner[alias] = name
        self.ports: dict[tuple[str, int], int] = {}  # (service, container port) → loopback

    def port(self, service: str, container_port: int) -> int:
        key = (service, container_port)
        if key not in self.ports:
            self.ports[key] = free_port()
        return self.ports[key]

    def url(self, url: str) -> str:
        """A URL as seen from inside the network, with the name kept and the port remapped."""
        found = re.match(r"(https?://)([\w.-]+):(\d+)(.*)", url)
        assert found, url
        scheme, name, port, rest = found.groups()
        return f"{scheme}{name}:{self.port(self.owner[name], int(port))}{rest}"

    def address(self, name: str, port: int) -> str:
        return f"127.0.0.1:{self.port(self.owner[name], port)}"

    def start(self) -> None:
        services = self.stack["services"]
        dns_dir = self.tmp / "dns"
        dns_dir.mkdir()
        (dns_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        dns = {name: "127.0.0.1" for name in self.owner}
        self.health: list[str] = []
        for name, service in services.items():
            if not is_fake_service(service):
                continue
            argv = list(service["command"][1:])
            i = argv.index("--port")
            argv[i + 1] = str(self.port(name, int(argv[i + 1])))
            argv[argv.index("--host") + 1] = "127.0.0.1"
            argv = [interpolate(a, {}) for a in argv]  # ${VAR:-default}: the defaults
            argv = [self.url(a) if a.startswith("http://") else a for a in argv]
            self.processes.start(name, [sys.executable, "-m", "pyproxy", *argv], env={
                "PYTHONPATH": str(dns_dir), "PYPROXY_TEST_HOSTS": json.dumps(dns)})
            # The container's own healthcheck URL (127.0.0.1 inside the container).
            health = re.match(r"http://127\.0\.0\.1:(\d+)(/.*)",
                              service["environment"]["PYPROXY_HEALTH_URL"])
            assert health, f"{name}: PYPROXY_HEALTH_URL must probe the container itself"
            self.health.append(f"http://127.0.0.1:{self.port(name, int(health.group(1)))}"
                               f"{health.group(2)}")

        proxy = services["pyproxy"]
        mounts = {v.split(":")[1]: COMPOSE_DIR / v.split(":")[0] for v in proxy["volumes"]}
        mapping = {}
        for name in self.owner:
            for (service, container_port) in list(self.ports):
                if service == self.owner[name]:
                    mapping[f"{name}:{container_port}"] = self.address(name, container_port)
        argv = []
        for arg in image_cmd()[1:]:
            if arg in mounts:
                arg = str(copy_config(mounts[arg], self.tmp / "etc-pyproxy", mapping))
            argv.append(arg)
        self.config_dir = self.tmp / "etc-pyproxy"
        published = [p.split(":")[-2:] for p in proxy["ports"]]
        container_ports = {int(inner) for _, inner in published}
        assert container_ports == {8080, 9901}, published
        self.listen = self.port("pyproxy", 8080)
        self.admin = self.port("pyproxy", 9901)
        env = {k: interpolate(str(v), {"PYPROXY_ADMIN_TOKEN": TOKEN})
               for k, v in proxy["environment"].items()}
        self.pyproxy = self.processes.start("pyproxy", [
            sys.executable, "-m", "pyproxy", *argv,
            "--listen", f"127.0.0.1:{self.listen}", "--admin", f"127.0.0.1:{self.admin}"],
            env=env)
        for url in self.health:
            wait_status(url)
        try:
            wait_status(f"http://127.0.0.1:{self.admin}/readyz", process=self.pyproxy)
        except AssertionError as failed:
            raise AssertionError(self.processes.log("pyproxy")) from failed

    def scrape_url(self) -> str:
        """Where Prometheus's scrape config says pyproxy's metrics are, remapped."""
        prometheus = yaml.safe_load((COMPOSE_DIR / "prometheus/prometheus.yml").read_text())
        job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "pyproxy")
        target = job["static_configs"][0]["targets"][0]
        name, port = target.split(":")
        return f"http://{self.address(name, int(port))}{job.get('metrics_path', '/metrics')}"


def storefront_calls(url: str, count: int, headers: dict | None = None):
    """(status, reply JSON) for ``count`` GETs through the ingress, 10 at a time."""
    def one(_):
        status, _, body = http(url, headers=headers, timeout=10)
        return status, json.loads(body)

    with ThreadPoolExecutor(10) as pool:
        return list(pool.map(one, range(count)))


def chain(reply: dict) -> list[tuple[str, int]]:
    """[(name, code)] down the fake-service call chain of one reply."""
    links = [(reply["name"], reply["code"])]
    while reply.get("upstream_calls"):
        call = next(iter(reply["upstream_calls"].values()))
        body = call.get("body")
        if not isinstance(body, dict) or "name" not in body:
            links.append((f"proxy:{body!r}"[:40], call["code"]))
            break
        reply = body
        links.append((reply["name"], reply["code"]))
    return links


def test_the_compose_topology_runs_without_containers(tmp_path, processes):
    topology = Topology(tmp_path, processes)
    topology.start()
    ingress = f"http://127.0.0.1:{topology.listen}/store/stocklevel"

    reached_zipkin = 0  # every chain that got past stockmanager called zipkin once
    replies = storefront_calls(ingress, 200)
    versions = {"stockmanager-v1": 0, "stockmanager-v2": 0}
    v2_failed = 0
    for status, reply in replies:
        links = chain(reply)
        names = [name for name, _ in links]
        assert names[0] == "storefront", links
        versions[names[1]] += 1
        if status == 500:
            # Only 0.0.2 fails, on its own, before it calls zipkin.
            assert links[1:] == [("stockmanager-v2", 500)], links
            v2_failed += 1
        else:
            assert status == 200 and names[2] == "zipkin", links
            assert all(code == 200 for _, code in links), links
            reached_zipkin += 1
    assert_binomial(versions["stockmanager-v2"], 200, 0.10)
    assert_binomial(v2_failed, versions["stockmanager-v2"], 0.50)

    # The dark launch: end-user travels with the storefront's call, the tester gets 0.0.2.
    for _, reply in storefront_calls(ingress, 10, {"end-user": "tester"}):
        assert chain(reply)[1][0] == "stockmanager-v2"
        reached_zipkin += "zipkin" in {name for name, _ in chain(reply)}
    # A signed-in user stays on the version they drew (sticky by end-user), across the hop.
    for user in ("alice", "bob", "carol"):
        user_replies = storefront_calls(ingress, 8, {"end-user": user})
        drawn = {chain(reply)[1][0] for _, reply in user_replies}
        assert len(drawn) == 1, (user, drawn)
        reached_zipkin += sum("zipkin" in {name for name, _ in chain(reply)}
                              for _, reply in user_replies)

    # What Prometheus scrapes.
    status, _, body = http(topology.scrape_url())
    assert status == 200
    metrics = body.decode()
    routes = {"storefront": "storefront", "stockmanager": "stockmanager/v1",
              "zipkin": "zipkin", "stockmanager-tester": "stockmanager/v2"}
    for route, backend in routes.items():
        assert metric_value(metrics, "pyproxy_requests_total", route=route, backend=backend) > 0, \
            (route, backend)
        assert metric_value(metrics, "pyproxy_request_duration_seconds_count", route=route) > 0
    assert metric_value(metrics, "pyproxy_requests_total", route="stockmanager",
                        backend="stockmanager/v2", code="500") > 0
    assert metric_value(metrics, "pyproxy_backend_weight", route="stockmanager",
                        backend="stockmanager/v2") == pytest.approx(0.1)
    assert metric_value(metrics, "pyproxy_request_duration_seconds_bucket", route="storefront",
                        le="+Inf") == metric_value(metrics, "pyproxy_requests_total",
                                                   route="storefront")
    # Exact: how many chains reached zipkin is random (0.0.2 fails half its calls first).
    assert metric_value(metrics, "pyproxy_upstream_requests_total",
                        service="zipkin") == reached_zipkin
    generation = metric_value(metrics, "pyproxy_config_generation")

    # The bind-mounted config is hot-reloaded: switch the zipkin fault on by editing the file.
    zipkin = topology.config_dir / "20-zipkin.yaml"
    zipkin.write_text(zipkin.read_text().replace("percent: 0}", "percent: 100}"))
    deadline = time.monotonic() + 15
    while metric_value(http(topology.scrape_url())[2].decode(), "pyproxy_config_generation") \
            <= generation:
        assert time.monotonic() < deadline, "the edited config was not reloaded"
        time.sleep(0.1)
    status, headers, _ = http(f"http://127.0.0.1:{topology.listen}/api/v2/spans",
                              headers={"Host": "zipkin"})
    assert (status, headers["x-pyproxy-flags"]) == (504, "FI")
    aborted = 0
    for status, reply in storefront_calls(ingress, 10):
        links = chain(reply)
        # zipkin's 504 fails stockmanager, which fails the storefront (unless 0.0.2 failed
        # on its own before calling zipkin).
        assert status == 500 and (links[-1][1] == 504 or links[-1] == ("stockmanager-v2", 500)), \
            links
        aborted += links[-1][1] == 504
    metrics = http(topology.scrape_url())[2].decode()
    assert metric_value(metrics, "pyproxy_faults_injected_total", route="zipkin",
                        kind="abort") == 1 + aborted
    assert metric_value(metrics, "pyproxy_config_reloads_total", result="success") >= 2


@pytest.mark.parametrize("path", [COMPOSE_DIR / "pyproxy", DEPLOY / "docker" / "pyproxy.yaml"],
                         ids=["compose-routes", "image-default-config"])
def test_shipped_configs_validate_without_warnings(path):
    result = subprocess.run([sys.executable, "-m", "pyproxy", "validate", "--json", str(path)],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYPROXY_ADMIN_TOKEN": TOKEN})
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["warnings"] == []
