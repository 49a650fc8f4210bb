"""reliability.md §2.2: the behavioural bad-input cases B1–B19 that need timing or several
steps, with short timeouts so the whole module takes a few seconds.

Times are measured but only ever asserted as "closed before 3× the timeout" (a bound that
says the timeout fired, not a speed claim). B18 lives in tests/unit/admin/test_api.py; B19
is not reproduced (see docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import socket

import aiohttp
import pytest

from pyproxy.config.model import (
    Backend,
    Config,
    ConsistentHash,
    DirectResponse,
    Limits,
    LoadBalancer,
    Match,
    PathMatch,
    Route,
    Timeouts,
)
from pyproxy.engine import server as downstream
from tests.conformance.corpus import BY_ID
from tests.conformance.rawhttp import (
    one_route,
    read_responses,
    send,
    wait_for,
)
from tests.support.backends import RawBackend, WebSocketEchoBackend, read_request_head
from tests.support.harness import service

T = 0.5  # every timeout under test
FAST = Timeouts(request_header=T, body_idle=T, keep_alive=T)
BOUND = 3 * T  # "closed before 3x the timeout"


async def _open(proxy):
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _trickle(writer, data: bytes, every: float) -> None:
    """Write ``data`` one byte at a time, forever (cycling), until the peer goes away."""
    try:
        for byte in itertools.cycle(data):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(every)
    except (ConnectionError, RuntimeError):
        pass


def _ended(recorder) -> bool:
    return bool(recorder.connections) and all(c.ended for c in recorder.connections)


# ---------------------------------------------------------------------------- B1, B2, RX-3


async def test_b1_slowloris_headers_are_cut_at_the_header_timeout(recording, proxy_factory):
    """1 byte every 0.2 s never completes the head. The header timeout is a total, not an
    idle timer (HAProxy ``timeout http-request``), so trickling does not extend it."""
    backend, _ = await recording()
    proxy = await proxy_factory(one_route(backend, timeouts=FAST))
    reader, writer = await _open(proxy)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")
    trickle = asyncio.ensure_future(_trickle(writer, b"X-a: b\r\n", 0.2))
    try:
        result = await read_responses(reader, writer, wait_close=True, timeout=BOUND)
    finally:
        trickle.cancel()
        writer.close()
    elapsed = loop.time() - started
    assert result.closed, "a slowloris connection must be closed"
    assert elapsed < BOUND, elapsed
    assert result.statuses == [408]
    assert bytes(backend.received) == b""


async def test_b2_silent_connection_is_closed(recording, proxy_factory):
    backend, _ = await recording()
    proxy = await proxy_factory(one_route(backend, timeouts=FAST))
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await send(proxy.port, b"", wait_close=True, timeout=BOUND)
    assert result.closed and loop.time() - started < BOUND
    assert result.raw == b""  # nothing was asked, nothing is answered
    assert backend.connections == 0


async def test_rx3_idle_keep_alive_connection_is_closed(recording, proxy_factory):
    backend, _ = await recording()
    proxy = await proxy_factory(one_route(backend, timeouts=FAST))
    reader, writer = await _open(proxy)
    try:
        first = await read_responses(reader, writer, b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n",
                                     wait_close=False)
        assert first.statuses == [200] and b"connection: close" not in first.responses[0].head
        loop = asyncio.get_running_loop()
        started = loop.time()
        idle = await read_responses(reader, writer, wait_close=True, responses=0, timeout=BOUND)
    finally:
        writer.close()
    assert idle.closed and idle.raw == b"" and loop.time() - started < BOUND


# ---------------------------------------------------------------------------- B3–B7 bodies


async def test_b3_slow_body_is_408_and_the_upstream_request_aborted(recording, proxy_factory):
    backend, recorder = await recording()
    proxy = await proxy_factory(one_route(backend, timeouts=FAST))
    loop = asyncio.get_running_loop()
    reader, writer = await _open(proxy)
    try:
        writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n0123456789")
        assert await wait_for(lambda: recorder.requests and len(recorder.requests[0].body) == 10)
        started = loop.time()
        result = await read_responses(reader, writer, wait_close=True, timeout=BOUND)
    finally:
        writer.close()
    assert result.statuses == [408] and result.closed and loop.time() - started < BOUND
    assert await wait_for(lambda: _ended(recorder))
    assert recorder.complete == [] and backend.connections == 1  # aborted, not retried


async def test_b3_body_timeout_is_idle_not_total(recording, proxy_factory):
    """A body trickling faster than body_idle is slow, not stalled: it completes."""
    backend, recorder = await recording()
    proxy = await proxy_factory(one_route(backend, timeouts=FAST))
    pieces = [b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nConnection: close\r\n\r\n"]
    pieces += [bytes([b]) for b in b"abcdef"]
    result = await send(proxy.port, pieces, pause=0.2, timeout=5)  # 1.2 s > body_idle
    assert result.statuses == [200]
    assert [r.body for r in recorder.complete] == [b"abcdef"]


async def test_b4_truncated_body_aborts_the_upstream_request(recording, proxy_factory):
    """Content-Length 100, 10 bytes, FIN: the upstream sees the request cut short (its
    connection closed mid-body), never a complete 10-byte POST, and no retry (FR-7)."""
    backend, recorder = await recording()
    proxy = await proxy_factory(one_route(backend, timeouts=FAST))
    _reader, writer = await _open(proxy)
    writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
    assert await wait_for(lambda: recorder.requests and len(recorder.requests[0].body) == 10)
    writer.close()
    assert await wait_for(lambda: _ended(recorder))
    assert recorder.complete == [] and len(recorder.requests[0].body) == 10
    assert backend.connections == 1
    assert await wait_for(lambda: proxy.stats_value("pyproxy_requests_total", flag="DC") == 1)


async def test_b5_chunked_body_without_last_chunk_aborts_the_upstream_request(
        recording, proxy_factory):
    backend, recorder = await recording()
    proxy = await proxy_factory(one_route(backend, timeouts=FAST))
    _reader, writer = await _open(proxy)
    writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n")
    assert await wait_for(lambda: recorder.requests and recorder.requests[0].body == b"hello")
    writer.close()
    assert await wait_for(lambda: _ended(recorder))
    assert recorder.complete == []
    assert not backend.received.endswith(b"0\r\n\r\n")  # never terminated on the client's behalf


LIMITED = Limits(max_body_bytes=1000)


async def test_b6_oversized_streamed_body_is_413_and_the_upstream_request_aborted(
        recording, proxy_factory):
    backend, recorder = await recording()
    proxy = await proxy_factory(one_route(backend, timeouts=FAST, limits=LIMITED))
    reader, writer = await _open(proxy)
    try:
        writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"258\r\n" + b"a" * 600 + b"\r\n")
        assert await wait_for(lambda: recorder.requests
                              and len(recorder.requests[0].body) == 600)  # streamed already
        result = await read_responses(reader, writer, b"258\r\n" + b"b" * 600 + b"\r\n",
                                      wait_close=True, timeout=BOUND)
    finally:
        writer.close()
    assert result.statuses == [413] and result.closed
    assert await wait_for(lambda: _ended(recorder))
    assert recorder.complete == [] and len(recorder.requests[0].body) <= 1000


async def test_b6_oversized_body_in_one_read_never_reaches_the_upstream(recording, proxy_factory):
    backend, _ = await recording()
    proxy = await proxy_factory(one_route(backend, limits=LIMITED))
    result = await send(proxy.port,
                        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                        b"\r\n7d0\r\n" + b"a" * 2000 + b"\r\n0\r\n\r\n")
    assert result.statuses == [413] and result.closed
    assert bytes(backend.received) == b""


@pytest.mark.parametrize("expect", [True, False], ids=["expect-100", "no-expect"])
async def test_b7_content_length_over_the_limit_is_413_before_any_100(
        expect, recording, proxy_factory):
    backend, _ = await recording()
    proxy = await proxy_factory(one_route(backend, limits=LIMITED))
    head = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n"
    if expect:
        head += b"Expect: 100-continue\r\n"
    result = await send(proxy.port, head + b"\r\n", wait_close=True, timeout=BOUND)
    assert result.statuses == [413] and result.closed  # the first and only response
    assert b"100 continue" not in result.raw.lower()
    assert bytes(backend.received) == b""


async def test_b8_expect_100_continue_is_answered_by_the_proxy(recording, proxy_factory):
    backend, recorder = await recording()
    proxy = await proxy_factory(one_route(backend, timeouts=FAST))
    reader, writer = await _open(proxy)
    try:
        interim = await read_responses(
            reader, writer, b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                            b"Expect: 100-continue\r\n\r\n", wait_close=False)
        assert interim.statuses == [100]
        assert recorder.requests == [] or not recorder.requests[0].complete
        final = await read_responses(reader, writer, b"data", wait_close=False)
    finally:
        writer.close()
    assert final.statuses == [200]
    assert [r.body for r in recorder.complete] == [b"data"]
    assert b"expect" not in backend.received.lower()


# ---------------------------------------------------------------------------- B9 slow reader

BLOCK = b"x" * 65536


def _big_response_upstream(total: int, written: list[int]):
    async def script(reader, writer):
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        sent = 0
        while sent < total:
            writer.write(BLOCK)
            sent += len(BLOCK)
            written[0] = sent
            await writer.drain()
    return script


async def test_b9_slow_reader_pauses_the_upstream_and_is_cut_at_body_idle(proxy_factory):
    """The client reads 1 KiB and stops. Backpressure reaches the upstream (it cannot write
    the 256 MiB response), pyproxy's own buffers stay bounded, and once nothing drains
    for body_idle the client connection and the upstream exchange are cut (RX-7)."""
    total, written = 256 * 1024 * 1024, [0]
    backend = await RawBackend(_big_response_upstream(total, written)).start()
    proxy = await proxy_factory(one_route(backend, timeouts=FAST))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(client, ("127.0.0.1", proxy.port))
    await loop.sock_sendall(client, b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
    first = await loop.sock_recv(client, 1024)
    assert first.startswith(b"HTTP/1.1 200")

    peak = 0
    started = loop.time()
    while loop.time() - started < 10 * T:
        buffered = [c.transport.get_write_buffer_size() for c in proxy.listener.connections
                    if c.transport is not None]
        if not buffered:
            break  # pyproxy closed the slow connection
        peak = max(peak, *buffered)
        await asyncio.sleep(0.01)
    assert not proxy.listener.connections, "a client that reads nothing must be cut"
    assert peak <= downstream.WRITE_HIGH_WATER + 2 * 256 * 1024, peak  # bounded, not 256 MiB
    assert written[0] < total  # the upstream was paused, then its exchange cut
    await asyncio.sleep(0.1)
    frozen = written[0]
    await asyncio.sleep(0.2)
    assert written[0] == frozen  # the upstream connection is gone, not draining into memory
    assert await wait_for(lambda: proxy.stats_value("pyproxy_requests_total", flag="DC") == 1)
    client.close()
    await backend.close()


async def test_b9_a_slow_but_steady_reader_is_not_cut(proxy_factory):
    """Progress, however slow, re-arms the write idle timer: 8 MiB read at ~5 MB/s, long
    after body_idle, arrives whole even though pyproxy paused many times."""
    total, written = 8 * 1024 * 1024, [0]
    backend = await RawBackend(_big_response_upstream(total, written)).start()
    proxy = await proxy_factory(one_route(backend, timeouts=FAST))
    reader, writer = await _open(proxy)
    writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    paused_seen = False
    received = 0
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(256 * 1024), 5)
            if not chunk:
                break
            received += len(chunk)
            paused_seen |= any(c._write_paused for c in proxy.listener.connections)
            await asyncio.sleep(0.05)
    finally:
        writer.close()
    assert paused_seen  # the case exercised backpressure
    head_len = received - total
    assert 0 < head_len < 200  # all of the body arrived
    await backend.close()


# ---------------------------------------------------------------------------- B10–B12 headers


async def test_b10_spoofed_forwarding_headers(recording, proxy_factory):
    backend, _recorder = await recording()
    proxy = await proxy_factory(one_route(backend))
    result = await send(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\n"
                                    b"X-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6\r\n"
                                    b"Connection: close\r\n\r\n")
    assert result.statuses == [200]
    upstream = bytes(backend.received).lower()
    assert b"\r\nx-forwarded-for: 6.6.6.6, 127.0.0.1\r\n" in upstream  # appended, peer last
    assert b"\r\nx-forwarded-proto: http\r\n" in upstream and b"proto: https" not in upstream
    # RFC 7239: the client's chain is extended with this hop, never taken as the client.
    assert b"\r\nforwarded: for=6.6.6.6, for=127.0.0.1;proto=http;host=a\r\n" in upstream


TRUSTED_LB = (ipaddress.ip_network("127.0.0.1/32"),)


async def test_b10_a_trusted_load_balancer_is_believed(recording, proxy_factory):
    """With the peer in ``trusted_proxies`` (a load balancer in front), the client is the
    right-most X-Forwarded-For address that is not trusted; its -Proto and -Host pass."""
    backend, _recorder = await recording()
    proxy = await proxy_factory(one_route(backend, trusted_proxies=TRUSTED_LB))
    result = await send(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n"
                                    b"X-Forwarded-For: 6.6.6.6, 198.51.100.7, 127.0.0.1\r\n"
                                    b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop\r\n"
                                    b"Connection: close\r\n\r\n")
    assert result.statuses == [200]
    upstream = bytes(backend.received).lower()
    assert b"\r\nx-forwarded-for: 6.6.6.6, 198.51.100.7, 127.0.0.1, 127.0.0.1\r\n" in upstream
    assert b"\r\nx-forwarded-proto: https\r\n" in upstream
    assert b"\r\nx-forwarded-host: shop\r\n" in upstream


@pytest.mark.parametrize("trusted", [True, False])
async def test_b10_source_ip_hashing_uses_the_derived_client(recording, proxy_factory, trusted):
    """``consistent_hash: {source_ip: true}`` hashes the client pyproxy derived: behind a
    trusted load balancer, clients spread over the endpoints; otherwise every request comes
    from the balancer's one address, and a spoofed X-Forwarded-For changes nothing."""
    (one, first), (two, second) = await recording(), await recording()
    svc = service("svc", one, two,
                  load_balancer=LoadBalancer("consistent_hash", ConsistentHash(source_ip=True)))
    proxy = await proxy_factory(Config(services={"svc": svc},
                                       routes=(Route("main", backends=(Backend("svc"),)),),
                                       trusted_proxies=TRUSTED_LB if trusted else ()))
    for index in range(40):
        result = await send(proxy.port, b"GET /c%d HTTP/1.1\r\nHost: a\r\n"
                                        b"X-Forwarded-For: 198.51.100.%d\r\n"
                                        b"Connection: close\r\n\r\n" % (index, index))
        assert result.statuses == [200]
    counts = sorted([len(first.requests), len(second.requests)])
    assert sum(counts) == 40
    if trusted:
        assert counts[0] >= 5  # 40 clients over two endpoints: both get a share
    else:
        assert counts == [0, 40]  # one client: the peer


async def test_b11_spoofed_control_headers_are_stripped(recording, proxy_factory):
    backend, _ = await recording()
    proxy = await proxy_factory(one_route(backend))
    result = await send(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nX-Pyproxy-Fault-Abort: 500\r\n"
                                    b"X-Pyproxy-Fault-Abort-Percent: 100\r\nX-Pyproxy-Retry: 5\r\n"
                                    b"X-Request-Id: evil\r\nConnection: close\r\n\r\n")
    assert result.statuses == [200]  # no fault applied
    upstream = bytes(backend.received).lower()
    assert b"x-pyproxy-" not in upstream
    # docs/responses.md: a client's x-request-id is propagated (HD-15 would regenerate it).
    assert b"\r\nx-request-id: evil\r\n" in upstream


async def test_b12_dot_segments_cannot_route_around_a_denied_prefix(recording, proxy_factory):
    backend, recorder = await recording()
    config = Config(services={"svc": service("svc", backend)}, routes=(
        Route("deny-admin", matches=(Match(path=PathMatch("prefix", "/admin")),),
              direct_response=DirectResponse(403, "denied")),
        Route("main", backends=(Backend("svc"),)),
    ))
    proxy = await proxy_factory(config)
    for path in (b"/admin", b"/admin/x"):
        result = await send(proxy.port, b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                            % path)
        assert result.statuses == [403], path
    for path in (b"/public/../admin", b"/public/%2e%2e/admin", b"/public/.%2E/admin/x",
                 b"/public/..;/admin", b"/./admin"):
        result = await send(proxy.port, b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path)
        assert result.statuses == [400] and result.closed, path
    # Normalised before matching (routing/paths.py): merged slashes and decoded unreserved
    # characters are /admin, so the deny route takes them.
    for path in (b"//admin", b"///admin/x", b"/%61dmin", b"/%61%64%6D%69%6E/x", b"/admin//"):
        result = await send(proxy.port, b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                            % path)
        assert result.statuses == [403], path
    assert bytes(backend.received) == b""
    # The upstream gets the path that was routed: normalised, the query as received.
    result = await send(proxy.port, b"GET //public//%7Euser/a%2fb?q=//%61 HTTP/1.1\r\nHost: a\r\n"
                                    b"Connection: close\r\n\r\n")
    assert result.statuses == [200]
    assert [r.target for r in recorder.requests] == [b"/public/~user/a%2Fb?q=//%61"]


# ---------------------------------------------------------------------------- B13, B14 upgrades


async def test_b13_websocket_is_relayed(proxy_factory):
    backend = await WebSocketEchoBackend().start()
    proxy = await proxy_factory(one_route(backend))
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(proxy.url + "/ws") as ws:
            await ws.send_str("hi")
            assert await ws.receive_str() == "echo:hi"
    await backend.close()


WS_HANDSHAKE = (b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


@pytest.mark.parametrize("version,route_allows", [("1.1", False), ("1.0", True)],
                         ids=["websocket-disabled-route", "http10-upgrade"])
async def test_b14_upgrade_not_allowed_is_forwarded_as_a_plain_request(
        version, route_allows, recording, proxy_factory):
    backend, recorder = await recording()
    config = Config(services={"svc": service("svc", backend)},
                    routes=(Route("main", backends=(Backend("svc"),), websocket=route_allows),))
    proxy = await proxy_factory(config)
    result = await send(proxy.port, b"GET /ws HTTP/%s\r\nHost: a\r\n%s" % (version.encode(),
                                                                         WS_HANDSHAKE))
    assert result.statuses == [200] and result.closed  # no 101; no second request either
    upstream = bytes(backend.received).lower()
    assert len(recorder.complete) == 1
    assert b"\r\nupgrade:" not in upstream and b"\r\nconnection:" not in upstream


# ---------------------------------------------------------------------------- B15–B17 floods


async def test_b15_connection_cap_answers_503_and_recovers(recording, proxy_factory):
    backend, _ = await recording()
    proxy = await proxy_factory(one_route(backend, limits=Limits(max_connections=2)))
    held = [await _open(proxy) for _ in range(2)]
    assert await wait_for(lambda: len(proxy.listener.connections) == 2)
    extra = await send(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", wait_close=True)
    assert extra.statuses == [503] and extra.closed
    assert b"connection: close" in extra.responses[0].head
    _, writer = held.pop()
    writer.close()
    assert await wait_for(lambda: len(proxy.listener.connections) == 1)
    again = await send(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert again.statuses == [200]
    for _, writer in held:
        writer.close()


async def test_b16_pipelining_flood_in_one_read_is_bounded(recording, proxy_factory):
    """300 pipelined GETs in one write, behind a slow first one: pyproxy queues at most
    MAX_PIPELINED_PARSED of them, answers those in order, and closes; the rest is never
    parsed (RX-11; a pipelining client retries unanswered requests, RFC 9112 §9.3.2)."""
    backend, recorder = await recording(first_delay=T)
    proxy = await proxy_factory(one_route(backend))
    count = 300
    data = b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(count))
    reader, writer = await _open(proxy)
    try:
        writer.write(data)
        assert await wait_for(lambda: proxy.listener.connections)
        conn = next(iter(proxy.listener.connections))
        assert await wait_for(lambda: conn._queue)
        assert len(conn._queue) <= downstream.MAX_PIPELINED_PARSED
        result = await read_responses(reader, writer, responses=count, wait_close=True,
                                      timeout=10)
    finally:
        writer.close()
    answered = 1 + downstream.MAX_PIPELINED_PARSED
    assert [r.body for r in result.responses] == [b"/%d" % i for i in range(answered)]
    assert result.closed and result.partial is None and not result.parse_error
    assert b"connection: close" in result.responses[-1].head
    assert [r.target for r in recorder.requests] == [b"/%d" % i for i in range(answered)]


@pytest.mark.parametrize("count,pieces", [(1 + 4 * downstream.MAX_PIPELINED, 1), (60, 6)],
                         ids=["at-the-cap-in-one-read", "over-several-reads"])
async def test_b16_a_pipeline_within_the_cap_is_answered_whole(
        count, pieces, recording, proxy_factory):
    """Up to the cap, a pipeline is throttled (reading pauses at MAX_PIPELINED queued) but
    every request is answered, in order, on the same connection."""
    assert downstream.MAX_PIPELINED_PARSED == 4 * downstream.MAX_PIPELINED
    backend, _ = await recording(first_delay=0.2)
    proxy = await proxy_factory(one_route(backend))
    requests = [b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(count)]
    step = count // pieces
    data = [b"".join(requests[i:i + step]) for i in range(0, count, step)]
    reader, writer = await _open(proxy)
    try:
        conn = None
        paused = False
        for piece in data:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
            conn = conn or next(iter(proxy.listener.connections))
            paused |= conn._reading_paused
        result = await read_responses(reader, writer, responses=count, wait_close=False,
                                      timeout=10)
    finally:
        writer.close()
    assert [r.body for r in result.responses] == [b"/%d" % i for i in range(count)]
    assert paused and b"connection: close" not in result.responses[-1].head


async def test_b17_a_flood_of_bad_requests_logs_nothing(recording, proxy_factory, caplog):
    backend, _ = await recording()
    proxy = await proxy_factory(one_route(backend))
    caplog.set_level(logging.DEBUG, logger="pyproxy")
    for _ in range(200):
        result = await send(proxy.port, BY_ID["CLTE"].raw)
        assert result.statuses == [400]
    assert [r for r in caplog.records if r.name.startswith("pyproxy")] == []
    assert bytes(backend.received) == b""


# ---------------------------------------------------------------------------- §2.3 fault upstreams


async def test_upstream_stalls_after_headers_is_cut_at_body_idle(proxy_factory):
    async def stall(reader, writer):
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
        await writer.drain()
        await asyncio.sleep(30)

    backend = await RawBackend(stall).start()
    proxy = await proxy_factory(one_route(backend, timeouts=FAST))
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await send(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", wait_close=True,
                        timeout=BOUND)
    assert result.closed and loop.time() - started < BOUND
    assert result.partial is not None and result.partial.body == b"part"  # visibly truncated
    assert await wait_for(lambda: proxy.stats_value("pyproxy_requests_total", flag="UT") == 1)
    await backend.close()


async def test_upstream_trickling_faster_than_body_idle_completes(proxy_factory):
    async def trickle(reader, writer):
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        for byte in b"hello":
            await asyncio.sleep(0.2)
            writer.write(bytes([byte]))
            await writer.drain()

    backend = await RawBackend(trickle).start()
    proxy = await proxy_factory(one_route(backend, timeouts=FAST))
    result = await send(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                        timeout=5)
    assert result.statuses == [200] and result.responses[0].body == b"hello"
    await backend.close()


# ---------------------------------------------------------------------------- half-close


async def test_half_closed_client_still_gets_its_response(recording, proxy_factory):
    """``shutdown(SHUT_WR)`` after a complete request (nc -N, some HTTP/1.0 tools) is not
    an abort: the response is sent, then the connection closed."""
    backend, _ = await recording()
    proxy = await proxy_factory(one_route(backend))
    reader, writer = await _open(proxy)
    writer.write(b"GET /hc HTTP/1.1\r\nHost: a\r\n\r\n")
    writer.write_eof()
    result = await read_responses(reader, writer, wait_close=True)
    writer.close()
    assert result.statuses == [200] and result.responses[0].body == b"/hc" and result.closed


async def test_half_close_mid_body_is_still_an_abort(recording, proxy_factory):
    backend, recorder = await recording()
    proxy = await proxy_factory(one_route(backend))
    _reader, writer = await _open(proxy)
    writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
    assert await wait_for(lambda: recorder.requests and len(recorder.requests[0].body) == 10)
    writer.write_eof()
    assert await wait_for(lambda: _ended(recorder))
    assert recorder.complete == []
    writer.close()
