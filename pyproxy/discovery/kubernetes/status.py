"""Status written back to the Gateway API objects pyproxy serves (docs/kubernetes.md).

Two halves. The pure functions compute the status an object should have from the object
itself and the import results the provider records (its ``ObjectReport``):

- ``desired_route_status``: ``HTTPRoute.status.parents[]``, one entry per parentRef that
  pyproxy serves, with the ``Accepted`` and ``ResolvedRefs`` conditions. Entries of other
  controllers are kept as they are; the parentRef is copied exactly as the API server
  stores it (CRD defaults included), because consumers such as Flagger look the entry up
  by comparing the whole parentRef.
- ``desired_gateway_status``: ``Accepted`` and ``Programmed``, and per listener
  ``Accepted``, ``Programmed``, ``ResolvedRefs``, ``supportedKinds`` and ``attachedRoutes``.
- ``desired_gateway_class_status``: ``Accepted`` on a class whose ``spec.controllerName``
  is ours.

Every condition carries ``observedGeneration`` = the object's ``metadata.generation``, and
keeps its ``lastTransitionTime`` while its ``status`` stays the same (the Kubernetes
convention: the time says when the condition last flipped, not when it was last written).
A route whose newest generation has not been imported yet gets no status: writing the old
verdict under the new generation would tell Flagger a spec change was judged when it was not.

Then ``StatusWriter``: compares desired with current and writes only what changed, through
the ``/status`` subresource, retrying on 409 Conflict with a fresh copy of the object. Only
the leader (``lease.py``) runs it.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, Protocol, TypeVar

from pyproxy.discovery.kubernetes.client import KubeApiError
from pyproxy.discovery.kubernetes.report import ImportResult, ObjectReport, parent_key

logger = logging.getLogger("pyproxy.kubernetes")

CONTROLLER_NAME = "pyproxy.dev/gateway-controller"
GATEWAY_GROUP = "gateway.networking.k8s.io"

# The Gateway API's reasons for a route's Accepted condition (apis/v1 RouteConditionReason).
# An import result carries one reason: for Accepted when it is one of these, else for
# ResolvedRefs (BackendNotFound, RefNotPermitted, InvalidKind).
ACCEPTED_REASONS = frozenset({"Accepted", "NotAllowedByListeners", "NoMatchingParent",
                              "NoMatchingListenerHostname", "UnsupportedValue", "Pending"})

# The Gateway API caps these lists (CRD maxItems): status.parents and conditions.
MAX_PARENTS = 32
MAX_MESSAGE = 32768

JSON = dict[str, object]


def rfc3339(seconds: float) -> str:
    """metav1.Time: whole seconds, UTC, ``Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# --------------------------------------------------------------------------- the report


def attached_routes(report: ObjectReport, namespace: str, gateway: str, listener: str) -> int:
    """Routes accepted by Gateway namespace/gateway whose parentRef names ``listener`` or no
    listener: the listener's ``attachedRoutes``."""
    count = 0
    for (kind, _, _), parents in report.results.items():
        if kind in ("Gateway", "GatewayClass"):
            continue
        if any(parent is not None and parent[:4] == (GATEWAY_GROUP, "Gateway", namespace,
                                                      gateway)
               and parent[4] in (None, listener) and verdict.accepted
               for parent, verdict in parents.items()):
            count += 1
    return count


# --------------------------------------------------------------------------- conditions


def condition(kind: str, ok: bool, reason: str, message: str, generation: int,
              previous: Iterable[Mapping[str, object]], now: str) -> JSON:
    """One metav1.Condition; ``lastTransitionTime`` from ``previous`` when its status is
    unchanged."""
    status = "True" if ok else "False"
    since = now
    for old in previous:
        if old.get("type") == kind and old.get("status") == status \
                and isinstance(old.get("lastTransitionTime"), str):
            since = str(old["lastTransitionTime"])
    return {"type": kind, "status": status, "reason": reason,
            "message": message[:MAX_MESSAGE], "observedGeneration": generation,
            "lastTransitionTime": since}


def _dicts(value: object) -> list[Mapping[str, object]]:
    """The objects of a JSON list (a field that may be absent or malformed)."""
    return [c for c in value if isinstance(c, dict)] if isinstance(value, list) else []


def _merge_dicts(previous: list[Mapping[str, object]], ours: list[JSON]) -> list[JSON]:
    """``ours`` replace the conditions of the same type; others' types are kept, in place."""
    by_type = {c["type"]: c for c in ours}
    merged: list[JSON] = []
    for old in previous:
        if old.get("type") in by_type:
            merged.append(by_type.pop(str(old["type"])))
        else:
            merged.append(dict(old))
    merged.extend(by_type.values())
    return merged


def _meta(obj: Mapping[str, object]) -> Mapping[str, object]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _generation(obj: Mapping[str, object]) -> int:
    generation = _meta(obj).get("generation")
    return generation if isinstance(generation, int) else 0


def _section(obj: Mapping[str, object], name: str) -> Mapping[str, object]:
    value = obj.get(name)
    return value if isinstance(value, dict) else {}


# --------------------------------------------------------------------------- desired status


def desired_route_status(route: Mapping[str, object], report: ObjectReport,
                         controller_name: str = CONTROLLER_NAME, *, kind: str = "HTTPRoute",
                         now: str | None = None) -> JSON | None:
    """The route's whole ``status`` as it should be, or None while pyproxy has not imported
    its current generation (the next import brings it).

    One entry per parentRef pyproxy has a result for, in ``spec.parentRefs`` order, with
    the parentRef as stored; our entries for parents no longer referenced go; other
    controllers' entries stay untouched, before ours."""
    now = now or rfc3339(time.time())
    meta = _meta(route)
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    generation = _generation(route)
    results = report.get(kind, namespace, name)
    if any(r.generation < generation for r in results.values()):
        return None
    status = _section(route, "status")
    current = _dicts(status.get("parents"))
    ours_before = {parent_key(dict(_section(p, "parentRef")), namespace): p for p in current
                   if p.get("controllerName") == controller_name}
    parents: list[JSON] = [dict(p) for p in current
                           if p.get("controllerName") != controller_name]
    refs = _section(route, "spec").get("parentRefs")
    seen: set[tuple[object, ...]] = set()
    for ref in refs if isinstance(refs, list) else []:
        if not isinstance(ref, dict):
            continue
        key = parent_key(ref, namespace)
        result = results.get(key)
        if result is None or key in seen:
            continue  # not a parent pyproxy serves, or listed twice
        seen.add(key)
        previous = _dicts(ours_before.get(key, {}).get("conditions"))
        parents.append({"parentRef": copy.deepcopy(ref), "controllerName": controller_name,
                        "conditions": _merge_dicts(previous,
                                                        _route_conditions(result, generation,
                                                                          previous, now))})
    if not parents and "parents" not in status:
        return dict(status)  # nothing of ours, nothing to remove: leave the status alone
    return {**status, "parents": parents[:MAX_PARENTS]}


def _route_conditions(result: ImportResult, generation: int,
                      previous: list[Mapping[str, object]], now: str) -> list[JSON]:
    accepted_reason, resolved_reason = "Accepted", "ResolvedRefs"
    accepted_message = resolved_message = ""
    if not result.accepted:
        accepted_reason = result.reason if result.reason in ACCEPTED_REASONS \
            and result.reason != "Accepted" else "UnsupportedValue"
        accepted_message = result.message
    if not result.resolved_refs:
        # A route refused as a whole (UnsupportedValue...) says so on both conditions: its
        # references were not judged, so no ResolvedRefs reason would be true.
        resolved_reason = result.reason if result.reason not in ("Accepted", "ResolvedRefs") \
            else "BackendNotFound"
        resolved_message = result.message
    return [condition("Accepted", result.accepted, accepted_reason,
                      accepted_message or "served by pyproxy", generation, previous, now),
            condition("ResolvedRefs", result.resolved_refs, resolved_reason,
                      resolved_message or "every backendRef resolved", generation,
                      previous, now)]


# Listener protocols pyproxy serves, and the route kinds each allows.
_SERVED_PROTOCOLS = {"HTTP": ("HTTPRoute",)}


def desired_gateway_status(gateway: Mapping[str, object], report: ObjectReport, *,
                           now: str | None = None) -> JSON:
    """A Gateway of our class: ``Accepted``/``Programmed`` from its import result (accepted
    when there is none yet: pyproxy serves any Gateway of its class), and per listener the
    kinds it supports and the routes attached. Only HTTP listeners are served; the others
    are reported ``UnsupportedProtocol`` rather than silently ignored."""
    now = now or rfc3339(time.time())
    meta = _meta(gateway)
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    generation = _generation(gateway)
    status = _section(gateway, "status")
    previous = _dicts(status.get("conditions"))
    result = report.get("Gateway", namespace, name).get(None)
    ok = result is None or result.accepted
    reason = "Accepted" if ok else (result.reason if result else "Invalid")
    message = "" if ok or result is None else result.message
    ours = [condition("Accepted", ok, reason, message or "served by pyproxy", generation,
                      previous, now),
            condition("Programmed", ok, "Programmed" if ok else "Invalid",
                      message or "routes of this Gateway are served", generation, previous,
                      now)]
    old_listeners = {str(li.get("name")): li for li in _dicts(status.get("listeners"))}
    listeners: list[JSON] = []
    specs = _section(gateway, "spec").get("listeners")
    for listener in specs if isinstance(specs, list) else []:
        if not isinstance(listener, dict):
            continue
        listener_name = str(listener.get("name") or "")
        before = _dicts(old_listeners.get(listener_name, {}).get("conditions"))
        listeners.append(_listener_status(namespace, name, listener, report, generation,
                                          before, now))
    return {**status, "conditions": _merge_dicts(previous, ours),
            "listeners": listeners}


def _listener_status(namespace: str, gateway: str, listener: Mapping[str, object],
                     report: ObjectReport, generation: int,
                     previous: list[Mapping[str, object]], now: str) -> JSON:
    name = str(listener.get("name") or "")
    protocol = str(listener.get("protocol") or "")
    served = _SERVED_PROTOCOLS.get(protocol)
    allowed = _section(listener, "allowedRoutes").get("kinds")
    wanted = [(str(k.get("group", GATEWAY_GROUP)), str(k.get("kind")))
              for k in allowed if isinstance(k, dict)] if isinstance(allowed, list) else None
    kinds = [kind for kind in served or ()
             if wanted is None or (GATEWAY_GROUP, kind) in wanted]
    invalid_kinds = [f"{g}/{k}" for g, k in wanted or []
                     if g != GATEWAY_GROUP or k not in (served or ())]
    if served is None:
        conditions = [
            condition("Accepted", False, "UnsupportedProtocol",
                      f"pyproxy serves HTTP listeners only, not {protocol}", generation,
                      previous, now),
            condition("Programmed", False, "Invalid", "the listener is not accepted",
                      generation, previous, now),
            condition("ResolvedRefs", True, "ResolvedRefs", "", generation, previous, now)]
    else:
        resolved = not invalid_kinds
        conditions = [
            condition("Accepted", True, "Accepted", "", generation, previous, now),
            condition("Programmed", True, "Programmed", "", generation, previous, now),
            condition("ResolvedRefs", resolved,
                      "ResolvedRefs" if resolved else "InvalidRouteKinds",
                      "" if resolved else f"unsupported route kinds: {', '.join(invalid_kinds)}",
                      generation, previous, now)]
    return {"name": name,
            "supportedKinds": [{"group": GATEWAY_GROUP, "kind": kind} for kind in kinds],
            "attachedRoutes": attached_routes(report, namespace, gateway, name)
            if served else 0,
            "conditions": _merge_dicts(previous, conditions)}


def desired_gateway_class_status(gateway_class: Mapping[str, object],
                                 controller_name: str = CONTROLLER_NAME, *,
                                 now: str | None = None) -> JSON | None:
    """``Accepted`` for a GatewayClass whose ``spec.controllerName`` is ours; None for any
    other class (another controller owns its status)."""
    if _section(gateway_class, "spec").get("controllerName") != controller_name:
        return None
    now = now or rfc3339(time.time())
    status = _section(gateway_class, "status")
    previous = _dicts(status.get("conditions"))
    accepted = condition("Accepted", True, "Accepted", "pyproxy serves Gateways of this class",
                         _generation(gateway_class), previous, now)
    return {**status, "conditions": _merge_dicts(previous, [accepted])}


def same_status(current: Mapping[str, object] | None, desired: Mapping[str, object]) -> bool:
    """Whether writing ``desired`` would change nothing (the write is skipped)."""
    return dict(current or {}) == dict(desired)


# --------------------------------------------------------------------------- the writer


R = TypeVar("R")
R_contra = TypeVar("R_contra", contravariant=True)


class StatusClient(Protocol[R_contra]):
    """What the writer needs of ``KubeClient`` (``client.py``), whose ``Resource`` is
    ``R_contra``."""

    async def get(self, resource: R_contra, namespace: str, name: str) -> JSON: ...

    async def replace_status(self, resource: R_contra, obj: JSON) -> JSON: ...


class StatusWriter(Generic[R]):
    """Brings the status of the objects in the report up to date; the leader runs it.

    ``resources`` maps a kind (HTTPRoute, Gateway, GatewayClass) to the client's resource.
    ``write(kind, obj)`` takes the object as the watch last delivered it, so an object whose
    status is already right costs no request at all; on 409 the object is read again and
    the status computed again from that copy (another writer may have added its own
    parent entry meanwhile)."""

    def __init__(self, client: StatusClient[R], resources: Mapping[str, R], report: ObjectReport,
                 controller_name: str = CONTROLLER_NAME, *, attempts: int = 5,
                 now: Callable[[], str] | None = None):
        self.client = client
        self.resources = resources
        self.report = report
        self.controller_name = controller_name
        self.attempts = attempts
        self._now = now or (lambda: rfc3339(time.time()))
        self.writes = 0  # status writes made: the tests check that no-ops cost none
        self.conflicts = 0

    def desired(self, kind: str, obj: Mapping[str, object]) -> JSON | None:
        now = self._now()
        if kind == "Gateway":
            return desired_gateway_status(obj, self.report, now=now)
        if kind == "GatewayClass":
            return desired_gateway_class_status(obj, self.controller_name, now=now)
        return desired_route_status(obj, self.report, self.controller_name, kind=kind, now=now)

    async def write(self, kind: str, obj: Mapping[str, object]) -> bool:
        """Write ``obj``'s status if it differs from the desired one; True when written."""
        resource = self.resources[kind]
        current: Mapping[str, object] = obj
        for attempt in range(self.attempts):
            desired = self.desired(kind, current)
            if desired is None or same_status(_section(current, "status"), desired):
                return False
            updated = {**copy.deepcopy(dict(current)), "status": desired}
            try:
                await self.client.replace_status(resource, updated)
            except KubeApiError as exc:
                if exc.status == 404:
                    return False  # deleted meanwhile: nothing to report on
                if exc.status != 409 or attempt == self.attempts - 1:
                    raise
                self.conflicts += 1
                meta = _meta(current)
                current = await self.client.get(resource, str(meta.get("namespace") or ""),
                                                str(meta.get("name") or ""))
                continue
            self.writes += 1
            return True
        return False

    async def write_all(self, objects: Iterable[tuple[str, Mapping[str, object]]]) -> int:
        """Each (kind, object); an object that fails is logged and the others still get
        written. The number written."""
        written = 0
        for kind, obj in objects:
            try:
                written += await self.write(kind, obj)
            except Exception as exc:
                meta = _meta(obj)
                logger.warning("status of %s %s/%s not written: %s", kind,
                               meta.get("namespace"), meta.get("name"), exc)
        return written
