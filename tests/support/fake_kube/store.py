"""The fake API server's storage: objects, the resourceVersion counter and the event history.

Everything here is synchronous and runs on the server's event loop, so a write, its event
and the notification of every open watch happen in one step, in resourceVersion order —
the ordering guarantee a watch gives (https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes).

Semantics, each pinned by tests/unit/support/test_fake_kube.py:
- one global resourceVersion counter, bumped by every write that changes something (a
  no-op update changes nothing and emits no event); clients must treat the value as opaque;
- ``metadata.generation`` starts at 1 and moves only when the desired state changes
  (everything outside ``metadata`` and ``status``);
- a bounded history of events; a watch or continue token older than the history answers
  410 Gone (reason Expired);
- optimistic concurrency: a write carrying a stale ``metadata.resourceVersion`` is a 409
  Conflict;
- the ``/status`` subresource for kinds that have one: writes to it change only
  ``status``, writes to the main resource leave ``status`` as it was;
- the Gateway API CRDs' defaults on HTTPRoute.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .kinds import BY_KIND, DEFAULT_INSTALLED_GROUPS, GATEWAY_GROUP, KindInfo
from .selectors import Predicate

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace or "", name)


class ApiError(Exception):
    """An API error, answered as a ``Status`` object with the HTTP code."""

    def __init__(self, code: int, reason: str, message: str, *,
                 details: Obj | None = None, headers: dict[str, str] | None = None):
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> Obj:
        body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                     "status": "Failure", "message": self.message, "reason": self.reason,
                     "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def not_found(info: KindInfo, name: str) -> ApiError:
    resource = f"{info.plural}.{info.group}" if info.group else info.plural
    return ApiError(404, "NotFound", f'{resource} "{name}" not found',
                    details={"name": name, "group": info.group, "kind": info.plural})


@dataclass(frozen=True)
class Event:
    """One change, as kept in the history: the object after the change, and before it."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    info: KindInfo
    obj: Obj
    old: Obj | None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def desired_state(obj: Obj) -> Obj:
    """What ``metadata.generation`` tracks: everything but metadata, status and type info."""
    return {k: v for k, v in obj.items()
            if k not in ("metadata", "status", "apiVersion", "kind")}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, ``null`` deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_crd_defaults(info: KindInfo, obj: Obj) -> None:
    """The defaults the Gateway API CRD schemas declare for HTTPRoute (standard channel, v1).

    parentRefs[].group → gateway.networking.k8s.io, parentRefs[].kind → Gateway;
    rules[].matches → [{path: {type: PathPrefix, value: /}}], a path's type → PathPrefix and
    value → /; a header match's type → Exact; backendRefs[].group → "" (core),
    backendRefs[].kind → Service, backendRefs[].weight → 1.
    """
    if info.kind != "HTTPRoute" or info.group != GATEWAY_GROUP:
        return
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    for ref in spec.get("parentRefs") or []:
        if isinstance(ref, dict):
            ref.setdefault("group", GATEWAY_GROUP)
            ref.setdefault("kind", "Gateway")
    for rule in spec.get("rules") or []:
        if not isinstance(rule, dict):
            continue
        if "matches" not in rule:
            rule["matches"] = [{"path": {"type": "PathPrefix", "value": "/"}}]
        for match in rule.get("matches") or []:
            if not isinstance(match, dict):
                continue
            path = match.get("path")
            if isinstance(path, dict):
                path.setdefault("type", "PathPrefix")
                path.setdefault("value", "/")
            for header in match.get("headers") or []:
                if isinstance(header, dict):
                    header.setdefault("type", "Exact")
        for backend in rule.get("backendRefs") or []:
            if isinstance(backend, dict):
                backend.setdefault("group", "")
                backend.setdefault("kind", "Service")
                backend.setdefault("weight", 1)


Listener = Callable[[Event], None]


class Store:
    def __init__(self, history_limit: int = 10_000):
        self.rv = 1  # a fresh apiserver already has writes behind it; never "0" ("any")
        self.history_limit = history_limit
        self.history: deque[Event] = deque()
        # Events at or before this resourceVersion are gone: a watch or continue token from
        # an older version answers 410.
        self.compacted_rv = 1
        self._objects: dict[str, dict[Key, Obj]] = {}  # by kind name
        self._listeners: list[Listener] = []
        self._snapshots: dict[str, list[Obj]] = {}
        self._snapshot_ids = itertools.count(1)
        self.installed_groups: set[str] = set(DEFAULT_INSTALLED_GROUPS)

    # --- reading -----------------------------------------------------------------------

    def served(self, info: KindInfo) -> bool:
        return not info.from_crd or info.group in self.installed_groups

    def objects(self, info: KindInfo) -> dict[Key, Obj]:
        return self._objects.setdefault(info.kind, {})

    def get(self, info: KindInfo, namespace: str, name: str) -> Obj:
        found = self.objects(info).get((namespace if info.namespaced else "", name))
        if found is None:
            raise not_found(info, name)
        return copy.deepcopy(found)

    def list_page(self, info: KindInfo, namespace: str | None, match: Predicate, *,
             limit: int | None = None, continue_: str | None = None,
             ) -> tuple[list[Obj], str, str | None, int | None]:
        """(items, list resourceVersion, continue token, remainingItemCount).

        Chunked lists (https://kubernetes.io/docs/reference/using-api/api-concepts/#retrieving-large-results-sets-in-chunks)
        are consistent: every page is served from the state at the first page's
        resourceVersion, and the token expires (410, reason Expired) once that version has
        left the history.
        """
        if continue_:
            list_rv, snapshot_id, offset = self._decode_continue(continue_)
            snapshot = self._snapshots.get(snapshot_id)
            if list_rv < self.compacted_rv or snapshot is None:
                raise ApiError(410, "Expired",
                               "The provided continue parameter is too old to display a "
                               "consistent list result. You can start a new list without "
                               "the continue parameter.")
        else:
            list_rv, offset = self.rv, 0
            snapshot = [copy.deepcopy(o) for key, o in sorted(self.objects(info).items())
                        if (namespace is None or key[0] == namespace) and match(o)]
            snapshot_id = ""
        if limit is None or limit <= 0 or offset + limit >= len(snapshot):
            self._snapshots.pop(snapshot_id, None)
            return snapshot[offset:], str(list_rv), None, None
        if not snapshot_id:
            snapshot_id = str(next(self._snapshot_ids))
            self._snapshots[snapshot_id] = snapshot
        token = self._encode_continue(list_rv, snapshot_id, offset + limit)
        return (snapshot[offset:offset + limit], str(list_rv), token,
                len(snapshot) - offset - limit)

    @staticmethod
    def _encode_continue(rv: int, snapshot_id: str, offset: int) -> str:
        raw = json.dumps({"rv": rv, "snap": snapshot_id, "at": offset}).encode()
        return base64.urlsafe_b64encode(raw).decode()

    @staticmethod
    def _decode_continue(token: str) -> tuple[int, str, int]:
        try:
            data = json.loads(base64.urlsafe_b64decode(token.encode()))
            return int(data["rv"]), str(data["snap"]), int(data["at"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ApiError(400, "BadRequest", f"invalid continue token: {exc}") from exc

    def events_after(self, info: KindInfo, rv: int) -> list[Event]:
        """The history of one kind after ``rv``; 410 if part of it has been compacted away."""
        if rv < self.compacted_rv:
            raise too_old(rv, self.compacted_rv)
        return [e for e in self.history if e.rv > rv and e.info.kind == info.kind]

    # --- writing -----------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _bump(self) -> int:
        self.rv += 1
        return self.rv

    def _record(self, event: Event) -> None:
        self.history.append(event)
        while len(self.history) > self.history_limit:
            dropped = self.history.popleft()
            self.compacted_rv = max(self.compacted_rv, dropped.rv)
            self._expire_snapshots()
        for listener in list(self._listeners):
            listener(event)

    def compact(self) -> None:
        """Drop the whole history, as an etcd compaction does.

        The compaction consumes a revision, as the writes of a busy cluster would: every
        resourceVersion handed out so far expires, and a fresh list starts from a valid one.
        """
        self.history.clear()
        self.compacted_rv = self._bump()
        self._snapshots.clear()

    def _expire_snapshots(self) -> None:
        self._snapshots.clear()  # tokens are checked against compacted_rv as well

    def _check_namespace(self, info: KindInfo, namespace: str) -> None:
        if info.namespaced and ("", namespace) not in self.objects(BY_KIND["Namespace"]):
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                           details={"name": namespace, "kind": "namespaces"})

    def create(self, info: KindInfo, namespace: str, body: Obj, *, keep_status: bool = False,
               require_namespace: bool = True) -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", f"{info.kind} is invalid: metadata.name: Required value")
        ns = namespace if info.namespaced else ""
        if info.namespaced and meta.get("namespace", ns) != ns:
            raise ApiError(400, "BadRequest",
                           "the namespace of the provided object does not match the namespace "
                           "sent on the request")
        if require_namespace:
            self._check_namespace(info, ns)
        key = (ns, name)
        if key in self.objects(info):
            resource = f"{info.plural}.{info.group}" if info.group else info.plural
            raise ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists',
                           details={"name": name, "group": info.group, "kind": info.plural})
        if info.status_subresource and not keep_status:
            obj.pop("status", None)  # create ignores status where a /status subresource exists
        obj["apiVersion"] = info.api_version(obj.get("apiVersion", "").rpartition("/")[2] or None)
        obj["kind"] = info.kind
        apply_crd_defaults(info, obj)
        if info.namespaced:
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta["resourceVersion"] = str(self._bump())
        self.objects(info)[key] = obj
        self._record(Event(self.rv, "ADDED", info, copy.deepcopy(obj), None))
        return copy.deepcopy(obj)

    def update(self, info: KindInfo, namespace: str, name: str, body: Obj, *,
               subresource: str | None = None, admin: bool = False) -> Obj:
        """PUT: replace the object (or only its status, through ``/status``).

        ``admin`` is the test's own hand (FakeKube.apply): it may set spec and status at once.
        """
        ns = namespace if info.namespaced else ""
        current = self.objects(info).get((ns, name))
        if current is None:
            raise not_found(info, name)
        meta = body.get("metadata") or {}
        if meta.get("name", name) != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name "
                           "on the URL")
        sent_rv = meta.get("resourceVersion")
        if sent_rv:
            if sent_rv != current["metadata"]["resourceVersion"]:
                resource = f"{info.plural}.{info.group}" if info.group else info.plural
                raise ApiError(409, "Conflict",
                               f'Operation cannot be fulfilled on {resource} "{name}": the object '
                               "has been modified; please apply your changes to the latest "
                               "version and try again",
                               details={"name": name, "group": info.group, "kind": info.plural})
        elif not info.unconditional_update and not admin:
            raise ApiError(422, "Invalid", f'{info.kind}.{info.group} "{name}" is invalid: '
                           "metadata.resourceVersion: Invalid value: 0x0: must be specified "
                           "for an update")
        if subresource == "status":
            new = copy.deepcopy(current)
            if "status" in body:
                new["status"] = copy.deepcopy(body["status"])
            else:
                new.pop("status", None)
        else:
            new = copy.deepcopy(body)
            new["apiVersion"] = current["apiVersion"]
            new["kind"] = info.kind
            new_meta = new.setdefault("metadata", {})
            # The server owns these; a client cannot change them.
            for field in ("uid", "creationTimestamp", "generation", "namespace", "name"):
                if field in current["metadata"]:
                    new_meta[field] = current["metadata"][field]
            if info.status_subresource and not admin:
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
                else:
                    new.pop("status", None)
            apply_crd_defaults(info, new)
        return self._commit(info, (ns, name), current, new)

    def patch(self, info: KindInfo, namespace: str, name: str, patch: Obj, *,
              subresource: str | None = None) -> Obj:
        """PATCH with a JSON merge patch; a resourceVersion in the patch is a precondition."""
        current = self.get(info, namespace, name)
        merged = merge_patch(current, patch)
        sent_rv = (patch.get("metadata") or {}).get("resourceVersion")
        merged.setdefault("metadata", {})["resourceVersion"] = (
            sent_rv or current["metadata"]["resourceVersion"])
        return self.update(info, namespace, name, merged, subresource=subresource)

    def _commit(self, info: KindInfo, key: Key, current: Obj, new: Obj) -> Obj:
        new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if new == current:
            return copy.deepcopy(current)  # nothing changed: no new version, no event
        if desired_state(new) != desired_state(current):
            new["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        new["metadata"]["resourceVersion"] = str(self._bump())
        self.objects(info)[key] = new
        self._record(Event(self.rv, "MODIFIED", info, copy.deepcopy(new), copy.deepcopy(current)))
        return copy.deepcopy(new)

    def delete(self, info: KindInfo, namespace: str, name: str) -> Obj:
        ns = namespace if info.namespaced else ""
        current = self.objects(info).pop((ns, name), None)
        if current is None:
            raise not_found(info, name)
        gone = copy.deepcopy(current)
        # The DELETED event carries the object at the version of its deletion.
        gone["metadata"]["resourceVersion"] = str(self._bump())
        self._record(Event(self.rv, "DELETED", info, copy.deepcopy(gone), current))
        return gone

    def all_objects(self) -> Iterable[tuple[KindInfo, Obj]]:
        for kind, objs in self._objects.items():
            for obj in objs.values():
                yield BY_KIND[kind], obj


def too_old(rv: int, oldest: int) -> ApiError:
    return ApiError(410, "Expired", f"too old resource version: {rv} ({oldest})")
