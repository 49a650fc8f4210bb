"""Route header changes: set, add, remove."""

from __future__ import annotations

from pyproxy.config.model import HeaderChanges
from pyproxy.filters import headers


def test_header_changes():
    base = [("a", "1"), ("b", "2"), ("b", "3")]
    out = headers.apply(base, HeaderChanges(set=(("b", "x"),), add=(("c", "4"),), remove=("a",)))
    assert out == [("b", "x"), ("c", "4")]
    assert headers.apply(base, None) is base
