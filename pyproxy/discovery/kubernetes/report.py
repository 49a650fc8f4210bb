"""What became of each API object: the table the status writer reads.

The provider fills an :class:`ObjectReport` after every snapshot it builds: per object
(and, for an HTTPRoute, per ``parentRef`` that names one of pyproxy's Gateways or a
Service), an :class:`ImportResult` — accepted or not, references resolved or not, the
reason in Gateway API's words, a message, and the ``metadata.generation`` it describes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = ["Conflict", "ImportResult", "ObjectKey", "ObjectReport", "ParentKey", "parent_key"]


class ParentKey(NamedTuple):
    """A ``parentRef`` with the API's defaults filled in, for comparing refs."""

    group: str
    kind: str
    namespace: str
    name: str
    section_name: str | None
    port: int | None


def parent_key(ref: dict[str, Any], route_namespace: str) -> ParentKey:
    """``ref`` (as stored in ``spec.parentRefs``) with the defaults the API applies:
    group gateway.networking.k8s.io, kind Gateway, the route's namespace."""
    group = ref.get("group")
    port = ref.get("port")
    return ParentKey(
        "gateway.networking.k8s.io" if group is None else str(group),
        str(ref.get("kind") or "Gateway"),
        str(ref.get("namespace") or route_namespace),
        str(ref.get("name") or ""),
        str(ref["sectionName"]) if ref.get("sectionName") else None,
        port if isinstance(port, int) else None)


class ObjectKey(NamedTuple):
    kind: str
    namespace: str  # "" for cluster-scoped kinds (GatewayClass)
    name: str


@dataclass(frozen=True)
class ImportResult:
    """One object (for one parent) as imported.

    ``reason`` is the Gateway API reason of the condition that is not true —
    ``Accepted`` condition when ``accepted`` is false (``UnsupportedValue``,
    ``NotAllowedByListeners``, ``NoMatchingParent``, ``Invalid``), else ResolvedRefs when
    ``resolved_refs`` is false (``BackendNotFound``, ``RefNotPermitted``, ``InvalidKind``);
    ``Accepted`` when both are true.
    """

    accepted: bool
    resolved_refs: bool
    reason: str
    message: str
    generation: int


@dataclass(frozen=True)
class Conflict:
    """Where a file and the API say different things (docs/kubernetes-combining.md)."""

    kind: str  # "service" or "route"
    name: str
    message: str


@dataclass
class ObjectReport:
    """Import results by object and parent; ``version`` moves when anything changes."""

    # (kind, namespace, name) → parent (None for objects without parents) → result
    results: dict[ObjectKey, dict[ParentKey | None, ImportResult]] = field(default_factory=dict)
    conflicts: tuple[Conflict, ...] = ()
    version: int = 0

    def get(self, kind: str, namespace: str, name: str) -> dict[ParentKey | None, ImportResult]:
        return self.results.get(ObjectKey(kind, namespace, name), {})

    def update(self, results: dict[ObjectKey, dict[ParentKey | None, ImportResult]],
               conflicts: tuple[Conflict, ...]) -> bool:
        """Replace the table; whether it changed."""
        if results == self.results and conflicts == self.conflicts:
            return False
        self.results = results
        self.conflicts = conflicts
        self.version += 1
        return True

    def counts(self) -> dict[tuple[str, str], int]:
        """(kind, result) → objects: ``accepted``, ``unresolved`` (accepted, some backend
        reference not resolved) or ``rejected``; for the metrics."""
        counts: dict[tuple[str, str], int] = {}
        for key, parents in self.results.items():
            worst = "accepted"
            for result in parents.values():
                if not result.accepted:
                    worst = "rejected"
                elif not result.resolved_refs and worst == "accepted":
                    worst = "unresolved"
            counts[key.kind, worst] = counts.get((key.kind, worst), 0) + 1
        return counts
