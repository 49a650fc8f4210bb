"""The fake Kubernetes API server's semantics, each pinned to the Kubernetes API documentation.

Every test names the concept it follows; "API concepts" is
https://kubernetes.io/docs/reference/using-api/api-concepts/ . The tests talk raw HTTP, so
they pin the wire format a client sees, not the fake's Python API.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.support.fake_kube import GATEWAY_GROUP, ISTIO_GROUP, FakeKube

GW = f"/apis/{GATEWAY_GROUP}/v1"
ROUTES = f"{GW}/namespaces/default/httproutes"
JSON = {"Content-Type": "application/json"}
MERGE = {"Content-Type": "application/merge-patch+json"}


def route(name: str, weights: tuple[int, int] = (100, 0), labels: dict[str, str] | None = None,
          ) -> dict[str, Any]:
    return {"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
            "spec": {"parentRefs": [{"name": "gw"}],
                     "rules": [{"backendRefs": [
                         {"name": "v1", "port": 80, "weight": weights[0]},
                         {"name": "v2", "port": 80, "weight": weights[1]}]}]}}


class Api:
    """A bare HTTP client with the fake's token."""

    def __init__(self, kube: FakeKube, session: aiohttp.ClientSession):
        self.kube = kube
        self.session = session

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.kube.token}", **(extra or {})}

    async def call(self, method: str, path: str, body: Any = None, *,
                   headers: dict[str, str] | None = None, **params: str) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body)
        async with self.session.request(method, self.kube.url + path, data=data, params=params,
                                        headers=self.headers(headers or JSON)) as r:
            return r.status, await r.json(content_type=None)

    async def watch(self, path: str, **params: str) -> AsyncIterator[dict[str, Any]]:
        params = {"watch": "1", **params}
        async with self.session.get(self.kube.url + path, params=params,
                                    headers=self.headers()) as r:
            if r.status != 200:
                yield {"httpStatus": r.status, **(await r.json())}
                return
            async for line in r.content:
                if line.strip():
                    yield json.loads(line)


@pytest_asyncio.fixture
async def kube() -> AsyncIterator[FakeKube]:
    async with FakeKube(bookmark_interval=0.1) as k:
        yield k


@pytest_asyncio.fixture
async def api(kube: FakeKube) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(kube, session)


async def collect(stream: AsyncIterator[dict[str, Any]], count: int,
                  timeout: float = 3.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        async for event in stream:
            if event.get("type") != "BOOKMARK":
                got.append(event)
            if len(got) == count:
                break
    return got


# --- resourceVersion and generation ---------------------------------------------------------

async def test_every_write_bumps_one_global_resource_version(api: Api) -> None:
    """API concepts, "Resource versions": one opaque string per object, changed by every
    write; the list's metadata.resourceVersion is the version it was built at."""
    _, first = await api.call("POST", ROUTES, route("a"))
    _, svc = await api.call("POST", "/api/v1/namespaces/default/services",
                            {"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}})
    assert isinstance(first["metadata"]["resourceVersion"], str)
    assert int(svc["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    meta = first["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["generation"] == 1
    _, listed = await api.call("GET", ROUTES)
    assert listed["kind"] == "HTTPRouteList"
    assert listed["metadata"]["resourceVersion"] == svc["metadata"]["resourceVersion"]
    # An update that changes nothing is not a write: same version, no event.
    status, same = await api.call("PUT", f"{ROUTES}/a", first)
    assert status == 200 and same["metadata"]["resourceVersion"] == meta["resourceVersion"]


async def test_generation_moves_only_when_the_spec_changes(api: Api) -> None:
    """ObjectMeta.generation: "a sequence number representing a specific generation of the
    desired state", and for custom resources with a status subresource "changes to the main
    resource's status or metadata do not increment generation" (CustomResourceDefinition
    docs, "Status subresource")."""
    _, obj = await api.call("POST", ROUTES, route("a"))
    obj["metadata"]["labels"] = {"team": "x"}
    _, obj = await api.call("PUT", f"{ROUTES}/a", obj)
    assert obj["metadata"]["generation"] == 1
    obj["status"] = {"parents": []}
    _, obj = await api.call("PUT", f"{ROUTES}/a/status", obj)
    assert obj["metadata"]["generation"] == 1
    _, obj = await api.call("PATCH", f"{ROUTES}/a", {"spec": {"hostnames": ["a.example"]}},
                            headers=MERGE)
    assert obj["metadata"]["generation"] == 2
    # Built-in kinds follow the same rule (EndpointSlice: endpoints and ports are its state).
    slices = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    _, es = await api.call("POST", slices, {"metadata": {"name": "e", "labels": {"a": "b"}},
                                            "addressType": "IPv4", "endpoints": []})
    _, es = await api.call("PATCH", f"{slices}/e", {"metadata": {"labels": {"a": "c"}}},
                           headers=MERGE)
    assert es["metadata"]["generation"] == 1
    _, es = await api.call("PATCH", f"{slices}/e", {"endpoints": [{"addresses": ["127.0.0.1"]}]},
                           headers=MERGE)
    assert es["metadata"]["generation"] == 2


# --- lists in chunks --------------------------------------------------------------------------

async def test_list_in_chunks_is_consistent_and_its_token_expires(kube: FakeKube,
                                                                  api: Api) -> None:
    """API concepts, "Retrieving large results sets in chunks": limit and an opaque continue
    token; every page is served at the first page's resourceVersion; an expired token
    answers 410 Gone (reason Expired)."""
    for i in range(5):
        kube.apply(route(f"r{i}"))
    _, page1 = await api.call("GET", ROUTES, limit="2")
    assert [o["metadata"]["name"] for o in page1["items"]] == ["r0", "r1"]
    assert page1["metadata"]["remainingItemCount"] == 3
    kube.apply(route("r9"))  # a write between pages is not seen by the rest of this list
    _, page2 = await api.call("GET", ROUTES, limit="2",
                              **{"continue": page1["metadata"]["continue"]})
    _, page3 = await api.call("GET", ROUTES, limit="2",
                              **{"continue": page2["metadata"]["continue"]})
    assert [o["metadata"]["name"] for o in page2["items"] + page3["items"]] == ["r2", "r3", "r4"]
    assert "continue" not in page3["metadata"]
    assert page3["metadata"]["resourceVersion"] == page1["metadata"]["resourceVersion"]

    _, page1 = await api.call("GET", ROUTES, limit="2")
    kube.compact()
    status, err = await api.call("GET", ROUTES, limit="2",
                                 **{"continue": page1["metadata"]["continue"]})
    assert (status, err["kind"], err["reason"], err["code"]) == (410, "Status", "Expired", 410)


# --- watch ------------------------------------------------------------------------------------

async def test_watch_from_the_list_version_streams_changes_in_order(kube: FakeKube,
                                                                    api: Api) -> None:
    """API concepts, "Efficient detection of changes": list, then watch from the list's
    resourceVersion; ADDED, MODIFIED and DELETED arrive in order as JSON lines, each object
    at its new resourceVersion."""
    kube.apply(route("before"))
    _, listed = await api.call("GET", ROUTES)
    stream = api.watch(ROUTES, resourceVersion=listed["metadata"]["resourceVersion"])

    async def write() -> None:
        await kube.wait_for_watches("HTTPRoute")
        kube.apply(route("a"))
        kube.apply(route("a", (50, 50)))
        kube.delete("HTTPRoute", "default", "a")

    writer = asyncio.get_running_loop().create_task(write())
    events = await collect(stream, 3)
    await writer
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and len(set(versions)) == 3


async def test_watch_without_a_version_starts_with_the_current_objects(kube: FakeKube,
                                                                       api: Api) -> None:
    """API concepts, "Semantics for watch": resourceVersion unset means "get state and
    start at most recent" — synthetic ADDED events for what exists, then changes."""
    kube.apply(route("a"))
    kube.apply(route("b"))
    events = await collect(api.watch(ROUTES), 2)
    assert {e["object"]["metadata"]["name"] for e in events} == {"a", "b"}
    assert {e["type"] for e in events} == {"ADDED"}


async def test_watch_ends_after_timeout_seconds(api: Api) -> None:
    """API concepts, "Efficient detection of changes": the server closes a watch after
    timeoutSeconds; the client resumes from the last version it saw."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(3):
        events = [e async for e in api.watch(ROUTES, timeoutSeconds="1")]
    assert 0.9 < loop.time() - started < 2.5
    assert events == []  # no bookmarks unless asked for


async def test_bookmarks_carry_the_current_version_when_asked_for(kube: FakeKube,
                                                                  api: Api) -> None:
    """API concepts, "Watch bookmarks": with allowWatchBookmarks=true the server may send
    BOOKMARK events whose object carries only the resourceVersion up to which the client
    has seen every change."""
    _, listed = await api.call("GET", ROUTES)
    kube.apply(route("elsewhere") | {"metadata": {"name": "x", "namespace": "other"}})
    bookmarks = []
    async with asyncio.timeout(3):
        async for event in api.watch(f"{GW}/namespaces/default/httproutes", timeoutSeconds="1",
                                     allowWatchBookmarks="true",
                                     resourceVersion=listed["metadata"]["resourceVersion"]):
            bookmarks.append(event)
    assert bookmarks and {e["type"] for e in bookmarks} == {"BOOKMARK"}
    assert bookmarks[-1]["object"]["metadata"] == {"resourceVersion": str(kube.store.rv)}
    assert bookmarks[-1]["object"]["kind"] == "HTTPRoute"


async def test_watch_from_a_compacted_version_is_410_gone(kube: FakeKube, api: Api) -> None:
    """API concepts, "Efficient detection of changes": the history is kept for a limited
    time; a watch from an older version fails with 410 Gone, and the client must list
    again. Answered as an HTTP status by default, as an ERROR event on request."""
    _, listed = await api.call("GET", ROUTES)
    old = listed["metadata"]["resourceVersion"]
    kube.apply(route("a"))
    kube.compact()
    [answer] = [e async for e in api.watch(ROUTES, resourceVersion=old)]
    assert (answer["httpStatus"], answer["reason"], answer["code"]) == (410, "Expired", 410)
    kube.too_old_watch_as_event = True
    [event] = [e async for e in api.watch(ROUTES, resourceVersion=old)]
    assert event["type"] == "ERROR"
    assert (event["object"]["kind"], event["object"]["code"]) == ("Status", 410)
    # A fresh list hands out a version that can be watched from.
    _, listed = await api.call("GET", ROUTES)
    events = [e async for e in api.watch(ROUTES, timeoutSeconds="1",
                                         resourceVersion=listed["metadata"]["resourceVersion"])]
    assert events == []


async def test_history_is_bounded(api: Api) -> None:
    """API concepts: "a given Kubernetes server will only preserve a historical record of
    changes for a limited time" — here, a limited number of events."""
    async with FakeKube(history_limit=3) as small:
        small.apply(route("a"))
        first = small.get("HTTPRoute", "default", "a")["metadata"]["resourceVersion"]
        for w in range(5):
            small.apply(route("a", (w, 100 - w)))
        api.kube = small
        [answer] = [e async for e in api.watch(ROUTES, resourceVersion=first)]
        assert answer["httpStatus"] == 410


async def test_compaction_overtaking_an_open_watch_sends_an_error_event(kube: FakeKube,
                                                                        api: Api) -> None:
    """API concepts, "Efficient detection of changes": a watch can also end with an ERROR
    event carrying a Status (code 410) mid-stream; the stream then ends."""
    stream = api.watch(ROUTES, resourceVersion=str(kube.store.rv))

    async def overtake() -> None:
        await kube.wait_for_watches("HTTPRoute")
        kube.apply(route("a"))
        kube.compact()

    task = asyncio.get_running_loop().create_task(overtake())
    async with asyncio.timeout(3):
        events = [e async for e in stream]
    await task
    assert [e["type"] for e in events] == ["ADDED", "ERROR"]
    assert events[1]["object"]["code"] == 410 and events[1]["object"]["reason"] == "Expired"


# --- selectors --------------------------------------------------------------------------------

@pytest.mark.parametrize(("selector", "expected"), [
    ("app=web", {"a", "b"}),
    ("app==web,tier!=db", {"a"}),
    ("tier in (db, cache)", {"b", "c"}),
    ("tier notin (db)", {"a", "c", "d"}),
    ("tier", {"b", "c"}),
    ("!tier", {"a", "d"}),
])
async def test_label_selectors_on_list(kube: FakeKube, api: Api, selector: str,
                                       expected: set[str]) -> None:
    """Labels and selectors, "Label selectors": equality- and set-based requirements,
    comma-separated, all must hold; != and notin match objects without the key."""
    kube.apply(route("a", labels={"app": "web"}))
    kube.apply(route("b", labels={"app": "web", "tier": "db"}))
    kube.apply(route("c", labels={"tier": "cache"}))
    kube.apply(route("d"))
    _, listed = await api.call("GET", ROUTES, labelSelector=selector)
    assert {o["metadata"]["name"] for o in listed["items"]} == expected


async def test_field_selectors_on_list_and_unknown_fields_rejected(kube: FakeKube,
                                                                   api: Api) -> None:
    """Field selectors: metadata.name and metadata.namespace for every kind; other fields a
    kind does not support are a 400."""
    kube.apply(route("a"))
    kube.apply(route("b") | {"metadata": {"name": "b", "namespace": "other"}})
    _, listed = await api.call("GET", f"{GW}/httproutes", fieldSelector="metadata.namespace=other")
    assert [o["metadata"]["name"] for o in listed["items"]] == ["b"]
    _, listed = await api.call("GET", f"{GW}/httproutes", fieldSelector="metadata.name!=b")
    assert [o["metadata"]["name"] for o in listed["items"]] == ["a"]
    status, err = await api.call("GET", ROUTES, fieldSelector="spec.hostnames=x")
    assert (status, err["reason"]) == (400, "BadRequest")


async def test_a_watch_with_a_selector_sees_objects_enter_and_leave_it(kube: FakeKube,
                                                                       api: Api) -> None:
    """API concepts, "Efficient detection of changes" with a labelSelector: an object that
    starts matching arrives as ADDED, one that stops matching leaves as DELETED."""
    stream = api.watch(ROUTES, resourceVersion=str(kube.store.rv), labelSelector="canary=yes")

    async def relabel() -> None:
        await kube.wait_for_watches("HTTPRoute")
        kube.apply(route("a"))
        kube.patch("HTTPRoute", "default", "a", {"metadata": {"labels": {"canary": "yes"}}})
        kube.patch("HTTPRoute", "default", "a", {"metadata": {"labels": {"canary": "no"}}})

    task = asyncio.get_running_loop().create_task(relabel())
    events = await collect(stream, 2)
    await task
    assert [e["type"] for e in events] == ["ADDED", "DELETED"]


# --- writes -----------------------------------------------------------------------------------

async def test_optimistic_concurrency_on_update(kube: FakeKube, api: Api) -> None:
    """API concepts, "Resource versions" and the API conventions' "Concurrency control and
    consistency": an update carrying a stale resourceVersion is 409 Conflict; a custom
    resource update without one is Invalid; create of an existing name is AlreadyExists."""
    _, obj = await api.call("POST", ROUTES, route("a"))
    status, err = await api.call("POST", ROUTES, route("a"))
    assert (status, err["reason"]) == (409, "AlreadyExists")
    stale = json.loads(json.dumps(obj))
    obj["spec"]["hostnames"] = ["one"]
    status, _ = await api.call("PUT", f"{ROUTES}/a", obj)
    assert status == 200
    stale["spec"]["hostnames"] = ["two"]
    status, err = await api.call("PUT", f"{ROUTES}/a", stale)
    assert (status, err["reason"]) == (409, "Conflict")
    del stale["metadata"]["resourceVersion"]
    status, err = await api.call("PUT", f"{ROUTES}/a", stale)
    assert (status, err["reason"]) == (422, "Invalid")
    status, err = await api.call("PATCH", f"{ROUTES}/a", {
        "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}}, headers=MERGE)
    assert status == 409  # a resourceVersion in a patch is a precondition
    assert kube.get("HTTPRoute", "default", "a")["spec"]["hostnames"] == ["one"]


async def test_merge_patch_and_delete(kube: FakeKube, api: Api) -> None:
    """API concepts, "Patch": application/merge-patch+json follows RFC 7386 (null deletes a
    key, lists are replaced); other patch types are refused here; DELETE returns the object
    and a later GET is 404."""
    kube.apply(route("a") | {"metadata": {"name": "a", "namespace": "default",
                                          "annotations": {"x": "1", "y": "2"}}})
    status, obj = await api.call("PATCH", f"{ROUTES}/a", {
        "metadata": {"annotations": {"x": None}}, "spec": {"hostnames": ["h"]}}, headers=MERGE)
    assert status == 200 and obj["metadata"]["annotations"] == {"y": "2"}
    assert obj["spec"]["hostnames"] == ["h"] and obj["spec"]["parentRefs"]
    status, _ = await api.call("PATCH", f"{ROUTES}/a", [{"op": "remove", "path": "/spec"}],
                               headers={"Content-Type": "application/json-patch+json"})
    assert status == 415
    status, gone = await api.call("DELETE", f"{ROUTES}/a")
    assert status == 200 and gone["metadata"]["name"] == "a"
    status, err = await api.call("GET", f"{ROUTES}/a")
    assert (status, err["reason"]) == (404, "NotFound")


async def test_status_subresource_separates_spec_and_status(kube: FakeKube, api: Api) -> None:
    """CustomResourceDefinition docs, "Status subresource": PUT to /status changes only
    status; PUT/PATCH to the main resource ignore status; /status also checks the
    resourceVersion (409 on a stale one)."""
    for path, kind in [(ROUTES, "HTTPRoute"), (f"{GW}/namespaces/default/gateways", "Gateway"),
                       (f"{GW}/gatewayclasses", "GatewayClass")]:
        _, obj = await api.call("POST", path, {"metadata": {"name": "x"},
                                               "spec": {"controllerName": "c"},
                                               "status": {"ignored": True}})
        assert "status" not in obj
        sneaky = json.loads(json.dumps(obj)) | {"status": {"conditions": []},
                                                "spec": {"changed": True}}
        _, after = await api.call("PUT", f"{path}/x/status", sneaky)
        assert after["status"] == {"conditions": []} and after["spec"] == obj["spec"], kind
        status, err = await api.call("PUT", f"{path}/x/status", sneaky)
        assert (status, err["reason"]) == (409, "Conflict")
        after["status"] = {"conditions": ["by main PUT"]}
        _, main = await api.call("PUT", f"{path}/x", after)
        assert main["status"] == {"conditions": []}
    status, _ = await api.call("PUT", "/api/v1/namespaces/default/services/x/status", {})
    assert status == 404  # the fake gives /status only to the Gateway API kinds


async def test_httproute_crd_defaults(api: Api) -> None:
    """Gateway API v1 HTTPRoute CRD schema defaults: parentRefs group
    gateway.networking.k8s.io and kind Gateway; backendRefs group "" (core), kind Service,
    weight 1; a rule without matches matches PathPrefix /."""
    body = route("a")
    del body["spec"]["rules"][0]["backendRefs"][1]["weight"]
    _, obj = await api.call("POST", ROUTES, body)
    assert obj["spec"]["parentRefs"] == [{"name": "gw", "group": GATEWAY_GROUP, "kind": "Gateway"}]
    rule = obj["spec"]["rules"][0]
    assert rule["backendRefs"][1] == {"name": "v2", "port": 80, "group": "", "kind": "Service",
                                      "weight": 1}
    assert rule["backendRefs"][0]["weight"] == 100
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]


async def test_leases_follow_the_same_concurrency_rules(api: Api) -> None:
    """Leases (coordination.k8s.io/v1), "Leases" concept page: leader election is a
    compare-and-swap on the Lease's resourceVersion; of two contenders one wins, the other
    gets 409."""
    path = "/apis/coordination.k8s.io/v1/namespaces/default/leases"
    _, lease = await api.call("POST", path, {"metadata": {"name": "pyproxy-leader"},
                                             "spec": {"holderIdentity": "a",
                                                      "leaseDurationSeconds": 15}})
    results = []
    for holder in ("b", "c"):
        bid = json.loads(json.dumps(lease))
        bid["spec"]["holderIdentity"] = holder
        results.append((await api.call("PUT", f"{path}/pyproxy-leader", bid))[0])
    assert results == [200, 409]
    _, now = await api.call("GET", f"{path}/pyproxy-leader")
    assert now["spec"]["holderIdentity"] == "b"


# --- discovery, auth, lifecycle, knobs --------------------------------------------------------

async def test_discovery_lists_served_groups_and_crds_only_when_installed(kube: FakeKube,
                                                                          api: Api) -> None:
    """API concepts, "Discovery API": /api, /apis and /apis/GROUP/VERSION list what is
    served; a CRD's group appears only while the CRD is installed."""
    _, core = await api.call("GET", "/api")
    assert core["versions"] == ["v1"]
    _, v1 = await api.call("GET", "/api/v1")
    assert {"services", "namespaces"} <= {r["name"] for r in v1["resources"]}
    _, gw = await api.call("GET", f"{GW}")
    names = {r["name"] for r in gw["resources"]}
    assert {"httproutes", "httproutes/status", "gateways", "gatewayclasses/status"} <= names
    _, apis = await api.call("GET", "/apis")
    groups = {g["name"] for g in apis["groups"]}
    assert {GATEWAY_GROUP, "split.smi-spec.io", "discovery.k8s.io"} <= groups
    assert ISTIO_GROUP not in groups
    status, _ = await api.call("GET", f"/apis/{ISTIO_GROUP}/v1beta1/virtualservices")
    assert status == 404
    kube.install_group(ISTIO_GROUP)
    status, listed = await api.call("GET", f"/apis/{ISTIO_GROUP}/v1beta1/virtualservices")
    assert status == 200 and listed["kind"] == "VirtualServiceList"
    _, split = await api.call("GET", "/apis/split.smi-spec.io/v1alpha2")
    assert [r["name"] for r in split["resources"]] == ["trafficsplits"]


async def test_bearer_tokens_and_rotation(kube: FakeKube, api: Api, tmp_path: Path) -> None:
    """Authenticating, "Service account tokens" / bearer tokens: a wrong token is 401; a
    rotated token is written to the token file and the old one stops working."""
    path = kube.kubeconfig_path(tmp_path, use_token_file=True)
    config = json.loads(path.read_text())
    assert config["clusters"][0]["cluster"]["server"] == kube.url
    assert config["users"][0]["user"]["tokenFile"] == str(tmp_path / "token")
    assert (tmp_path / "token").read_text() == kube.token
    old = kube.token
    assert (await api.call("GET", "/api"))[0] == 200
    new = kube.rotate_token()
    assert (tmp_path / "token").read_text() == new
    async with api.session.get(kube.url + "/api",
                               headers={"Authorization": f"Bearer {old}"}) as r:
        assert r.status == 401 and (await r.json())["reason"] == "Unauthorized"
    assert (await api.call("GET", "/api"))[0] == 200


async def test_restart_keeps_the_store_and_cuts_watches(kube: FakeKube, api: Api) -> None:
    """An apiserver restart: open watches are cut (not ended cleanly), the port and the
    objects and their versions are the same afterwards, and watching resumes from the last
    version seen."""
    kube.apply(route("a"))
    rv = kube.store.rv
    port = kube.port

    async def consume() -> list[dict[str, Any]]:
        return [e async for e in api.watch(ROUTES, resourceVersion=str(rv))]

    watcher = asyncio.get_running_loop().create_task(consume())
    await kube.wait_for_watches("HTTPRoute")
    await kube.restart()
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(watcher, 3)
    assert kube.port == port
    kube.apply(route("a", (0, 100)))
    events = await collect(api.watch(ROUTES, resourceVersion=str(rv)), 1)
    assert events[0]["type"] == "MODIFIED"


async def test_stalled_watches_send_nothing_until_released(kube: FakeKube, api: Api) -> None:
    """A knob, not an API rule: a stream that stays open and silent (no events, no
    bookmarks, no close at timeoutSeconds), for a client's inactivity timeout."""
    kube.stall_watches(new_too=True)
    kube.apply(route("a"))
    seen: list[dict[str, Any]] = []

    async def consume() -> None:
        async for event in api.watch(ROUTES, resourceVersion=str(kube.store.rv - 1),
                                     timeoutSeconds="1", allowWatchBookmarks="true"):
            seen.append(event)

    task = asyncio.get_running_loop().create_task(consume())
    await asyncio.sleep(1.5)  # past timeoutSeconds and many bookmark intervals
    assert seen == [] and not task.done()
    kube.unstall_watches()
    await asyncio.wait_for(task, 3)
    assert seen[0]["type"] == "ADDED"


async def test_a_stall_hits_the_open_streams_not_the_next_one(kube: FakeKube,
                                                              api: Api) -> None:
    """A stalled TCP path, not a stalled server: reconnecting gets a working stream."""
    rv = str(kube.store.rv)
    stalled: list[dict[str, Any]] = []

    async def consume() -> None:
        async for event in api.watch(ROUTES, resourceVersion=rv):
            stalled.append(event)

    task = asyncio.get_running_loop().create_task(consume())
    await kube.wait_for_watches("HTTPRoute")
    kube.stall_watches()
    kube.apply(route("a"))
    events = await collect(api.watch(ROUTES, resourceVersion=rv), 1)
    assert events[0]["type"] == "ADDED" and stalled == []
    task.cancel()


async def test_throttle_answers_429_with_retry_after(kube: FakeKube, api: Api) -> None:
    """API priority and fairness: an overloaded server answers 429 Too Many Requests with a
    Retry-After header; clients wait that long."""
    kube.throttle(2, retry_after=3)
    for _ in range(2):
        async with api.session.get(kube.url + ROUTES, headers=api.headers()) as r:
            assert r.status == 429 and r.headers["Retry-After"] == "3"
            assert (await r.json())["details"]["retryAfterSeconds"] == 3
    assert (await api.call("GET", ROUTES))[0] == 200


async def test_a_real_client_lists_and_watches(kube: FakeKube, tmp_path: Path) -> None:
    """kubernetes_asyncio (the provider's client) reads the kubeconfig, lists and watches."""
    pytest.importorskip("kubernetes_asyncio")
    from kubernetes_asyncio import client, config, watch

    kube.apply(route("a"))
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(kube.kubeconfig_path(tmp_path)),
                                  client_configuration=cfg)
    async with client.ApiClient(cfg) as api_client:
        custom = client.CustomObjectsApi(api_client)
        listed = await custom.list_namespaced_custom_object(
            GATEWAY_GROUP, "v1", "default", "httproutes")
        assert [o["metadata"]["name"] for o in listed["items"]] == ["a"]
        seen = []
        async with watch.Watch().stream(
                custom.list_namespaced_custom_object, GATEWAY_GROUP, "v1", "default",
                "httproutes", resource_version=listed["metadata"]["resourceVersion"],
                timeout_seconds=1) as stream:
            kube.apply(route("a", (0, 100)))
            async for event in stream:
                seen.append(event["type"])
        assert seen == ["MODIFIED"]
        core = client.CoreV1Api(api_client)
        services = await core.list_namespaced_service("default")
        assert services.items == []
