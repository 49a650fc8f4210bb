"""The fast path (Proxy.serve_now): a bodiless request on a pooled upstream connection is
served in callbacks. Each test below makes such a request meet something that forces it
off that path mid-way — a silent upstream, a keep-alive race, a streamed body, a retryable
status, an answer given while the request's bytes are still being parsed — and checks the
client sees exactly what the ordinary pipeline would give."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib

import aiohttp

from pyproxy.config.model import AbortFault, Backend, Config, Fault, Retries, Route, Timeouts
from tests.support.backends import RawBackend, read_request_head
from tests.support.harness import service

BIG = bytes(range(256)) * 8192  # 2 MiB: arrives over many reads


def _config(backend, route_kw=None, **config_kw) -> Config:
    return Config(services={"svc": service("svc", backend)},
                  routes=(Route("main", backends=(Backend("svc"),), **(route_kw or {})),),
                  debug_headers=True, **config_kw)


def _script(*answers):
    """A backend connection that answers its requests in order: bytes to send, "silent"
    (read the request, never answer) or "close" (read the request head, then close)."""
    async def script(reader, writer):
        for answer in answers:
            await read_request_head(reader)
            if answer == "silent":
                await asyncio.sleep(30)
            if answer == "close":
                writer.transport.abort()
                return
            writer.write(answer)
            await writer.drain()
        await asyncio.sleep(30)
    return script


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_pooled_connection_going_silent_is_504_ut(proxy_factory):
    backend = await RawBackend(_script(OK, "silent")).start()
    proxy = await proxy_factory(_config(backend, {"timeout": 0.3}))
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/") as r:
            assert r.status == 200 and await r.read() == b"ok"
        async with session.get(proxy.url + "/") as r:
            assert r.status == 504 and r.headers["x-pyproxy-flags"] == "UT"
    assert backend.connections == 1  # the second request went on the pooled connection
    assert proxy.stats_value("pyproxy_requests_total", route="main", code="504", flag="UT") == 1
    await backend.close()


async def test_keep_alive_race_on_pooled_connection_is_resent_on_a_fresh_one(proxy_factory):
    scripts = iter([_script(OK, "close"), _script(OK, OK)])

    async def next_script(reader, writer):
        await next(scripts)(reader, writer)

    backend = await RawBackend(next_script).start()
    proxy = await proxy_factory(_config(backend))
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.get(proxy.url + "/") as r:
                assert r.status == 200 and await r.read() == b"ok"
                assert r.headers["x-pyproxy-flags"] == "-"
                assert r.headers["x-pyproxy-attempts"] == "1"
    assert backend.connections == 2
    assert proxy.stats_value("pyproxy_retries_total") == 0
    await backend.close()


async def test_keep_alive_race_counts_as_a_try_when_the_route_retries_resets(proxy_factory):
    # A route whose retries include resets counts every try (Gateway API retry conformance,
    # GEP-1731): the resend after the race is its retry, not an uncounted extra try.
    scripts = iter([_script(OK, "close"), _script(OK, OK)])

    async def next_script(reader, writer):
        await next(scripts)(reader, writer)

    backend = await RawBackend(next_script).start()
    retries = Retries(attempts=1, retry_on=("reset",))
    proxy = await proxy_factory(_config(backend, {"retries": retries}))
    async with aiohttp.ClientSession() as session:
        for attempts in ("1", "2"):
            async with session.get(proxy.url + "/") as r:
                assert r.status == 200 and await r.read() == b"ok"
                assert r.headers["x-pyproxy-attempts"] == attempts
    assert backend.connections == 2
    assert proxy.stats_value("pyproxy_retries_total", route="main") == 1
    await backend.close()


async def test_large_response_on_pooled_connection_is_streamed_intact(proxy_factory):
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(BIG), BIG)
    backend = await RawBackend(_script(OK, big, big)).start()
    proxy = await proxy_factory(_config(backend))
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/") as r:
            assert await r.read() == b"ok"
        for _ in range(2):
            async with session.get(proxy.url + "/") as r:
                body = await r.read()
                assert hashlib.sha256(body).digest() == hashlib.sha256(BIG).digest()
    assert backend.connections == 1
    await backend.close()


async def test_retryable_status_on_pooled_connection_is_retried(proxy_factory):
    unavailable = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"
    backend = await RawBackend(_script(OK, unavailable, OK)).start()
    retries = Retries(attempts=2, retry_on=("5xx",))
    proxy = await proxy_factory(_config(backend, {"retries": retries}))
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/") as r:
            assert await r.read() == b"ok"
        async with session.get(proxy.url + "/") as r:
            assert r.status == 200 and await r.read() == b"ok"
            assert r.headers["x-pyproxy-attempts"] == "2"
    assert proxy.stats_value("pyproxy_retries_total", route="main") == 1
    await backend.close()


async def test_answers_given_while_parsing_keep_order_and_the_keep_alive_timeout(proxy_factory):
    """A fault abort is answered synchronously, inside the parser callback of its own
    request: pipelined requests must still be answered in order, and the connection must
    still close after the keep-alive timeout once they are done."""
    backend = await RawBackend(_script()).start()
    fault = Fault(abort=AbortFault(status=418, percent=100))
    proxy = await proxy_factory(_config(backend, {"fault": fault},
                                        timeouts=Timeouts(keep_alive=0.3)))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\nX-Request-Id: r%d\r\n\r\n" % (i, i)
                          for i in range(3)))
    data = await asyncio.wait_for(reader.read(-1), 5)  # all answers, then the idle close
    writer.close()
    responses = data.split(b"HTTP/1.1 ")[1:]
    assert [r.split(b" ", 1)[0] for r in responses] == [b"418"] * 3
    assert b"connection: close" not in data.lower()  # closed for idleness, not per response
    assert backend.connections == 0
    assert proxy.stats_value("pyproxy_requests_total", route="main", code="418",
                             flag="FI") == 3
    await backend.close()


async def test_fast_and_task_served_requests_pipelined_keep_their_order(echo_factory,
                                                                       proxy_factory):
    echo = await echo_factory("echo")
    proxy = await proxy_factory(_config(echo))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    requests = [b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
                b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
                b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"]
    writer.write(b"".join(requests))
    data = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    paths = [part.split(b'"path": "', 1)[1].split(b'"', 1)[0]
             for part in data.split(b"HTTP/1.1 200")[1:]]
    assert paths == [b"/a", b"/b", b"/c"]


def test_forward_only_routes_are_the_ones_offered_to_the_fast_path():
    from pyproxy.config.model import DirectResponse, Endpoint, Mirror, Service
    from pyproxy.runtime import Runtime

    def compiled(**route_kw):
        config = Config(services={"svc": Service("svc", (Endpoint("127.0.0.1", 1),))},
                        routes=(Route("main", backends=(Backend("svc"),), **route_kw),))
        return Runtime().compile(config).routes["main"]

    assert compiled().forward_only
    assert compiled(fault=Fault(abort=AbortFault(503, 1))).forward_only
    assert not compiled(fault=dataclasses.replace(Fault(abort=AbortFault(503, 1)),
                                                  scope="attempt")).forward_only
    assert not compiled(mirrors=(Mirror("svc"),)).forward_only
    assert not compiled(direct_response=DirectResponse(200, "hi")).forward_only
