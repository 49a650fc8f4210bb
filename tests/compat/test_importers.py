"""The importers' mapping of each upstream field to the native model, field by field
(fast: no process). Where a field is taken from an upstream document, its semantics are the
ones quoted there (istio/api protos, gateway-api ``httproute_types.go``, smi-spec)."""

from __future__ import annotations

import textwrap

import pytest

from pyproxy.config.load import ConfigInvalid, load_config
from pyproxy.config.model import (
    Backend,
    Backoff,
    ConnectionPool,
    ConsistentHash,
    DirectResponse,
    HeaderChanges,
    LoadBalancer,
    Mirror,
    OutlierDetection,
    PathMatch,
    Retries,
    Sticky,
    StickyCookie,
    StringMatch,
)

SERVICES = """\
services:
  reviews:
    endpoints:
      - {address: "r1:80", labels: {version: v1}}
      - {address: "r2:80", labels: {version: v2}}
  ratings: {endpoints: ["ratings:80"]}
  web: {endpoints: ["web:80"]}
  web-v2: {endpoints: ["web-v2:80"]}
"""
DR = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def load(tmp_path, *documents: str, services: str = SERVICES):
    path = tmp_path / "config.yaml"
    path.write_text("\n---\n".join([services, *(textwrap.dedent(d) for d in documents)]))
    return load_config([str(path)])


def errors(tmp_path, *documents: str, services: str = SERVICES) -> list[str]:
    with pytest.raises(ConfigInvalid) as raised:
        load(tmp_path, *documents, services=services)
    return [f"{issue.path}: {issue.message}" for issue in raised.value.issues]


def warnings(loaded) -> list[str]:
    return [f"{issue.path}: {issue.message}" for issue in loaded.warnings]


def vs(http: str, hosts: str = "[reviews]", extra: str = "") -> str:
    return (f"apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: "
            f"{{name: reviews}}\nspec:\n  hosts: {hosts}\n{extra}  http:\n"
            + textwrap.indent(textwrap.dedent(http), "  "))


def route(loaded, name: str):
    return next(r for r in loaded.config.routes if r.name == name)


# ---------------------------------------------------------------------------- Istio


def test_istio_matches(tmp_path):
    loaded = load(tmp_path, DR, vs("""\
        - match:
          - uri: {regex: "/api/v[0-9]+/.*"}
            method: {regex: "P(OS|U)T"}
            authority: {prefix: reviews}
            headers: {x-present: {}, X-Debug: {exact: "1"}}
            withoutHeaders: {x-canary: {exact: never}}
            queryParams: {flag: {exact: ""}}
          - uri: {prefix: /Static}
            ignoreUriCase: true
          route: [{destination: {host: reviews}}]
        """))
    first, second = route(loaded, "reviews-0").matches
    assert first.path == PathMatch("regex", "/api/v[0-9]+/.*")
    assert first.methods == ("POST", "PUT")
    assert first.headers == (("host", StringMatch("prefix", "reviews")),
                             ("x-present", StringMatch("present")),
                             ("x-debug", StringMatch("exact", "1")),
                             ("x-canary", StringMatch("exact", "never", invert=True)))
    assert first.query == (("flag", StringMatch("exact", "")),)
    assert second.path == PathMatch("prefix", "/Static", ignore_case=True)
    assert warnings(loaded) == ["spec.http[0].match[0].method: VirtualService reviews: regex "
                                "method match is read as the method list POST, PUT (pyproxy "
                                "matches methods from a list)"]


def test_istio_destinations_weights_and_headers(tmp_path):
    loaded = load(tmp_path, DR, vs("""\
        - route:
          - destination: {host: reviews.default.svc.cluster.local, subset: v1, port: {number: 9080}}
            weight: 75
            headers: {request: {set: {x-version: v1}}}
          - destination: {host: reviews, subset: v2}
            weight: 25
          headers:
            request: {add: {x-b3-sampled: "1"}, remove: [x-debug]}
            response: {set: {cache-control: no-store}}
        - route: [{destination: {host: ratings}}]
        """))
    split = route(loaded, "reviews-0")
    assert split.backends == (
        Backend("reviews", "v1", 75.0, headers=HeaderChanges(set=(("x-version", "v1"),))),
        Backend("reviews", "v2", 25.0))
    assert split.headers.request == HeaderChanges(add=(("x-b3-sampled", "1"),),
                                                  remove=("x-debug",))
    assert split.headers.response == HeaderChanges(set=(("cache-control", "no-store"),))
    assert route(loaded, "reviews-1").backends == (Backend("ratings", None, 100.0),)


def test_istio_weight_errors_and_missing_names(tmp_path):
    assert errors(tmp_path, DR, vs("""\
        - route:
          - destination: {host: reviews, subset: v1}
          - destination: {host: reviews, subset: v2}
        """)) == ["spec.http[0].route: VirtualService reviews: total destination weight = 0 "
                  "(Istio rejects this): give the destinations weights"]
    found = errors(tmp_path, vs("""\
        - route: [{destination: {host: reviews, subset: v3}}]
        - route: [{destination: {host: details}}]
        """))
    assert found[0] == ("spec.http[0].route[0].destination.subset: VirtualService reviews: "
                        "service 'reviews' has no subset 'v3' (subsets: none); define it in a "
                        "DestinationRule (or the native services: block)")
    assert found[1].startswith("spec.http[1].route[0].destination.host: VirtualService "
                               "reviews: destination host 'details' is unknown: no native "
                               "service 'details'")


def test_istio_empty_subset_answers_503(tmp_path):
    loaded = load(tmp_path, DR.replace("- {name: v2, labels: {version: v2}}",
                                       "- {name: v3, labels: {version: v3}}"),
                  vs("- route: [{destination: {host: reviews, subset: v3}}]\n"))
    assert route(loaded, "reviews-0").backends == (
        Backend("reviews", "v3", 100.0, direct_status=503),)
    assert "v3" not in loaded.config.services["reviews"].subsets
    assert "selects no endpoint" in warnings(loaded)[0]


def test_istio_faults_retries_timeouts_mirrors(tmp_path):
    loaded = load(tmp_path, DR, vs("""\
        - route: [{destination: {host: reviews, subset: v1}}]
          fault:
            delay: {fixedDelay: 1.5s, percent: 10}
            abort: {httpStatus: 503, percentage: {value: 0.1}}
          retries: {attempts: 3, perTryTimeout: 2s, retryOn: "gateway-error,connect-failure,refused-stream,503,retriable-4xx", backoff: 50ms}
          timeout: 0s
          mirror: {host: reviews, subset: v2}
          mirrorPercentage: {value: 12.5}
          mirrors:
          - destination: {host: ratings}
        """))  # noqa: E501 (manifests as Istio's docs write them)
    r = route(loaded, "reviews-0")
    assert (r.fault.delay.fixed, r.fault.delay.percent) == (1.5, 10.0)
    assert (r.fault.abort.status, r.fault.abort.percent) == (503, 0.1)
    assert r.fault.scope == "request"  # drawn once, before routing: never retried (Envoy)
    assert r.retries == Retries(attempts=3, per_try_timeout=2.0,
                                retry_on=("gateway-error", "connect-failure",
                                          "retriable-status-codes"),
                                status_codes=(503, 409), backoff=Backoff(0.05, 0.5))
    assert r.timeout == 0  # Istio's "0s": no timeout at all
    assert r.mirrors == (Mirror("reviews", "v2", 12.5), Mirror("ratings", None, 100.0))


def test_istio_defaults_and_honest_gaps(tmp_path):
    loaded = load(tmp_path, vs("""\
        - route: [{destination: {host: ratings}}]
          fault: {abort: {httpStatus: 500}}
          retries: {attempts: 2, retryOn: "5xx,unavailable,retriable-headers"}
          corsPolicy: {allowOrigins: [{exact: "https://example.com"}]}
          match: [{sourceLabels: {app: productpage}, port: 9080}]
        """))
    r = route(loaded, "reviews-0")
    assert r.fault.abort.percent == 0  # "If not specified, no request will be aborted."
    assert r.retries.retry_on == ("5xx",)
    assert sorted(warnings(loaded)) == sorted([
        "spec.http[0].fault.abort: VirtualService reviews: has no percentage: Istio then "
        "aborts no request",
        "spec.http[0].retries.retryOn: VirtualService reviews: retryOn conditions not "
        "honoured: gRPC conditions unavailable (pyproxy proxies HTTP/1.1); retriable-headers "
        "(unknown to pyproxy)",
        "spec.http[0].corsPolicy: VirtualService reviews: corsPolicy is not honoured: pyproxy "
        "has no CORS handling; requests are routed as if it were absent",
        "spec.http[0].match[0].sourceLabels: VirtualService reviews: sourceLabels is not "
        "honoured: it selects client workloads, not requests; pyproxy applies the rule to "
        "every client",
        "spec.http[0].match[0].port: VirtualService reviews: port is not honoured: pyproxy "
        "serves one listener, so this condition matches every request"])


def test_istio_requests_no_rule_matches_get_404(tmp_path):
    loaded = load(tmp_path, vs("- match: [{headers: {end-user: {exact: jason}}}]\n"
                               "  route: [{destination: {host: ratings}}]\n"))
    # Istio owns the host: what no rule matches gets 404, not the service itself.
    assert [r.name for r in loaded.config.routes] == ["reviews-0", "reviews-unmatched"]
    assert route(loaded, "reviews-unmatched").direct_response == DirectResponse(404)


def test_istio_retries_without_retry_on(tmp_path):
    loaded = load(tmp_path, vs("- route: [{destination: {host: ratings}}]\n"
                               "  retries: {attempts: 3, perTryTimeout: 2s}\n"))
    # "If not specified, this defaults to connect-failure,refused-stream,unavailable,cancelled"
    assert route(loaded, "reviews-0").retries.retry_on == ("connect-failure", "reset")


def test_istio_destination_rule_policies(tmp_path):
    loaded = load(tmp_path, """\
        apiVersion: networking.istio.io/v1alpha3
        kind: DestinationRule
        metadata: {name: reviews}
        spec:
          host: reviews.default.svc.cluster.local
          trafficPolicy:
            loadBalancer: {consistentHash: {httpHeaderName: x-user}}
            connectionPool:
              tcp: {maxConnections: 100, connectTimeout: 30ms}
              http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRetries: 3, idleTimeout: 30s}
            outlierDetection: {consecutive5xxErrors: 7, interval: 5m, baseEjectionTime: 15m, minHealthPercent: 50}
        ---
        apiVersion: networking.istio.io/v1alpha3
        kind: DestinationRule
        metadata: {name: ratings}
        spec:
          host: ratings
          trafficPolicy: {loadBalancer: {simple: LEAST_CONN}, outlierDetection: {}}
        ---
        apiVersion: networking.istio.io/v1alpha3
        kind: DestinationRule
        metadata: {name: web}
        spec:
          host: web
          trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: user}}}}
        """)  # noqa: E501 (manifests as Istio's docs write them)
    reviews = loaded.config.services["reviews"]
    assert reviews.load_balancer == LoadBalancer("consistent_hash", ConsistentHash(header="x-user"))
    assert reviews.connection_pool == ConnectionPool(
        max_connections=100, connect_timeout=0.03, max_pending_requests=10, max_requests=1000,
        max_retries=3, idle_timeout=30.0)
    assert reviews.outlier_detection == OutlierDetection(
        consecutive_5xx=7, interval=300.0, base_ejection_time=900.0, max_ejection_time=900.0,
        max_ejection_percent=10.0, panic_threshold=50.0)
    ratings = loaded.config.services["ratings"]
    assert ratings.load_balancer == LoadBalancer("least_request")
    # Istio's (Envoy's) defaults: 5 consecutive 5xx, 10s, 30s, at most 10% ejected.
    assert ratings.outlier_detection == OutlierDetection(consecutive_5xx=5,
                                                         max_ejection_percent=10.0)
    assert loaded.config.services["web"].load_balancer.hash_on == ConsistentHash(cookie="user")
    assert warnings(loaded) == []


def test_istio_later_manifest_replaces_earlier(tmp_path):
    loaded = load(tmp_path, vs("- route: [{destination: {host: ratings}}]\n"),
                  vs("- route: [{destination: {host: web}}]\n"))
    assert [r.backends[0].service for r in loaded.config.routes] == ["web"]
    assert "is replaced by the VirtualService of the same name" in warnings(loaded)[0]


def test_istio_gateway_hosts_narrow_bound_virtual_services(tmp_path):
    gateway = """\
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: public}
        spec:
          selector: {istio: ingressgateway}
          servers:
          - port: {number: 80, name: http, protocol: HTTP}
            hosts: ["*/shop.example", "./*.api.example"]
        """
    loaded = load(tmp_path, gateway, vs("- route: [{destination: {host: web}}]\n",
                                        hosts='["*"]', extra="  gateways: [public]\n"))
    assert route(loaded, "reviews-0").hosts == ("*.api.example", "shop.example")
    loaded = load(tmp_path, gateway, vs("- route: [{destination: {host: web}}]\n",
                                        hosts='["v1.api.example", other.example]',
                                        extra="  gateways: [public, mesh]\n"))
    assert route(loaded, "reviews-0").hosts == ("v1.api.example", "other.example")


def test_istio_proto_field_names_are_accepted(tmp_path):
    loaded = load(tmp_path, vs("""\
        - match: [{uri: {prefix: /foo/}}]
          redirect: {authority: foo.example.com, prefix_rewrite: /, redirect_code: 302}
        """, hosts="[example.com]"))
    redirect = route(loaded, "reviews-0").redirect
    assert (redirect.host, redirect.path_prefix, redirect.status) == ("foo.example.com", "/", 302)


# ---------------------------------------------------------------------------- Gateway API


def httproute(rules: str, name: str = "web", extra: str = "  parentRefs: [{name: gw}]\n",
              group: str = "gateway.networking.k8s.io/v1") -> str:
    return (f"apiVersion: {group}\nkind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n"
            f"{extra}  rules:\n" + textwrap.indent(textwrap.dedent(rules), "  "))


def test_gateway_api_filters_and_policies(tmp_path):
    loaded = load(tmp_path, httproute("""\
        - matches: [{path: {type: PathPrefix, value: /api}}]
          filters:
          - type: RequestMirror
            requestMirror: {backendRef: {name: web-v2, port: 80}, fraction: {numerator: 1, denominator: 8}}
          - type: ExtensionRef
            extensionRef: {group: example.com, kind: Auth, name: x}
          backendRefs: [{name: web, port: 80}]
        - matches: [{path: {type: Exact, value: /login}}]
          sessionPersistence: {sessionName: shop, absoluteTimeout: 10m, type: Cookie}
          retry: {codes: [500, 502, 503, 504], attempts: 4, backoff: 100ms}
          timeouts: {request: 10s, backendRequest: 2s}
          backendRefs:
          - name: web
            port: 80
            filters:
            - type: ResponseHeaderModifier
              responseHeaderModifier: {set: [{name: X-Backend, value: web}]}
        """))  # noqa: E501 (manifests as the Gateway API docs write them)
    api, login = route(loaded, "web-0"), route(loaded, "web-1")
    assert api.direct_response == DirectResponse(500)  # the filter cannot run: 500 (spec)
    assert api.mirrors == (Mirror("web-v2", None, 12.5),)
    assert login.sticky == Sticky(cookie=StickyCookie("shop", 600.0))
    assert login.retries == Retries(attempts=4, per_try_timeout=2.0,
                                    retry_on=("connect-failure", "reset",
                                              "retriable-status-codes", "gateway-error"),
                                    status_codes=(500, 502, 503, 504),
                                    backoff=Backoff(0.1, 1.0))
    assert login.timeout == 10.0
    # A backendRef's filters apply to that backend's share only (per-backend in the model).
    assert login.headers is None
    assert login.backends[0].response_headers == HeaderChanges(set=(("x-backend", "web"),))
    assert warnings(loaded) == [
        "spec.rules[0].filters[1]: HTTPRoute web: filter ExtensionRef is not honoured: pyproxy "
        "cannot run it, so (as the spec requires for a filter that cannot be resolved) the rule "
        "answers 500"]


def test_gateway_api_precedence_with_hostnames(tmp_path):
    loaded = load(tmp_path,
                  httproute("- backendRefs: [{name: web}]\n", name="any-host"),
                  httproute("- matches: [{path: {type: Exact, value: /x}}]\n"
                            "  backendRefs: [{name: web}]\n", name="wild",
                            extra="  hostnames: ['*.example.com', '*.shop.example.com']\n"
                                  "  parentRefs: [{name: gw}]\n"),
                  httproute("- backendRefs: [{name: web-v2}]\n", name="exact",
                            extra="  hostnames: [a.example.com, b.example.com]\n"
                                  "  parentRefs: [{name: gw}]\n"))
    assert [(r.name, r.hosts) for r in loaded.config.routes] == [
        ("exact-0", ("a.example.com", "b.example.com")),
        ("wild-0-h0", ("*.shop.example.com",)), ("wild-0-h1", ("*.example.com",)),
        ("any-host-0", ())]


def test_gateway_api_invalid_combinations(tmp_path):
    found = errors(tmp_path, httproute("""\
        - matches: [{path: {type: Exact, value: /a}}]
          filters:
          - type: URLRewrite
            urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}
          backendRefs: [{name: web}]
        - filters:
          - {type: RequestRedirect, requestRedirect: {hostname: a.example}}
          - {type: URLRewrite, urlRewrite: {hostname: b.example}}
        """))
    assert found == [
        "spec.rules[0].filters[0].urlRewrite.path: HTTPRoute web: ReplacePrefixMatch needs "
        "every match of the rule to be a PathPrefix match",
        "spec.rules[1].filters: HTTPRoute web: RequestRedirect and URLRewrite cannot be combined"]


def test_linkerd_httproute_with_a_service_parent(tmp_path):
    loaded = load(tmp_path, httproute("""\
        - matches: [{headers: [{name: x-canary, value: "true"}]}]
          backendRefs: [{name: web-v2, port: 80}]
        - backendRefs: [{name: web, port: 80}]
        """, extra="  parentRefs: [{name: web, kind: Service, group: core, port: 80}]\n",
                  group="policy.linkerd.io/v1beta3"))
    assert [(r.name, r.hosts) for r in loaded.config.routes] == [("web-0", ("web",)),
                                                                ("web-1", ("web",))]


# ---------------------------------------------------------------------------- SMI


def test_smi_route_group_v1alpha2_top_level_matches(tmp_path):
    loaded = load(tmp_path, """\
        apiVersion: specs.smi-spec.io/v1alpha2
        kind: HTTPRouteGroup
        metadata: {name: api}
        matches:
        - {name: api, pathRegex: "/api", methods: [GET]}
        ---
        apiVersion: split.smi-spec.io/v1alpha3
        kind: TrafficSplit
        metadata: {name: web-split}
        spec:
          service: web.default.svc.cluster.local
          matches: [{kind: HTTPRouteGroup, name: api}, {kind: TCPRoute, name: db}]
          backends: [{service: web-v2, weight: 500m}]
        """)
    split, apex = loaded.config.routes
    assert split.hosts == ("web",) and split.matches[0].path == PathMatch("regex", "(?:/api).*")
    assert split.backends == (Backend("web-v2", weight=0.5),)
    assert apex.name == "web-split-apex" and apex.backends == (Backend("web"),)
    assert warnings(loaded) == ["spec.matches[1]: TrafficSplit web-split: kind TCPRoute is not "
                                "honoured: pyproxy splits HTTP requests only (HTTPRouteGroup)"]


# ---------------------------------------------------------------------------- other kinds


def test_other_kinds_are_reported(tmp_path):
    loaded = load(tmp_path, """\
        apiVersion: v1
        kind: Service
        metadata: {name: reviews}
        spec: {selector: {app: reviews}, ports: [{port: 9080}]}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: reviews-v1}
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: ext}
        ---
        apiVersion: example.com/v1
        kind: Widget
        metadata: {name: w}
        ---
        apiVersion: networking.istio.io/v2
        kind: Gateway
        metadata: {name: gw}
        spec: {servers: [{port: {number: 80, protocol: HTTP}, hosts: ["*"]}], replicas: 2}
        """)
    assert warnings(loaded) == [
        "kind: Service reviews: is not imported: a Kubernetes Service has no addresses here; "
        "give its endpoints in a native services: block (services: {reviews: {endpoints: "
        "[...]}})",
        "kind: Deployment reviews-v1: is not imported: apps/v1 Deployment is not routing "
        "config pyproxy reads",
        "kind: ServiceEntry ext: is not imported: pyproxy reaches external hosts through a "
        "native service with their address as endpoint",
        "kind: Widget w: is not imported: pyproxy reads Istio VirtualService, DestinationRule "
        "and Gateway; SMI TrafficSplit and HTTPRouteGroup; Gateway API HTTPRoute, Gateway and "
        "ReferenceGrant, not example.com/v1 Widget",
        "apiVersion: Gateway gw: version v2 of networking.istio.io is not one pyproxy knows "
        "(v1alpha3, v1beta1, v1); read as v1",
        "spec.replicas: Gateway gw: unknown field 'replicas' is ignored (not part of the API "
        "pyproxy reads; a newer version?)"]


def test_route_names_across_manifests_and_native_routes(tmp_path):
    loaded = load(tmp_path, vs("- route: [{destination: {host: ratings}}]\n"),
                  httproute("- backendRefs: [{name: web}]\n", name="reviews"))
    assert [r.name for r in loaded.config.routes] == ["reviews-0", "reviews-0-2"]
    assert "'reviews-0' is another manifest's route" in warnings(loaded)[0]
    native = SERVICES + "routes:\n  - {name: reviews-0, backends: [{service: web}]}\n"
    assert errors(tmp_path, vs("- route: [{destination: {host: ratings}}]\n"),
                  services=native) == [
        "spec.http[0]: VirtualService reviews: makes a route named 'reviews-0', but a native "
        "route of that name exists; rename one of them"]


def test_routes_keep_the_place_of_their_documents(tmp_path):
    native_first = (SERVICES + "routes:\n"
                    "  - {name: first, hosts: [a.example], backends: [{service: web}]}\n")
    loaded = load(tmp_path, vs("- route: [{destination: {host: ratings}}]\n"),
                  "routes:\n  - {name: last, backends: [{service: web}]}\n",
                  services=native_first)
    assert [r.name for r in loaded.config.routes] == ["first", "reviews-0", "last"]
