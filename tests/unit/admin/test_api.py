"""The admin API served for real by ``start_admin`` on 127.0.0.1, driven by an aiohttp client."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyproxy.admin.api import build_admin_app, check_admin_binding, redact, start_admin
from pyproxy.metrics.stats import Stats
from pyproxy.outcome import RequestOutcome

TOKEN = "s3cret-token"


class FakeControl:
    def __init__(self):
        self.stats = Stats()
        self.ready = True
        self.reloads = 0
        self.reload_result = {"result": "success", "generation": 2, "errors": []}
        self.view = {
            "generation": 1,
            "last_reload": {"result": "success", "errors": []},
            "admin": {"listen": "127.0.0.1:9901", "token": TOKEN},
            "routes": [{"name": "shop", "fault": {"header_secret": "open-sesame",
                                                  "abort": {"status": 503}}}],
            "services": {"db": {"password": "hunter2", "endpoints": ["10.0.0.1:5432"]}},
        }

    def is_ready(self) -> bool:
        return self.ready

    def describe_config(self) -> dict:
        return self.view

    async def reload_all(self) -> dict:
        self.reloads += 1
        return self.reload_result

    def set_weights(self, route, weights, source="api"):
        from pyproxy.errors import InvalidOverride
        if route != "shop":
            raise InvalidOverride("no such route; routes: shop")
        self.weights = weights


@pytest.fixture
def control():
    return FakeControl()


@pytest.fixture
async def serve(control):
    """``await serve(token)`` → base URL of a running admin; stopped after the test."""
    runners = []

    async def start(token: str = TOKEN, read_only: bool = False) -> str:
        runner = await start_admin(build_admin_app(control, token, read_only=read_only),
                                   "127.0.0.1", 0)
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def client():
    async with aiohttp.ClientSession() as session:
        yield session


async def call(client, method, url, **kwargs):
    async with client.request(method, url, **kwargs) as response:
        if response.content_type == "application/json":
            return response.status, await response.json(), response.headers
        return response.status, await response.text(), response.headers


AUTH = {"Authorization": f"Bearer {TOKEN}"}


# --------------------------------------------------------------------------- read-only


async def test_healthz(serve, client):
    base = await serve()
    status, body, _ = await call(client, "GET", f"{base}/healthz")
    assert (status, body) == (200, {"status": "alive"})


async def test_readyz_follows_the_control(serve, client, control):
    base = await serve()
    assert (await call(client, "GET", f"{base}/readyz"))[:2] == (200, {"status": "ready"})
    control.ready = False
    assert (await call(client, "GET", f"{base}/readyz"))[:2] == (503, {"status": "not ready"})
    control.ready = True
    assert (await call(client, "GET", f"{base}/readyz"))[0] == 200


async def test_metrics_endpoint_serves_recorded_stats(serve, client, control):
    control.stats.record(RequestOutcome(start=0.0, route="shop", backend="stock/v1", status=200,
                                        duration=0.02))
    base = await serve()
    status, body, headers = await call(client, "GET", f"{base}/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(body)}
    [sample] = families["pyproxy_requests"].samples
    assert sample.labels == {"route": "shop", "backend": "stock/v1", "code": "200", "flag": ""}
    assert sample.value == 1


async def test_config_is_redacted(serve, client, control):
    base = await serve()
    status, body, _ = await call(client, "GET", f"{base}/api/v1/config")
    assert status == 200
    assert body["generation"] == 1
    assert body["admin"] == {"listen": "127.0.0.1:9901", "token": "***"}
    assert body["routes"][0]["fault"] == {"header_secret": "***", "abort": {"status": 503}}
    assert body["services"]["db"] == {"password": "***", "endpoints": ["10.0.0.1:5432"]}
    for secret in (TOKEN, "open-sesame", "hunter2"):
        assert secret not in str(body)


def test_redact_keeps_empty_secrets_visible_and_walks_lists():
    view = {"admin": {"token": ""}, "fault": {"header_secret": None},
            "headers": [{"set": {"Authorization": "Bearer abc", "x-env": "prod"}}],
            "Token": ("a", "b")}
    assert redact(view) == {"admin": {"token": ""}, "fault": {"header_secret": None},
                            "headers": [{"set": {"Authorization": "***", "x-env": "prod"}}],
                            "Token": "***"}


async def test_routes_serves_the_controls_description(serve, client, control):
    control.describe_routes = lambda: {"window_seconds": 30, "routes": [{"name": "shop"}]}
    base = await serve()
    status, body, _ = await call(client, "GET", f"{base}/api/v1/routes")
    assert (status, body) == (200, {"window_seconds": 30, "routes": [{"name": "shop"}]})


async def test_unknown_path_is_a_json_404_that_echoes_nothing(serve, client):
    base = await serve()
    status, body, _ = await call(client, "GET", f"{base}/api/v1/<script>nope")
    assert (status, body) == (404, {"error": "not found"})


async def test_get_on_a_mutation_is_405_without_effect(serve, client, control):
    base = await serve()
    status, body, headers = await call(client, "GET", f"{base}/api/v1/reload", headers=AUTH)
    assert (status, body) == (405, {"error": "method not allowed"})
    assert headers["Allow"] == "POST"
    assert control.reloads == 0


async def test_a_failing_handler_is_a_generic_500(serve, client, control):
    def broken() -> dict:
        raise RuntimeError("internal detail")
    control.describe_config = broken
    base = await serve()
    status, body, _ = await call(client, "GET", f"{base}/api/v1/config")
    assert (status, body) == (500, {"error": "internal error"})


# --------------------------------------------------------------------------- mutations


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"Authorization": f"Bearer {TOKEN}x"},
])
async def test_reload_without_the_token_is_401(serve, client, control, headers):
    base = await serve()
    status, body, response_headers = await call(client, "POST", f"{base}/api/v1/reload",
                                                headers=headers)
    assert (status, body) == (401, {"error": "unauthorized"})
    assert response_headers["WWW-Authenticate"] == "Bearer"
    assert control.reloads == 0


async def test_reload_with_the_token(serve, client, control):
    base = await serve()
    status, body, _ = await call(client, "POST", f"{base}/api/v1/reload", headers=AUTH)
    assert (status, body) == (200, {"result": "success", "generation": 2, "errors": []})
    assert control.reloads == 1


async def test_reload_failure_is_422_with_the_errors(serve, client, control):
    control.reload_result = {"result": "failure", "generation": 1,
                             "errors": ["pyproxy.yaml:3: routes[0].backends: required"]}
    base = await serve()
    status, body, _ = await call(client, "POST", f"{base}/api/v1/reload", headers=AUTH)
    assert status == 422
    assert body == control.reload_result


async def test_unauthenticated_mutation_on_an_unknown_path_is_401(serve, client):
    base = await serve()
    status, body, _ = await call(client, "DELETE", f"{base}/api/v1/anything")
    assert (status, body) == (401, {"error": "unauthorized"})


async def test_cross_origin_mutation_is_403(serve, client, control):
    base = await serve()
    for origin in ("http://evil.example", "null", base.replace("127.0.0.1", "localhost")):
        status, body, _ = await call(client, "POST", f"{base}/api/v1/reload",
                                     headers={**AUTH, "Origin": origin})
        assert (status, body) == (403, {"error": "forbidden"}), origin
    assert control.reloads == 0

    status, _, _ = await call(client, "POST", f"{base}/api/v1/reload",
                              headers={**AUTH, "Origin": base})
    assert status == 200


@pytest.mark.parametrize("content_type, body", [
    ("application/x-www-form-urlencoded", "a=1"),
    ("application/x-www-form-urlencoded", ""),
    ("multipart/form-data; boundary=x", "--x--"),
    ("text/plain", "{}"),
    ("application/octet-stream", "{}"),
])
async def test_mutations_refuse_form_content_types(serve, client, control, content_type, body):
    base = await serve()
    status, response, _ = await call(client, "POST", f"{base}/api/v1/reload", data=body,
                                     headers={**AUTH, "Content-Type": content_type})
    assert (status, response) == (415, {"error": "content type must be application/json"})
    assert control.reloads == 0


async def test_mutations_accept_json_bodies(serve, client, control):
    base = await serve()
    status, _, _ = await call(client, "POST", f"{base}/api/v1/reload", json={}, headers=AUTH)
    assert status == 200
    assert control.reloads == 1


async def test_without_a_token_mutations_are_open_on_loopback(serve, client, control):
    base = await serve(token="")
    status, _, _ = await call(client, "POST", f"{base}/api/v1/reload")
    assert status == 200
    port = base.rsplit(":", 1)[1]
    status, _, _ = await call(client, "GET", f"{base}/healthz",
                              headers={"Host": f"localhost:{port}"})
    assert status == 200


async def test_without_a_token_a_foreign_host_is_refused(serve, client, control):
    """DNS rebinding: a hostile page re-pointed to 127.0.0.1 still sends its own Host."""
    base = await serve(token="")
    for method, path in (("GET", "/api/v1/config"), ("POST", "/api/v1/reload")):
        status, body, _ = await call(client, method, f"{base}{path}",
                                     headers={"Host": "evil.example:9901"})
        assert (status, body) == (403, {"error": "forbidden"})
    assert control.reloads == 0


async def test_with_a_token_any_host_may_read(serve, client):
    base = await serve()
    status, _, _ = await call(client, "GET", f"{base}/healthz", headers={"Host": "pyproxy:9901"})
    assert status == 200


# --------------------------------------------------------------------------- binding


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_token(host):
    check_admin_binding(host, "")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.5", "pyproxy.example"])
def test_beyond_loopback_without_a_token_is_refused(host):
    with pytest.raises(ValueError, match="without a token"):
        check_admin_binding(host, "")


def test_beyond_loopback_with_a_token_is_allowed():
    check_admin_binding("0.0.0.0", TOKEN)


async def test_start_admin_fails_cleanly_on_a_taken_port(serve, control):
    base = await serve()
    port = int(base.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        await start_admin(build_admin_app(control, TOKEN), "127.0.0.1", port)


async def test_weights_need_the_token_and_bad_input_is_a_fixed_400(serve, client, control):
    control.describe_routes = lambda: {"routes": []}
    base = await serve()
    url = f"{base}/api/v1/routes/shop/weights"
    status, _, _ = await call(client, "PUT", url, json={"weights": {"a": 1}})
    assert status == 401
    status, body, _ = await call(client, "PUT", url, json={"weights": {"a": 1}}, headers=AUTH)
    assert status == 200 and control.weights == {"a": 1}
    status, body, _ = await call(client, "PUT", f"{base}/api/v1/routes/<x>/weights",
                                 json={"weights": {"a": 1}}, headers=AUTH)
    assert (status, body) == (400, {"error": "no such route; routes: shop"})
    status, body, _ = await call(client, "PUT", url, json={"weights": "<b>"}, headers=AUTH)
    assert status == 400 and "<b>" not in str(body)


async def test_a_workers_private_admin_reads_but_refuses_changes(serve, client, control):
    base = await serve(read_only=True)
    assert (await call(client, "GET", f"{base}/metrics"))[0] == 200
    status, body, _ = await call(client, "GET", f"{base}/api/v1/windows")
    assert status == 200 and body["windows"] == [] and isinstance(body["pid"], int)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, body, _ = await call(client, "PUT", f"{base}/api/v1/routes/shop/weights",
                                 json={"weights": {"shop/v1": 1}}, headers=auth)
    assert status == 403 and "public admin" in body["error"]
    status, _, _ = await call(client, "POST", f"{base}/api/v1/reload", headers=auth)
    assert status == 403 and control.reloads == 0


# --------------------------------------------------------------------------- the wire
# The admin runs on the data plane's engine: the same strict parsing protects it.


async def _raw(base: str, data: bytes) -> bytes:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()


# An authorised reload, as far as the framing headers: each case below finishes it badly.
RELOAD = (b"POST /api/v1/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
          + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n")


@pytest.mark.parametrize("framing, status", [
    # CL and TE together (request smuggling): refused by the engine's parser rules.
    (b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"400"),
    # Over the admin's body limit: refused before the body is read.
    (b"Content-Length: 2000000\r\nConnection: close\r\n\r\n{}", b"413"),
])
async def test_bad_framing_is_refused_before_any_handler_runs(serve, control, framing, status):
    base = await serve()
    answer = await _raw(base, RELOAD + framing)
    assert answer.startswith(b"HTTP/1.1 " + status + b" ")
    assert control.reloads == 0


async def test_head_is_get_without_a_body_and_304_has_no_length(serve, client):
    base = await serve()
    async with client.head(f"{base}/healthz") as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) > 0
        assert await r.read() == b""
    async with client.get(f"{base}/") as r:
        etag = r.headers["ETag"]
    answer = await _raw(base, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nIf-None-Match: "
                              + etag.encode() + b"\r\nConnection: close\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 304 ") and b"content-length" not in head
