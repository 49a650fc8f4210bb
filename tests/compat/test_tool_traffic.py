"""What Flagger and the Argo Rollouts Gateway API plugin write, served by a real pyproxy
process (the object shapes are the fixtures of test_tool_shapes.py; their sources are in
flagger/SOURCES.md and argo/SOURCES.md)."""

from __future__ import annotations

from tests.compat.support import manifest
from tests.stats_bounds import assert_binomial

FLAGGER = {"podinfo-primary": ["podinfo-primary"], "podinfo-canary": ["podinfo-canary"]}
ARGO = {"argo-rollouts-stable-service": ["stable"], "argo-rollouts-canary-service": ["canary"]}
COOKIE = "flagger-cookie=LpsfdTZkvfFwQFjb"


async def test_flagger_session_affinity(mesh):
    # pkg/router/gateway_api.go getSessionAffinityRouteRules at a 10% step: responses of
    # the canary carry its Set-Cookie (a backendRef filter), the primary's do not; a client
    # sending the cookie back is pinned to the canary by the regex Cookie rule.
    await mesh.load(FLAGGER, manifest("flagger", "gateway.yaml"),
                    manifest("flagger", "gatewayapi-session-affinity.yaml"))
    host = "podinfo.example.com"
    canary = 0
    for _ in range(300):
        status, headers, body = await mesh.request("/", host=host)
        assert status == 200
        cookies = headers.getall("Set-Cookie", [])
        if body["name"] == "podinfo-canary":
            canary += 1
            assert cookies == [f"{COOKIE}; Max-Age=86400"]
        else:
            assert cookies == []
    assert_binomial(canary, 300, 0.1)
    for _ in range(30):
        assert await mesh.backend_of("/", host=host, headers={
            "Cookie": f"theme=dark; {COOKIE}"}) == "podinfo-canary"


async def test_flagger_session_affinity_after_promotion_expires_the_cookie(mesh):
    await mesh.load(FLAGGER, manifest("flagger", "gateway.yaml"),
                    manifest("flagger", "gatewayapi-session-affinity-promoted.yaml"))
    status, headers, body = await mesh.request("/", host="podinfo.example.com",
                                               headers={"Cookie": COOKIE})
    assert (status, body["name"]) == (200, "podinfo-primary")
    assert headers.getall("Set-Cookie") == [f"{COOKIE}; Max-Age=-1"]


async def test_argo_header_route_then_the_split(mesh):
    # pkg/plugin/httproute.go setHTTPHeaderRoute: "end-user: tester" to the canary only;
    # everyone else on the 70/30 split of setHTTPRouteWeight.
    await mesh.load(ARGO, manifest("argo", "gateway.yaml"),
                    manifest("argo", "httproute-header-route.yaml"))
    host = "demo.example.com"
    tester = {"end-user": "tester", "User-Agent": "Mozilla/5.0"}
    for _ in range(30):
        _, headers, body = await mesh.request("/", host=host, headers=tester)
        assert body["name"] == "canary"
        assert headers["x-pyproxy-route"] == "argo-rollouts-http-route-header-route"
    seen = await mesh.spread(300, host=host, headers={"end-user": "someone"})
    assert_binomial(seen.get("canary", 0), 300, 0.3)
