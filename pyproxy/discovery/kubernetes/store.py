"""The objects the reflectors have seen: per kind, keyed by (namespace, name).

Every stored change bumps ``version``. A change that can alter the config also records
the object's key in the pending change set, so the provider knows whether anything moved
since its last snapshot and what did (to re-import only that). Not such changes: the same
resourceVersion again (a re-list brings it for every unchanged object), and a write to
``status`` only — pyproxy's own status writes among them, which would otherwise rebuild
the config once per route it reports on. The object is stored all the same, so readers
see its latest resourceVersion.
"""

from __future__ import annotations

from collections.abc import Iterable

from pyproxy.discovery.kubernetes.client import WatchEvent
from pyproxy.discovery.kubernetes.resources import Object

__all__ = ["Key", "Store", "object_key"]

Key = tuple[str, str, str]  # kind, namespace ("" for cluster-scoped), name


def object_key(kind: str, obj: Object) -> Key:
    metadata = obj.get("metadata") or {}
    return kind, str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def _resource_version(obj: Object) -> object:
    return (obj.get("metadata") or {}).get("resourceVersion")


# Metadata that every write moves; it says nothing about what the object asks for.
_VOLATILE_METADATA = ("resourceVersion", "managedFields")


def _content(obj: Object) -> Object:
    """What of ``obj`` can change the config: all but ``status`` and volatile metadata."""
    metadata = {k: v for k, v in (obj.get("metadata") or {}).items()
                if k not in _VOLATILE_METADATA}
    return {**{k: v for k, v in obj.items() if k not in ("status", "metadata")},
            "metadata": metadata}


class Store:
    """Objects by kind, a change counter, and the keys changed since the last ``take``."""

    def __init__(self) -> None:
        self._objects: dict[str, dict[tuple[str, str], Object]] = {}
        self.version = 0
        self._changed: set[Key] = set()

    def objects(self, kind: str) -> list[Object]:
        """The objects of ``kind``, by namespace then name (a stable order)."""
        found = self._objects.get(kind, {})
        return [found[key] for key in sorted(found)]

    def get(self, key: Key) -> Object | None:
        kind, namespace, name = key
        return self._objects.get(kind, {}).get((namespace, name))

    def __len__(self) -> int:
        return sum(len(objects) for objects in self._objects.values())

    def apply(self, kind: str, event: WatchEvent) -> bool:
        """One ADDED / MODIFIED / DELETED event; whether it changed anything that can
        change the config."""
        key = object_key(kind, event.object)
        objects = self._objects.setdefault(kind, {})
        known = objects.get(key[1:])
        if event.type == "DELETED":
            if known is None:
                return False
            del objects[key[1:]]
        elif event.type in ("ADDED", "MODIFIED"):
            if known is not None and _resource_version(known) == _resource_version(
                    event.object) and _resource_version(known) is not None:
                return False
            objects[key[1:]] = event.object
            if known is not None and _content(known) == _content(event.object):
                self.version += 1
                return False  # status (or volatile metadata) only
        else:
            return False
        self.version += 1
        self._changed.add(key)
        return True

    def replace(self, kind: str, namespace: str | None, items: Iterable[Object]
                ) -> list[WatchEvent]:
        """A complete list of ``kind`` in ``namespace`` (None: every namespace): the events
        that turn what is stored into it, applied — DELETED synthesised for each object
        gone since (its last known state, as a watch would have sent)."""
        objects = self._objects.setdefault(kind, {})
        listed = {object_key(kind, item)[1:]: item for item in items}
        events = [WatchEvent("DELETED", obj) for key, obj in objects.items()
                  if key not in listed and (namespace is None or key[0] == namespace)]
        for key, obj in listed.items():
            events.append(WatchEvent("MODIFIED" if key in objects else "ADDED", obj))
        return [event for event in events if self.apply(kind, event)]

    def take_changes(self) -> set[Key]:
        """The keys changed since the previous call."""
        changed, self._changed = self._changed, set()
        return changed
