"""Forwarding hygiene: hop-by-hop and fault headers dropped, X-Forwarded-For and Via
appended, request ids."""

from __future__ import annotations

import itertools

from pyproxy.messages import RequestHead
from pyproxy.upstream import forwarding


def head(path="/", headers_=(), host="shop", query=""):
    return RequestHead("GET", path, query, "1.1", list(headers_), host, "10.1.2.3")


def test_forwarded_request_headers():
    h = head(headers_=[("host", "shop"), ("connection", "close, x-secret"), ("x-secret", "s"),
                       ("x-forwarded-for", "6.6.6.6"), ("te", "trailers"),
                       ("transfer-encoding", "chunked"), ("content-length", "5"),
                       ("x-pyproxy-fault-abort", "500"), ("accept", "*/*"),
                       ("via", "1.0 edge")])
    out = forwarding.request_headers(h, "shop", "rid")
    names = [n for n, _ in out]
    assert names.count("host") == 1
    for dropped in ("connection", "x-secret", "te", "transfer-encoding", "content-length",
                    "x-pyproxy-fault-abort"):
        assert dropped not in names
    d = dict(out)
    assert d["x-forwarded-for"] == "6.6.6.6, 10.1.2.3"
    assert d["via"] == "1.0 edge, 1.1 pyproxy"
    assert d["x-request-id"] == "rid" and d["accept"] == "*/*"


def test_connection_cannot_remove_headers_pyproxy_adds():
    h = head(headers_=[("host", "shop"), ("connection", "x-forwarded-for, via"),
                       ("x-forwarded-for", "6.6.6.6"), ("via", "1.0 spoof")])
    d = dict(forwarding.request_headers(h, "shop", "rid"))
    # The client's named values are dropped; pyproxy's own stay.
    assert d["x-forwarded-for"] == "10.1.2.3" and d["via"] == "1.1 pyproxy"


def test_forwarded_response_headers():
    out = forwarding.response_headers([("connection", "x-internal"), ("x-internal", "1"),
                                       ("content-length", "3"), ("set-cookie", "a=1"),
                                       ("transfer-encoding", "chunked")])
    assert out == [("set-cookie", "a=1")]


def test_request_ids_are_uuid4_shaped():
    ids = {forwarding.new_request_id() for _ in range(100)}
    assert len(ids) == 100
    for rid in itertools.islice(ids, 10):
        parts = rid.split("-")
        assert [len(p) for p in parts] == [8, 4, 4, 4, 12] and parts[2][0] == "4"
        assert parts[3][0] in "89ab"
