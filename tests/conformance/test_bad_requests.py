"""reliability.md §2.1: the 75 raw bad requests (plus a few from its text), byte for byte,
each on a fresh connection to a real in-process pyproxy whose upstream records every byte.

For a refused request: the status, exactly one response and a closed connection (so no
second request was parsed out of the rejected bytes), nothing at all upstream, and a
healthy proxy afterwards. For an accepted one: what the upstream received instead.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conformance.corpus import ACCEPTED, BY_ID, REJECTED, REQUESTS, Req
from tests.conformance.rawhttp import matches, one_route, read_responses, send, wait_for

FOLLOW_UP = b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


def _id(case: Req) -> str:
    return f"{case.row:03d}-{case.id}"


def test_the_corpus_is_the_references_75_rows():
    assert [case.row for case in REQUESTS] == list(range(1, 76))
    assert len({case.id for case in REQUESTS}) == 75


async def _assert_still_healthy(proxy, recorder, before: int) -> None:
    """A normal request on a new connection is served, and it is the only thing (after
    the ``before`` requests the case itself was expected to forward) the upstream got."""
    after = await send(proxy.port, FOLLOW_UP)
    assert after.statuses == [200] and after.responses[0].body == b"/after"
    targets = [request.target for request in recorder.requests]
    assert targets[before:] == [b"/after"], targets


@pytest.mark.parametrize("case", REJECTED, ids=_id)
async def test_refused_request(case: Req, recording, proxy_factory):
    backend, recorder = await recording()
    proxy = await proxy_factory(one_route(backend))

    result = await send(proxy.port, case.raw, wait_close=True)

    assert not result.parse_error, result.raw
    assert result.statuses == list(case.statuses), result.raw[:200]
    assert result.partial is None  # exactly one response, nothing after it
    assert result.closed, "pyproxy must close after refusing a request"
    assert b"\r\nconnection: close" in result.responses[0].head
    for text in case.response_has:
        assert text in result.responses[0].head
    # Nothing reached an upstream: not a head, not a byte, not a connection.
    assert bytes(backend.received) == b"" and backend.connections == 0
    # Refusals are not logged line by line but counted, so a flood is visible.
    assert proxy.stats_value("pyproxy_downstream_rejected_total",
                             status=str(case.statuses[0])) == 1
    await _assert_still_healthy(proxy, recorder, 0)
    assert backend.received.lower().startswith(b"get /after http/1.1\r\n")


@pytest.mark.parametrize("case", ACCEPTED, ids=_id)
async def test_accepted_request_is_normalised(case: Req, recording, proxy_factory):
    backend, recorder = await recording()
    proxy = await proxy_factory(one_route(backend))

    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        result = await read_responses(reader, writer, case.raw, responses=len(case.statuses),
                                      wait_close=case.close)
        assert not result.parse_error, result.raw
        assert result.statuses == list(case.statuses), result.raw[:300]
        assert await wait_for(lambda: len(recorder.complete) == case.forwarded, 1.0)
        upstream = bytes(backend.received).lower()
        assert len(recorder.complete) == case.forwarded, upstream
        for text in case.upstream_has:
            assert text in upstream, (text, upstream)
        for text in case.upstream_lacks:
            assert text not in upstream, (text, upstream)
        for pattern in case.upstream_matches:
            assert matches(pattern, upstream), (pattern, upstream)
        first = result.responses[0]
        for text in case.response_has:
            assert text in first.head, (text, first.head)
        for text in case.response_lacks:
            assert text not in first.head, (text, first.head)
        if case.response_bodies:
            assert [r.body for r in result.responses] == list(case.response_bodies)
        if case.close:
            assert result.closed and result.partial is None
        else:
            # The connection stays usable: the next request is parsed after, not out of, it.
            more = await read_responses(reader, writer,
                                        b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n", wait_close=False)
            assert more.statuses == [200] and more.responses[0].body == b"/next"
    finally:
        writer.close()
    await _assert_still_healthy(proxy, recorder, case.forwarded + (0 if case.close else 1))


@pytest.mark.parametrize("case_id", ["CHUNK_BADSIZE", "CHUNK_BARE_LF", "CHUNK_NO_CRLF",
                                     "TRAILER_SMUGGLE", "CHUNK_OVERFLOW"])
async def test_bad_chunk_after_the_head_was_forwarded_aborts_the_upstream(
        case_id, recording, proxy_factory):
    """The same bytes, but the head arrives first and is streamed upstream before the bad
    chunk: the upstream request is aborted, never completed (FR-6, FR-7)."""
    case = BY_ID[case_id]
    head, _, body = case.raw.partition(b"\r\n\r\n")
    backend, recorder = await recording()
    proxy = await proxy_factory(one_route(backend))

    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(head + b"\r\n\r\n")
        assert await wait_for(lambda: recorder.requests)  # the head went upstream
        result = await read_responses(reader, writer, body, wait_close=True)
    finally:
        writer.close()
    assert result.statuses == [400] and result.closed
    assert await wait_for(lambda: recorder.connections[0].ended)
    assert recorder.complete == []  # never a complete message upstream
    assert not backend.received.endswith(b"0\r\n\r\n")
    await _assert_still_healthy(proxy, recorder, 1)


async def test_bad_request_pipelined_behind_a_good_one_is_never_parsed(recording, proxy_factory):
    backend, recorder = await recording()
    proxy = await proxy_factory(one_route(backend))
    result = await send(proxy.port, b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n" + BY_ID["CLTE"].raw)
    # The good one is answered (and told the connection closes); the bad one is not
    # answered and nothing of it is forwarded.
    assert result.statuses == [200] and result.responses[0].body == b"/1"
    assert b"\r\nconnection: close" in result.responses[0].head
    assert result.closed and result.partial is None
    assert [r.target for r in recorder.requests] == [b"/1"]
    assert b"smuggled" not in backend.received.lower() and b"post" not in backend.received.lower()


@pytest.mark.parametrize("case_id", ["LONG_LINE", "LONG_HEADER"])
async def test_size_limits_hold_when_the_bytes_arrive_in_small_pieces(
        case_id, recording, proxy_factory):
    """RX-4 (CVE-2026-54277's class): a long line split over many reads is still refused."""
    case = BY_ID[case_id]
    backend, _ = await recording()
    proxy = await proxy_factory(one_route(backend))
    pieces = [case.raw[i:i + 1024] for i in range(0, len(case.raw), 1024)]
    result = await _send_ignoring_resets(proxy.port, pieces, pause=0.001)
    assert result.statuses == [case.status] and result.closed
    assert bytes(backend.received) == b""


async def test_an_endless_header_line_is_cut_before_it_grows_without_bound(
        recording, proxy_factory):
    """httptools buffers a header field until its line ends; pyproxy counts the bytes of an
    unfinished head across reads and refuses it (431) once it passes the header limits,
    long before the header timeout."""
    backend, _ = await recording()
    proxy = await proxy_factory(one_route(backend))
    pieces = [b"GET / HTTP/1.1\r\nHost: a\r\nX-A: "] + [b"a" * 4096] * 64  # 256 KiB, no end
    result = await _send_ignoring_resets(proxy.port, pieces, pause=0.002)
    assert result.statuses == [431] and result.closed
    assert bytes(backend.received) == b""


async def _send_ignoring_resets(port: int, pieces: list[bytes], pause: float):
    """Write ``pieces`` while reading the answer: pyproxy may answer and close mid-way."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def write_all():
        try:
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(pause)
        except ConnectionError:
            pass

    writing = asyncio.ensure_future(write_all())
    try:
        return await read_responses(reader, writer, b"", wait_close=True, timeout=5.0)
    finally:
        writing.cancel()
        writer.close()


async def test_request_trailers_never_reach_the_upstream_as_headers(recording, proxy_factory):
    """Regression (found by the HAProxy differential): trailer fields of a chunked request
    that arrived in the same read as the head were merged into the validated head."""
    backend, _recorder = await recording()
    proxy = await proxy_factory(one_route(backend))
    raw = (b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\nHost: evil.example\r\nX_Under: 2\r\nCookie: s=1\r\n\r\n")
    after = b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    result = await send(proxy.port, raw + after, wait_close=True)
    assert result.statuses[0] == 200
    upstream = bytes(backend.received).lower()
    head = upstream.split(b"\r\n\r\n", 1)[0]
    assert b"evil" not in upstream and b"x_under" not in upstream and b"cookie" not in head
    assert b"\r\nhost: a\r\n" in head
