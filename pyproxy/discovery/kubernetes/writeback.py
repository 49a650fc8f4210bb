"""Run-time changes in in-cluster mode: one truth for every replica (docs/kubernetes.md).

``pyproxy set-weight``, the built-in canary's steps, promotion and rollback, and
``pyproxy fault`` change the override table of the replica that receives them
(``overrides.py``). In in-cluster mode that replica also writes the change to the route's
own object, and every replica — the writer included — takes its run-time state from the
objects it watches, so all of them serve the same split within one watch event:

- **weights** go where they mean the same to everyone: the object's ``spec``
  (``HTTPRoute.spec.rules[i].backendRefs[].weight``, ``TrafficSplit.spec.backends[].weight``).
  ``kubectl get`` shows what is served, and a replica that starts later imports it.
- **who set them, and what to go back to** (``set-weight --clear``, a canary stopping) go in
  the annotation ``pyproxy.dev/runtime`` of the same object, per pyproxy route:
  ``{"routes": {ROUTE: {"weights": {...}, "fault": {...}}}}``. ``weights`` holds the source
  (api, canary), the time, the weights pyproxy set (``written``, by backendRef) and the
  ones they replaced (``configured``).
- **faults** go in that annotation too, with their wall-clock expiry. An annotation rather
  than a ConfigMap: it needs no other kind to watch or grant, it lives and dies with its
  route, ``kubectl describe`` shows it, and an expired fault ends on every replica by itself
  even if nobody removes it (the dead-man's switch holds without a writer).

If the spec's weights no longer equal the ones the annotation says pyproxy wrote, somebody
else changed them (``kubectl edit``, a GitOps sync): the annotation's weight entry is then
ignored, the spec serves, and a canary driving the route pauses as it does when someone
else sets its weights.

A route another controller manages (Flagger's generated HTTPRoutes, owned by their Canary;
objects labelled ``app.kubernetes.io/managed-by``) is refused with the manager's name:
pyproxy would otherwise fight it, each rewriting the other's weights.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from pyproxy.config.model import AbortFault, DelayFault, Fault
from pyproxy.discovery.kubernetes.client import KubeApiError
from pyproxy.discovery.kubernetes.resources import HTTP_ROUTE, TRAFFIC_SPLIT, Resource
from pyproxy.errors import InvalidOverride
from pyproxy.overrides import ActiveFault, Overrides, WeightOverride

logger = logging.getLogger("pyproxy.kubernetes")

ANNOTATION = "pyproxy.dev/runtime"
MANAGED_BY = "app.kubernetes.io/managed-by"
# Field managers of controllers known to own route weights (managedFields).
KNOWN_MANAGERS = ("flagger", "argo-rollouts", "rollouts-controller")

JSON = dict[str, object]
UNSEEN = 5.0  # seconds a replica trusts its own write over a watch that has not shown it


@dataclass(frozen=True)
class RouteOrigin:
    """The object a pyproxy route was imported from: an HTTPRoute's rule (``rule``: its
    index in ``spec.rules``) or a whole TrafficSplit (``rule=None``)."""

    resource: Resource
    namespace: str
    name: str
    rule: int | None = None


def route_origins(route_names: Iterable[str], objects: Iterable[Mapping[str, object]]
                  ) -> dict[str, RouteOrigin]:
    """Which object each pyproxy route came from, by the importers' naming
    (``config/compat/gateway_api.py``, ``smi.py``): an HTTPRoute's rule becomes
    ``BASE-<rule name or index>`` (split parts add ``-m<i>``/``-h<i>``), a TrafficSplit
    ``BASE``, where BASE is the object's name, or ``name.namespace`` when several
    namespaces have one of that name. Routes from files and other kinds are left out."""
    found: dict[str, RouteOrigin] = {}
    names = set(route_names)
    for obj in objects:
        meta = _dict(obj.get("metadata"))
        kind = str(obj.get("kind") or "")
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        bases = (name, f"{name}.{namespace}")
        if kind == "TrafficSplit":
            for base in bases:
                if base in names:
                    found[base] = RouteOrigin(TRAFFIC_SPLIT, namespace, name)
            continue
        if kind != "HTTPRoute":
            continue
        for index, rule in enumerate(_list(_dict(obj.get("spec")).get("rules"))):
            label = str(rule.get("name") or index)
            for base in bases:
                stem = f"{base}-{label}"
                for route in names:
                    if route == stem or route.startswith((f"{stem}-m", f"{stem}-h")):
                        found[route] = RouteOrigin(HTTP_ROUTE, namespace, name, index)
    return found


# --------------------------------------------------------------------------- pure parts


def _dict(value: object) -> JSON:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[JSON]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def managed_by(obj: Mapping[str, object]) -> str | None:
    """Who else manages this route object, or None: a controller owner reference (Flagger's
    Canary owns the HTTPRoutes it generates), a ``managed-by`` label, or a known
    controller among the field managers."""
    meta = _dict(obj.get("metadata"))
    for owner in _list(meta.get("ownerReferences")):
        if owner.get("controller") is True:
            return f"{owner.get('kind')} {owner.get('name')} (ownerReferences)"
    manager = _dict(meta.get("labels")).get(MANAGED_BY)
    if isinstance(manager, str) and manager and manager != "pyproxy":
        return f"{manager} (label {MANAGED_BY})"
    for entry in _list(meta.get("managedFields")):
        name = str(entry.get("manager") or "")
        if any(known in name.lower() for known in KNOWN_MANAGERS):
            return f"{name} (managedFields)"
    return None


def _backend_refs(obj: Mapping[str, object], origin: RouteOrigin) -> list[JSON]:
    spec = _dict(obj.get("spec"))
    if origin.rule is None:
        return _list(spec.get("backends"))
    rules = _list(spec.get("rules"))
    if origin.rule >= len(rules):
        return []
    return _list(rules[origin.rule].get("backendRefs"))


def _ref_name(ref: Mapping[str, object], origin: RouteOrigin) -> str:
    return str(ref.get("service") if origin.rule is None else ref.get("name"))


def _names(ref: Mapping[str, object], origin: RouteOrigin) -> set[str]:
    """The names a pyproxy backend may have for this backendRef: the Service's name, or
    name.namespace where the importer qualifies it."""
    name = _ref_name(ref, origin)
    namespace = str(ref.get("namespace") or origin.namespace)
    return {name, name.lower(), f"{name}.{namespace}", f"{name.lower()}.{namespace}"}


def spec_weights(obj: Mapping[str, object], origin: RouteOrigin) -> dict[str, int]:
    """backendRef name → weight as the spec says (an absent weight is 1 for HTTPRoute)."""
    default = 0 if origin.rule is None else 1
    weights: dict[str, int] = {}
    for ref in _backend_refs(obj, origin):
        weight = ref.get("weight", default)
        weights[_ref_name(ref, origin)] = weight if isinstance(weight, int) else default
    return weights


def as_integers(weights: Mapping[str, float]) -> dict[str, int]:
    """The API's weights are integers: whole numbers stay, fractions are scaled by 1000
    (the split is the same; only proportions count)."""
    if all(float(w).is_integer() for w in weights.values()):
        return {name: int(w) for name, w in weights.items()}
    return {name: round(w * 1000) for name, w in weights.items()}


def with_weights(obj: Mapping[str, object], origin: RouteOrigin,
                 weights: Mapping[str, float]) -> JSON:
    """A copy of ``obj`` whose backendRefs carry ``weights`` (pyproxy backend names, as
    ``set-weight`` takes them); backendRefs not named get 0, as a run-time override does."""
    updated: JSON = copy.deepcopy(dict(obj))
    integers = as_integers(weights)
    for ref in _backend_refs(updated, origin):
        names = _names(ref, origin)
        ref["weight"] = next((w for name, w in integers.items() if name in names), 0)
    return updated


def with_spec_weights(obj: Mapping[str, object], origin: RouteOrigin,
                      by_ref: Mapping[str, int]) -> JSON:
    """A copy of ``obj`` with the weights given per backendRef name (a saved split)."""
    updated: JSON = copy.deepcopy(dict(obj))
    for ref in _backend_refs(updated, origin):
        name = _ref_name(ref, origin)
        if name in by_ref:
            ref["weight"] = by_ref[name]
    return updated


def runtime_state(obj: Mapping[str, object]) -> dict[str, JSON]:
    """pyproxy route → its entry in the ``pyproxy.dev/runtime`` annotation ({} when there
    is none, or it is not ours to read)."""
    text = _dict(_dict(obj.get("metadata")).get("annotations")).get(ANNOTATION)
    if not isinstance(text, str):
        return {}
    try:
        routes = _dict(json.loads(text)).get("routes")
    except ValueError:
        logger.warning("annotation %s is not JSON: ignored", ANNOTATION)
        return {}
    return {str(route): entry for route, entry in _dict(routes).items()
            if isinstance(entry, dict)}


def with_runtime_state(obj: Mapping[str, object], state: Mapping[str, JSON]) -> JSON:
    """A copy of ``obj`` carrying ``state`` in its annotation (removed when empty)."""
    updated: JSON = copy.deepcopy(dict(obj))
    meta = updated.setdefault("metadata", {})
    assert isinstance(meta, dict)
    annotations = dict(_dict(meta.get("annotations")))
    kept = {route: entry for route, entry in state.items() if entry}
    if kept:
        annotations[ANNOTATION] = json.dumps({"routes": kept}, sort_keys=True,
                                             separators=(",", ":"))
    else:
        annotations.pop(ANNOTATION, None)
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    return updated


def fault_entry(active: ActiveFault) -> JSON:
    fault = active.fault
    return {"abort": None if fault.abort is None else {"status": fault.abort.status,
                                                       "percent": fault.abort.percent},
            "delay": None if fault.delay is None else {"fixed_s": fault.delay.fixed,
                                                       "percent": fault.delay.percent},
            "since": active.since, "expires": active.expires}


def fault_from(route: str, entry: Mapping[str, object]) -> ActiveFault | None:
    """The fault of an annotation entry; None when malformed."""
    abort, delay = _dict(entry.get("abort")), _dict(entry.get("delay"))
    expires, since = entry.get("expires"), entry.get("since")
    try:
        fault = Fault(
            abort=AbortFault(int(str(abort["status"])), float(str(abort.get("percent", 100))))
            if abort else None,
            delay=DelayFault(float(str(delay["fixed_s"])), float(str(delay.get("percent", 100))))
            if delay else None)
        return ActiveFault(route, fault, float(str(expires)),
                           float(str(since)) if since is not None else time.time())
    except (KeyError, ValueError):
        return None


def desired_object(obj: Mapping[str, object], origin: RouteOrigin, route: str,
                   override: WeightOverride | None, fault: ActiveFault | None) -> JSON:
    """``obj`` as it should be once this replica's table for ``route`` is written: the
    weights in the spec (or the configured ones back, when the override was cleared), the
    entry in the annotation."""
    state = runtime_state(obj)
    entry = dict(state.get(route, {}))
    saved = _dict(entry.get("weights"))
    updated: JSON = dict(obj)
    if override is not None:
        configured = _dict(saved.get("configured")) or spec_weights(obj, origin)
        updated = with_weights(obj, origin, override.weights)
        entry["weights"] = {"source": override.source, "since": override.since,
                            "weights": dict(override.weights),
                            "written": spec_weights(updated, origin),
                            "configured": configured}
    elif saved:
        configured = {str(k): v for k, v in _dict(saved.get("configured")).items()
                      if isinstance(v, int)}
        updated = with_spec_weights(obj, origin, configured)
        del entry["weights"]
    if fault is not None:
        entry["fault"] = fault_entry(fault)
    else:
        entry.pop("fault", None)
    return with_runtime_state(updated, {**state, route: entry})


def restored(route: str, obj: Mapping[str, object], origin: RouteOrigin, now: float
             ) -> tuple[WeightOverride | None, ActiveFault | None]:
    """The run-time state every replica takes from a watched object: the weight override
    while the spec still carries the weights pyproxy wrote, and the fault until it expires."""
    entry = runtime_state(obj).get(route, {})
    override = None
    saved = _dict(entry.get("weights"))
    weights = _dict(saved.get("weights"))
    if saved and saved.get("written") == spec_weights(obj, origin) and weights:
        since = saved.get("since")
        override = WeightOverride({str(k): float(str(v)) for k, v in weights.items()},
                                  str(saved.get("source") or "api"),
                                  float(str(since)) if since is not None else now)
    fault = fault_from(route, _dict(entry.get("fault"))) if entry.get("fault") else None
    if fault is not None and fault.expires <= now:
        fault = None
    return override, fault


# --------------------------------------------------------------------------- the store


class RouteClient(Protocol):
    """What the store needs of ``KubeClient`` (``client.py``)."""

    async def get(self, resource: Resource, namespace: str | None, name: str) -> JSON: ...

    async def replace(self, resource: Resource, obj: JSON) -> JSON: ...


# pyproxy route name → the object it came from and that object as last watched
Routes = Callable[[], Mapping[str, tuple[RouteOrigin, Mapping[str, object]]]]


class KubeRuntimeStore:
    """``Overrides.shared`` in in-cluster mode: writes each change of the table to the
    route's object (``changed``), refuses routes managed elsewhere (``check``), and gives
    every replica's table the state the objects carry (``restore``, after each watched
    change the provider applies)."""

    def __init__(self, client: RouteClient, routes: Routes, overrides: Overrides, *,
                 attempts: int = 5):
        self.client = client
        self.routes = routes
        self.overrides = overrides
        self.attempts = attempts
        self._pending: dict[str, asyncio.Task[None]] = {}  # route → its write in flight
        self._again: set[str] = set()  # routes changed again while being written
        # route → (resourceVersion our write got, when): until the watch shows that version,
        # this replica's own entry is newer than the watched object
        self._unseen: dict[str, tuple[str, float]] = {}
        self.writes = 0
        overrides.shared = self

    # ------------------------------------------------------------------ SharedOverrides

    def check(self, route: str) -> None:
        found = self.routes().get(route)
        if found is None:
            return  # a route from a config file: its overrides stay on this replica
        origin, obj = found
        manager = managed_by(obj)
        if manager is not None:
            raise InvalidOverride(
                f"route {route} comes from {origin.resource.kind} "
                f"{origin.namespace}/{origin.name}, which {manager} manages: change the "
                "weights there (pyproxy follows the object), or pyproxy and it would undo "
                "each other's changes")

    def changed(self, route: str) -> None:
        if route not in self.routes():
            return
        if route in self._pending:
            self._again.add(route)  # the running write picks up the newest table
            return
        self._pending[route] = asyncio.get_running_loop().create_task(self._write(route))

    # ------------------------------------------------------------------ writing

    async def _write(self, route: str) -> None:
        try:
            while True:
                self._again.discard(route)
                try:
                    await self._write_once(route)
                except (KubeApiError, OSError) as exc:
                    logger.error("run-time change of route %s not written to the API: %s; "
                                 "other replicas do not see it", route, exc)
                if route not in self._again:
                    return
        finally:
            self._pending.pop(route, None)

    async def _write_once(self, route: str) -> None:
        found = self.routes().get(route)
        if found is None:
            return
        origin, current = found
        for attempt in range(self.attempts):
            desired = desired_object(current, origin, route,
                                     self.overrides.weights.get(route),
                                     self.overrides.faults.get(route))
            if desired == current:
                return
            try:
                written = await self.client.replace(origin.resource, desired)
                self.writes += 1
                version = _dict(written.get("metadata")).get("resourceVersion")
                if isinstance(version, str):
                    self._unseen[route] = (version, time.monotonic())
                return
            except KubeApiError as exc:
                if exc.status != 409 or attempt == self.attempts - 1:
                    raise
                current = await self.client.get(origin.resource, origin.namespace, origin.name)

    async def flush(self) -> None:
        """Wait for the writes in flight (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*self._pending.values(), return_exceptions=True)

    # ------------------------------------------------------------------ following

    def restore(self, now: float | None = None) -> bool:
        """Give the table the run-time state of the watched objects; True when it changed.
        Routes from config files keep this replica's own entries, and so does a route whose
        write is in flight or not yet back through the watch (the object does not show it
        yet: taking it would undo the change for a moment, and pause a canary)."""
        now = time.time() if now is None else now
        routes = self.routes()
        local = {r for r in self.overrides.weights.keys() | self.overrides.faults.keys()
                 if r not in routes or r in self._pending or self._ahead(r, routes[r][1])}
        weights = {r: o for r, o in self.overrides.weights.items() if r in local}
        faults = {r: f for r, f in self.overrides.faults.items() if r in local}
        for route, (origin, obj) in routes.items():
            if route in local:
                continue
            override, fault = restored(route, obj, origin, now)
            if override is not None:
                weights[route] = override
            if fault is not None:
                faults[route] = fault
        if _same(weights, self.overrides.weights) and _same_faults(faults,
                                                                   self.overrides.faults):
            return False
        self.overrides.restore(weights, faults)
        return True

    def _ahead(self, route: str, watched: Mapping[str, object]) -> bool:
        """Whether our last write of ``route`` is newer than the watched copy. Versions are
        opaque to clients, but every API server hands out etcd revisions, so they are
        compared as numbers when they are; otherwise, and at the latest after ``UNSEEN``
        seconds, the watched copy is taken as current."""
        unseen = self._unseen.get(route)
        if unseen is None:
            return False
        version, since = unseen
        seen = _dict(watched.get("metadata")).get("resourceVersion")
        ahead = time.monotonic() - since < UNSEEN and seen != version
        if ahead and isinstance(seen, str) and seen.isdigit() and version.isdigit():
            ahead = int(seen) < int(version)
        if not ahead:
            del self._unseen[route]
        return ahead


def _same(a: Mapping[str, WeightOverride], b: Mapping[str, WeightOverride]) -> bool:
    return {r: (o.weights, o.source) for r, o in a.items()} == \
        {r: (o.weights, o.source) for r, o in b.items()}


def _same_faults(a: Mapping[str, ActiveFault], b: Mapping[str, ActiveFault]) -> bool:
    return {r: (f.fault, f.expires) for r, f in a.items()} == \
        {r: (f.fault, f.expires) for r, f in b.items()}
