"""Path rewrites (prefix, full, regex) and redirect locations."""

from __future__ import annotations

import pytest

from pyproxy.config.model import Redirect, Rewrite
from pyproxy.filters.rewrite import redirect_location, rewrite_path
from pyproxy.messages import RequestHead


def head(path="/", headers_=(), host="shop", query=""):
    return RequestHead("GET", path, query, "1.1", list(headers_), host, "10.1.2.3")


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


def test_redirect_keeps_the_clients_port_for_the_same_host():
    h = RequestHead("GET", "/a", "", "1.1", [("host", "shop:8080")], "shop", "10.1.2.3")
    assert redirect_location(Redirect(path="/b"), h, None) == "http://shop:8080/b"
    assert redirect_location(Redirect(scheme="https"), h, None) == "https://shop/a"
