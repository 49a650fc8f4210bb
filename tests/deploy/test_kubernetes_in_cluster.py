"""deploy/kubernetes/overlays/in-cluster: schema-valid manifests that fit together, RBAC
that grants exactly what in-cluster mode uses, and examples valid against the Gateway API
and SMI CRD schemas (tests/deploy/crds, with their source and license).

``kubectl kustomize`` renders the overlay (skipped without kubectl); kubernetes-validate
checks every built-in kind strictly; the custom resources are checked with jsonschema
against the CRDs' own OpenAPI schemas, strictly (an unknown field fails, as with
``kubectl apply --validate=strict``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from pyproxy.discovery.kubernetes import resources
from pyproxy.discovery.kubernetes.lease import LEASE_NAME
from pyproxy.discovery.kubernetes.status import CONTROLLER_NAME
from tests.deploy.support import DEPLOY
from tests.deploy.test_kubernetes import one, render, selects, validate

OVERLAY = DEPLOY / "kubernetes" / "overlays" / "in-cluster"
EXAMPLES = OVERLAY / "examples"
CRDS = Path(__file__).parent / "crds"
NAMESPACE = "pyproxy-lab"


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return render(OVERLAY)


def examples() -> list[dict]:
    return [doc for path in sorted(EXAMPLES.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → the CRD's schema, made strict."""
    found = {}
    for name in ("gateway-api.yaml", "smi.yaml"):
        for kind, versions in yaml.safe_load((CRDS / name).read_text()).items():
            for version, entry in versions.items():
                found[(f"{entry['group']}/{version}", kind)] = strict(entry["schema"])
    return found


def strict(schema: dict) -> dict:
    """Unknown fields refused wherever the schema lists the known ones (metadata is
    ObjectMeta's business, not the CRD's)."""
    schema = copy.deepcopy(schema)

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    # Every object has these, whether or not the CRD's schema spells them out (SMI's do not).
    schema["properties"].update({"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                 "metadata": {"type": "object"}})
    return schema


def custom(doc: dict) -> bool:
    return doc["apiVersion"].split("/")[0].endswith((".k8s.io", ".smi-spec.io")) \
        and not doc["apiVersion"].startswith(("rbac.", "coordination.", "discovery.",
                                              "networking.k8s.io"))


# --------------------------------------------------------------------------- schemas


def test_built_in_kinds_pass_kubernetes_validate(docs):
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed "
                                      "(CI: pip install kubernetes-validate)")
    version = kubernetes_validate.latest_version()
    checked = []
    for doc in docs:
        if custom(doc) or doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        checked.append(doc["kind"])
    assert {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "Deployment"} \
        <= set(checked)


def test_custom_resources_match_their_crd_schemas(docs):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema comes with "
                                                          "kubernetes-validate")
    schemas = crd_schemas()
    objects = [d for d in docs + examples() if custom(d)]
    assert {d["kind"] for d in objects} == {"GatewayClass", "Gateway", "HTTPRoute",
                                            "TrafficSplit"}
    for doc in objects:
        jsonschema.validate(doc, schemas[(doc["apiVersion"], doc["kind"])])
    # Strict: a misspelt field, a weight out of range, a bad controllerName all fail.
    route = copy.deepcopy(next(d for d in objects if d["kind"] == "HTTPRoute"))
    route["spec"]["rules"][1]["backendRefs"][0]["wieght"] = 5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(route, schemas[(route["apiVersion"], "HTTPRoute")])
    route = copy.deepcopy(next(d for d in objects if d["kind"] == "HTTPRoute"))
    route["spec"]["rules"][1]["backendRefs"][0]["weight"] = 1_000_001
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(route, schemas[(route["apiVersion"], "HTTPRoute")])
    gateway_class = copy.deepcopy(one(docs, "GatewayClass", "pyproxy"))
    gateway_class["spec"]["controllerName"] = "no-domain"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(gateway_class, schemas[(gateway_class["apiVersion"],
                                                    "GatewayClass")])


def test_status_pyproxy_writes_matches_the_crd_schemas():
    """What status.py writes is valid HTTPRoute/Gateway/GatewayClass status."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema comes with "
                                                          "kubernetes-validate")
    from pyproxy.discovery.kubernetes.report import (
        ImportResult,
        ObjectKey,
        ObjectReport,
        parent_key,
    )
    from pyproxy.discovery.kubernetes.status import (
        desired_gateway_class_status,
        desired_gateway_status,
        desired_route_status,
    )

    schemas = crd_schemas()
    route = next(d for d in examples() if d["kind"] == "HTTPRoute")
    route = {**route, "metadata": {**route["metadata"], "generation": 1}}
    report = ObjectReport()
    report.update({ObjectKey("HTTPRoute", NAMESPACE, route["metadata"]["name"]): {
        parent_key(route["spec"]["parentRefs"][0], NAMESPACE):
        ImportResult(True, False, "BackendNotFound", "service x not found", 1)}}, ())
    route["status"] = desired_route_status(route, report)
    jsonschema.validate(route, schemas[(route["apiVersion"], "HTTPRoute")])
    gateway = yaml.safe_load_all((OVERLAY / "gateway.yaml").read_text())
    for doc in gateway:
        doc = {**doc, "metadata": {**doc["metadata"], "generation": 1}}
        doc["status"] = desired_gateway_status(doc, report) if doc["kind"] == "Gateway" \
            else desired_gateway_class_status(doc)
        jsonschema.validate(doc, schemas[(doc["apiVersion"], doc["kind"])])


# --------------------------------------------------------------------------- RBAC


def grants(docs: list[dict]) -> set[tuple[str, str, str, str | None, str]]:
    """(scope, group, resource, resourceName or None, verb) for every rule."""
    found = set()
    for doc in docs:
        if doc["kind"] not in ("Role", "ClusterRole"):
            continue
        scope = "namespace" if doc["kind"] == "Role" else "cluster"
        for rule in doc["rules"]:
            for group in rule["apiGroups"]:
                for res in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or [None]:
                            found.add((scope, group, res, name, verb))
    return found


def test_rbac_grants_exactly_what_in_cluster_mode_uses(docs):
    expected = set()
    for kind in resources.READ_KINDS:
        scope = "namespace" if kind.namespaced else "cluster"
        for verb in ("get", "list", "watch"):
            expected.add((scope, kind.group, kind.plural, None, verb))
    # status written back (status.py)
    for kind in (resources.GATEWAY, resources.HTTP_ROUTE):
        expected.add(("namespace", kind.group, f"{kind.plural}/status", None, "update"))
    expected.add(("cluster", resources.GATEWAY_CLASS.group,
                  f"{resources.GATEWAY_CLASS.plural}/status", None, "update"))
    # run-time changes written to the route objects (writeback.py: replace; patch for tools)
    for kind in (resources.HTTP_ROUTE, resources.TRAFFIC_SPLIT):
        expected |= {("namespace", kind.group, kind.plural, None, v) for v in ("update", "patch")}
    # leader election (lease.py): create cannot be limited by name; the rest can
    lease = resources.LEASE
    expected |= {("namespace", lease.group, lease.plural, None, "create"),
                 ("namespace", lease.group, lease.plural, LEASE_NAME, "get"),
                 ("namespace", lease.group, lease.plural, LEASE_NAME, "update")}
    assert grants(docs) == expected
    assert not any("*" in entry for entry in grants(docs))


def test_bindings_name_pyproxys_service_account(docs):
    for kind, name in (("RoleBinding", "pyproxy"), ("ClusterRoleBinding",
                                                    "pyproxy-gatewayclasses")):
        binding = one(docs, kind, name)
        role = one(docs, binding["roleRef"]["kind"], binding["roleRef"]["name"])
        assert role["metadata"].get("namespace") == binding["metadata"].get("namespace")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pyproxy",
                                        "namespace": NAMESPACE}]
    assert one(docs, "ServiceAccount", "pyproxy")["automountServiceAccountToken"] is True


# --------------------------------------------------------------------------- fit


def test_configmap_config_passes_pyproxy_validate(docs, tmp_path):
    data = one(docs, "ConfigMap", "pyproxy-routes")["data"]
    assert list(data) == ["pyproxy.yaml"], "routes come from the API, not the ConfigMap"
    (tmp_path / "pyproxy.yaml").write_text(data["pyproxy.yaml"])
    summary = validate(tmp_path / "pyproxy.yaml")
    # validate reads the file alone; in this mode the routes come from the API
    warnings = [w["message"] for w in summary.get("warnings", [])
                if "no routes and no services" not in w["message"]]
    assert not warnings, warnings


def test_manifests_fit_together(docs):
    deployment = one(docs, "Deployment", "pyproxy")
    spec = deployment["spec"]["template"]["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "pyproxy")
    assert spec["automountServiceAccountToken"] is True
    assert spec["serviceAccountName"] == "pyproxy"
    assert container["args"][:3] == ["pyproxy", "run", "--kubernetes"]
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
           for e in container["env"]}
    assert env["POD_NAME"] == "metadata.name"  # the Lease holder identity
    assert env["POD_NAMESPACE"] == "metadata.namespace"  # watched, and where the Lease is

    gateway_class = one(docs, "GatewayClass", "pyproxy")
    assert gateway_class["spec"]["controllerName"] == CONTROLLER_NAME
    assert "namespace" not in gateway_class["metadata"], "GatewayClass is cluster-scoped"
    gateway = one(docs, "Gateway", "pyproxy")
    assert gateway["spec"]["gatewayClassName"] == gateway_class["metadata"]["name"]
    config = yaml.safe_load(one(docs, "ConfigMap", "pyproxy-routes")["data"]["pyproxy.yaml"])
    listen_port = int(config["listen"].rsplit(":", 1)[1])
    listeners = {li["name"]: li for li in gateway["spec"]["listeners"]}
    assert {li["port"] for li in listeners.values()} == {listen_port}

    # The examples: attached to our Gateway's listeners, hostnames are apex Services that
    # select the pyproxy pods, backends are Services selecting some app's pods, not pyproxy.
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    services = {s["metadata"]["name"]: s for s in docs if s["kind"] == "Service"}
    apps = [d for d in docs if d["kind"] == "Deployment" and d is not deployment]
    for route in examples():
        assert route["metadata"]["namespace"] == NAMESPACE
        if route["kind"] == "TrafficSplit":
            hosts = [route["spec"]["service"]]
            backends = [(b["service"], None) for b in route["spec"]["backends"]]
        else:
            for ref in route["spec"]["parentRefs"]:
                assert ref["name"] == gateway["metadata"]["name"]
                assert ref["sectionName"] in listeners
            hosts = route["spec"]["hostnames"]
            backends = [(b["name"], b["port"]) for rule in route["spec"]["rules"]
                        for b in rule["backendRefs"]]
        for host in hosts:
            assert selects(services[host]["spec"]["selector"], pod_labels), host
        for name, port in backends:
            leaf = services[name]
            if port is not None:
                assert port in {p["port"] for p in leaf["spec"]["ports"]}, name
            assert not selects(leaf["spec"]["selector"], pod_labels), name
            assert any(selects(leaf["spec"]["selector"],
                               a["spec"]["template"]["metadata"]["labels"]) for a in apps), name
    # Several pods per version: balancing and ejection are per pod.
    for name in ("stockmanagerv0-0-1", "stockmanagerv0-0-2"):
        assert one(docs, "Deployment", name)["spec"]["replicas"] >= 2
    assert json.dumps(docs).count('"namespace": "default"') == 0
