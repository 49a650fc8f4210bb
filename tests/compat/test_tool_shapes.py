"""The objects Flagger and the Argo Rollouts Gateway API plugin write, as their sources build
them (each fixture names its file and version), import with no warning; and what they mean
is what pyproxy serves (fast: no process — the traffic tests are in test_gateway_api.py,
test_smi.py and the replays of tests/integration/kubernetes/).
"""

from __future__ import annotations

import pytest
import yaml

from pyproxy.config.document import Document
from pyproxy.config.load import load_config
from pyproxy.config.model import (
    NO_ENDPOINTS_STATUS,
    Backend,
    Endpoint,
    HeaderChanges,
    StringMatch,
)
from pyproxy.discovery.kubernetes import translate
from pyproxy.discovery.kubernetes.report import ObjectKey
from tests.compat.support import manifest

FLAGGER_SERVICES = """\
services:
  podinfo: {endpoints: ["10.0.0.1:9898"]}
  podinfo-primary: {endpoints: ["10.0.0.2:9898"]}
  podinfo-canary: {endpoints: ["10.0.0.3:9898"]}
"""
ARGO_SERVICES = """\
services:
  argo-rollouts-stable-service: {endpoints: ["10.0.1.1:80"]}
  argo-rollouts-canary-service: {endpoints: ["10.0.1.2:80"]}
"""


def load(tmp_path, services: str, *files):
    path = tmp_path / "services.yaml"
    path.write_text(services)
    return load_config([str(path), *(str(f) for f in files)])


def warnings(loaded) -> list[str]:
    return [f"{issue.path}: {issue.message}" for issue in loaded.warnings]


def routes(loaded) -> dict:
    return {route.name: route for route in loaded.config.routes}


@pytest.mark.parametrize("name", ["gatewayapi-weighted", "gatewayapi-ab",
                                  "gatewayapi-session-affinity",
                                  "gatewayapi-session-affinity-promoted", "gatewayapi-mirror"])
def test_flagger_gatewayapi_shapes_import_without_warnings(tmp_path, name):
    loaded = load(tmp_path, FLAGGER_SERVICES, manifest("flagger", "gateway.yaml"),
                  manifest("flagger", f"{name}.yaml"))
    assert warnings(loaded) == []


def test_flagger_session_affinity_sets_the_cookie_on_canary_responses_only(tmp_path):
    loaded = load(tmp_path, FLAGGER_SERVICES, manifest("flagger", "gateway.yaml"),
                  manifest("flagger", "gatewayapi-session-affinity.yaml"))
    by_name = routes(loaded)
    sticky, weighted = by_name["podinfo-0"], by_name["podinfo-1"]
    assert sticky.matches[0].headers == (
        ("cookie", StringMatch("regex", ".*flagger-cookie.*LpsfdTZkvfFwQFjb.*")),)
    primary, canary = weighted.backends
    assert (primary.name, primary.weight, primary.response_headers) == (
        "podinfo-primary", 90.0, None)
    assert (canary.name, canary.weight) == ("podinfo-canary", 10.0)
    assert canary.response_headers == HeaderChanges(add=(
        ("set-cookie", "flagger-cookie=LpsfdTZkvfFwQFjb; Max-Age=86400"),))
    # Gateway API precedence: the rule with a header match comes first.
    assert [r.name for r in loaded.config.routes] == ["podinfo-0", "podinfo-1"]


def test_flagger_smi_v1alpha3_split_imports_without_warnings(tmp_path):
    loaded = load(tmp_path, FLAGGER_SERVICES, manifest("flagger", "smi-v1alpha3-trafficsplit.yaml"))
    assert warnings(loaded) == []
    assert [(b.name, b.weight) for b in routes(loaded)["podinfo"].backends] == [
        ("podinfo-canary", 10.0), ("podinfo-primary", 90.0)]


def test_flagger_smi_split_before_the_canary_has_pods(tmp_path):
    # The canary Service has no endpoints yet (no native service): the config loads, the
    # canary's share (0 here) answers 503 UH, and the warning says so.
    services = FLAGGER_SERVICES.replace('  podinfo-canary: {endpoints: ["10.0.0.3:9898"]}\n', "")
    loaded = load(tmp_path, services, manifest("flagger", "smi-trafficsplit.yaml"))
    route = routes(loaded)["podinfo"]
    assert route.hosts == ("podinfo",)
    assert route.backends == (
        Backend("podinfo-canary", weight=0.0, direct_status=NO_ENDPOINTS_STATUS),
        Backend("podinfo-primary", weight=100.0))
    assert warnings(loaded) == [
        "spec.backends[0].service: TrafficSplit podinfo: backend service 'podinfo-canary' has "
        "no endpoints: its share of the traffic gets 503 (UH) until it has some; no native "
        "service 'podinfo-canary': manifests name Kubernetes services, whose endpoints come "
        "from a native services: block next to them, e.g. services: {podinfo-canary: "
        "{endpoints: [{address: 'HOST:PORT', labels: {version: v1}}]}} (subsets select on "
        "the labels)"]
    # Once the canary has pods, the same object imports with no warning.
    assert warnings(load(tmp_path, FLAGGER_SERVICES,
                         manifest("flagger", "smi-trafficsplit.yaml"))) == []


@pytest.mark.parametrize("name", ["httproute-weights", "httproute-header-route"])
def test_argo_plugin_shapes_import_without_warnings(tmp_path, name):
    loaded = load(tmp_path, ARGO_SERVICES, manifest("argo", "gateway.yaml"),
                  manifest("argo", f"{name}.yaml"))
    assert warnings(loaded) == []


def test_argo_header_route_is_named_and_matched_first(tmp_path):
    loaded = load(tmp_path, ARGO_SERVICES, manifest("argo", "gateway.yaml"),
                  manifest("argo", "httproute-header-route.yaml"))
    order = [route.name for route in loaded.config.routes]
    # rules[].name is the route name suffix; Gateway API precedence (more header matches)
    # puts the header route before the weighted rule of the same path.
    assert order == ["argo-rollouts-http-route-header-route", "argo-rollouts-http-route-0"]
    header_route = routes(loaded)["argo-rollouts-http-route-header-route"]
    assert header_route.backends == (Backend("argo-rollouts-canary-service", weight=1.0),)
    assert header_route.matches[0].headers == (
        ("end-user", StringMatch("exact", "tester")),
        ("user-agent", StringMatch("regex", "Mozilla.*")))


@pytest.mark.parametrize("canary_pods", [(), None], ids=["empty-endpointslices", "no-service"])
def test_flagger_smi_split_in_cluster_before_the_canary_has_pods(canary_pods):
    # In-cluster: the canary Service exists with empty EndpointSlices (an empty native
    # service: 503 UH), or does not exist yet (a backend answering 503 UH). Either way the
    # TrafficSplit is accepted and the primary keeps serving.
    split = yaml.safe_load(manifest("flagger", "smi-trafficsplit.yaml").read_text())
    split["metadata"]["resourceVersion"] = "1"
    pods: dict[str, tuple[Endpoint, ...]] = {"podinfo-primary": (Endpoint("10.0.0.2", 9898),)}
    if canary_pods is not None:
        pods["podinfo-canary"] = canary_pods
    selection = translate.Selection("pyproxy.dev/gateway-controller")
    manifests = translate.manifest_documents({"TrafficSplit": [split]}, selection)
    built = translate.build([Document("pyproxy.yaml", {})], {}, manifests, pods)
    assert built.config is not None
    (route,) = built.config.routes
    canary = route.backends[0]
    assert canary.name == "podinfo-canary"
    if canary_pods is None:
        assert canary.direct_status == NO_ENDPOINTS_STATUS
    else:
        assert canary.direct_status is None
        assert built.config.services["podinfo-canary"].endpoints == ()
    assert built.results[ObjectKey("TrafficSplit", "test", "podinfo")][None].accepted


def _api_object(*parts: str) -> dict:
    obj = yaml.safe_load(manifest(*parts).read_text())
    obj["metadata"].update(resourceVersion="1", generation=1)
    return obj


def test_flagger_httproute_in_cluster_before_the_canary_has_pods():
    # Flagger's first HTTPRoute (primary 100, canary 0) while podinfo-canary's EndpointSlices
    # are empty: the route is accepted with resolved refs; the canary is an empty service.
    selection = translate.Selection("pyproxy.dev/gateway-controller")
    gateway_class = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                     "metadata": {"name": "pyproxy", "resourceVersion": "1"},
                     "spec": {"controllerName": "pyproxy.dev/gateway-controller"}}
    route = _api_object("flagger", "gatewayapi-weighted.yaml")
    primary, canary = route["spec"]["rules"][0]["backendRefs"]
    primary["weight"], canary["weight"] = 100, 0
    objects = {"GatewayClass": [gateway_class],
               "Gateway": [_api_object("flagger", "gateway.yaml")], "HTTPRoute": [route]}
    pods: dict[str, tuple[Endpoint, ...]] = {
        "podinfo-primary": (Endpoint("10.0.0.2", 9898),), "podinfo-canary": ()}
    built = translate.build([Document("pyproxy.yaml", {})], {},
                            translate.manifest_documents(objects, selection), pods)
    assert built.config is not None and built.warnings == ()
    (served,) = built.config.routes
    assert [(b.name, b.weight, b.direct_status) for b in served.backends] == [
        ("podinfo-primary", 100.0, None), ("podinfo-canary", 0.0, None)]
    assert built.config.services["podinfo-canary"].endpoints == ()
    (result,) = built.results[ObjectKey("HTTPRoute", "test", "podinfo")].values()
    assert (result.accepted, result.resolved_refs) == (True, True)
