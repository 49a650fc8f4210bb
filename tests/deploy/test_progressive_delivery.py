"""deploy/kubernetes/flagger and deploy/kubernetes/argo: the examples a user copies to drive
pyproxy with Flagger or Argo Rollouts (docs/progressive-delivery.md), valid against the
tools' own CRD schemas (tests/deploy/crds, with source and license) as
``kubectl apply --validate=strict`` would find them, and fitting together with each other and
with the in-cluster overlay they run on.

What the MetricTemplates return against real traffic is test_flagger_metrics.py's.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tests.deploy.support import DEPLOY
from tests.deploy.test_kubernetes_in_cluster import CRDS, strict

K8S = DEPLOY / "kubernetes"
FLAGGER = K8S / "flagger"
ARGO = K8S / "argo"
NAMESPACE = "pyproxy-lab"

# The Argo plugin's own settings (``plugins.argoproj-labs/gatewayAPI``, free-form in the
# Rollout CRD): the fields of GatewayAPITrafficRouting and HTTPRoute in
# argoproj-labs/rollouts-plugin-trafficrouter-gatewayapi v0.15.0 pkg/plugin/types.go that
# an HTTPRoute user sets; anything else is a typo the plugin would silently ignore.
ARGO_PLUGIN_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "httpRoute": {"type": "string"},
        "namespace": {"type": "string"},
        "httpRoutes": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["name"],
            "properties": {"name": {"type": "string"}, "useHeaderRoutes": {"type": "boolean"}}}},
        "httpRouteSelector": {"type": "object"},
        "disableInProgressLabel": {"type": "boolean"},
        "inProgressLabelKey": {"type": "string"},
        "inProgressLabelValue": {"type": "string"},
    },
}


def load(directory: Path) -> list[dict]:
    return [doc for path in sorted(directory.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind
            and (name is None or d["metadata"]["name"] == name)]


def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → the CRD's schema, made strict."""
    found = {}
    for name in ("flagger.yaml", "argo-rollouts.yaml", "gateway-api.yaml"):
        for kind, versions in yaml.safe_load((CRDS / name).read_text()).items():
            for version, entry in versions.items():
                found[(f"{entry['group']}/{version}", kind)] = strict(entry["schema"])
    return found


CUSTOM_GROUPS = ("flagger.app/", "argoproj.io/", "gateway.networking.k8s.io/")


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return load(FLAGGER) + load(ARGO)


def test_custom_resources_match_their_crd_schemas(docs: list[dict]) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema comes with "
                                                          "kubernetes-validate")
    schemas = crd_schemas()
    custom = [d for d in docs if d["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert sorted(d["kind"] for d in custom) == [
        "AnalysisTemplate", "Canary", "Canary", "HTTPRoute", "MetricTemplate",
        "MetricTemplate", "Rollout"]
    for doc in custom:
        jsonschema.validate(doc, schemas[(doc["apiVersion"], doc["kind"])])
    rollout = find(docs, "Rollout")[0]
    jsonschema.validate(rollout["spec"]["strategy"]["canary"]["trafficRouting"]["plugins"]
                        ["argoproj-labs/gatewayAPI"], ARGO_PLUGIN_SCHEMA)
    # Strict: a misspelt field fails, in each tool's schema.
    for kind, path in (("Canary", ("spec", "analysis")), ("MetricTemplate", ("spec",)),
                       ("Rollout", ("spec", "strategy", "canary")),
                       ("AnalysisTemplate", ("spec", "metrics", 0, "provider", "prometheus"))):
        broken = copy.deepcopy(find(docs, kind)[0])
        node = broken
        for key in path:
            node = node[key]
        node["stepWieght"] = 10
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schemas[(broken["apiVersion"], kind)])


def test_built_in_kinds_pass_kubernetes_validate(docs: list[dict]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed "
                                      "(CI: pip install kubernetes-validate)")
    version = kubernetes_validate.latest_version()
    built_in = [d for d in docs if not d["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert {d["kind"] for d in built_in} == {"Service", "ConfigMap", "ClusterRole",
                                             "ClusterRoleBinding"}
    for doc in built_in:
        kubernetes_validate.validate(doc, version, strict=True)
    # The Rollout's pod template is a PodTemplateSpec (pruned from the CRD schema kept as
    # test data): checked as the Deployment it stands for.
    rollout = find(docs, "Rollout")[0]
    kubernetes_validate.validate({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": rollout["metadata"]["name"], "namespace": NAMESPACE},
        "spec": {"selector": rollout["spec"]["selector"],
                 "template": rollout["spec"]["template"]}}, version, strict=True)


def test_flagger_examples_fit_together(docs: list[dict]) -> None:
    gateway = next(d for d in yaml.safe_load_all(
        (K8S / "overlays" / "in-cluster" / "gateway.yaml").read_text())
        if d and d["kind"] == "Gateway")
    listeners = {listener["name"] for listener in gateway["spec"]["listeners"]}
    templates = {(d["metadata"]["namespace"], d["metadata"]["name"])
                 for d in find(docs, "MetricTemplate")}
    canaries = {d["spec"]["provider"]: d for d in find(docs, "Canary")}
    assert set(canaries) == {"gatewayapi:v1", "linkerd"}
    for canary in canaries.values():
        assert canary["metadata"]["namespace"] == NAMESPACE
        for metric in canary["spec"]["analysis"]["metrics"]:
            if "templateRef" in metric:
                ref = metric["templateRef"]
                assert (ref.get("namespace", NAMESPACE), ref["name"]) in templates
            else:  # Flagger's built-in queries: linkerd's, over the Linkerd-compatible series
                assert canary["spec"]["provider"] == "linkerd"
                assert metric["name"] in ("request-success-rate", "request-duration")
        for hook in canary["spec"]["analysis"].get("webhooks", []):
            assert "http://pyproxy-gateway.pyproxy-lab/" in hook["metadata"]["cmd"]
    for ref in canaries["gatewayapi:v1"]["spec"]["service"]["gatewayRefs"]:
        assert (ref["name"], ref["namespace"]) == (gateway["metadata"]["name"],
                                                   gateway["metadata"]["namespace"])
        assert ref["sectionName"] in listeners


def test_argo_example_fits_together(docs: list[dict]) -> None:
    rollout = find(docs, "Rollout")[0]
    canary = rollout["spec"]["strategy"]["canary"]
    plugin = canary["trafficRouting"]["plugins"]["argoproj-labs/gatewayAPI"]
    services = {d["metadata"]["name"]: d for d in load(ARGO) if d["kind"] == "Service"}
    assert {canary["stableService"], canary["canaryService"]} <= set(services)
    labels = rollout["spec"]["template"]["metadata"]["labels"]
    for name in (canary["stableService"], canary["canaryService"]):
        assert services[name]["spec"]["selector"].items() <= labels.items()
    # the route the plugin manages: both Services, stable first with all the traffic
    route = find(docs, "HTTPRoute", plugin["httpRoutes"][0]["name"])[0]
    assert route["metadata"]["namespace"] == plugin["namespace"] == NAMESPACE
    refs = [ref["name"] for ref in route["spec"]["rules"][0]["backendRefs"]]
    assert refs == [canary["stableService"], canary["canaryService"]]
    # every header route is a managed route, and the route lets the plugin add them
    managed = {r["name"] for r in canary["trafficRouting"]["managedRoutes"]}
    header_steps = [s["setHeaderRoute"] for s in canary["steps"] if "setHeaderRoute" in s]
    assert header_steps and {s["name"] for s in header_steps} <= managed
    assert plugin["httpRoutes"][0]["useHeaderRoutes"] is True
    # the background analysis: a template shipped here, given every argument it declares
    templates = {d["metadata"]["name"]: d for d in find(docs, "AnalysisTemplate")}
    for ref in canary["analysis"]["templates"]:
        declared = {a["name"] for a in templates[ref["templateName"]]["spec"]["args"]}
        assert declared == {a["name"] for a in canary["analysis"]["args"]}
    assert canary["analysis"]["args"] == [{"name": "canary-service",
                                           "value": canary["canaryService"]}]
    config = find(docs, "ConfigMap", "argo-rollouts-config")[0]
    plugins = yaml.safe_load(config["data"]["trafficRouterPlugins"])
    assert [p["name"] for p in plugins] == list(canary["trafficRouting"]["plugins"])


def test_gateway_service_reaches_the_proxy_pods() -> None:
    assert (FLAGGER / "pyproxy-gateway.yaml").read_text() == \
        (ARGO / "pyproxy-gateway.yaml").read_text()
    service = yaml.safe_load((FLAGGER / "pyproxy-gateway.yaml").read_text())
    deployment = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
