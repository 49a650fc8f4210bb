"""EndpointSlices → a Service's endpoints (translate.endpoints_of): the rules of
https://kubernetes.io/docs/concepts/services-networking/endpoint-slices/#conditions."""

from __future__ import annotations

from pyproxy.config.model import Endpoint
from pyproxy.discovery.kubernetes.translate import endpoints_of, native_service_name
from tests.unit.discovery.objects import endpoint, endpoint_slice, service


def addresses(found: tuple[Endpoint, ...]) -> list[str]:
    return [ep.address for ep in found]


def test_all_slices_merged_and_deduplicated() -> None:
    slices = [endpoint_slice("a", "web", [endpoint("10.0.0.1"), endpoint("10.0.0.2")]),
              endpoint_slice("b", "web", [endpoint("10.0.0.2"), endpoint("10.0.0.3")])]
    assert addresses(endpoints_of(service("web"), slices)) == [
        "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]


def test_missing_ready_counts_as_ready_and_not_ready_is_left_out() -> None:
    slices = [endpoint_slice("a", "web", [endpoint("10.0.0.1", ready=None),
                                          endpoint("10.0.0.2", ready=False)])]
    assert addresses(endpoints_of(service("web"), slices)) == ["10.0.0.1:8080"]


def test_serving_terminating_endpoints_only_when_none_is_ready() -> None:
    draining = endpoint("10.0.0.9", ready=False, serving=True, terminating=True)
    stopped = endpoint("10.0.0.8", ready=False, serving=False, terminating=True)
    alone = [endpoint_slice("a", "web", [draining, stopped])]
    assert addresses(endpoints_of(service("web"), alone)) == ["10.0.0.9:8080"]
    with_ready = [endpoint_slice("a", "web", [draining, endpoint("10.0.0.1")])]
    assert addresses(endpoints_of(service("web"), with_ready)) == ["10.0.0.1:8080"]


def test_ports_matched_by_name_then_by_number() -> None:
    two_ports = service("web", ports=[{"name": "metrics", "port": 9090, "targetPort": 9090},
                                      {"name": "http", "port": 80, "targetPort": 8080}])
    slices = [endpoint_slice("a", "web", [endpoint("10.0.0.1")], port=8081, port_name="http"),
              endpoint_slice("b", "web", [endpoint("10.0.0.2")], port=9090,
                             port_name="metrics")]
    assert addresses(endpoints_of(two_ports, slices)) == ["10.0.0.1:8081"]
    unnamed = service("web", ports=[{"port": 80, "targetPort": 8080}])
    by_number = [endpoint_slice("a", "web", [endpoint("10.0.0.1")], port=8080,
                                port_name="other")]
    assert addresses(endpoints_of(unnamed, by_number)) == ["10.0.0.1:8080"]


def test_labels_from_the_slice_and_the_pod() -> None:
    slices = [endpoint_slice("a", "web", [endpoint("10.0.0.1", pod="web-7d9")],
                             labels={"version": "v2"})]
    (found,) = endpoints_of(service("web"), slices)
    assert found.labels == {"version": "v2", "pod": "web-7d9"}


def test_services_are_named_by_namespace_when_several_are_watched() -> None:
    assert native_service_name("shop", "web", qualified=True) == "web.shop"
    assert native_service_name("shop", "web", qualified=False) == "web"
