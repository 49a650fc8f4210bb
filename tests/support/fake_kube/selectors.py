"""Label and field selectors, as the API server parses them from a list or watch query.

Label selector grammar (https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors):
requirements separated by commas, all of which must hold — ``k=v``, ``k==v``, ``k!=v``,
``k in (a,b)``, ``k notin (a,b)``, ``k`` (exists), ``!k`` (does not exist). ``k!=v`` and
``notin`` also match objects without the label.

Field selectors (https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/):
``metadata.name`` and ``metadata.namespace`` with ``=``, ``==`` and ``!=``; any other field
is rejected with 400, as the API server does for fields a kind does not index.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]


class SelectorError(ValueError):
    pass


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``( )`` (the set of an ``in`` requirement)."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


_SET_RE = re.compile(r"^([A-Za-z0-9._/-]+)\s+(in|notin)\s+\(([^)]*)\)$")
_KEY_RE = re.compile(r"^[A-Za-z0-9._/-]+$")


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels = obj.get("metadata", {}).get("labels") or {}
    return labels if isinstance(labels, dict) else {}


@dataclass(frozen=True)
class Requirement:
    """One label requirement: ``op`` is one of =, !=, in, notin, exists, !exists."""

    key: str
    op: str
    values: frozenset[str] = frozenset()

    def __call__(self, obj: Mapping[str, Any]) -> bool:
        labels = _labels(obj)
        value = labels.get(self.key)
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op in ("=", "in"):
            return value in self.values
        return value not in self.values  # != and notin also match a missing label


def _requirement(req: str) -> Requirement:
    m = _SET_RE.match(req)
    if m:
        values = frozenset(v.strip() for v in m.group(3).split(","))
        return Requirement(m.group(1), m.group(2), values)
    if "!=" in req:
        key, value = (s.strip() for s in req.split("!=", 1))
        return Requirement(key, "!=", frozenset({value}))
    if "=" in req:
        key, value = (s.strip() for s in req.replace("==", "=", 1).split("=", 1))
        return Requirement(key, "=", frozenset({value}))
    if req.startswith("!"):
        return Requirement(req[1:].strip(), "!exists")
    return Requirement(req, "exists")


def parse_label_selector(text: str | None) -> Predicate:
    if not text:
        return lambda obj: True
    requirements = [_requirement(req) for req in _split_top_level(text)]
    for r in requirements:
        if not _KEY_RE.match(r.key):
            raise SelectorError(f"unable to parse requirement: invalid label key {r.key!r}")
    return lambda obj: all(r(obj) for r in requirements)


_FIELDS = {"metadata.name": "name", "metadata.namespace": "namespace"}


def parse_field_selector(text: str | None) -> Predicate:
    if not text:
        return lambda obj: True
    checks: list[Predicate] = []
    for req in _split_top_level(text):
        negate = "!=" in req
        field, value = (s.strip() for s in req.replace("==", "=").replace("!=", "=").split("=", 1))
        if field not in _FIELDS:
            raise SelectorError(f'field label not supported: "{field}"')
        attr = _FIELDS[field]

        def check(o: Mapping[str, Any], a: str = attr, v: str = value, neg: bool = negate) -> bool:
            return (str(o.get("metadata", {}).get(a, "")) == v) != neg

        checks.append(check)
    return lambda obj: all(check(obj) for check in checks)
