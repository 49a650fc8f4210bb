"""Forwarding hygiene: hop-by-hop and fault headers dropped, X-Forwarded-For and Via
appended, request ids."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from pyproxy.config.load import ConfigInvalid, load_config
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


# ---------------------------------------------------------------------------- trusted proxies

LB = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


def from_peer(peer: str, *headers_: tuple[str, str]) -> RequestHead:
    return RequestHead("GET", "/", "", "1.1", [("host", "shop"), *headers_], "shop", peer)


def test_an_untrusted_peer_is_the_client_whatever_it_says():
    h = from_peer("203.0.113.9", ("x-forwarded-for", "1.1.1.1"))
    assert forwarding.client_address(h, LB) == ("203.0.113.9", False)
    assert forwarding.client_address(h, ()) == ("203.0.113.9", False)


def test_a_trusted_peer_forwarded_for_the_right_most_untrusted_address():
    h = from_peer("10.0.0.2", ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
                  ("x-forwarded-for", "10.1.1.1"))  # a second field continues the list
    assert forwarding.client_address(h, LB) == ("198.51.100.7", True)


def test_ports_brackets_and_mapped_ipv4_are_understood():
    h = from_peer("::ffff:10.0.0.2", ("x-forwarded-for", "[2001:db8::7]:4711, 10.9.9.9:80"))
    assert forwarding.client_address(h, LB) == ("2001:db8::7", True)
    h = from_peer("fd00::1", ("x-forwarded-for", "192.0.2.1:5555"))
    assert forwarding.client_address(h, LB) == ("192.0.2.1", True)


def test_all_trusted_gives_the_left_most_and_garbage_stops_the_walk():
    h = from_peer("10.0.0.2", ("x-forwarded-for", "10.0.0.9, 10.0.0.8"))
    assert forwarding.client_address(h, LB) == ("10.0.0.9", True)
    h = from_peer("10.0.0.2", ("x-forwarded-for", "6.6.6.6, unknown, 10.0.0.8"))
    assert forwarding.client_address(h, LB) == ("10.0.0.8", True)
    h = from_peer("10.0.0.2")  # a trusted peer that forwarded nothing is the client
    assert forwarding.client_address(h, LB) == ("10.0.0.2", True)


def test_xff_always_gets_the_peer_and_trusted_proto_and_host_are_kept():
    spoofed = [("x-forwarded-for", "1.1.1.1"), ("x-forwarded-proto", "https"),
               ("x-forwarded-host", "shop.example")]
    h = from_peer("203.0.113.9", *spoofed)
    d = dict(forwarding.request_headers(h, "shop", "rid"))
    assert d["x-forwarded-for"] == "1.1.1.1, 203.0.113.9"
    assert (d["x-forwarded-proto"], d["x-forwarded-host"]) == ("http", "shop")
    h = from_peer("10.0.0.2", *spoofed)
    h.client_ip, h.peer_trusted = forwarding.client_address(h, LB)
    d = dict(forwarding.request_headers(h, "shop", "rid"))
    assert h.client_ip == "1.1.1.1"
    assert d["x-forwarded-for"] == "1.1.1.1, 10.0.0.2"  # the hop list, peer last
    assert (d["x-forwarded-proto"], d["x-forwarded-host"]) == ("https", "shop.example")


def test_forwarded_is_extended_never_started():
    d = dict(forwarding.request_headers(from_peer("203.0.113.9"), "shop", "rid"))
    assert "forwarded" not in d
    h = RequestHead("GET", "/", "", "1.1", [("forwarded", "for=6.6.6.6"),
                                            ("host", "shop:8080")], "shop", "2001:db8::1")
    d = dict(forwarding.request_headers(h, "shop", "rid"))
    assert d["forwarded"] == 'for=6.6.6.6, for="[2001:db8::1]";proto=http;host="shop:8080"'
    h = RequestHead("GET", "/", "", "1.1", [("forwarded", "for=x"), ("connection", "forwarded"),
                                            ("host", "shop")], "shop", "127.0.0.1")
    assert "forwarded" not in dict(forwarding.request_headers(h, "shop", "rid"))


def test_trusted_proxies_are_read_as_networks(tmp_path):
    path = tmp_path / "pyproxy.yaml"
    path.write_text("trusted_proxies: [10.0.0.0/8, 127.0.0.1, 'fd00::/8']\n")
    config = load_config([str(path)]).config
    assert [str(n) for n in config.trusted_proxies] == ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"]
    path.write_text("trusted_proxies: [10.0.0.1/8]\n")  # host bits set: a typo, say so
    with pytest.raises(ConfigInvalid) as failed:
        load_config([str(path)])
    assert "CIDR" in str(failed.value.issues[0])
