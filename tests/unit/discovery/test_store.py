"""The object store: changes counted once; a re-list synthesises the deletes."""

from __future__ import annotations

from pyproxy.discovery.kubernetes.client import WatchEvent
from pyproxy.discovery.kubernetes.store import Store
from tests.unit.discovery.objects import meta


def obj(name: str, rv: str, namespace: str = "shop") -> dict[str, object]:
    return {"kind": "HTTPRoute", "metadata": meta(name, namespace, rv=rv)}


def test_the_same_version_again_is_not_a_change() -> None:
    store = Store()
    assert store.apply("HTTPRoute", WatchEvent("ADDED", obj("a", "1")))
    assert not store.apply("HTTPRoute", WatchEvent("MODIFIED", obj("a", "1")))
    assert store.apply("HTTPRoute", WatchEvent("MODIFIED", {**obj("a", "2"),
                                                            "spec": {"hostnames": ["x"]}}))
    assert store.version == 2
    assert store.take_changes() == {("HTTPRoute", "shop", "a")}
    assert store.take_changes() == set()


def test_a_relist_deletes_what_is_gone_in_its_namespace_only() -> None:
    store = Store()
    for item in (obj("a", "1"), obj("b", "2"), obj("c", "3", "other")):
        store.apply("HTTPRoute", WatchEvent("ADDED", item))
    events = store.replace("HTTPRoute", "shop", [obj("a", "1"), obj("d", "9")])
    assert sorted((e.type, e.object["metadata"]["name"]) for e in events) == [
        ("ADDED", "d"), ("DELETED", "b")]
    assert [o["metadata"]["name"] for o in store.objects("HTTPRoute")] == ["c", "a", "d"]


def test_a_relist_of_every_namespace_deletes_everywhere() -> None:
    store = Store()
    store.apply("HTTPRoute", WatchEvent("ADDED", obj("c", "3", "other")))
    events = store.replace("HTTPRoute", None, [])
    assert [e.type for e in events] == ["DELETED"]
    assert len(store) == 0


def test_a_status_only_write_is_stored_but_is_no_change() -> None:
    store = Store()
    store.apply("HTTPRoute", WatchEvent("ADDED", obj("a", "1")))
    store.take_changes()
    with_status = {**obj("a", "2"), "status": {"parents": []}}
    assert not store.apply("HTTPRoute", WatchEvent("MODIFIED", with_status))
    stored = store.get(("HTTPRoute", "shop", "a"))
    assert stored is not None and stored["metadata"]["resourceVersion"] == "2"
    assert store.take_changes() == set()
    assert store.version == 2  # readers of the objects (the status writer) still see it
