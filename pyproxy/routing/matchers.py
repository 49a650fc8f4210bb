"""Compile config match blocks into plain predicates over a ``RequestHead``.

Everything is decided at load time (regexes compiled, case folding chosen), so matching a
request is a few attribute reads and string comparisons. A ``Match`` entry is an AND of its
conditions; a route's list of entries is an OR.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pyproxy.config.model import Match, PathMatch, StringMatch
from pyproxy.messages import RequestHead

Predicate = Callable[[RequestHead], bool]
ValueTest = Callable[["str | None"], bool]


def compile_value(match: StringMatch) -> ValueTest:
    """A test for one header/query/cookie value (None = the field is absent)."""
    test = _compile_value(match)
    if match.invert:
        return lambda v: not test(v)
    return test


def _compile_value(match: StringMatch) -> ValueTest:
    kind, expected = match.kind, match.value
    if kind == "present":
        return lambda v: v is not None
    if kind == "absent":
        return lambda v: v is None
    if kind == "regex":
        pattern = re.compile(expected)
        return lambda v: v is not None and pattern.fullmatch(v) is not None
    if match.ignore_case:
        expected = expected.lower()
        fold = str.lower
    else:
        fold = None
    if kind == "exact":
        if fold:
            return lambda v: v is not None and v.lower() == expected
        return lambda v: v == expected
    if kind == "prefix":
        if fold:
            return lambda v: v is not None and v.lower().startswith(expected)
        return lambda v: v is not None and v.startswith(expected)
    if kind == "suffix":
        if fold:
            return lambda v: v is not None and v.lower().endswith(expected)
        return lambda v: v is not None and v.endswith(expected)
    raise ValueError(f"unknown string match kind {kind!r}")


def compile_path(match: PathMatch) -> Predicate:
    value = match.value
    if match.kind == "segment_prefix":
        base = value.rstrip("/")
        if not base:
            return lambda head: True  # "/" matches every path
        if match.ignore_case:
            base = base.lower()
            return lambda head: _segment_prefix(head.path.lower(), base)
        return lambda head: _segment_prefix(head.path, base)
    if match.kind == "regex":
        pattern = re.compile(value, re.IGNORECASE if match.ignore_case else 0)
        return lambda head: pattern.fullmatch(head.path) is not None
    if match.ignore_case:
        value = value.lower()
        if match.kind == "exact":
            return lambda head: head.path.lower() == value
        return lambda head: head.path.lower().startswith(value)
    if match.kind == "exact":
        return lambda head: head.path == value
    return lambda head: head.path.startswith(value)


def _segment_prefix(path: str, base: str) -> bool:
    return path.startswith(base) and (len(path) == len(base) or path[len(base)] == "/")


def compile_match(match: Match) -> Predicate:
    """AND of the entry's conditions, cheapest first."""
    tests: list[Predicate] = []
    if match.methods:
        methods = frozenset(match.methods)
        tests.append(lambda head: head.method in methods)
    if match.path is not None:
        tests.append(compile_path(match.path))
    for name, value_match in match.headers:
        tests.append(_on_header(name, compile_value(value_match)))
    for name, value_match in match.query:
        tests.append(_on_query(name, compile_value(value_match)))
    for name, value_match in match.cookies:
        tests.append(_on_cookie(name, compile_value(value_match)))
    if not tests:
        return lambda head: True
    if len(tests) == 1:
        return tests[0]
    return lambda head: all(test(head) for test in tests)


def compile_matches(matches: tuple[Match, ...]) -> Predicate:
    """OR of the entries; no entries matches every request."""
    if not matches:
        return lambda head: True
    predicates = [compile_match(m) for m in matches]
    if len(predicates) == 1:
        return predicates[0]
    return lambda head: any(p(head) for p in predicates)


def describe_match(match: Match) -> str:
    """A short human form of one entry, for explain and validate output."""
    parts = []
    if match.path is not None:
        parts.append(f"path {match.path.kind} {match.path.value!r}")
    if match.methods:
        parts.append("method " + "|".join(match.methods))
    for label, items in (("header", match.headers), ("query", match.query),
                         ("cookie", match.cookies)):
        for name, m in items:
            parts.append(f"{label} {name} {'not ' if m.invert else ''}{m.kind}"
                         + ("" if m.kind in ("present", "absent") else f" {m.value!r}"))
    return " and ".join(parts) or "any request"


# One closure per condition, so each binds its own name and test (not the loop's last).
def _on_header(name: str, test: ValueTest) -> Predicate:
    return lambda head: test(head.header(name))


def _on_query(name: str, test: ValueTest) -> Predicate:
    return lambda head: test(head.query_param(name))


def _on_cookie(name: str, test: ValueTest) -> Predicate:
    return lambda head: test(head.cookie(name))
