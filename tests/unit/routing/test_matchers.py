"""Matchers: every match kind (path, method, header, query, cookie), inversion, descriptions."""

from __future__ import annotations

import pytest

from pyproxy.config.model import Match, PathMatch, StringMatch
from pyproxy.messages import RequestHead
from pyproxy.routing.matchers import compile_match, compile_matches, describe_match


def head(path="/", method="GET", host="shop", headers=(), query=""):
    return RequestHead(method, path, query, "1.1", [(k.lower(), v) for k, v in headers],
                       host, "127.0.0.1")


@pytest.mark.parametrize("kind,value,path,expected", [
    ("exact", "/store", "/store", True),
    ("exact", "/store", "/store/", False),
    ("prefix", "/store", "/store/stocklevel", True),
    ("prefix", "/store", "/stor", False),
    ("regex", r"/store/\d+", "/store/42", True),
    ("regex", r"/store/\d+", "/store/42/x", False),  # full match, not search
])
def test_path_kinds(kind, value, path, expected):
    assert compile_match(Match(path=PathMatch(kind, value)))(head(path)) is expected


def test_path_ignore_case():
    predicate = compile_match(Match(path=PathMatch("prefix", "/Store", ignore_case=True)))
    assert predicate(head("/STORE/x")) and not predicate(head("/shop"))


@pytest.mark.parametrize("match,value,expected", [
    (StringMatch("exact", "tester"), "tester", True),
    (StringMatch("exact", "tester"), "Tester", False),
    (StringMatch("exact", "tester", ignore_case=True), "TESTER", True),
    (StringMatch("prefix", "test"), "tester", True),
    (StringMatch("suffix", "ter"), "tester", True),
    (StringMatch("suffix", "ter"), "testers", False),
    (StringMatch("regex", "t.*r"), "tester", True),
    (StringMatch("regex", "t.*r"), "testers", False),
    (StringMatch("present"), "", True),
    (StringMatch("present"), None, False),
    (StringMatch("absent"), None, True),
    (StringMatch("absent"), "x", False),
    (StringMatch("exact", "x"), None, False),
])
def test_header_kinds(match, value, expected):
    predicate = compile_match(Match(headers=(("end-user", match),)))
    headers = [] if value is None else [("end-user", value)]
    assert predicate(head(headers=headers)) is expected


def test_query_and_cookie_matches():
    predicate = compile_match(Match(query=(("debug", StringMatch("exact", "1")),),
                                    cookies=(("canary", StringMatch("exact", "always")),)))
    assert predicate(head(query="a=2&debug=1", headers=[("cookie", "x=y; canary=always")]))
    assert not predicate(head(query="debug=0", headers=[("cookie", "canary=always")]))
    assert not predicate(head(query="debug=1", headers=[("cookie", "canary=never")]))


def test_and_within_or_across_entries():
    entries = (Match(path=PathMatch("prefix", "/a"), methods=("POST",)),
               Match(headers=(("x-v", StringMatch("exact", "2")),)))
    predicate = compile_matches(entries)
    assert predicate(head("/a/b", "POST"))
    assert not predicate(head("/a/b", "GET"))  # AND within an entry
    assert predicate(head("/zzz", "GET", headers=[("x-v", "2")]))  # OR across entries
    assert compile_matches(())(head())  # no match block matches all


def test_repeated_header_values_are_joined():
    predicate = compile_match(Match(headers=(("x", StringMatch("exact", "a, b")),)))
    assert predicate(head(headers=[("x", "a"), ("x", "b")]))


def test_describe_match():
    text = describe_match(Match(path=PathMatch("prefix", "/s"), methods=("GET",),
                                headers=(("end-user", StringMatch("exact", "tester")),)))
    assert text == "path prefix '/s' and method GET and header end-user exact 'tester'"


@pytest.mark.parametrize("value,path,expected", [
    ("/foo", "/foo", True),
    ("/foo", "/foo/bar", True),
    ("/foo", "/foobar", False),  # element-wise, unlike a string prefix
    ("/foo/", "/foo", True),  # a trailing slash in the value is ignored
    ("/", "/anything", True),
])
def test_segment_prefix(value, path, expected):
    assert compile_match(Match(path=PathMatch("segment_prefix", value)))(head(path)) is expected


def test_inverted_header_match_is_istio_without_headers():
    predicate = compile_match(Match(headers=(("end-user", StringMatch("exact", "tester",
                                                                      invert=True)),)))
    assert predicate(head(headers=[("end-user", "alice")]))
    assert predicate(head())  # absent: "without header end-user: tester" holds
    assert not predicate(head(headers=[("end-user", "tester")]))


def test_matched_prefix_respects_element_wise_prefixes():
    from pyproxy.config.model import Backend, Config, Endpoint, Route, Service
    from pyproxy.runtime import Runtime

    route = Route("r", backends=(Backend("s"),),
                  matches=(Match(path=PathMatch("segment_prefix", "/foo")),
                           Match(path=PathMatch("prefix", "/f"))))
    config = Config(services={"s": Service("s", (Endpoint("127.0.0.1", 1),))}, routes=(route,))
    compiled = Runtime().compile(config).routes["r"]
    assert compiled.matched_prefix("/foo/bar") == "/foo"
    assert compiled.matched_prefix("/foobar") == "/f"  # /foo does not match /foobar element-wise
