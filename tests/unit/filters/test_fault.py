"""Fault decisions, header changes, rewrites, retry policy and forwarding hygiene."""

from __future__ import annotations

import itertools

import pytest

from pyproxy.config.model import (
    AbortFault,
    Backoff,
    DelayFault,
    Fault,
    HeaderChanges,
    Redirect,
    Retries,
    Rewrite,
)
from pyproxy.filters import fault, headers
from pyproxy.filters.rewrite import redirect_location, rewrite_path
from pyproxy.messages import RequestHead
from pyproxy.resilience.retry import backoff, is_retryable
from pyproxy.upstream import forwarding


def head(path="/", headers_=(), host="shop", query=""):
    return RequestHead("GET", path, query, "1.1", list(headers_), host, "10.1.2.3")


def draws(*values):
    it = iter(values)
    return lambda: next(it)


def test_fault_percentages_are_sub_percent_precise():
    f = Fault(abort=AbortFault(status=503, percent=0.1))
    assert fault.decide(f, head(), draws(0.000999)).abort == 503
    assert fault.decide(f, head(), draws(0.001)).abort == 0


def test_delay_and_abort_use_independent_draws():
    f = Fault(delay=DelayFault(fixed=2.5, percent=50), abort=AbortFault(status=500, percent=50))
    decision = fault.decide(f, head(), draws(0.1, 0.9))
    assert decision.delay == 2.5 and decision.abort == 0
    decision = fault.decide(f, head(), draws(0.9, 0.1))
    assert decision.delay == 0 and decision.abort == 500


def test_header_faults_need_the_secret():
    f = Fault(header_secret="s3cret")
    asks = [("x-pyproxy-fault-abort", "418")]
    assert fault.decide(f, head(headers_=asks), draws(0.5)) == fault.NO_FAULT
    wrong = asks + [("x-pyproxy-fault-secret", "nope")]
    assert fault.decide(f, head(headers_=wrong), draws(0.5)) == fault.NO_FAULT
    right = asks + [("x-pyproxy-fault-secret", "s3cret"), ("x-pyproxy-fault-delay", "200ms")]
    decision = fault.decide(f, head(headers_=right), draws(0.5, 0.5))
    assert decision.abort == 418 and decision.delay == pytest.approx(0.2)
    bad = [("x-pyproxy-fault-secret", "s3cret"), ("x-pyproxy-fault-abort", "nope")]
    assert fault.decide(f, head(headers_=bad), draws(0.5)) == fault.NO_FAULT


def test_header_changes():
    base = [("a", "1"), ("b", "2"), ("b", "3")]
    out = headers.apply(base, HeaderChanges(set=(("b", "x"),), add=(("c", "4"),), remove=("a",)))
    assert out == [("b", "x"), ("c", "4")]
    assert headers.apply(base, None) is base


@pytest.mark.parametrize("prefix,replacement,path,expected", [
    ("/api", "/v2", "/api/users", "/v2/users"),
    ("/api/", "/", "/api/users", "/users"),
    ("/api", "/", "/api/users", "/users"),
    ("/api", "", "/api", "/"),
])
def test_prefix_rewrite(prefix, replacement, path, expected):
    assert rewrite_path(Rewrite(path_prefix=replacement), path, prefix) == expected


def test_full_and_regex_rewrite():
    assert rewrite_path(Rewrite(path_full="/x"), "/a/b", "/a") == "/x"
    assert rewrite_path(Rewrite(path_regex=(r"^/v(\d+)/", r"/version-\1/")), "/v2/a", None) \
        == "/version-2/a"


def test_redirect_location():
    h = head("/old/page", host="shop.example", query="a=1")
    assert redirect_location(Redirect(scheme="https"), h, None) == "https://shop.example/old/page?a=1"
    assert redirect_location(Redirect(host="new.example", port=8443, path_prefix="/new"), h,
                             "/old") == "http://new.example:8443/new/page?a=1"


RETRY_TABLE = [
    (("connect-failure",), "connect-failure", 0, True),
    (("reset",), "connect-failure", 0, False),
    (("reset",), "reset", 0, True),
    (("gateway-error",), "status", 503, True),
    (("gateway-error",), "status", 500, False),
    (("gateway-error",), "timeout", 0, True),
    (("5xx",), "status", 500, True),
    (("5xx",), "status", 404, False),
    (("5xx",), "reset", 0, True),
    (("retriable-status-codes",), "status", 409, True),
    (("connect-failure",), "status", 503, False),
]


@pytest.mark.parametrize("retry_on,failure,status,expected", RETRY_TABLE)
def test_is_retryable(retry_on, failure, status, expected):
    policy = Retries(attempts=2, retry_on=retry_on, status_codes=(409,)
                     if "retriable-status-codes" in retry_on else ())
    assert is_retryable(policy, failure, status) is expected


def test_backoff_is_fully_jittered_and_capped():
    policy = Retries(backoff=Backoff(base=0.025, max=0.25))
    assert backoff(policy, 1, 1.0) == pytest.approx(0.025)
    assert backoff(policy, 3, 1.0) == pytest.approx(0.1)
    assert backoff(policy, 10, 1.0) == pytest.approx(0.25)
    assert backoff(policy, 3, 0.0) == 0.0


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


def test_redirect_keeps_the_clients_port_for_the_same_host():
    h = RequestHead("GET", "/a", "", "1.1", [("host", "shop:8080")], "shop", "10.1.2.3")
    assert redirect_location(Redirect(path="/b"), h, None) == "http://shop:8080/b"
    assert redirect_location(Redirect(scheme="https"), h, None) == "https://shop/a"
