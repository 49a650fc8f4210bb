"""The route table: host forms, first match in file order, implicit service routes, its cache."""

from __future__ import annotations

from pyproxy.config.model import kubernetes_short_name
from pyproxy.messages import RequestHead
from pyproxy.routing.table import RouteTable, host_matches


def head(path="/", method="GET", host="shop", headers=(), query=""):
    return RequestHead(method, path, query, "1.1", [(k.lower(), v) for k, v in headers],
                       host, "127.0.0.1")


class FakeRoute:
    def __init__(self, name, hosts=(), matcher=lambda h: True):
        self.name, self.hosts, self._m = name, tuple(hosts), matcher

    def matches(self, h):
        return self._m(h)

    def __repr__(self):
        return self.name


def test_host_forms():
    assert host_matches("shop.example", "shop.example")
    assert host_matches("*.shop.example", "a.shop.example")
    assert not host_matches("*.shop.example", "shop.example")
    assert host_matches("stockmanager", "stockmanager.prod")
    assert host_matches("stockmanager", "stockmanager.prod.svc")
    assert host_matches("stockmanager", "stockmanager.prod.svc.cluster.local")
    assert not host_matches("stockmanager", "stockmanager.a.b")
    assert kubernetes_short_name("shop") is None


def test_first_match_wins_in_file_order():
    tester = FakeRoute("tester", ["stockmanager"], lambda h: h.header("end-user") == "tester")
    everyone = FakeRoute("everyone", ["stockmanager"])
    table = RouteTable([tester, everyone], {})
    assert table.match(head(host="stockmanager", headers=[("end-user", "tester")])) is tester
    assert table.match(head(host="stockmanager")) is everyone
    assert table.match(head(host="other")) is None  # 404 NR


def test_implicit_service_routes_are_the_fallback():
    catch_all = FakeRoute("catch-all", matcher=lambda h: h.path.startswith("/api"))
    named = FakeRoute("named", ["shop"])
    implicit = FakeRoute("zipkin-implicit")
    table = RouteTable([named, catch_all], {"zipkin": implicit})
    assert table.match(head(host="shop")) is named
    # Regression: naming the service once bypassed a catch-all route's split and faults.
    assert table.match(head("/api/x", host="zipkin")) is catch_all
    assert table.match(head("/other", host="zipkin")) is implicit
    assert table.match(head("/other", host="zipkin.default.svc.cluster.local")) is implicit
    assert table.match(head("/other", host="unknown")) is None


def test_candidate_cache_is_bounded():
    table = RouteTable([FakeRoute("any")], {})
    for i in range(5000):
        table.match(head(host=f"h{i}"))
    assert len(table._candidates) <= 4096
