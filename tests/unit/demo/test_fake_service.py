"""pyproxy fake-service: real aiohttp servers on 127.0.0.1, driven by an aiohttp client."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import pytest

from pyproxy.demo.fake_service import STREAM_PATTERN, parse_latency, start_fake_service
from tests.support.backends import free_port


@pytest.fixture
async def client():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def services():
    """Start fake services through this list; all are closed after the test."""
    started = []

    async def start(name, **options):
        service = await start_fake_service(name, **options)
        started.append(service)
        return service

    yield start
    for service in started:
        await service.close()


async def fetch(client, url, **kwargs):
    async with client.request(kwargs.pop("method", "GET"), url, **kwargs) as response:
        return response.status, await response.json()




# --------------------------------------------------------------------------- replies


async def test_reply_describes_the_service_and_the_request(services, client):
    service = await services("storefront")
    status, body = await fetch(client, f"{service.url}/store/stocklevel?item=1",
                               headers={"X-Custom": "yes"})
    assert status == 200
    assert body["name"] == "storefront"
    assert body["uri"] == "/store/stocklevel?item=1"
    assert body["method"] == "GET"
    assert body["type"] == "HTTP"
    assert body["code"] == 200
    assert body["body"] == "Hello from storefront"
    assert body["headers"]["x-custom"] == "yes"  # names lower-cased
    assert body["upstream_calls"] == {}
    assert body["start_time"] <= body["end_time"]
    assert body["duration"].endswith("ms")
    assert "body_bytes" not in body  # only reported when a body was sent
    assert service.requests == 1


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_any_method_and_path_is_answered(services, client, method):
    service = await services("any")
    status, body = await fetch(client, f"{service.url}/deep/ly/nested", method=method)
    assert (status, body["method"], body["uri"]) == (200, method, "/deep/ly/nested")


async def test_repeated_request_headers_are_joined(services, client):
    service = await services("any")
    headers = [("X-Tag", "a"), ("X-Tag", "b")]
    _, body = await fetch(client, service.url, headers=headers)
    assert body["headers"]["x-tag"] == "a, b"


async def test_request_body_is_hashed_while_streaming(services, client):
    service = await services("sink")
    # Larger than aiohttp's default client_max_size (1 MiB): proves the body is never buffered.
    payload = os.urandom(3 * 1024 * 1024 + 17)
    status, body = await fetch(client, f"{service.url}/upload", method="PUT", data=payload)
    assert status == 200
    assert body["body_bytes"] == len(payload)
    assert body["body_sha256"] == hashlib.sha256(payload).hexdigest()


async def test_health_is_exempt_from_errors_latency_and_the_request_count(services, client):
    service = await services("broken", error_rate=1.0, latency=2.0)
    began = time.monotonic()
    for _ in range(5):
        status, body = await fetch(client, f"{service.url}/health")
        assert (status, body) == (200, {"status": "ok"})
    assert time.monotonic() - began < 1.0
    assert service.requests == 0


async def test_stream_sends_the_pattern_chunked(services, client):
    service = await services("streamer", error_rate=1.0)  # /stream never fails on purpose
    size = len(STREAM_PATTERN) * 3 + 1000
    async with client.get(f"{service.url}/stream", params={"bytes": str(size)}) as response:
        assert response.status == 200
        assert response.headers["transfer-encoding"] == "chunked"
        received = await response.read()
    assert received == (STREAM_PATTERN * 4)[:size]
    async with client.get(f"{service.url}/stream", params={"bytes": "lots"}) as response:
        assert response.status == 400


# --------------------------------------------------------------------------- errors


async def test_seeded_errors_follow_the_seeded_sequence(services, client):
    rate, seed, count = 0.3, 42, 200
    draws = random.Random(seed)
    expected = sum(draws.random() < rate for _ in range(count))
    service = await services("flaky", error_rate=rate, error_code=503, rng=random.Random(seed))
    statuses = [(await fetch(client, service.url))[0] for _ in range(count)]
    assert statuses.count(503) == expected
    assert statuses.count(200) == count - expected


async def test_injected_error_reply(services, client):
    service = await services("stockmanager-v2", error_rate=1.0, error_code=503)
    status, body = await fetch(client, service.url)
    assert status == 503
    assert body == {"name": "stockmanager-v2", "code": 503, "error": "injected error"}


async def test_unseeded_error_rate_is_within_binomial_bounds(services, client):
    rate, count = 0.5, 2000
    service = await services("coin", error_rate=rate)
    connector = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def status():
            async with session.get(service.url) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(status() for _ in range(count)))
    errors = statuses.count(500)
    mean, sd = count * rate, (count * rate * (1 - rate)) ** 0.5
    assert abs(errors - mean) < 5 * sd, (errors, mean, sd)  # fails about once in 1.7 million runs
    assert service.requests == count


# --------------------------------------------------------------------------- latency


async def test_latency_is_applied(services, client):
    service = await services("slow", latency=0.2)
    began = time.monotonic()
    await fetch(client, service.url)
    assert time.monotonic() - began >= 0.2


async def test_jitter_stays_within_its_bounds(services, client):
    service = await services("jittery", latency=0.1, jitter=0.05)
    for _ in range(5):
        began = time.monotonic()
        await fetch(client, service.url)
        took = time.monotonic() - began
        assert 0.05 <= took < 0.5


@pytest.mark.parametrize(
    "text, expected",
    [("0s", (0.0, 0.0)), ("50ms:10ms", (0.05, 0.01)), ("2.5s", (2.5, 0.0)),
     ("1m", (60.0, 0.0)), ("0", (0.0, 0.0)), ("1m30s:250ms", (90.0, 0.25))],
)
def test_parse_latency(text, expected):
    assert parse_latency(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "fast", "10 parsecs", "-1s", "0.25", "1ms:", "1ms:2ms:3ms"])
def test_parse_latency_rejects_garbage(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_latency(text)


# --------------------------------------------------------------------------- upstreams


async def test_upstream_calls_propagate_trace_and_routing_headers(services, client):
    zipkin = await services("zipkin")
    stockmanager = await services("stockmanager", upstreams=[f"{zipkin.url}/api/v2/spans"])
    sent = {
        "x-request-id": "req-1",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "vendor=1",
        "b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
        "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
        "x-b3-sampled": "1",
        "end-user": "tester",
    }
    status, body = await fetch(client, f"{stockmanager.url}/stocklevel",
                               headers={**sent, "x-not-propagated": "1"})
    assert status == 200
    call = body["upstream_calls"][f"{zipkin.url}/api/v2/spans"]
    assert call["code"] == 200
    assert call["body"]["name"] == "zipkin"
    assert call["body"]["uri"] == "/api/v2/spans"  # the upstream URL as given, not our path
    received = call["body"]["headers"]
    assert {name: received.get(name) for name in sent} == sent
    assert "x-not-propagated" not in received
    assert zipkin.requests == 1


async def test_each_upstream_is_called(services, client):
    first, second = await services("a"), await services("b")
    front = await services("front", upstreams=[first.url, second.url])
    status, body = await fetch(client, front.url)
    assert status == 200
    assert {url: call["body"]["name"] for url, call in body["upstream_calls"].items()} == {
        first.url: "a", second.url: "b"}


async def test_failing_upstream_makes_the_service_fail(services, client):
    broken = await services("stockmanager-v2", error_rate=1.0, error_code=503)
    front = await services("storefront", upstreams=[broken.url])
    status, body = await fetch(client, front.url)
    assert status == 500
    assert body["code"] == 500
    assert body["name"] == "storefront"
    assert body["upstream_calls"][broken.url] == {
        "code": 503,
        "body": {"name": "stockmanager-v2", "code": 503, "error": "injected error"},
    }


async def test_unreachable_upstream_makes_the_service_fail(services, client):
    nowhere = f"http://127.0.0.1:{free_port()}/"
    front = await services("storefront", upstreams=[nowhere])
    status, body = await fetch(client, front.url)
    assert status == 500
    call = body["upstream_calls"][nowhere]
    assert call["code"] == -1
    assert "error" in call and "body" not in call


async def test_a_4xx_upstream_is_not_a_failure(services, client):
    teapot = await services("teapot", error_rate=1.0, error_code=418)
    front = await services("front", upstreams=[teapot.url])
    status, _ = await fetch(client, front.url)
    assert status == 200


def test_invalid_error_rate_is_refused():
    with pytest.raises(ValueError, match="error_rate"):
        asyncio.run(start_fake_service("x", error_rate=1.5))


# --------------------------------------------------------------------------- command


def _start_command(*extra: str, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pyproxy", "fake-service", "--name", "cli", "--port", str(port),
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )
    return process, port


async def _wait_healthy(client, port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            async with client.get(f"http://127.0.0.1:{port}/health") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_command_serves_until_signalled_then_exits_0(client, signum):
    process, port = _start_command("--error-rate", "1", "--error-code", "502", "--seed", "7")
    try:
        await _wait_healthy(client, port)
        status, body = await fetch(client, f"http://127.0.0.1:{port}/")
        assert (status, body["name"]) == (502, "cli")
    finally:
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    # Quiet by default: one start-up line, nothing per request.
    assert stderr.strip().splitlines() == [f"fake-service cli listening on http://127.0.0.1:{port}"]


async def test_command_logs_requests_when_asked(client):
    process, port = _start_command(env={"PYPROXY_FAKE_LOG": "1"})
    try:
        await _wait_healthy(client, port)
        await fetch(client, f"http://127.0.0.1:{port}/hello")
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert "cli GET /hello 200" in stderr


@pytest.mark.parametrize("option, value", [("--latency", "soon"), ("--error-rate", "2")])
def test_command_rejects_bad_options_with_exit_2(option, value):
    process, _ = _start_command(option, value)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 2
    assert option in stderr


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    from pyproxy.demo.ports import _ephemeral_start, free_ports

    picked = free_ports(20) + free_ports(20)
    assert len(set(picked)) == 40  # never the same port twice in a process
    assert all(20000 <= port < _ephemeral_start() for port in picked)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", picked[-1]))
