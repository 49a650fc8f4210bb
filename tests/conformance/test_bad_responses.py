"""reliability.md §2.3: the 19 raw bad upstream responses, byte for byte.

A scripted upstream answers the first request it gets with the case's bytes and every later
one with a plain 200. For each case: what the client gets (502 with flag UPE, the
normalised response, or a visibly truncated one), the flag in ``pyproxy_requests_total``,
and whether the upstream connection was used again — a connection that carried a bad or
ambiguous response must never serve the next request.
"""

from __future__ import annotations

import pytest

from tests.conformance.corpus import EXTRA_RESPONSES, RESPONSES, Resp
from tests.conformance.rawhttp import one_route, send, wait_for
from tests.support.backends import RawBackend, read_request_head

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_the_corpus_is_the_references_19_rows():
    assert [case.id.split("-")[0] for case in RESPONSES] == [f"U{i}" for i in range(1, 20)]


async def _scripted(raw: bytes, close: bool) -> RawBackend:
    answered = []

    async def script(reader, writer):
        while True:
            await read_request_head(reader)
            answered.append(1)
            writer.write(raw if len(answered) == 1 else OK)
            await writer.drain()
            if len(answered) == 1 and close:
                return  # RawBackend closes the connection

    return await RawBackend(script).start()


@pytest.mark.parametrize("case", RESPONSES + EXTRA_RESPONSES, ids=lambda case: case.id)
async def test_bad_upstream_response(case: Resp, proxy_factory):
    backend = await _scripted(case.raw, case.close_upstream)
    proxy = await proxy_factory(one_route(backend))

    first = await send(proxy.port, b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n",
                       wait_close=case.truncated)
    if case.truncated:
        # Headers were already relayed: the client sees the status, part of the body, then
        # the connection ends without the body's end (no Content-Length worth, no last chunk).
        assert first.responses == [] and first.partial is not None
        assert first.partial.status == case.status and first.closed
        assert not first.raw.endswith(b"0\r\n\r\n")
    else:
        assert first.statuses == [case.status], first.raw
        response = first.responses[0]
        if case.body is not None:
            assert response.body == case.body
        for text in case.response_has:
            assert text in response.head, (text, response.head)
        for text in case.response_lacks:
            assert text not in response.head, (text, response.head)
    if case.flag:
        assert await wait_for(lambda: proxy.stats_value(
            "pyproxy_requests_total", route="main", code=str(case.status), flag=case.flag) == 1)
    else:
        assert await wait_for(lambda: proxy.stats_value(
            "pyproxy_requests_total", route="main", code=str(case.status), flag="") == 1)
    assert proxy.stats_value("pyproxy_requests_total", flag="UPE") == (case.flag == "UPE")

    second = await send(proxy.port, b"GET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert second.statuses == [200] and second.responses[0].body == b"ok"
    # A new upstream connection after anything bad or ambiguous; the same one only after a
    # clean exchange (the proxy does reuse connections: tests/integration/test_engine.py).
    assert backend.connections == (1 if case.reused else 2)
    await backend.close()


async def test_read_until_close_response_to_an_http10_client_is_close_delimited(proxy_factory):
    backend = await _scripted(b"HTTP/1.1 200 OK\r\n\r\nread-until-close", close=True)
    proxy = await proxy_factory(one_route(backend))
    result = await send(proxy.port, b"GET / HTTP/1.0\r\n\r\n", responses=0, wait_close=True)
    head, _, body = result.raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower() and body == b"read-until-close"
    await backend.close()


async def test_interim_responses_are_not_forwarded_to_a_client_that_asked_for_100(proxy_factory):
    """HD-6/HD-7: the proxy answers ``Expect: 100-continue`` itself and strips Expect; an
    upstream's own 100 or 103 is consumed, so the client sees exactly one 100 (pyproxy's)."""
    backend = await _scripted(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
                              b"Link: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                              close=False)
    proxy = await proxy_factory(one_route(backend))
    result = await send(proxy.port, [b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                                     b"Expect: 100-continue\r\nConnection: close\r\n\r\n", b"data"],
                        pause=0.1, responses=2)
    assert result.statuses == [100, 200] and result.responses[1].body == b"ok"
    assert result.raw.count(b"HTTP/1.1 1") == 1
    await backend.close()
