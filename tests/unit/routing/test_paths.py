"""Path normalisation before matching (routing/paths.py, HD-16)."""

from __future__ import annotations

import pytest

from pyproxy.routing.paths import normalise_path


@pytest.mark.parametrize("path,expected", [
    ("/", "/"),
    ("/store/stocklevel", "/store/stocklevel"),
    ("//admin", "/admin"),
    ("/a///b//", "/a/b/"),
    ("/%61dmin", "/admin"),  # unreserved: decoded
    ("/%7Euser/%2d%5F", "/~user/-_"),
    ("/a%2fb", "/a%2Fb"),  # an encoded slash is not a slash: kept, hex upper-cased
    ("/a%20b%3f", "/a%20b%3F"),  # reserved and other characters stay encoded
    ("/100%", "/100%"),  # not an encoding: as received
    ("/%2F%2Fadmin", "/%2F%2Fadmin"),
    ("/a.b/..c/...", "/a.b/..c/..."),  # dots inside a segment are names
    ("*", "*"),
])
def test_normalised(path, expected):
    assert normalise_path(path) == expected


@pytest.mark.parametrize("path", [
    "/x/../admin", "/./admin", "/x/..", "/x/%2e%2E/admin", "/x/.%2e/admin", "/..;/admin",
    "/x/%2E/y", "//..//admin", "/%2e", "/x/%2e%2e;jsessionid=1/admin",
])
def test_dot_segments_are_refused(path):
    assert normalise_path(path) is None
