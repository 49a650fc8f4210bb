"""Gateway API conformance cases, served by a real pyproxy process.

The manifests in ``gateway_api/`` are the conformance suite's own (kubernetes-sigs/gateway-api
``conformance/tests/*.yaml`` and the Gateways of ``conformance/base/manifests.yaml``,
unchanged; see SOURCES.md). Each test asserts what the matching ``.go`` file asserts: which
backend answers a request, the path and headers the backend sees, the redirect, the status.
The Kubernetes Services ``infra-backend-v1..v3`` and ``web-backend`` are native services
pointing at echo backends of the same names.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.compat.support import Mesh, manifest

INFRA = {f"infra-backend-v{n}": [f"infra-backend-v{n}"] for n in (1, 2, 3)}
GATEWAYS = manifest("gateway_api", "base-gateways.yaml")


def gw(name: str):
    return manifest("gateway_api", f"{name}.yaml")


async def expect(mesh: Mesh, cases: list[dict]) -> None:
    """Each case: request (path, host, method, headers) → backend, or status; optionally the
    path and headers the backend received, and headers the response must have."""
    for case in cases:
        status, headers, body = await mesh.request(
            case.get("path", "/"), host=case.get("host", "gateway.example"),
            method=case.get("method", "GET"), headers=case.get("headers"))
        where = f"{case.get('method', 'GET')} {case.get('host', '')}{case.get('path', '/')}"
        if "backend" in case:
            assert status == 200 and body["name"] == case["backend"], (where, status, body)
        if "status" in case:
            assert status == case["status"], (where, status, body)
        if "location" in case:
            assert headers.get("Location") == case["location"], (where, dict(headers))
        if "backend_path" in case:
            assert body["path"] == case["backend_path"], (where, body["path"])
        if "backend_host" in case:
            seen = dict(body["headers"])["host"]
            assert seen == case["backend_host"], (where, seen)
        for name, value in case.get("backend_headers", {}).items():
            values = [v for k, v in body["headers"] if k == name.lower()]
            assert ",".join(values).replace(", ", ",") == value, (where, name, values)
        for name in case.get("backend_absent", ()):
            assert name.lower() not in dict(body["headers"]), (where, name)
        for name, value in case.get("response_headers", {}).items():
            got = ",".join(headers.getall(name, [])).replace(", ", ",")
            assert got == value, (where, name, got)
        for name in case.get("response_absent", ()):
            assert name not in headers, (where, name)


# ---------------------------------------------------------------------------- matching


async def test_httproute_matching(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-matching"))
    v1, v2 = "infra-backend-v1", "infra-backend-v2"
    await expect(mesh, [
        {"path": "/", "backend": v1}, {"path": "/example", "backend": v1},
        {"path": "/", "headers": {"Version": "one"}, "backend": v1},
        {"path": "/v2", "backend": v2}, {"path": "/v2/example", "backend": v2},
        {"path": "/", "headers": {"Version": "two"}, "backend": v2},
        {"path": "/v2/", "backend": v2},
        {"path": "/v2example", "backend": v1},  # not a path-segment prefix of /v2
        {"path": "/foo/v2/example", "backend": v1},
    ])


async def test_httproute_matching_across_routes(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-matching-across-routes"))
    v1, v2 = "infra-backend-v1", "infra-backend-v2"
    await expect(mesh, [
        {"host": "example.com", "path": "/", "backend": v1},
        {"host": "example.com", "path": "/example", "backend": v1},
        {"host": "example.net", "path": "/example", "backend": v1},
        {"host": "example.com", "path": "/example", "headers": {"Version": "one"},
         "backend": v1},
        {"host": "example.com", "path": "/v2", "backend": v2},
        {"host": "example.net", "path": "/v2", "backend": v1},  # v2 is for example.com only
        {"host": "example.com", "path": "/v2/example", "backend": v2},
        {"host": "example.com", "path": "/", "headers": {"Version": "two"}, "backend": v2},
    ])


async def test_httproute_path_match_order(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-path-match-order"))
    await expect(mesh, [
        {"path": "/match/exact/one", "backend": "infra-backend-v3"},
        {"path": "/match/exact", "backend": "infra-backend-v2"},
        {"path": "/match", "backend": "infra-backend-v1"},
        {"path": "/match/prefix/one/any", "backend": "infra-backend-v2"},
        {"path": "/match/prefix/any", "backend": "infra-backend-v1"},
        {"path": "/match/any", "backend": "infra-backend-v3"},
    ])


async def test_httproute_exact_path_matching(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-exact-path-matching"))
    await expect(mesh, [
        {"path": "/one", "backend": "infra-backend-v1"},
        {"path": "/two", "backend": "infra-backend-v2"},
        {"path": "/", "status": 404}, {"path": "/one/example", "status": 404},
        {"path": "/two/", "status": 404}, {"path": "/Two", "status": 404},
    ])


async def test_httproute_header_matching(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-header-matching"))
    v1, v2 = "infra-backend-v1", "infra-backend-v2"
    await expect(mesh, [
        {"headers": {"Version": "one"}, "backend": v1},
        {"headers": {"Version": "two"}, "backend": v2},
        {"headers": {"Version": "two", "Color": "orange"}, "backend": v1},
        {"headers": {"Version": "two", "Color": "blue"}, "backend": v2},
        {"headers": {"Color": "orange"}, "status": 404},
        {"headers": {"Some-Other-Header": "one"}, "status": 404},
        {"headers": {"Color": "blue"}, "backend": v1},
        {"headers": {"Color": "green"}, "backend": v1},
        {"headers": {"Color": "red"}, "backend": v2},
        {"headers": {"Color": "yellow"}, "backend": v2},
        {"headers": {"Color": "purple"}, "status": 404},
    ])


async def test_httproute_query_param_matching(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-query-param-matching"))
    v1, v2, v3 = (f"infra-backend-v{n}" for n in (1, 2, 3))
    await expect(mesh, [
        {"path": "/?animal=whale", "backend": v1},
        {"path": "/?animal=dolphin", "backend": v2},
        {"path": "/?animal=dolphin&color=blue", "backend": v3},
        {"path": "/?ANIMAL=Whale", "backend": v3},
        {"path": "/?animal=whale&otherparam=irrelevant", "backend": v1},
        {"path": "/?animal=dolphin&color=yellow", "backend": v2},
        {"path": "/?color=blue", "status": 404}, {"path": "/?animal=dog", "status": 404},
        {"path": "/?animal=whaledolphin", "status": 404}, {"path": "/", "status": 404},
        {"path": "/path1?animal=whale", "backend": v1},
        {"path": "/?animal=whale", "headers": {"version": "one"}, "backend": v2},
        {"path": "/path2?animal=whale", "headers": {"version": "two"}, "backend": v3},
        {"path": "/path3?animal=shark", "backend": v1},
        {"path": "/path4?animal=kraken", "headers": {"version": "three"}, "backend": v1},
        {"path": "/?animal=shark", "status": 404}, {"path": "/path4?animal=kraken", "status": 404},
        {"path": "/path5?animal=hydra", "backend": v1},
        {"path": "/?animal=hydra", "headers": {"version": "four"}, "backend": v3},
    ])


async def test_httproute_method_matching(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-method-matching"))
    v1, v2, v3 = (f"infra-backend-v{n}" for n in (1, 2, 3))
    await expect(mesh, [
        {"method": "POST", "backend": v1}, {"method": "GET", "backend": v2},
        {"method": "HEAD", "status": 404},
        {"method": "GET", "path": "/path1", "backend": v1},
        {"method": "PUT", "headers": {"version": "one"}, "backend": v2},
        {"method": "POST", "path": "/path2", "headers": {"version": "two"}, "backend": v3},
        {"method": "PATCH", "path": "/path3", "backend": v1},
        {"method": "DELETE", "path": "/path4", "headers": {"version": "three"}, "backend": v1},
        {"method": "PUT", "status": 404}, {"method": "DELETE", "path": "/path4", "status": 404},
        {"method": "PATCH", "path": "/path5", "backend": v1},
        {"method": "PATCH", "headers": {"version": "four"}, "backend": v2},
    ])


async def test_httproute_hostname_intersection(mesh):
    await mesh.load(INFRA, gw("httproute-hostname-intersection"))
    v1, v2, v3 = (f"infra-backend-v{n}" for n in (1, 2, 3))
    await expect(mesh, [
        {"host": "very.specific.com", "path": "/s1", "backend": v1},
        {"host": "very.specific.com:1234", "path": "/s1", "backend": v1},
        {"host": "non.matching.com", "path": "/s1", "status": 404},
        {"host": "foo.nonmatchingwildcard.io", "path": "/s1", "status": 404},
        {"host": "foo.wildcard.io", "path": "/s1", "status": 404},
        {"host": "very.specific.com", "path": "/non-matching-prefix", "status": 404},
        {"host": "foo.wildcard.io", "path": "/s2", "backend": v2},
        {"host": "bar.wildcard.io", "path": "/s2", "backend": v2},
        {"host": "foo.bar.wildcard.io", "path": "/s2", "backend": v2},
        {"host": "non.matching.com", "path": "/s2", "status": 404},
        {"host": "wildcard.io", "path": "/s2", "status": 404},
        {"host": "very.specific.com", "path": "/s2", "status": 404},
        {"host": "very.specific.com", "path": "/s3", "backend": v3},
        {"host": "non.matching.com", "path": "/s3", "status": 404},
        {"host": "foo.specific.com", "path": "/s3", "status": 404},
        {"host": "foo.wildcard.io", "path": "/s3", "status": 404},
        {"host": "foo.anotherwildcard.io", "path": "/s4", "backend": v1},
        {"host": "bar.anotherwildcard.io", "path": "/s4", "backend": v1},
        {"host": "foo.bar.anotherwildcard.io", "path": "/s4", "backend": v1},
        {"host": "anotherwildcard.io", "path": "/s4", "status": 404},
        {"host": "foo.wildcard.io", "path": "/s4", "status": 404},
        {"host": "very.specific.com", "path": "/s4", "status": 404},
        # Route no-intersecting-hosts is not attached: its /s5 is never served.
        {"host": "specific.but.wrong.com", "path": "/s5", "status": 404},
        {"host": "wildcard.io", "path": "/s5", "status": 404},
    ])


async def test_httproute_listener_hostname_matching(mesh):
    await mesh.load(INFRA, gw("httproute-listener-hostname-matching"))
    v1, v2, v3 = (f"infra-backend-v{n}" for n in (1, 2, 3))
    await expect(mesh, [
        {"host": "bar.com", "backend": v1}, {"host": "foo.bar.com", "backend": v2},
        {"host": "baz.bar.com", "backend": v3}, {"host": "boo.bar.com", "backend": v3},
        {"host": "multiple.prefixes.bar.com", "backend": v3},
        {"host": "multiple.prefixes.foo.com", "backend": v3},
        {"host": "foo.com", "status": 404}, {"host": "no.matching.host", "status": 404},
    ])


# ---------------------------------------------------------------------------- filters


async def test_httproute_redirect_path(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-redirect-path"))
    host = "gateway.example"
    await expect(mesh, [
        {"path": "/original-prefix/lemon", "status": 302,
         "location": f"http://{host}/replacement-prefix/lemon"},
        {"path": "/full/path/original", "status": 302,
         "location": f"http://{host}/full-path-replacement"},
        {"path": "/path-and-host", "status": 302,
         "location": "http://example.org/replacement-prefix"},
        {"path": "/path-and-status", "status": 301,
         "location": f"http://{host}/replacement-prefix"},
        {"path": "/full-path-and-host", "status": 302,
         "location": "http://example.org/replacement-full"},
        {"path": "/full-path-and-status", "status": 301,
         "location": f"http://{host}/replacement-full"},
    ])


async def test_httproute_redirect_port_and_scheme(mesh, tmp_path):
    # pyproxy serves one listener: the port-80 and the port-8080 Gateway's routes each in turn.
    text = gw("httproute-redirect-port-and-scheme").read_text().split("\n---\n")
    port80, port8080 = tmp_path / "port80.yaml", tmp_path / "port8080.yaml"
    port80.write_text(text[1])
    port8080.write_text(text[0] + "\n---\n" + text[2])
    await mesh.load(INFRA, GATEWAYS, port80)
    await expect(mesh, [
        {"path": "/scheme-nil-and-port-nil", "status": 302, "location":
            "http://example.org/scheme-nil-and-port-nil"},
        {"path": "/scheme-nil-and-port-80", "status": 302, "location":
            "http://example.org/scheme-nil-and-port-80"},
        {"path": "/scheme-nil-and-port-8080", "status": 302, "location":
            "http://example.org:8080/scheme-nil-and-port-8080"},
        {"path": "/scheme-https-and-port-nil", "status": 302, "location":
            "https://example.org/scheme-https-and-port-nil"},
        {"path": "/scheme-https-and-port-443", "status": 302, "location":
            "https://example.org/scheme-https-and-port-443"},
        {"path": "/scheme-https-and-port-8443", "status": 302, "location":
            "https://example.org:8443/scheme-https-and-port-8443"},
    ])
    await mesh.load(INFRA, port8080)
    await expect(mesh, [
        # Without scheme and port, the listener's port (8080) is kept.
        {"path": "/scheme-nil-and-port-nil", "status": 302, "location":
            "http://example.org:8080/scheme-nil-and-port-nil"},
        {"path": "/scheme-nil-and-port-80", "status": 302, "location":
            "http://example.org/scheme-nil-and-port-80"},
        {"path": "/scheme-https-and-port-nil", "status": 302, "location":
            "https://example.org/scheme-https-and-port-nil"},
    ])


@pytest.mark.parametrize("code", [303, 307, 308])
async def test_httproute_redirect_status_only(mesh, code):
    await mesh.load(INFRA, GATEWAYS, gw(f"httproute-{code}-redirect"))
    path = {303: "/see-other", 307: "/temporary", 308: "/permanent"}[code]
    status, headers, _ = await mesh.request(path, method="POST", host="gateway.example")
    assert status == code
    assert headers["Location"] == f"http://gateway.example{path}"


async def test_httproute_redirect_host_and_status(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-redirect-host-and-status"))
    await expect(mesh, [
        {"path": "/hostname-redirect", "status": 302,
         "location": "http://example.org/hostname-redirect"},
        {"path": "/host-and-status", "status": 301,
         "location": "http://example.org/host-and-status"},
    ])


async def test_httproute_rewrite_path(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-rewrite-path"))
    modified = {"backend_headers": {"X-Header-Add": "header-val-1",
                                    "X-Header-Add-Append": "append-val-1,header-val-2",
                                    "X-Header-Set": "set-overwrites-values"},
                "backend_absent": ["X-Header-Remove"],
                "headers": {"X-Header-Remove": "remove-val",
                            "X-Header-Add-Append": "append-val-1", "X-Header-Set": "set-val"}}
    await expect(mesh, [
        {"path": "/prefix/one/two", "backend_path": "/one/two"},
        {"path": "/strip-prefix/three", "backend_path": "/three"},
        {"path": "/strip-prefix", "backend_path": "/"},
        {"path": "/full/one/two", "backend_path": "/one"},
        {"path": "/full/rewrite-path-and-modify-headers/test", "backend_path": "/test",
         **modified},
        {"path": "/prefix/rewrite-path-and-modify-headers/one", "backend_path": "/prefix/one",
         **modified},
    ])


async def test_httproute_backend_url_rewrite(mesh):
    # conformance/tests/httproute-backend-url-rewrite.go (HTTPRouteBackendURLRewrite): a
    # URLRewrite on the backendRef rewrites what that backend sees.
    await mesh.load(INFRA, GATEWAYS, gw("httproute-backend-url-rewrite"))
    await expect(mesh, [
        {"path": "/full/original", "backend": "infra-backend-v1",
         "backend_path": "/rewritten-full"},
        {"path": "/prefix/original", "backend": "infra-backend-v1",
         "backend_path": "/rewritten-prefix/original"},
    ])


async def test_httproute_backend_request_redirect(mesh):
    # conformance/tests/httproute-backend-request-redirect.go (HTTPRouteBackendPathRedirect):
    # each backendRef's RequestRedirect answers the share of the traffic that backend draws.
    result = await mesh.load(INFRA, GATEWAYS, gw("httproute-backend-request-redirect"))
    assert not [w for w in result.get("warnings", []) if "backend-request-redirect" in str(w)]
    seen = set()
    for _ in range(60):  # equal weights: both shares show up (miss chance 2 × 2^-60)
        status, headers, _ = await mesh.request("/")
        seen.add((status, headers["Location"]))
    assert seen == {(302, "https://redirect-example.com/"),  # infra-backend-v1's filter
                    (301, "http://redirect-example.com/")}  # infra-backend-v2's


REDIRECT_WITH_RESPONSE_HEADERS = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: moved, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{name: same-namespace}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: Cache-Control, value: no-store}]}
"""


async def test_response_header_modifier_applies_to_a_redirect(mesh, tmp_path):
    # Not a conformance case: the rule's ResponseHeaderModifier also changes the redirect
    # pyproxy answers itself (filters apply to the rule's response, whoever gives it).
    path = tmp_path / "moved.yaml"
    path.write_text(REDIRECT_WITH_RESPONSE_HEADERS)
    await mesh.load(INFRA, GATEWAYS, path)
    status, headers, _ = await mesh.request("/old/page", host="gateway.example")
    assert (status, headers["Location"], headers["Cache-Control"]) == (
        302, "http://gateway.example/new/page", "no-store")


async def test_httproute_rewrite_host(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-rewrite-host"))
    await expect(mesh, [
        {"host": "rewrite.example", "path": "/one", "backend": "infra-backend-v1",
         "backend_path": "/one", "backend_host": "one.example.org"},
        {"host": "rewrite.example", "path": "/two", "backend": "infra-backend-v2",
         "backend_path": "/two", "backend_host": "example.org"},
        {"host": "rewrite.example", "path": "/rewrite-host-and-modify-headers",
         "headers": {"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1"},
         "backend": "infra-backend-v2", "backend_host": "test.example.org",
         "backend_headers": {"X-Header-Add": "header-val-1",
                             "X-Header-Add-Append": "append-val-1,header-val-2",
                             "X-Header-Set": "set-overwrites-values"},
         "backend_absent": ["X-Header-Remove"]},
    ])


async def test_httproute_request_header_modifier(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-request-header-modifier"))
    await expect(mesh, [
        {"path": "/set", "headers": {"Some-Other-Header": "val"},
         "backend_headers": {"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}},
        {"path": "/set",
         "headers": {"Some-Other-Header": "val", "X-Header-Set": "some-other-value"},
         "backend_headers": {"X-Header-Set": "set-overwrites-values"}},
        {"path": "/add", "headers": {"Some-Other-Header": "val"},
         "backend_headers": {"X-Header-Add": "add-appends-values"}},
        {"path": "/add", "headers": {"X-Header-Add": "some-other-value"},
         "backend_headers": {"X-Header-Add": "some-other-value,add-appends-values"}},
        {"path": "/remove", "headers": {"X-Header-Remove": "val"},
         "backend_absent": ["X-Header-Remove"]},
        {"path": "/multiple", "headers": {"X-Header-Set-2": "set-val-2",
                                          "X-Header-Add-2": "add-val-2",
                                          "X-Header-Remove-2": "remove-val-2",
                                          "Another-Header": "another-header-val",
                                          "X-Header-Remove-1": "val"},
         "backend_headers": {"X-Header-Set-1": "header-set-1", "X-Header-Set-2": "header-set-2",
                             "X-Header-Add-1": "header-add-1",
                             "X-Header-Add-2": "add-val-2,header-add-2",
                             "X-Header-Add-3": "header-add-3",
                             "Another-Header": "another-header-val"},
         "backend_absent": ["X-Header-Remove-1", "X-Header-Remove-2"]},
        {"path": "/case-insensitivity", "headers": {"x-header-set": "original-val-set",
                                                    "x-header-add": "original-val-add",
                                                    "x-header-remove": "original-val-remove",
                                                    "Another-Header": "another-header-val"},
         "backend_headers": {"X-Header-Set": "header-set",
                             "X-Header-Add": "original-val-add,header-add",
                             "Another-Header": "another-header-val"},
         "backend_absent": ["x-header-remove"]},
    ])


async def test_httproute_response_header_modifier(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-response-header-modifier"))

    def backend_sets(**headers):
        return {"X-Echo-Set-Header": ",".join(f"{k.replace('_', '-')}:{v}"
                                              for k, v in headers.items())}

    await expect(mesh, [
        {"path": "/set", "headers": backend_sets(Some_Other_Header="val"),
         "response_headers": {"Some-Other-Header": "val",
                              "X-Header-Set": "set-overwrites-values"}},
        {"path": "/set", "headers": backend_sets(Some_Other_Header="val",
                                                 X_Header_Set="some-other-value"),
         "response_headers": {"X-Header-Set": "set-overwrites-values"}},
        {"path": "/add", "headers": backend_sets(Some_Other_Header="val"),
         "response_headers": {"X-Header-Add": "add-appends-values"}},
        {"path": "/add", "headers": backend_sets(X_Header_Add="some-other-value"),
         "response_headers": {"X-Header-Add": "some-other-value,add-appends-values"}},
        {"path": "/remove", "headers": backend_sets(X_Header_Remove="val"),
         "response_absent": ["X-Header-Remove"]},
        {"path": "/multiple", "headers": backend_sets(
            X_Header_Set_2="set-val-2", X_Header_Add_2="add-val-2",
            X_Header_Remove_2="remove-val-2", Another_Header="another-header-val",
            X_Header_Remove_1="val"),
         "response_headers": {"X-Header-Set-1": "header-set-1", "X-Header-Set-2": "header-set-2",
                              "X-Header-Add-1": "header-add-1",
                              "X-Header-Add-2": "add-val-2,header-add-2",
                              "X-Header-Add-3": "header-add-3",
                              "Another-Header": "another-header-val"},
         "response_absent": ["X-Header-Remove-1", "X-Header-Remove-2"]},
        {"path": "/response-and-request-header-modifiers",
         "headers": {"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1",
                     **backend_sets(X_Header_Remove_1="remove-val-1", Another_Header="x")},
         "backend_headers": {"X-Header-Add": "header-val-1",
                             "X-Header-Set": "set-overwrites-values",
                             "X-Header-Add-Append": "append-val-1,header-val-2"},
         "backend_absent": ["X-Header-Remove"],
         "response_headers": {"X-Header-Set-1": "header-set-1", "Another-Header": "x"},
         "response_absent": ["X-Header-Remove-1"]},
    ])


async def test_httproute_request_header_modifier_backend_weights(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-request-header-modifier-backend-weights"))
    for _ in range(100):
        status, _, body = await mesh.request("/")
        assert status == 200
        backend = [v for k, v in body["headers"] if k == "backend"]
        assert backend == [body["name"]]  # the header set for the backend that answered


async def test_httproute_weight(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-weight"))
    await mesh.check_weights({"infra-backend-v1": 0.7, "infra-backend-v2": 0.3,
                              "infra-backend-v3": 0.0})


async def _mirrored(backend, path: str) -> None:
    for _ in range(200):  # mirrors are fire-and-forget: give them a moment
        if any(request["path"] == path for request in backend.received):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{backend.name} never received {path}: {backend.paths}")


async def test_httproute_request_mirror(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-request-mirror"))
    for path in ("/mirror", "/mirror-and-modify-headers"):
        request_path = f"{path}?X-Echo-Request-Id={uuid.uuid4()}"
        status, _, body = await mesh.request(request_path, headers={
            "X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1"})
        assert status == 200 and body["name"] == "infra-backend-v1"
        await _mirrored(mesh.backends["infra-backend-v2"], request_path)
    mirrored = mesh.backends["infra-backend-v2"].received[-1]["headers"]
    assert mirrored["x-header-set"] == "set-overwrites-values"  # the mirror gets filtered headers
    assert "x-header-remove" not in mirrored


async def test_httproute_request_multiple_mirrors(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-request-multiple-mirrors"))
    for path in ("/multi-mirror", "/multi-mirror-and-modify-request-headers"):
        request_path = f"{path}?X-Echo-Request-Id={uuid.uuid4()}"
        assert await mesh.backend_of(request_path) == "infra-backend-v1"
        await _mirrored(mesh.backends["infra-backend-v2"], request_path)
        await _mirrored(mesh.backends["infra-backend-v3"], request_path)


async def test_httproute_request_percentage_mirror(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-request-percentage-mirror"))
    mirror = mesh.backends["infra-backend-v2"]
    for path, percent in (("/percent-mirror", 20), ("/percent-mirror-fraction", 50),
                          ("/percent-mirror-and-modify-headers", 35)):
        before = len(mirror.received)
        for _ in range(300):
            assert await mesh.backend_of(path) == "infra-backend-v1"
        await asyncio.sleep(0.3)
        share = (len(mirror.received) - before) / 300
        assert abs(share - percent / 100) <= 0.1, (path, share)


# ---------------------------------------------------------------------------- backends


async def test_httproute_invalid_backend_refs_get_500(mesh):
    services = {**INFRA, "web-backend": ["web-backend"]}
    for name, path in (("httproute-invalid-nonexistent-backendref", "/"),
                       ("httproute-invalid-backendref-unknown-kind", "/v2"),
                       ("httproute-invalid-cross-namespace-backend-ref", "/")):
        await mesh.load(services, GATEWAYS, gw(name))
        status, _, _ = await mesh.request(path)
        assert status == 500, name
    assert mesh.backends["web-backend"].requests == 0


async def test_httproute_reference_grant(mesh):
    await mesh.load({"web-backend": ["web-backend"]}, GATEWAYS, gw("httproute-reference-grant"))
    assert await mesh.backend_of("/") == "web-backend"


async def test_httproute_omitted_backend_refs(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-omitted-backendrefs"))
    await expect(mesh, [
        {"path": "/forward", "backend": "infra-backend-v1"},
        {"path": "/omitted-no-forward", "status": 500},
        {"path": "/empty-no-forward", "status": 500},
    ])


async def test_httproute_named_rule(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-named-rule"))
    status, headers, _ = await mesh.request("/named")
    assert status == 200 and headers["x-pyproxy-route"] == "http-named-rules-named-rule"
    status, headers, _ = await mesh.request("/unnamed")
    assert status == 200 and headers["x-pyproxy-route"] == "http-named-rules-1"


# ---------------------------------------------------------------------------- resilience


async def test_httproute_timeout_request(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-timeout-request"))
    await expect(mesh, [
        {"path": "/request-timeout", "status": 200},
        {"path": "/request-timeout?delay=1s", "status": 504},
        {"path": "/disable-request-timeout?delay=1s", "status": 200},
    ])


async def test_httproute_timeout_backend_request(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-timeout-backend-request"))
    await expect(mesh, [
        {"path": "/backend-timeout", "status": 200},
        {"path": "/backend-timeout?delay=1s", "status": 504},
        {"path": "/disable-backend-timeout?delay=1s", "status": 200},
    ])


def _retry_path(path: str, code: int, succeed_after: int, delay: str | None = None) -> str:
    query = f"responseCode={code}&succeedAfter={succeed_after}&uuid={uuid.uuid4()}"
    return f"{path}?{query}" + (f"&delayRetry={delay}" if delay else "")


async def test_httproute_retry(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-retry"))
    cases = [("/retry/code-500-attempts-3", 500, 2, 200),
             ("/retry/code-500-attempts-3", 500, 4, 500),
             ("/retry/code-500-attempts-3", 503, 2, 503),
             ("/retry/code-all-attempts-2", 500, 1, 200),
             ("/retry/code-all-attempts-2", 500, 3, 500)]
    cases += [("/retry/code-all-attempts-2", code, after, 200 if after == 1 else code)
              for code in (502, 503, 504) for after in (1, 3)]
    for path, code, after, want in cases:
        status, _, _ = await mesh.request(_retry_path(path, code, after))
        assert status == want, (path, code, after, status)


async def test_httproute_retry_with_timeouts(mesh):
    await mesh.load(INFRA, GATEWAYS, gw("httproute-retry-with-timeouts"))
    cases = [("/retry/backend-request-timeout-200ms", 2, "300ms", 200),
             ("/retry/backend-request-timeout-200ms", 3, "300ms", 504),
             ("/retry/request-timeout-200ms", 1, None, 200),
             ("/retry/request-timeout-200ms", 4, "100ms", 504)]
    for path, after, delay, want in cases:
        status, _, _ = await mesh.request(_retry_path(path, 500, after, delay))
        assert status == want, (path, after, delay, status)


async def test_httproute_retry_connection_error_counts_every_try(mesh):
    # conformance/tests/httproute-retry-connection-error.go (HTTPRouteRetryConnectionError):
    # attempts: 3 are retries after the first try (GEP-1731, "in addition to the initial
    # request"): 2 failed tries then success → 200; 4 failed tries → 500 or 503. A try on
    # a kept-alive connection counts like any other: the backend counts exactly 4 tries.
    await mesh.load(INFRA, GATEWAYS, gw("httproute-retry-connection-error"))
    path = "/retry/no-status-code-attempts-3"
    for after, want in ((2, {200}), (4, {500, 503}), (0, {200}), (4, {500, 503}),
                        (3, {200})):
        key = str(uuid.uuid4())
        # A request first, so the next one's first try goes out on a pooled connection.
        assert (await mesh.request(f"{path}?warm=1"))[0] == 200
        status, headers, _ = await mesh.request(f"{path}?succeedAfter={after}&uuid={key}")
        assert status in want, (after, status)
        tries = mesh.backends["infra-backend-v3"].attempts[key]
        assert tries == min(after + 1, 4), (after, tries)
        assert headers["x-pyproxy-attempts"] == str(tries)


# ---------------------------------------------------------------------------- GAMMA (mesh)


async def test_mesh_httproute_weight_and_matching(mesh):
    echo = {"echo": ["echo-v1", "echo-v2"], "echo-v1": ["echo-v1"], "echo-v2": ["echo-v2"]}
    await mesh.load(echo, gw("mesh/httproute-weight"))
    await mesh.check_weights({"echo-v1": 0.7, "echo-v2": 0.3}, host="echo")
    await mesh.load(echo, gw("mesh/httproute-matching"))
    await expect(mesh, [
        {"host": "echo", "path": "/", "backend": "echo-v1"},
        {"host": "echo.gateway-conformance-mesh", "path": "/v2/example", "backend": "echo-v2"},
        {"host": "echo", "path": "/", "headers": {"Version": "two"}, "backend": "echo-v2"},
        {"host": "echo", "path": "/v2example", "backend": "echo-v1"},
    ])
