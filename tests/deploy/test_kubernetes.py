"""deploy/kubernetes: schema-valid manifests that fit together, a ConfigMap pyproxy accepts,
and the ConfigMap update path (the kubelet's ``..data`` symlink swap) hot-reloads a running
pyproxy.

``kubectl kustomize`` renders the base and the lab overlay (skipped without kubectl);
kubernetes-validate checks every built-in kind strictly against the newest Kubernetes
schema it ships; the ServiceMonitor (a CRD it has no schema for) is checked against the
fields of the Prometheus Operator's monitoring.coreos.com/v1 API that it uses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.deploy.support import DEPLOY, REPO, remap_addresses, tool
from tests.support.backends import free_port
from tests.support.harness import ProxyProcess
from tests.support.metrics import metric_value
from tests.support.processes import http, wait_status

K8S = DEPLOY / "kubernetes"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "lab"
TOKEN = "kubernetes-test-token"


def render(path: Path) -> list[dict]:
    kubectl = tool("kubectl")
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def lab() -> list[dict]:
    return render(OVERLAY)


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def seconds(duration: str) -> float:
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    assert found, duration
    return float(found.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[found.group(2)]


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("path", [BASE, OVERLAY], ids=["base", "overlay-lab"])
def test_manifests_pass_kubernetes_validate(path):
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed "
                                      "(CI: pip install kubernetes-validate)")
    version = kubernetes_validate.latest_version()
    docs = render(path)
    checked = []
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: test_servicemonitor_uses_only_fields_of_its_crd
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any problem
        checked.append(f"{doc['kind']}/{doc['metadata']['name']}")
    assert checked
    # Strict means strict: a misspelt field would not get through.
    broken = json.loads(json.dumps(one(docs, "Deployment", "pyproxy")))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 35
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


DURATION = (r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
            r"(([0-9]+)ms)?)$")
SERVICEMONITOR_SCHEMA = {  # the part of monitoring.coreos.com/v1 ServiceMonitor used here
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchLabels": {"type": "object",
                                    "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "interval": {"type": "string", "pattern": DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": DURATION},
                        "scheme": {"enum": ["http", "https"]},
                    }}},
            },
        },
    },
}


def test_servicemonitor_uses_only_fields_of_its_crd(lab):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema comes with "
                                                          "kubernetes-validate")
    monitor = one(lab, "ServiceMonitor", "pyproxy")
    jsonschema.validate(monitor, SERVICEMONITOR_SCHEMA)
    service = one(lab, "Service", "pyproxy-admin")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    others = [s["metadata"]["name"] for s in lab if s["kind"] == "Service" and s is not service
              and selects(monitor["spec"]["selector"]["matchLabels"],
                      s["metadata"].get("labels", {}))]
    assert not others, f"the ServiceMonitor would scrape the same pods again via {others}"
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    assert monitor["metadata"]["namespace"] == "pyproxy-lab"


# --------------------------------------------------------------------------- the config


def configmap_dir(docs: list[dict], target: Path) -> Path:
    data = one(docs, "ConfigMap", "pyproxy-routes")["data"]
    target.mkdir()
    for key, text in data.items():
        (target / key).write_text(text)
    return target


def validate(path: Path) -> dict:
    result = subprocess.run([sys.executable, "-m", "pyproxy", "validate", "--json", str(path)],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYPROXY_ADMIN_TOKEN": TOKEN})
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_configmap_config_passes_pyproxy_validate(lab, tmp_path):
    config = configmap_dir(lab, tmp_path / "etc-pyproxy")
    assert sorted(p.name for p in config.iterdir()) == sorted(
        p.name for p in (BASE / "config").glob("*.yaml"))
    summary = validate(config)
    assert not summary.get("warnings"), summary["warnings"]
    text = json.dumps(summary)
    for route in ("stockmanager", "stockmanager-tester", "zipkin"):
        assert f'"{route}"' in text, route


def test_base_config_files_pass_pyproxy_validate():
    """The ConfigMap's sources, for machines without kubectl."""
    summary = validate(BASE / "config")
    assert not summary.get("warnings"), summary["warnings"]


# --------------------------------------------------------------------------- fit


def test_manifests_fit_together(lab, tmp_path):
    deployment = one(lab, "Deployment", "pyproxy")
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "pyproxy")
    config = {}
    for text in one(lab, "ConfigMap", "pyproxy-routes")["data"].values():
        config.update({k: v for k, v in yaml.safe_load(text).items()
                       if k not in ("services", "routes")})
    services_cfg, routes_cfg = {}, []
    for text in one(lab, "ConfigMap", "pyproxy-routes")["data"].values():
        document = yaml.safe_load(text)
        services_cfg.update(document.get("services") or {})
        routes_cfg += document.get("routes") or []

    assert deployment["spec"]["replicas"] >= 2
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])

    # Ports: the container ports are the ones the config listens on.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(config["listen"].rsplit(":", 1)[1])
    assert ports["admin"] == int(config["admin"]["listen"].rsplit(":", 1)[1])
    assert config["admin"]["listen"].startswith("0.0.0.0:"), "probes come from outside the pod"
    token_env = next(e for e in container["env"] if e["name"] == "PYPROXY_ADMIN_TOKEN")
    assert "secretKeyRef" in token_env["valueFrom"] and "PYPROXY_ADMIN_TOKEN" in \
        config["admin"]["token"]

    # Probes and the drain.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    timeouts = config["timeouts"]
    drain = seconds(timeouts["drain_delay"]) + seconds(timeouts["drain_timeout"])
    assert spec["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + drain, \
        "the kubelet would SIGKILL pyproxy before its drain ends"
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["admin"]
    assert annotations["prometheus.io/path"] == "/metrics"

    # Resources and the unprivileged user (the Dockerfile's).
    assert container["resources"]["requests"] and container["resources"]["limits"]
    uid = re.search(r"^USER\s+(\d+)", (REPO / "Dockerfile").read_text(), re.M).group(1)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert str(spec["securityContext"]["runAsUser"]) == uid
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    cmd = json.loads(re.search(r"^CMD\s+(\[.*\])", (REPO / "Dockerfile").read_text(),
                               re.M).group(1))
    assert container["args"] == cmd

    # The routes: the whole ConfigMap mounted as the directory the CMD reads, no subPath.
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == cmd[-1])
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "pyproxy-routes"  # no hash suffix: updates in place

    # Disruptions: the PDB covers the pods and leaves one up.
    pdb = one(lab, "PodDisruptionBudget", "pyproxy")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    assert pdb["spec"]["minAvailable"] >= 1

    # Apex Services: named after the route hosts, selecting the pyproxy pods.
    services = {s["metadata"]["name"]: s for s in lab if s["kind"] == "Service"}
    hosts = {h for route in routes_cfg for h in route.get("hosts", [])}
    for host in hosts:
        apex = services[host]
        assert selects(apex["spec"]["selector"], pod["metadata"]["labels"]), host
        assert all(p["targetPort"] in ("http", ports["http"]) for p in apex["spec"]["ports"])

    # Leaf Services: every endpoint the config names is a Service with that port, and it
    # selects the pods of one lab Deployment.
    apps = [d for d in lab if d["kind"] == "Deployment" and d is not deployment]
    for _name, service in services_cfg.items():
        for endpoint in service["endpoints"]:
            host, port = endpoint["address"].rsplit(":", 1)
            leaf = services[host]
            assert int(port) in {p["port"] for p in leaf["spec"]["ports"]}, endpoint
            assert not selects(leaf["spec"]["selector"], pod["metadata"]["labels"]), \
                f"{host} would send pyproxy's traffic back to pyproxy"
            matching = [a for a in apps if selects(leaf["spec"]["selector"],
                                                   a["spec"]["template"]["metadata"]["labels"])]
            assert len(matching) == 1, (host, [a["metadata"]["name"] for a in matching])
            labels = matching[0]["spec"]["template"]["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in endpoint.get("labels", {}).items()), \
                f"{host}: the pods' labels do not match the endpoint's subset labels"
    # Everything lands in the overlay's namespace.
    assert {d["metadata"].get("namespace") for d in lab if d["kind"] != "Namespace"} \
        == {"pyproxy-lab"}


# --------------------------------------------------------------------------- ..data swap


class ConfigMapVolume:
    """A directory laid out the way the kubelet's AtomicWriter maintains a ConfigMap volume:
    the files live in a timestamped ``..YYYY_MM_DD_...`` directory, ``..data`` points at it,
    and each key is a symlink ``KEY -> ..data/KEY``. An update writes a new timestamped
    directory, points ``..data_tmp`` at it and renames that over ``..data`` (atomic), adds
    or removes key links, then deletes the old directory."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir()
        self.generation = 0

    def publish(self, files: dict[str, str]) -> None:
        self.generation += 1
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()) + f"{self.generation:09d}"
        (self.root / stamp).mkdir()
        for key, text in files.items():
            (self.root / stamp / key).write_text(text)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        os.symlink(stamp, self.root / "..data_tmp")
        os.rename(self.root / "..data_tmp", self.root / "..data")
        for link in self.root.iterdir():
            if not link.name.startswith("..") and link.name not in files:
                link.unlink()
        for key in files:
            if not (self.root / key).is_symlink():
                os.symlink(f"..data/{key}", self.root / key)
        if old:
            for file in (self.root / old).iterdir():
                file.unlink()
            (self.root / old).rmdir()


def backends_seen(proxy: ProxyProcess, host: str, count: int) -> dict[str, int]:
    seen: dict[str, int] = {}
    for _ in range(count):
        status, headers, _ = http(f"{proxy.url}/stocklevel", headers={"Host": host})
        key = f"{status} {headers.get('x-pyproxy-backend')}"
        seen[key] = seen.get(key, 0) + 1
    return seen


def wait_generation(proxy: ProxyProcess, above: float, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        metrics = http(f"{proxy.admin_url}/metrics")[2].decode()
        if metric_value(metrics, "pyproxy_config_reloads_total") > above:
            return metrics
        assert time.monotonic() < deadline, "pyproxy did not notice the ..data swap"
        time.sleep(0.1)


def test_configmap_symlink_swap_is_hot_reloaded(tmp_path, processes):
    v1, v2, zipkin = free_port(), free_port(), free_port()
    processes.fake_service("stockmanager-v1", v1)
    processes.fake_service("stockmanager-v2", v2)
    processes.fake_service("zipkin", zipkin)
    for port in (v1, v2, zipkin):
        wait_status(f"http://127.0.0.1:{port}/health")
    mapping = {"stockmanagerv0-0-1:8081": f"127.0.0.1:{v1}",
               "stockmanagerv0-0-2:8081": f"127.0.0.1:{v2}",
               "zipkin-backend:9411": f"127.0.0.1:{zipkin}"}
    files = {p.name: remap_addresses(p.read_text(), mapping)
             for p in sorted((BASE / "config").glob("*.yaml"))}
    volume = ConfigMapVolume(tmp_path / "etc-pyproxy")
    volume.publish(files)

    proxy = ProxyProcess(volume.root, env={"PYPROXY_ADMIN_TOKEN": TOKEN}).start()
    try:
        before = backends_seen(proxy, "stockmanager", 100)
        assert set(before) == {"200 stockmanager/v1", "200 stockmanager/v2"}, before
        assert backends_seen(proxy, "inventory", 1) == {"404 -": 1}
        reloads = metric_value(http(f"{proxy.admin_url}/metrics")[2].decode(),
                               "pyproxy_config_reloads_total")

        # `kubectl apply` of the lab's rollback (0.0.2 to weight 0) plus a new key.
        rollback = files["10-stockmanager.yaml"].replace(
            "subset: v2, weight: 10}", "subset: v2, weight: 0}")
        assert rollback != files["10-stockmanager.yaml"]
        updated = {**files, "10-stockmanager.yaml": rollback, "30-inventory.yaml": (
            "routes:\n  - name: inventory\n    hosts: [inventory]\n"
            "    backends: [{service: stockmanager, subset: v1}]\n")}
        volume.publish(updated)
        metrics = wait_generation(proxy, reloads)
        assert metric_value(metrics, "pyproxy_config_last_reload_success") == 1
        assert metric_value(metrics, "pyproxy_backend_weight", route="stockmanager",
                            backend="stockmanager/v2") == 0
        assert backends_seen(proxy, "stockmanager", 50) == {"200 stockmanager/v1": 50}
        assert backends_seen(proxy, "inventory", 3) == {"200 stockmanager/v1": 3}

        # A broken update is refused whole; the last good config keeps serving.
        reloads = metric_value(metrics, "pyproxy_config_reloads_total")
        volume.publish({**updated, "30-inventory.yaml": "routes: [{name: inventory, hosts: 7}]\n"})
        metrics = wait_generation(proxy, reloads)
        assert metric_value(metrics, "pyproxy_config_last_reload_success") == 0
        assert backends_seen(proxy, "inventory", 3) == {"200 stockmanager/v1": 3}
    finally:
        assert proxy.stop() == 0
