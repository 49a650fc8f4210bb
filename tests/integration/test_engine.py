"""HTTP/1.1 behaviour of the data plane over real loopback sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import aiohttp

from pyproxy.config.model import Backend, Config, Route
from tests.support.backends import RawBackend, WebSocketEchoBackend, read_request_head
from tests.support.harness import service


def _plain(backend, **config_kw) -> Config:
    return Config(services={"svc": service("svc", backend)},
                  routes=(Route("main", backends=(Backend("svc"),)),), **config_kw)


async def _raw_exchange(port: int, data: bytes, *, read_until_close: bool = True,
                        wait: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        if read_until_close:
            return await asyncio.wait_for(reader.read(-1), wait)
        return await asyncio.wait_for(reader.read(65536), wait)
    finally:
        writer.close()


async def test_hop_by_hop_and_connection_named_headers_are_dropped(echo_factory, proxy_factory):
    echo = await echo_factory("echo")
    proxy = await proxy_factory(_plain(echo))
    request = (b"GET /h HTTP/1.1\r\nHost: shop\r\nConnection: keep-alive, X-Secret\r\n"
               b"X-Secret: s\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: x\r\n"
               b"Upgrade: h2c\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n"
               b"X-Pyproxy-Fault-Abort: 500\r\nTraceparent: 00-abc-def-01\r\nB3: 1-2-1\r\n"
               b"Connection: close\r\n\r\n")
    raw = await _raw_exchange(proxy.port, request)
    body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    names = [name for name, _ in body["headers"]]
    for dropped in ("x-secret", "keep-alive", "te", "proxy-authorization", "upgrade",
                    "x-pyproxy-fault-abort"):
        assert dropped not in names, dropped
    headers = dict(body["headers"])
    assert headers["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"  # appended, never replaced
    assert headers["x-forwarded-proto"] == "http"  # a spoofed https is overwritten
    assert headers["x-forwarded-host"] == "shop"
    assert headers["via"] == "1.1 pyproxy"
    assert headers["traceparent"] == "00-abc-def-01" and headers["b3"] == "1-2-1"
    assert len(headers["x-request-id"]) == 36
    assert names.count("connection") <= 1


async def test_request_id_is_kept_when_present(echo_factory, proxy_factory):
    echo = await echo_factory("echo")
    proxy = await proxy_factory(_plain(echo))
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/", headers={"x-request-id": "abc-123"}) as r:
            headers = dict(json.loads(await r.read())["headers"])
    assert headers["x-request-id"] == "abc-123"


async def test_head_204_304_have_no_body(proxy_factory):
    async def script(reader, writer):
        while True:
            head = await read_request_head(reader)
            path = head.split(b" ")[1]
            if path == b"/head":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            elif path == b"/204":
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n")
            await writer.drain()

    backend = await RawBackend(script).start()
    proxy = await proxy_factory(_plain(backend))
    raw = await _raw_exchange(proxy.port,
                              b"HEAD /head HTTP/1.1\r\nHost: a\r\n\r\n"
                              b"GET /204 HTTP/1.1\r\nHost: a\r\n\r\n"
                              b"GET /304 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    responses = raw.split(b"HTTP/1.1 ")[1:]
    assert [r.split(b" ")[0] for r in responses] == [b"200", b"204", b"304"]
    assert b"content-length: 5\r\n" in responses[0]
    for response in responses:
        assert response.endswith(b"\r\n\r\n")  # nothing after the head
    await backend.close()


async def test_pipelined_requests_answered_in_order(echo_factory, proxy_factory):
    echo = await echo_factory("echo")
    proxy = await proxy_factory(_plain(echo))
    paths = [f"/sleep/0.0{9 - i}" if i < 3 else f"/p{i}" for i in range(8)]
    data = b"".join(f"GET {p} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for p in paths)
    data += b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    raw = await _raw_exchange(proxy.port, data)
    bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"\r\n")[0] if b"chunked" in part
                         else part.split(b"\r\n\r\n", 1)[1])
              for part in raw.split(b"HTTP/1.1 200 OK\r\n")[1:]]
    assert [b["path"] for b in bodies] == [*paths, "/last"]


async def test_request_after_connection_close_is_ignored(echo_factory, proxy_factory):
    echo = await echo_factory("echo")
    proxy = await proxy_factory(_plain(echo))
    raw = await _raw_exchange(proxy.port,
                              b"GET /one HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                              b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n")
    assert raw.count(b"HTTP/1.1 200") == 1 and echo.requests == 1


async def test_chunked_in_chunked_out(echo_factory, proxy_factory):
    echo = await echo_factory("echo")
    proxy = await proxy_factory(_plain(echo))
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"hello ", b"chunked ", b"world"))
    raw = await _raw_exchange(proxy.port,
                              b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                              b"Connection: close\r\n\r\n" + body + b"0\r\n\r\n")
    answer = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert answer["body_bytes"] == len(b"hello chunked world") and answer["chunked"]

    raw = await _raw_exchange(
        proxy.port, b"GET /stream/200000 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head and rest.endswith(b"0\r\n\r\n")
    total, view = 0, rest
    while True:
        size_line, _, view = view.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        total += size
        view = view[size + 2:]
    assert total == 200000


async def test_http10_client_gets_close_delimited_body(echo_factory, proxy_factory):
    echo = await echo_factory("echo")
    proxy = await proxy_factory(_plain(echo))
    raw = await _raw_exchange(proxy.port, b"GET /stream/1000 HTTP/1.0\r\n\r\n")
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and b"connection: close" in head
    assert len(rest) == 1000


async def test_websocket_echo_through_the_proxy(proxy_factory):
    backend = await WebSocketEchoBackend().start()
    proxy = await proxy_factory(_plain(backend))
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(proxy.url + "/ws") as ws:
            for i in range(5):
                await ws.send_str(f"m{i}")
                assert (await ws.receive_str()) == f"echo:m{i}"
    await backend.close()


async def test_expect_100_continue_is_answered_by_the_proxy(echo_factory, proxy_factory):
    echo = await echo_factory("echo")
    proxy = await proxy_factory(_plain(echo))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n"
                 b"Connection: close\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"data")
    raw = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    answer = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert answer["body_bytes"] == 4
    assert "expect" not in dict(answer["headers"])


async def test_upstream_refused_is_503_uf(proxy_factory):
    from tests.support.backends import free_port

    class Closed:
        port = free_port()

    proxy = await proxy_factory(_plain(Closed, debug_headers=True))
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/") as r:
            assert r.status == 503 and r.headers["x-pyproxy-flags"] == "UF"
    assert proxy.stats_value("pyproxy_requests_total", route="main", code="503", flag="UF") == 1
    assert proxy.stats_value("pyproxy_upstream_requests_total", service="svc") == 1


async def test_upstream_reset_mid_body_is_502_uc_and_cut(proxy_factory):
    async def script(reader, writer):
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part")
        await writer.drain()
        writer.transport.abort()

    backend = await RawBackend(script).start()
    proxy = await proxy_factory(_plain(backend))
    raw = await _raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"only-part")  # visibly truncated
    await asyncio.sleep(0.05)
    assert proxy.stats_value("pyproxy_requests_total", route="main", flag="UC") == 1

    async def reset_before(reader, writer):
        await read_request_head(reader)
        writer.transport.abort()

    backend2 = await RawBackend(reset_before).start()
    proxy2 = await proxy_factory(_plain(backend2, debug_headers=True))
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy2.url + "/") as r:
            assert r.status == 503 and r.headers["x-pyproxy-flags"] == "UC"
    await backend.close()
    await backend2.close()


async def test_black_hole_upstream_is_504_ut(proxy_factory):
    async def black_hole(reader, writer):
        await asyncio.sleep(30)

    backend = await RawBackend(black_hole).start()
    config = _plain(backend, debug_headers=True)
    config = dataclasses.replace(config,
                                 routes=(dataclasses.replace(config.routes[0], timeout=0.3),))
    proxy = await proxy_factory(config)
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/") as r:
            assert r.status == 504 and r.headers["x-pyproxy-flags"] == "UT"
    assert proxy.stats_value("pyproxy_requests_total", route="main", code="504", flag="UT") == 1
    await backend.close()


async def test_upstream_connection_is_reused_only_after_clean_exchanges(proxy_factory):
    async def keepalive(reader, writer):
        while True:
            await read_request_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    backend = await RawBackend(keepalive).start()
    proxy = await proxy_factory(_plain(backend))
    async with aiohttp.ClientSession() as session:
        for _ in range(10):
            async with session.get(proxy.url + "/") as r:
                assert await r.read() == b"ok"
    assert backend.connections == 1
    await backend.close()


async def test_no_route_is_404_nr(echo_factory, proxy_factory):
    echo = await echo_factory("echo")
    config = Config(services={"svc": service("svc", echo)},
                    routes=(Route("only-shop", hosts=("shop.example",),
                                  backends=(Backend("svc"),)),),
                    debug_headers=True)
    proxy = await proxy_factory(config)
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/", headers={"Host": "other.example"}) as r:
            assert r.status == 404 and r.headers["x-pyproxy-flags"] == "NR"
    assert echo.requests == 0


async def test_idle_websocket_tunnel_is_closed(proxy_factory):
    backend = await WebSocketEchoBackend(prefix="", autoping=False).start()

    from pyproxy.config.model import Timeouts
    proxy = await proxy_factory(_plain(backend, timeouts=Timeouts(tunnel_idle=0.3)))
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(proxy.url + "/ws", autoping=False, heartbeat=None) as ws:
            await ws.send_str("hi")
            assert await ws.receive_str() == "hi"
            message = await asyncio.wait_for(ws.receive(), 5)  # then silence past tunnel_idle
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                    aiohttp.WSMsgType.ERROR)
    await backend.close()
