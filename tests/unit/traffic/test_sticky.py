"""Stickiness: the LRU table of pins and the cookie that carries them."""

from __future__ import annotations

from pyproxy.traffic.sticky import StickyTable, set_cookie_header


def test_sticky_table_is_an_lru():
    table = StickyTable(capacity=2)
    table.pin("a", "v1")
    table.pin("b", "v2")
    assert table.get("a") == "v1"  # touches a
    table.pin("c", "v1")  # evicts b, the least recently used
    assert table.get("b") is None and table.get("a") == "v1" and len(table) == 2


def test_set_cookie_header():
    name, value = set_cookie_header("s", "svc/v2", 3600)
    assert name == "set-cookie" and value.startswith("s=svc/v2; Path=/; Max-Age=3600")


def test_a_zero_ttl_sticky_cookie_is_a_session_cookie():
    _, value = set_cookie_header("s", "svc/v1", 0)
    assert "Max-Age" not in value and value.startswith("s=svc/v1; Path=/")
