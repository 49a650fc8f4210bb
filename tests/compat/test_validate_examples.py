"""``pyproxy validate`` on every upstream example: no error, and exactly the warnings that are
true (each names a field pyproxy does not honour, or a real problem of the example).

The examples are loaded with the native ``services:`` blocks of ``services/`` (their
endpoints), and with the manifests they are applied with upstream: a VirtualService with
the DestinationRule defining its subsets, an HTTPRoute with the conformance Gateways.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pyproxy.cli import main
from pyproxy.config.load import ConfigInvalid, load_config

HERE = Path(__file__).parent
ISTIO, API, GW, SMI = (HERE / "istio", HERE / "istio" / "api", HERE / "gateway_api",
                       HERE / "smi")
SERVICES = HERE / "services"

# file → the warnings it must produce: (key path, a fragment of the message). Files not
# listed must produce none.
EXPECTED = {
    "destination-rule-all-mtls.yaml": [("spec.trafficPolicy.tls", "ISTIO_MUTUAL is not honoured")]
    * 4,
    "egress-rule-google-apis.yaml": [
        ("kind", "ServiceEntry googleapis: is not imported"),
        ("spec.http[0].match[0].port", "port is not honoured"),
        ("spec.trafficPolicy.portLevelSettings", "portLevelSettings is not honoured")],
    "fault-injection-details-v1.yaml": [("spec.http[1]", "never matches: rule 'details-0'")],
    "circuit-breaking-destination-rule.yaml": [
        ("spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection", "not honoured"),
        ("spec.trafficPolicy.outlierDetection.consecutiveErrors", "is deprecated")],
    "destination_rule.proto-L1235-ratings-zone-aware.yaml": [
        ("spec.trafficPolicy.loadBalancer.zoneAwareLbSetting", "knows no zones")],
    "destination_rule.proto-L1253-ratings-zone-aware-failover.yaml": [
        ("spec.trafficPolicy.loadBalancer.zoneAwareLbSetting", "knows no zones")],
    "destination_rule.proto-L403-bookinfo-ratings.yaml": [
        ("spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl", "does not generate")],
    "destination_rule.proto-L47-bookinfo-ratings.yaml": [
        ("spec.subsets[0].trafficPolicy", "one policy per service")],
    "destination_rule.proto-L604-bookinfo-redis.yaml": [
        ("spec.trafficPolicy.connectionPool.tcp.tcpKeepalive", "not honoured")],
    "destination_rule.proto-L74-bookinfo-ratings-port.yaml": [
        ("spec.trafficPolicy.portLevelSettings", "not per port")],
    "destination_rule.proto-L777-reviews-cb-policy.yaml": [
        ("spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection", "not honoured")],
    "destination_rule.proto-L897-db-mtls.yaml": [("spec.trafficPolicy.tls", "MUTUAL")],
    "destination_rule.proto-L915-tls-foo.yaml": [("spec.host", "covers no native service")],
    "destination_rule.proto-L930-ratings-istio-mtls.yaml": [("spec.trafficPolicy.tls",
                                                             "ISTIO_MUTUAL")],
    "destination_rule.proto-L97-configure-client-mtls-dr-with-workloadselector.yaml": [
        ("spec.workloadSelector", "not honoured"),
        ("spec.trafficPolicy.portLevelSettings", "not per port")],
    "gateway.proto-L104-bookinfo-rule.yaml": [("spec.http[1].route[1]",
                                               "destination reviews is listed twice")],
    "gateway.proto-L147-bookinfo-mongo.yaml": [
        ("spec", "has no http rules"), ("spec.gateways[0]", "is not among the manifests"),
        ("spec.tcp", "routes HTTP only")],
    "gateway.proto-L242-my-ingress.yaml": [("spec.servers[0]", "protocol HTTP2")],
    "gateway.proto-L261-my-tcp-ingress.yaml": [("spec.servers[0]", "protocol MONGO")],
    "gateway.proto-L280-my-tls-ingress.yaml": [("spec.servers[0]", "TLS settings")],
    "gateway.proto-L36-my-gateway.yaml": [
        ("spec.servers", "ports 80, 443, 2379, 9080, 9443"),
        ("spec.servers[0]", "TLS settings"), ("spec.servers[1]", "TLS settings"),
        ("spec.servers[2]", "TLS settings"), ("spec.servers[4]", "protocol MONGO")],
    "virtual_service.proto-L1388-ratings-route.yaml": [("spec.http[0].corsPolicy",
                                                        "no CORS handling")],
    "virtual_service.proto-L1485-reviews-route.yaml": [("spec.http[0].match[0].sourceLabels",
                                                        "selects client workloads")],
    "virtual_service.proto-L332-external-svc-wikipedia.yaml": [
        ("kind", "ServiceEntry external-svc-wikipedia: is not imported")],
    "virtual_service.proto-L511-bookinfo.yaml": [("spec.gateways[0]",
                                                  "'mygateway' is not among the manifests")],
    "virtual_service.proto-L635-bookinfo-sni.yaml": [
        ("spec", "has no http rules"), ("spec.gateways[0]", "is not among the manifests"),
        ("spec.tls", "routes HTTP only")],
    "virtual_service.proto-L676-bookinfo-mongo.yaml": [("spec", "has no http rules"),
                                                       ("spec.tcp", "routes HTTP only")],
    "base-gateways.yaml": [("spec.listeners[0]", "TLS settings are not honoured"),
                           ("spec.listeners[1]", "TLS settings are not honoured"),
                           ("spec.listeners[2]", "TLS settings are not honoured"),
                           ("spec.listeners[3]", "TLS settings are not honoured"),
                           ("spec.listeners[0].allowedRoutes.namespaces",
                            "Selector is read as All")],
    "httproute-hostname-intersection.yaml": [
        ("spec.parentRefs", "HTTPRoute no-intersecting-hosts: is attached to no listener"),
        ("spec.parentRefs[0]", "its hostnames intersect no listener hostname")],
    "httproute-invalid-backendref-unknown-kind.yaml": [("spec.rules[0].backendRefs[0]",
                                                        "InvalidKind")],
    "httproute-invalid-cross-namespace-backend-ref.yaml": [("spec.rules[0].backendRefs[0]",
                                                            "RefNotPermitted")],
    "httproute-invalid-nonexistent-backendref.yaml": [("spec.rules[0].backendRefs[0]",
                                                       "BackendNotFound")],
    "httproute-redirect-port-and-scheme.yaml": [
        ("spec.parentRefs", "ports 80 (HTTPRoute http-route-for-listener-on-port-80), 8080")],
    "httproute-retry-with-timeouts.yaml": [("spec.rules[1].retry.codes",
                                            "retried only when codes include 502, 503 and 504")],
}

# What each example is applied with (its subsets, its Gateways, its delegates).
WITH = {
    "virtual-service": [ISTIO / "destination-rule-all.yaml"],
    "mirroring-to-v2": [ISTIO / "tasks" / "mirroring-destination-rule.yaml"],
    **{f"virtual_service.proto-L{line}": [API / "virtual_service.proto-L511-bookinfo.yaml",
                                         API / "virtual_service.proto-L536-productpage.yaml",
                                         API / "virtual_service.proto-L555-reviews.yaml"]
       for line in (511, 536, 555)},
    "virtual_service.proto": [API / "virtual_service.proto-L98-reviews-destination.yaml"],
    "httproute": [GW / "base-gateways.yaml"],
}


def _examples():
    for directory, services in ((ISTIO, "bookinfo"), (ISTIO / "tasks", "bookinfo"),
                                (API, "istio-api"), (GW, "gateway-api"),
                                (GW / "mesh", "gateway-api"), (SMI, "smi")):
        for path in sorted(directory.glob("*.yaml")):
            yield pytest.param(path, SERVICES / f"{services}.yaml",
                               id=str(path.relative_to(HERE)))


def _companions(path: Path) -> list[Path]:
    for prefix, extra in WITH.items():
        if path.name.startswith(prefix):
            return [p for p in extra if p != path]
    return []


@pytest.mark.parametrize("path,services", list(_examples()))
def test_upstream_example_validates_with_honest_warnings(path, services):
    files = [services, *_companions(path), path]
    try:
        loaded = load_config([str(f) for f in files])
    except ConfigInvalid as invalid:
        pytest.fail("\n".join(str(issue) for issue in invalid.issues))
    assert loaded.config.routes or loaded.config.services
    for companion in files[:-1]:
        own = [w for w in loaded.warnings if w.file == str(companion)]
        expected = EXPECTED.get(companion.name, [])
        assert len(own) == len(expected), [str(w) for w in own]
    got = [(w.path, w.message) for w in loaded.warnings if w.file == str(path)]
    expected = EXPECTED.get(path.name, [])
    assert len(got) == len(expected), "\n".join(f"{p}: {m}" for p, m in got)
    for (path_got, message), (path_expected, fragment) in zip(sorted(got), sorted(expected),
                                                              strict=True):
        assert path_got == path_expected and fragment in message, (path_got, message)


NATIVE_EXAMPLES = sorted((HERE.parents[1] / "config").glob("*.yaml")) + sorted(
    (HERE.parents[1] / "docs" / "tutorials" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", NATIVE_EXAMPLES, ids=lambda path: path.name)
def test_each_native_example_validates_on_its_own(path, capsys):
    """As config/README.md says to: ``pyproxy validate config/NAME.yaml``, one at a time."""
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith("valid: 1 file,") and "0 warnings" in out.splitlines()[0], out


@pytest.mark.parametrize("files,route", [
    ([SERVICES / "bookinfo.yaml", ISTIO / "destination-rule-all.yaml",
      ISTIO / "virtual-service-reviews-jason-v2-v3.yaml"], "reviews-0"),
    ([SERVICES / "gateway-api.yaml", GW / "base-gateways.yaml", GW / "httproute-weight.yaml"],
     "weighted-backends-0"),
    ([SERVICES / "smi.yaml", SMI / "traffic-split-v1alpha4-ab-test.yaml"], "ab-test-apex"),
], ids=["istio", "gateway-api", "smi"])
def test_validate_command_prints_the_imported_routes(files, route, capsys):
    assert main(["validate", *map(str, files)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("valid:") and f"\n  {route}\n" in out, out


def test_validate_names_the_missing_service(capsys):
    code = main(["validate", str(ISTIO / "destination-rule-all.yaml"),
                 str(ISTIO / "virtual-service-reviews-v3.yaml")])
    err = capsys.readouterr().err
    assert code == 2
    assert "virtual-service-reviews-v3.yaml:11: spec.http[0].route[0].destination.host: " \
           "VirtualService reviews: destination host 'reviews' is unknown: no native service " \
           "'reviews'" in err
    assert "services: {reviews: {endpoints: [" in err
