"""The status pyproxy writes back (pyproxy/discovery/kubernetes/status.py), on plain dicts:
the Gateway API's rules for HTTPRoute.status.parents, Gateway and GatewayClass conditions,
and the writer's no-op and 409 behaviour with a stand-in client."""

from __future__ import annotations

import asyncio
import copy

import pytest

from pyproxy.discovery.kubernetes.client import KubeApiError
from pyproxy.discovery.kubernetes.report import ImportResult, ObjectKey, ObjectReport, parent_key
from pyproxy.discovery.kubernetes.status import (
    CONTROLLER_NAME,
    StatusWriter,
    desired_gateway_class_status,
    desired_gateway_status,
    desired_route_status,
)

T0, T1 = "2026-12-07T00:00:00Z", "2026-12-07T01:00:00Z"


OK = ImportResult(True, True, "Accepted", "", 1)


def route(generation: int = 1, refs: list[dict] | None = None, status: dict | None = None
          ) -> dict:
    obj = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": "stockmanager", "namespace": "shop",
                        "generation": generation, "resourceVersion": "7"},
           "spec": {"parentRefs": refs if refs is not None else [
               # as stored: the CRD defaulted group and kind
               {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "pyproxy"}]}}
    if status is not None:
        obj["status"] = status
    return obj


def report_for(obj: dict, result: ImportResult = OK, ref: dict | None = None) -> ObjectReport:
    ref = ref if ref is not None else obj["spec"]["parentRefs"][0]
    report = ObjectReport()
    report.update({ObjectKey("HTTPRoute", "shop", "stockmanager"):
                   {parent_key(ref, "shop"): result}}, ())
    return report


def conditions(entry: dict) -> dict[str, dict]:
    return {c["type"]: c for c in entry["conditions"]}


def test_accepted_route_gets_both_conditions_with_the_parent_ref_as_stored():
    obj = route()
    status = desired_route_status(obj, report_for(obj), now=T0)
    assert status is not None
    [entry] = status["parents"]
    assert entry["parentRef"] == obj["spec"]["parentRefs"][0]
    assert entry["controllerName"] == CONTROLLER_NAME
    found = conditions(entry)
    assert found["Accepted"] == {"type": "Accepted", "status": "True", "reason": "Accepted",
                                 "message": "served by pyproxy", "observedGeneration": 1,
                                 "lastTransitionTime": T0}
    assert found["ResolvedRefs"]["status"] == "True"
    assert found["ResolvedRefs"]["reason"] == "ResolvedRefs"


def test_parent_ref_is_copied_exactly_whether_or_not_defaults_were_stored():
    bare = {"name": "pyproxy", "sectionName": "http"}
    obj = route(refs=[bare])
    # the provider keys its result with the defaults filled in; the key matches either way
    report = report_for(obj, ref={"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                  "namespace": "shop", "name": "pyproxy", "sectionName": "http"})
    status = desired_route_status(obj, report, now=T0)
    assert status is not None
    assert status["parents"][0]["parentRef"] == bare
    assert status["parents"][0]["parentRef"] is not bare  # a copy, not the spec's own dict


@pytest.mark.parametrize(("result", "accepted", "resolved"), [
    (ImportResult(False, True, "NotAllowedByListeners", "other namespace", 1),
     ("False", "NotAllowedByListeners"), ("True", "ResolvedRefs")),
    (ImportResult(False, True, "NoMatchingParent", "no listener http", 1),
     ("False", "NoMatchingParent"), ("True", "ResolvedRefs")),
    (ImportResult(False, True, "UnsupportedValue", "regex flavour", 1),
     ("False", "UnsupportedValue"), ("True", "ResolvedRefs")),
    (ImportResult(True, False, "BackendNotFound", "service v3 not found", 1),
     ("True", "Accepted"), ("False", "BackendNotFound")),
    (ImportResult(True, False, "RefNotPermitted", "no ReferenceGrant", 1),
     ("True", "Accepted"), ("False", "RefNotPermitted")),
    (ImportResult(True, False, "InvalidKind", "kind Bucket", 1),
     ("True", "Accepted"), ("False", "InvalidKind")),
    # refused whole: its references were never judged, both conditions say why
    (ImportResult(False, False, "UnsupportedValue", "weight -1", 1),
     ("False", "UnsupportedValue"), ("False", "UnsupportedValue")),
])
def test_reasons_land_on_their_condition(result, accepted, resolved):
    obj = route()
    status = desired_route_status(obj, report_for(obj, result), now=T0)
    assert status is not None
    found = conditions(status["parents"][0])
    assert (found["Accepted"]["status"], found["Accepted"]["reason"]) == accepted
    assert (found["ResolvedRefs"]["status"], found["ResolvedRefs"]["reason"]) == resolved
    failed = found["Accepted"] if accepted[0] == "False" else found["ResolvedRefs"]
    assert failed["message"] == result.message


def test_last_transition_time_kept_while_status_unchanged_and_moved_when_it_flips():
    obj = route()
    first = desired_route_status(obj, report_for(obj), now=T0)
    obj2 = route(generation=2, status=first)
    report = report_for(obj2, ImportResult(True, True, "Accepted", "", 2))
    second = desired_route_status(obj2, report, now=T1)
    assert second is not None
    found = conditions(second["parents"][0])
    assert found["Accepted"]["lastTransitionTime"] == T0
    assert found["Accepted"]["observedGeneration"] == 2
    obj3 = route(generation=3, status=second)
    report = report_for(obj3, ImportResult(True, False, "BackendNotFound", "gone", 3))
    third = desired_route_status(obj3, report, now=T1)
    assert third is not None
    found = conditions(third["parents"][0])
    assert found["ResolvedRefs"]["lastTransitionTime"] == T1
    assert found["Accepted"]["lastTransitionTime"] == T0


def test_a_generation_not_yet_imported_gets_no_status():
    obj = route(generation=4)
    assert desired_route_status(obj, report_for(obj, OK), now=T0) is None  # result for 1


def test_other_controllers_entries_are_kept_and_ours_for_dropped_parents_removed():
    theirs = {"parentRef": {"name": "istio-gw"}, "controllerName": "istio.io/gateway-controller",
              "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                              "message": "", "observedGeneration": 1,
                              "lastTransitionTime": T0}]}
    stale = {"parentRef": {"name": "old-gw"}, "controllerName": CONTROLLER_NAME,
             "conditions": []}
    refs = [{"name": "istio-gw"}, {"name": "pyproxy"}]
    obj = route(refs=refs, status={"parents": [theirs, stale]})
    status = desired_route_status(obj, report_for(obj, ref={"name": "pyproxy"}), now=T0)
    assert status is not None
    assert status["parents"][0] == theirs
    assert [p["parentRef"] for p in status["parents"]] == [{"name": "istio-gw"},
                                                           {"name": "pyproxy"}]


def test_a_route_pyproxy_does_not_serve_keeps_its_status_untouched():
    obj = route(status={"parents": []})
    assert desired_route_status(obj, ObjectReport(), now=T0) == {"parents": []}
    assert desired_route_status(route(), ObjectReport(), now=T0) == {}


def gateway(listeners: list[dict], status: dict | None = None) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "pyproxy", "namespace": "shop", "generation": 3},
            "spec": {"gatewayClassName": "pyproxy", "listeners": listeners},
            **({"status": status} if status is not None else {})}


def test_gateway_conditions_and_listeners_with_attached_routes():
    obj = route(refs=[{"name": "pyproxy", "sectionName": "http"}])
    report = report_for(obj)
    report.results[ObjectKey("HTTPRoute", "shop", "other")] = {
        parent_key({"name": "pyproxy"}, "shop"):
        ImportResult(False, True, "NotAllowedByListeners", "", 1)}
    # the CRD's default status before any controller wrote one
    default = {"conditions": [{"type": "Accepted", "status": "Unknown", "reason": "Pending",
                               "message": "Waiting for controller",
                               "lastTransitionTime": "1970-01-01T00:00:00Z"}]}
    status = desired_gateway_status(gateway([
        {"name": "http", "protocol": "HTTP", "port": 80},
        {"name": "tls", "protocol": "HTTPS", "port": 443},
        {"name": "grpc", "protocol": "HTTP", "port": 81,
         "allowedRoutes": {"kinds": [{"kind": "GRPCRoute"}]}},
    ], status=default), report, now=T0)
    top = {c["type"]: c for c in status["conditions"]}
    assert top["Accepted"]["status"] == "True" and top["Accepted"]["lastTransitionTime"] == T0
    assert top["Programmed"]["status"] == "True" and top["Programmed"]["observedGeneration"] == 3
    http, tls, grpc = status["listeners"]
    assert http["attachedRoutes"] == 1  # the rejected route does not count
    assert http["supportedKinds"] == [{"group": "gateway.networking.k8s.io",
                                       "kind": "HTTPRoute"}]
    assert conditions(tls)["Accepted"]["reason"] == "UnsupportedProtocol"
    assert tls["attachedRoutes"] == 0 and tls["supportedKinds"] == []
    assert conditions(grpc)["ResolvedRefs"]["reason"] == "InvalidRouteKinds"
    assert grpc["supportedKinds"] == []


def test_gateway_class_accepted_only_when_the_controller_name_is_ours():
    ours = {"kind": "GatewayClass", "metadata": {"name": "pyproxy", "generation": 1},
            "spec": {"controllerName": CONTROLLER_NAME}}
    status = desired_gateway_class_status(ours, now=T0)
    assert status is not None
    assert status["conditions"][0]["type"] == "Accepted"
    assert status["conditions"][0]["status"] == "True"
    theirs = {**ours, "spec": {"controllerName": "istio.io/gateway-controller"}}
    assert desired_gateway_class_status(theirs, now=T0) is None


# --------------------------------------------------------------------------- the writer


def conflict() -> KubeApiError:
    return KubeApiError(409, "Conflict")


class StandIn:
    """A client whose store holds one object; ``stale`` 409s make the next writes fail."""

    def __init__(self, obj: dict, stale: int = 0):
        self.obj = copy.deepcopy(obj)
        self.stale = stale
        self.calls: list[str] = []

    async def get(self, resource: str, namespace: str, name: str) -> dict:
        self.calls.append("get")
        return copy.deepcopy(self.obj)

    async def replace_status(self, resource: str, obj: dict) -> dict:
        self.calls.append("replace_status")
        if self.stale:
            self.stale -= 1
            # someone else wrote meanwhile: a new resourceVersion, another parent entry
            self.obj["metadata"]["resourceVersion"] = str(int(
                self.obj["metadata"]["resourceVersion"]) + 1)
            raise conflict()
        self.obj = copy.deepcopy(obj)
        return obj


def test_writer_writes_once_then_nothing_while_nothing_changes():
    obj = route()
    client = StandIn(obj)
    writer = StatusWriter(client, {"HTTPRoute": "httproutes"}, report_for(obj),
                          now=lambda: T0)
    assert asyncio.run(writer.write("HTTPRoute", obj)) is True
    assert asyncio.run(writer.write("HTTPRoute", client.obj)) is False
    assert client.calls == ["replace_status"]
    assert writer.writes == 1


def test_writer_retries_a_conflict_on_a_fresh_copy():
    obj = route()
    client = StandIn(obj, stale=2)
    writer = StatusWriter(client, {"HTTPRoute": "httproutes"}, report_for(obj),
                          now=lambda: T0)
    assert asyncio.run(writer.write("HTTPRoute", obj)) is True
    assert client.calls == ["replace_status", "get"] * 2 + ["replace_status"]
    assert writer.conflicts == 2
    assert client.obj["status"]["parents"][0]["controllerName"] == CONTROLLER_NAME


def test_writer_gives_up_after_its_attempts():
    obj = route()
    writer = StatusWriter(StandIn(obj, stale=10), {"HTTPRoute": "httproutes"},
                          report_for(obj), attempts=3, now=lambda: T0)
    with pytest.raises(KubeApiError):
        asyncio.run(writer.write("HTTPRoute", obj))
    assert asyncio.run(writer.write_all([("HTTPRoute", obj)])) == 0  # logged, not raised
