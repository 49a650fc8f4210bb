"""API objects → one Config through the existing importers (translate)."""

from __future__ import annotations

from typing import Any

import pytest

from pyproxy.config.compat import gateway_api
from pyproxy.config.document import Document
from pyproxy.config.model import Endpoint
from pyproxy.discovery.kubernetes import translate
from pyproxy.discovery.kubernetes.report import ObjectKey, ParentKey
from tests.unit.discovery.objects import (
    CONTROLLER,
    gateway,
    gateway_class,
    http_route,
)

SELECTION = translate.Selection(CONTROLLER)
PODS = {"v1": (Endpoint("10.0.0.1", 8080),), "v2": (Endpoint("10.0.0.2", 8080),)}
FILE = Document("pyproxy.yaml", {"listen": "127.0.0.1:8080"})


def objects(*routes: dict[str, object], **extra: list[dict[str, object]]
            ) -> dict[str, list[dict[str, object]]]:
    return {"GatewayClass": [gateway_class()], "Gateway": [gateway()],
            "HTTPRoute": list(routes), **extra}


def build(objs: dict[str, list[dict[str, object]]], *files: Document,
          pods: dict[str, tuple[Endpoint, ...]] = PODS) -> translate.Built:
    manifests = translate.manifest_documents(objs, SELECTION)
    return translate.build([FILE, *files], {}, manifests, pods)


def test_a_route_means_the_same_as_from_a_file() -> None:
    built = build(objects(http_route("shop", [("v1", 90), ("v2", 10)])))
    assert built.config is not None
    (route,) = built.config.routes
    assert route.hosts == ("shop.example",)
    assert [(b.name, b.weight) for b in route.backends] == [("v1", 90), ("v2", 10)]
    assert built.config.services["v1"].endpoints == PODS["v1"]
    parent = ParentKey("gateway.networking.k8s.io", "Gateway", "shop", "public", None, None)
    result = built.results[ObjectKey("HTTPRoute", "shop", "shop")][parent]
    assert (result.accepted, result.resolved_refs, result.reason) == (True, True, "Accepted")


def test_routes_of_other_controllers_are_not_served() -> None:
    foreign = http_route("theirs", [("v1", 1)], parent="their-gateway")
    built = build({
        "GatewayClass": [gateway_class(), gateway_class("other", "example.com/other")],
        "Gateway": [gateway(), gateway("their-gateway", "other")],
        "HTTPRoute": [foreign, http_route("ours", [("v1", 1)])]})
    assert built.config is not None
    assert [r.name for r in built.config.routes] == ["ours-0"]
    assert ObjectKey("HTTPRoute", "shop", "theirs") not in built.results


def test_a_parent_ref_to_another_gateway_is_dropped_from_the_import() -> None:
    both = http_route("shop", [("v1", 1)], extra_parents=[{"name": "their-gateway"}])
    built = build(objects(both))
    parents = built.results[ObjectKey("HTTPRoute", "shop", "shop")]
    assert [p.name for p in parents if p is not None] == ["public"]


def test_a_route_that_does_not_import_is_reported_and_the_rest_applies() -> None:
    bad = http_route("bad", [("v1", -5)], hosts=("bad.example",))
    built = build(objects(bad, http_route("good", [("v2", 1)])))
    assert built.config is not None
    assert [r.name for r in built.config.routes] == ["good-0"]
    (result,) = built.results[ObjectKey("HTTPRoute", "shop", "bad")].values()
    assert not result.accepted and "weight" in result.message


def test_a_missing_backend_is_accepted_with_unresolved_refs() -> None:
    built = build(objects(http_route("shop", [("nope", 1)])))
    (result,) = built.results[ObjectKey("HTTPRoute", "shop", "shop")].values()
    assert (result.accepted, result.resolved_refs, result.reason) == (
        True, False, "BackendNotFound")


def test_a_file_service_without_endpoints_adds_policies_to_the_pods() -> None:
    policies = Document("policies.yaml", {"services": {"v1": {
        "outlier_detection": {"consecutive_5xx": 3}}}})
    built = build(objects(http_route("shop", [("v1", 1)])), policies)
    assert built.config is not None
    service = built.config.services["v1"]
    assert service.endpoints == PODS["v1"]
    assert service.outlier_detection is not None
    assert service.outlier_detection.consecutive_5xx == 3
    assert built.endpoint_sources["v1"] == "v1"
    assert built.conflicts == ()


def test_a_file_service_with_endpoints_wins_and_is_a_conflict() -> None:
    own = Document("own.yaml", {"services": {"v1": {"endpoints": ["10.9.9.9:80"]}}})
    built = build(objects(http_route("shop", [("v1", 1)])), own)
    assert built.config is not None
    assert [e.address for e in built.config.services["v1"].endpoints] == ["10.9.9.9:80"]
    assert [c.kind for c in built.conflicts] == ["service"]
    assert "v1" not in built.endpoint_sources


def test_api_routes_come_before_the_files_and_name_clashes_are_conflicts() -> None:
    native = Document("routes.yaml", {"routes": [
        {"name": "catch-all", "backends": [{"service": "v2"}]},
        {"name": "shop-0", "hosts": ["other.example"], "backends": [{"service": "v2"}]}]})
    built = build(objects(http_route("shop", [("v1", 1)]),
                          http_route("api", [("v1", 1)], hosts=("api.example",))), native)
    assert built.config is not None
    assert [r.name for r in built.config.routes] == ["api-0", "catch-all", "shop-0"]
    assert [c.kind for c in built.conflicts] == ["route"]
    (result,) = built.results[ObjectKey("HTTPRoute", "shop", "shop")].values()
    assert not result.accepted


def test_an_invalid_file_fails_the_build_and_names_the_file() -> None:
    broken = Document("broken.yaml", {"routes": [{"name": "x", "backends": [
        {"service": "missing"}]}]})
    built = build(objects(http_route("shop", [("v1", 1)])), broken)
    assert built.config is None
    assert built.errors and built.errors[0].file == "broken.yaml"


def test_unchanged_objects_reuse_their_documents() -> None:
    cache: dict[tuple[ObjectKey, object], translate.ApiManifest] = {}
    objs = objects(http_route("shop", [("v1", 1)]))
    first = {m.key: m for m in translate.manifest_documents(objs, SELECTION, cache)}
    again = {m.key: m for m in translate.manifest_documents(objs, SELECTION, cache)}
    gateway_key = ObjectKey("Gateway", "shop", "public")
    assert again[gateway_key] is first[gateway_key]


def test_pod_churn_replaces_endpoints_without_the_importers() -> None:
    built = build(objects(http_route("shop", [("v1", 1)])))
    assert built.config is not None
    moved = {**PODS, "v1": (Endpoint("10.0.0.7", 8080),)}
    fast = translate.replace_endpoints(built.config, moved, {"v1"}, built.endpoint_sources)
    assert fast is not None
    assert fast.services["v1"].endpoints == moved["v1"]
    assert fast.routes == built.config.routes
    emptied = {**PODS, "v1": ()}
    assert translate.replace_endpoints(built.config, emptied, {"v1"},
                                       built.endpoint_sources) is None
    assert translate.replace_endpoints(built.config, {**PODS, "v9": ()}, {"v9"},
                                       built.endpoint_sources) is None


def test_smi_and_istio_objects_go_through_their_importers() -> None:
    split = {"apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
             "metadata": {"name": "web-split", "namespace": "shop", "resourceVersion": "3"},
             "spec": {"service": "web", "backends": [{"service": "v1", "weight": 80},
                                                     {"service": "v2", "weight": 20}]}}
    virtual = {"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
               "metadata": {"name": "api", "namespace": "shop", "resourceVersion": "4"},
               "spec": {"hosts": ["api"], "http": [{"route": [
                   {"destination": {"host": "v2"}, "weight": 100}]}]}}
    pods = {**PODS, "web": (Endpoint("10.0.0.9", 8080),), "api": (Endpoint("10.0.0.8", 80),)}
    built = build({"TrafficSplit": [split], "VirtualService": [virtual]}, pods=pods)
    assert built.config is not None
    by_hosts = {route.hosts: route for route in built.config.routes}
    assert [(b.name, b.weight) for b in by_hosts["web",].backends] == [("v1", 80), ("v2", 20)]
    assert [b.name for b in by_hosts["api",].backends] == ["v2"]
    assert built.results[ObjectKey("TrafficSplit", "shop", "web-split")][None].accepted


def test_one_changed_route_is_the_only_one_imported_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    imported: list[str] = []
    original = gateway_api._http_route

    def counting(ctx: Any, m: Any, *args: Any) -> Any:
        imported.append(m.name)
        return original(ctx, m, *args)

    monkeypatch.setattr(gateway_api, "_http_route", counting)
    routes = [http_route(f"r{i}", [("v1", 1), ("nope", 1)], hosts=(f"r{i}.example",))
              for i in range(5)]
    manifests: dict[tuple[ObjectKey, object], translate.ApiManifest] = {}
    imports: dict[object, object] = {}

    def build_cached(objs: dict[str, list[dict[str, object]]]) -> translate.Built:
        docs = translate.manifest_documents(objs, SELECTION, manifests)
        return translate.build([FILE], {}, docs, PODS, imports)

    first = build_cached(objects(*routes))
    assert sorted(imported) == [f"r{i}" for i in range(5)]
    imported.clear()
    changed = http_route("r2", [("v2", 1)], hosts=("r2.example",), rv="2", generation=2)
    second = build_cached(objects(*routes[:2], changed, *routes[3:]))
    assert imported == ["r2"]
    # The same config and reports as importing everything again.
    uncached = build(objects(*routes[:2], changed, *routes[3:]))
    assert second.config == uncached.config
    assert second.warnings == uncached.warnings
    assert second.results == uncached.results
    assert first.results[ObjectKey("HTTPRoute", "shop", "r0")] == \
        second.results[ObjectKey("HTTPRoute", "shop", "r0")]
    # A new Gateway changes what every route attaches to: all are imported again.
    imported.clear()
    build_cached({**objects(*routes), "Gateway": [gateway(), gateway("second")]})
    assert len(imported) == 5
