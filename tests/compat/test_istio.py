"""Istio's own samples and task outcomes, served by a real pyproxy process.

The manifests are Istio's, unchanged: ``istio/`` holds ``samples/bookinfo/networking`` of
istio/istio, ``istio/tasks/`` the manifests of the istio.io traffic-management tasks
(mirroring, circuit breaking) and ``istio/api/`` the examples of the istio/api protos (see
SOURCES.md). The bookinfo services are native services over echo backends named after the
pods (``reviews-v2``...), labelled ``version: vN`` as the bookinfo Deployments are. Each test
asserts what the Istio task says the user sees.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.compat.support import manifest
from tests.stats_bounds import assert_binomial

BOOKINFO = {
    "productpage": [("productpage-v1", {"app": "productpage", "version": "v1"})],
    "reviews": [(f"reviews-v{n}", {"app": "reviews", "version": f"v{n}"}) for n in (1, 2, 3)],
    "ratings": [(f"ratings-v{n}", {"app": "ratings", "version": f"v{n}"}) for n in (1, 2)],
    "details": [(f"details-v{n}", {"app": "details", "version": f"v{n}"}) for n in (1, 2)],
}
HTTPBIN = {"httpbin": [(f"httpbin-v{n}", {"app": "httpbin", "version": f"v{n}"})
                       for n in (1, 2)]}
JASON = {"end-user": "jason"}


def sample(name: str):
    return manifest("istio", f"{name}.yaml")


# ---------------------------------------------------------------------------- request routing


async def test_request_routing_all_v1_then_jason_to_v2(mesh):
    # Task "Request Routing": with virtual-service-all-v1 every service answers from v1...
    await mesh.load(BOOKINFO, sample("destination-rule-all"), sample("virtual-service-all-v1"))
    for host in ("productpage", "reviews", "ratings", "details"):
        for _ in range(10):
            assert await mesh.backend_of("/", host=host) == f"{host}-v1"
    # ...short names work in every Kubernetes form...
    assert await mesh.backend_of("/", host="reviews.default.svc.cluster.local") == "reviews-v1"
    # ...then with virtual-service-reviews-test-v2 "jason" sees v2 and everyone else v1.
    await mesh.load(BOOKINFO, sample("destination-rule-all"), sample("virtual-service-all-v1"),
                    sample("virtual-service-reviews-test-v2"))
    for _ in range(10):
        assert await mesh.backend_of("/reviews/0", host="reviews", headers=JASON) == "reviews-v2"
        assert await mesh.backend_of("/reviews/0", host="reviews") == "reviews-v1"
        assert await mesh.backend_of("/reviews/0", host="reviews",
                                     headers={"end-user": "jasonx"}) == "reviews-v1"


async def test_request_routing_names_the_route(mesh):
    await mesh.load(BOOKINFO, sample("destination-rule-all"),
                    sample("virtual-service-reviews-jason-v2-v3"))
    _, headers, body = await mesh.request("/", host="reviews", headers=JASON)
    assert (headers["x-pyproxy-route"], headers["x-pyproxy-backend"]) == ("reviews-0",
                                                                         "reviews/v2")
    _, headers, body = await mesh.request("/", host="reviews")
    assert (headers["x-pyproxy-route"], body["name"]) == ("reviews-1", "reviews-v3")


# ---------------------------------------------------------------------------- faults


async def test_fault_injection_delay_for_jason(mesh):
    # Task "Fault Injection": a 7s delay between reviews:v2 and ratings for user jason only.
    await mesh.load(BOOKINFO, sample("destination-rule-all"), sample("virtual-service-all-v1"),
                    sample("virtual-service-reviews-test-v2"),
                    sample("virtual-service-ratings-test-delay"))
    started = asyncio.get_running_loop().time()
    assert await mesh.backend_of("/ratings/0", host="ratings") == "ratings-v1"
    assert asyncio.get_running_loop().time() - started < 1.0
    with pytest.raises(asyncio.TimeoutError):  # productpage's own 3s timeout would fire here
        await mesh.request("/ratings/0", host="ratings", headers=JASON, timeout=1.5)
    metrics = await (await mesh.client()).get(f"{mesh.proxy.admin_url}/metrics")
    text = await metrics.text()
    assert 'pyproxy_faults_injected_total{kind="delay",route="ratings-0"} 1.0' in text


async def test_fault_injection_abort_for_jason(mesh):
    # "Injecting an HTTP abort fault": jason gets 500 from ratings, everyone else is served.
    await mesh.load(BOOKINFO, sample("destination-rule-all"),
                    sample("virtual-service-ratings-test-abort"))
    status, headers, _ = await mesh.request("/ratings/0", host="ratings", headers=JASON)
    assert (status, headers["x-pyproxy-flags"]) == (500, "FI")
    assert await mesh.backend_of("/ratings/0", host="ratings") == "ratings-v1"
    assert mesh.backends["ratings-v1"].requests == 1  # the aborted request never left


async def test_fault_injection_details_abort_555(mesh):
    await mesh.load(BOOKINFO, sample("fault-injection-details-v1"))
    for _ in range(5):
        status, _, _ = await mesh.request("/details/0", host="details")
        assert status == 555
    assert mesh.backends["details-v1"].requests == 0


# ---------------------------------------------------------------------------- traffic shifting


async def test_traffic_shifting_50_50_then_100_v3(mesh):
    # Task "Traffic Shifting": reviews-50-v3 splits v1/v3 evenly, reviews-v3 sends all to v3.
    await mesh.load(BOOKINFO, sample("destination-rule-all"),
                    sample("virtual-service-reviews-50-v3"))
    await mesh.check_weights({"reviews-v1": 0.5, "reviews-v3": 0.5, "reviews-v2": 0.0},
                             host="reviews")
    await mesh.load(BOOKINFO, sample("destination-rule-all"), sample("virtual-service-reviews-v3"))
    assert await mesh.spread(50, host="reviews") == {"reviews-v3": 50}


@pytest.mark.parametrize("name,weights", [
    ("virtual-service-reviews-80-20", {"reviews-v1": 0.8, "reviews-v2": 0.2}),
    ("virtual-service-reviews-90-10", {"reviews-v1": 0.9, "reviews-v2": 0.1}),
])
async def test_canary_splits(mesh, name, weights):
    await mesh.load(BOOKINFO, sample("destination-rule-all"), sample(name))
    seen = await mesh.spread(1000, host="reviews")
    assert set(seen) == set(weights)
    assert_binomial(seen["reviews-v2"], 1000, weights["reviews-v2"])


# ---------------------------------------------------------------------------- gateway


async def test_bookinfo_gateway(mesh):
    await mesh.load(BOOKINFO, sample("bookinfo-gateway"))
    for path in ("/productpage", "/static/x.css", "/login", "/logout", "/api/v1/products/0"):
        assert await mesh.backend_of(path, host="bookinfo.example") == "productpage-v1", path
    for path in ("/", "/productpage/x", "/loginx"):
        assert await mesh.backend_of(path, host="bookinfo.example") == "status:404", path


# ---------------------------------------------------------------------------- mirroring


async def test_mirroring_to_v2(mesh):
    # Task "Mirroring": first all traffic to v1 and none to v2; then v1 still answers and v2
    # receives a copy whose Host has "-shadow" appended.
    await mesh.load(HTTPBIN, manifest("istio", "tasks", "mirroring-default-routing.yaml"))
    assert await mesh.backend_of("/headers", host="httpbin:8000") == "httpbin-v1"
    await asyncio.sleep(0.1)
    assert mesh.backends["httpbin-v2"].requests == 0
    await mesh.load(HTTPBIN, manifest("istio", "tasks", "mirroring-destination-rule.yaml"),
                    manifest("istio", "tasks", "mirroring-to-v2.yaml"))
    assert await mesh.backend_of("/headers", host="httpbin:8000") == "httpbin-v1"
    v2 = mesh.backends["httpbin-v2"]
    for _ in range(200):
        if v2.requests:
            break
        await asyncio.sleep(0.01)
    assert v2.received[-1]["path"] == "/headers"
    assert v2.received[-1]["host"] == "httpbin-shadow:8000"


# ---------------------------------------------------------------------------- circuit breaking


async def test_circuit_breaking_trips_with_concurrent_requests(mesh):
    # Task "Circuit Breaking": maxConnections 1 and http1MaxPendingRequests 1; one request at
    # a time passes, more concurrent ones are "trapped by circuit breaking" (503).
    await mesh.load({"httpbin": ["httpbin-v1"]},
                    manifest("istio", "tasks", "circuit-breaking-destination-rule.yaml"))
    assert await mesh.backend_of("/get", host="httpbin") == "httpbin-v1"

    async def call():
        return await mesh.request("/sleep/0.3", host="httpbin")

    results = await asyncio.gather(*(call() for _ in range(6)))
    codes = sorted(status for status, _, _ in results)
    assert codes.count(200) >= 1 and codes.count(503) >= 3, codes
    assert all(headers.get("x-pyproxy-overloaded") == "true" and headers["x-pyproxy-flags"] == "UO"
               for status, headers, _ in results if status == 503)


# ---------------------------------------------------------------------------- api examples


def api(name: str):
    return manifest("istio", "api", f"{name}.yaml")


API_SERVICES = {
    "ratings": [("ratings-v1", {"version": "v1"}), ("ratings-v3", {"version": "v3"})],
    "reviews": [("reviews-v1", {"version": "v1"}), ("reviews-v2", {"version": "v2"})],
    "newratings": ["newratings"], "productpage": ["productpage"],
    "productpage-v1": ["productpage-v1"],
}
async def _load_api(mesh, *names: str):
    await mesh.load(API_SERVICES, *(api(name) for name in names))


async def test_api_rewrite_replaces_the_matched_prefix(mesh, tmp_path):
    await mesh.load(API_SERVICES, api("virtual_service.proto-L98-reviews-destination"),
                    _with_subset(tmp_path, "ratings"),
                    api("virtual_service.proto-L1244-ratings-route"))
    status, _, body = await mesh.request("/ratings/7", host="ratings.prod.svc.cluster.local")
    assert (status, body["name"], body["path"]) == (200, "ratings-v1", "/v1/bookRatings/7")


async def test_api_redirect_and_direct_response(mesh):
    await _load_api(mesh, "virtual_service.proto-L1059-ratings-route")
    status, headers, _ = await mesh.request("/v1/getProductRatings", host="ratings")
    assert status == 301  # Istio's default redirect code
    assert headers["Location"] == \
        "http://newratings.default.svc.cluster.local/v1/bookRatings"
    await _load_api(mesh, "virtual_service.proto-L1196-ratings-route")
    status, headers, body = await mesh.request("/v1/getProductRatings", host="ratings")
    assert (status, body) == (503, {"error": "unknown error"})
    assert headers["content-type"] == "text/plain"


async def test_api_prefix_rewrite_redirect(mesh):
    await _load_api(mesh, "virtual_service.proto-L1080-foo-redirect")
    status, headers, _ = await mesh.request("/foo/bar", host="example.com")
    assert (status, headers["Location"]) == (301, "http://foo.example.com/bar")


async def test_api_ignore_uri_case_and_headers(mesh):
    await _load_api(mesh, "virtual_service.proto-L710-ratings-route")
    assert (await mesh.backend_of("/RATINGS/v2/1", host="ratings.prod.svc.cluster.local",
                                  headers=JASON)).startswith("ratings-v")
    assert await mesh.backend_of("/ratings/v2/1", host="ratings.prod.svc.cluster.local") == \
        "status:404"


async def test_api_headers_per_route_and_destination(mesh):
    await mesh.load(API_SERVICES, api("virtual_service.proto-L98-reviews-destination"),
                    api("virtual_service.proto-L583-reviews-route"))
    seen = {}
    for _ in range(40):
        # Every backend answers with "foo"; the v1 destination's headers.response removes it
        # from v1's responses only.
        _, headers, body = await mesh.request("/", host="reviews",
                                              headers={"X-Echo-Set-Header": "foo:bar"})
        assert dict(body["headers"])["test"] == "true"
        assert ("foo" in headers) == (body["name"] == "reviews-v2"), (body["name"], headers)
        seen[body["name"]] = seen.get(body["name"], 0) + 1
    assert set(seen) == {"reviews-v1", "reviews-v2"}


async def test_api_delegate(mesh):
    await mesh.load({"productpage": ["productpage"], "productpage-v1": ["productpage-v1"],
                     "reviews": ["reviews"]},
                    api("virtual_service.proto-L511-bookinfo"),
                    api("virtual_service.proto-L536-productpage"),
                    api("virtual_service.proto-L555-reviews"))
    host = "bookinfo.com"
    assert await mesh.backend_of("/productpage/v1/x", host=host) == "productpage-v1"
    assert await mesh.backend_of("/productpage", host=host) == "productpage"
    assert await mesh.backend_of("/reviews/1", host=host) == "reviews"
    assert await mesh.backend_of("/other", host=host) == "status:404"


def _with_subset(tmp_path, service: str):
    """A DestinationRule for subset v1 of ``service`` (the api examples' VirtualServices
    name it; their DestinationRule examples define other subsets)."""
    path = tmp_path / f"{service}-v1.yaml"
    path.write_text(f"""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: {service}-v1
spec:
  host: {service}.prod.svc.cluster.local
  subsets:
  - name: v1
    labels:
      version: v1
""")
    return path


async def test_api_retries(mesh, tmp_path):
    # "...the maximum number of retries to 3 when calling ratings:v1 service, with a 2s
    # timeout per retry attempt": two 503s are retried away, four are not.
    await mesh.load(API_SERVICES, _with_subset(tmp_path, "ratings"),
                    api("virtual_service.proto-L1318-ratings-route"))
    host = "ratings.prod.svc.cluster.local"
    status, headers, _ = await mesh.request(
        f"/?responseCode=503&succeedAfter=2&uuid={uuid.uuid4()}", host=host)
    assert (status, headers["x-pyproxy-attempts"]) == (200, "3")
    status, headers, _ = await mesh.request(
        f"/?responseCode=503&succeedAfter=4&uuid={uuid.uuid4()}", host=host)
    assert (status, headers["x-pyproxy-attempts"], headers["x-pyproxy-flags"]) == (503, "4",
                                                                                   "URX")


async def test_uri_regex_rewrite(mesh, tmp_path):
    # Example 2 of RegexRewrite.rewrite in virtual_service.proto: "Path pattern
    # /aaa/XxX/bbb with match (?i)/xxx/ and a rewrite string of /yyy/ would do a
    # case-insensitive match and transform the path to /aaa/yyy/bbb". (Example 1 there drops
    # a slash: its \\2 already starts with one, so the result has "//", as in Envoy.)
    path = tmp_path / "regex-rewrite.yaml"
    path.write_text("""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: service}
spec:
  hosts: [ratings]
  http:
  - rewrite:
      uriRegexRewrite:
        match: (?i)/xxx/
        rewrite: /yyy/
    route:
    - destination: {host: ratings}
""")
    await mesh.load(API_SERVICES, path)
    status, _, body = await mesh.request("/aaa/XxX/bbb", host="ratings")
    assert (status, body["path"]) == (200, "/aaa/yyy/bbb")
