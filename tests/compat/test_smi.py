"""SMI TrafficSplit / HTTPRouteGroup examples of the smi-spec repository, served by a real
pyproxy process, plus the two TrafficSplits of the Linkerd labs (Oracle's Helidon labs).

Each backend Kubernetes service (``website-v1``...) is a native service over an echo
backend of the same name; the apex service (``website``) selects all of them, as the
Kubernetes Service of the spec's workflow does (``app: foobar`` without a version).
"""

from __future__ import annotations

import pytest

from tests.compat.support import manifest
from tests.stats_bounds import assert_binomial


def smi(name: str):
    return manifest("smi", f"{name}.yaml")


def leaves(apex: str, *names: str) -> dict:
    """The leaf services, and the apex selecting all their pods."""
    return {apex: list(names), **{name: [name] for name in names}}


WEBSITE = leaves("website", "website-v1", "website-v2")
FIREFOX = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"}


async def test_canary_90_10(mesh):
    # "The above configuration will route 90% of the website incoming traffic to the
    # website-v1 service and 10% to website-v2 service."
    await mesh.load(WEBSITE, smi("traffic-split-v1alpha4-canary"))
    await mesh.check_weights({"website-v1": 0.9, "website-v2": 0.1}, host="website")
    # The apex is reached under its Kubernetes names too.
    assert (await mesh.backend_of("/", host="website.default.svc.cluster.local")).startswith(
        "website-v")


async def test_ab_test_firefox_users_to_v2_others_to_the_apex(mesh):
    # "...will route the Firefox users to the website-v2 service while all the others will
    # be routed to the root Kubernetes service."
    await mesh.load(WEBSITE, smi("traffic-split-v1alpha4-ab-test"))
    for _ in range(20):
        assert await mesh.backend_of("/", host="website", headers=FIREFOX) == "website-v2"
    others = await mesh.spread(40, host="website", headers={"User-Agent": "curl/8.0"})
    assert set(others) == {"website-v1", "website-v2"}  # the apex selects both versions
    _, headers, _ = await mesh.request("/", host="website")
    assert headers["x-pyproxy-route"] == "ab-test-apex"


async def test_v1alpha1_milli_weights(mesh):
    # weight: 10m, 100m, 1500m are relative ("Identical to resources, 1 = 1000m").
    await mesh.load(leaves("numbers", "one", "two", "three"),
                    smi("traffic-split-v1alpha1-my-weights"))
    seen = await mesh.spread(1610, host="numbers")
    assert set(seen) <= {"one", "two", "three"}
    assert_binomial(seen.get("one", 0), 1610, 10 / 1610)
    assert_binomial(seen.get("two", 0), 1610, 100 / 1610)
    assert_binomial(seen.get("three", 0), 1610, 1500 / 1610)


async def test_v1alpha2_50_50(mesh):
    await mesh.load(leaves("my-website", "my-website-v1", "my-website-v2"),
                    smi("traffic-split-v1alpha2-my-trafficsplit"))
    await mesh.check_weights({"my-website-v1": 0.5, "my-website-v2": 0.5}, host="my-website")


async def test_workflow_one_third_to_v2(mesh):
    # "At this point, the SMI implementation redirects approximately 33% of traffic to
    # foobar-v2."
    await mesh.load(leaves("foobar", "foobar-v1", "foobar-v2"),
                    smi("traffic-split-v1alpha4-workflow"))
    seen = await mesh.spread(900, host="foobar")
    assert_binomial(seen["foobar-v2"], 900, 1 / 3)


# The HTTPRouteGroup examples are not tied to a split in the spec: this one (ours) uses them.
SPLIT_ON_THE_ROUTES = """\
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata:
  name: on-the-routes
spec:
  service: website
  matches:
  - kind: HTTPRouteGroup
    name: the-routes
  backends:
  - service: website-v2
    weight: 1
"""


@pytest.fixture
def split_on_the_routes(tmp_path):
    path = tmp_path / "split.yaml"
    path.write_text(SPLIT_ON_THE_ROUTES)
    return path


async def test_route_group_path_regex_is_anchored_at_the_start(mesh, split_on_the_routes):
    await mesh.load(WEBSITE, smi("traffic-specs-v1alpha4-metrics-health"), split_on_the_routes)
    apex = {"website-v1", "website-v2"}
    assert await mesh.backend_of("/metrics", host="website") == "website-v2"
    assert await mesh.backend_of("/metrics/cpu", host="website") == "website-v2"  # ^ only
    assert await mesh.backend_of("/ping", host="website", method="POST") == "website-v2"
    # methods: [GET] for /metrics: a POST goes to the apex; so does a path not at the start.
    for path, method in (("/metrics", "POST"), ("/x/metrics", "GET")):
        names = {await mesh.backend_of(path, host="website", method=method) for _ in range(12)}
        assert names == apex, (path, method, names)


async def test_route_group_header_filters(mesh, split_on_the_routes):
    await mesh.load(WEBSITE, smi("traffic-specs-v1alpha4-header-filters"), split_on_the_routes)
    android = "Mozilla/5.0 (Linux; Android 14) Chrome/120"
    assert await mesh.backend_of("/", host="website", headers={
        "User-Agent": android, "Cookie": "a=b;type=insider"}) == "website-v2"
    assert await mesh.backend_of("/", host="website", headers=FIREFOX) == "website-v2"
    names = {await mesh.backend_of("/", host="website", headers={
        "User-Agent": android, "Cookie": "type=outsider"}) for _ in range(12)}
    assert names == {"website-v1", "website-v2"}  # not an insider: the apex (both versions)


async def test_route_group_path_methods_and_headers(mesh, split_on_the_routes):
    await mesh.load(WEBSITE, smi("traffic-specs-v1alpha4-iphone"), split_on_the_routes)
    iphone = {"User-Agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"}
    assert await mesh.backend_of("/api/items", host="website", headers=iphone) == "website-v2"
    _, headers, _ = await mesh.request("/api/items", host="website", method="HEAD",
                                       headers=iphone)
    assert headers["x-pyproxy-route"] == "on-the-routes"
    _, headers, _ = await mesh.request("/api/items", host="website", method="POST",
                                       headers=iphone)
    assert headers["x-pyproxy-route"] == "on-the-routes-apex"


# The Linkerd labs (Oracle's "Helidon labs", module "traffic splits"):
# a canary that sends nothing to the new version yet, and a 50/50 split onto a fault
# injector that answers 504 (their nginx returns 504), with the apex itself as a backend.
LAB_CANARY = """\
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata:
  name: stockmanager-canary
spec:
  service: stockmanager
  backends:
  - service: stockmanagerv0-0-1
    weight: 90
  - service: stockmanagerv0-0-2
    weight: 0
"""
LAB_FAULT = """\
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata:
  name: fault-injector
spec:
  service: zipkin
  backends:
  - service: zipkin
    weight: 50
  - service: fault-injector-zipkin
    weight: 50
"""


async def test_lab_canary_weight_zero_gets_nothing(mesh, tmp_path):
    path = tmp_path / "canary.yaml"
    path.write_text(LAB_CANARY)
    await mesh.load(leaves("stockmanager", "stockmanagerv0-0-1", "stockmanagerv0-0-2"), path)
    seen = await mesh.spread(100, "/store/stocklevel", host="stockmanager")
    assert seen == {"stockmanagerv0-0-1": 100}


async def test_lab_fault_injector_half_the_traffic(mesh, tmp_path):
    path = tmp_path / "fault.yaml"
    path.write_text(LAB_FAULT)
    await mesh.load({"zipkin": ["zipkin"], "fault-injector-zipkin": ["fault-injector"]}, path)
    await mesh.check_weights({"zipkin": 0.5, "fault-injector": 0.5}, "/api/v2/spans",
                             host="zipkin")


async def test_flagger_split_to_a_canary_without_pods_answers_503_uh_for_its_share(mesh,
                                                                                 tmp_path):
    # fluxcd/flagger pkg/router/smi.go (v1.42) writes the TrafficSplit named after the apex,
    # NAME-canary / NAME-primary, weights as quantities. Here at 50/50 while the canary
    # Service has no endpoints: the config loads; the canary's share is 503 with flag UH.
    text = manifest("flagger", "smi-trafficsplit.yaml").read_text()
    path = tmp_path / "split.yaml"
    path.write_text(text.replace('weight: "0"', 'weight: "50"').replace('weight: "100"',
                                                                        'weight: "50"'))
    await mesh.load({"podinfo-primary": ["podinfo-primary"]}, path)
    codes = {200: 0, 503: 0}
    for _ in range(200):
        status, headers, _ = await mesh.request("/", host="podinfo")
        codes[status] += 1
        if status == 503:
            assert headers["x-pyproxy-flags"] == "UH"
            assert headers["x-pyproxy-backend"] == "podinfo-canary"
    assert_binomial(codes[503], 200, 0.5)
