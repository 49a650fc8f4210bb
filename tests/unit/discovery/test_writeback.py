"""Run-time changes written to the route objects (pyproxy/discovery/kubernetes/writeback.py):
the pure rewrites of HTTPRoute and TrafficSplit objects, and the store between an
``Overrides`` table and a stand-in API."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest

from pyproxy.config.model import AbortFault, Fault
from pyproxy.discovery.kubernetes.client import KubeApiError
from pyproxy.discovery.kubernetes.resources import HTTP_ROUTE, TRAFFIC_SPLIT
from pyproxy.discovery.kubernetes.writeback import (
    ANNOTATION,
    KubeRuntimeStore,
    RouteOrigin,
    as_integers,
    desired_object,
    managed_by,
    restored,
    route_origins,
    spec_weights,
    with_weights,
)
from pyproxy.errors import InvalidOverride
from pyproxy.overrides import ActiveFault, Overrides, WeightOverride


def httproute() -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "stockmanager", "namespace": "shop", "resourceVersion": "1",
                         "generation": 1},
            "spec": {"parentRefs": [{"name": "pyproxy"}], "rules": [
                {"matches": [{"headers": [{"name": "end-user", "value": "tester"}]}],
                 "backendRefs": [{"name": "stockmanager-v2", "port": 8081}]},
                {"backendRefs": [{"name": "stockmanager-v1", "port": 8081, "weight": 100},
                                 {"name": "stockmanager-v2", "port": 8081, "weight": 0}]}]}}


RULE1 = RouteOrigin(HTTP_ROUTE, "shop", "stockmanager", 1)


def test_weights_written_into_the_rule_they_came_from_only():
    obj = httproute()
    updated = with_weights(obj, RULE1, {"stockmanager-v1": 50, "stockmanager-v2": 50})
    assert spec_weights(updated, RULE1) == {"stockmanager-v1": 50, "stockmanager-v2": 50}
    assert updated["spec"]["rules"][0] == obj["spec"]["rules"][0]
    assert obj["spec"]["rules"][1]["backendRefs"][0]["weight"] == 100  # not modified
    # backends not named get 0, as an override does; names qualified by namespace match
    only = with_weights(obj, RULE1, {"stockmanager-v2.shop": 1})
    assert spec_weights(only, RULE1) == {"stockmanager-v1": 0, "stockmanager-v2": 1}


def test_traffic_split_backends():
    split = {"kind": "TrafficSplit", "metadata": {"name": "s", "namespace": "shop"},
             "spec": {"service": "stockmanager", "backends": [
                 {"service": "stockmanager-v1", "weight": 90},
                 {"service": "stockmanager-v2", "weight": 10}]}}
    origin = RouteOrigin(TRAFFIC_SPLIT, "shop", "s")
    updated = with_weights(split, origin, {"stockmanager-v1": 0, "stockmanager-v2": 100})
    assert spec_weights(updated, origin) == {"stockmanager-v1": 0, "stockmanager-v2": 100}


def test_fractional_weights_become_integers_in_proportion():
    assert as_integers({"a": 90, "b": 10.0}) == {"a": 90, "b": 10}
    assert as_integers({"a": 0.5, "b": 99.5}) == {"a": 500, "b": 99500}


@pytest.mark.parametrize(("meta", "expected"), [
    ({"ownerReferences": [{"apiVersion": "flagger.app/v1beta1", "kind": "Canary",
                           "name": "podinfo", "uid": "u", "controller": True}]},
     "Canary podinfo (ownerReferences)"),
    ({"labels": {"app.kubernetes.io/managed-by": "argo-rollouts"}},
     "argo-rollouts (label app.kubernetes.io/managed-by)"),
    ({"managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update"},
                        {"manager": "flagger", "operation": "Update"}]},
     "flagger (managedFields)"),
    ({"labels": {"app.kubernetes.io/managed-by": "pyproxy"},
      "managedFields": [{"manager": "kubectl", "operation": "Apply"}]}, None),
])
def test_managed_by(meta, expected):
    assert managed_by({"metadata": meta}) == expected


def test_set_then_clear_restores_the_configured_split_and_removes_the_annotation():
    obj = httproute()
    override = WeightOverride({"stockmanager-v1": 50, "stockmanager-v2": 50}, "api", 5.0)
    set_ = desired_object(obj, RULE1, "stockmanager-1", override, None)
    entry = json.loads(set_["metadata"]["annotations"][ANNOTATION])["routes"]["stockmanager-1"]
    assert entry["weights"]["configured"] == {"stockmanager-v1": 100, "stockmanager-v2": 0}
    assert entry["weights"]["written"] == {"stockmanager-v1": 50, "stockmanager-v2": 50}
    # every replica reads the same override back from the object
    back, fault = restored("stockmanager-1", set_, RULE1, now=10.0)
    assert back is not None and back.weights == override.weights and back.source == "api"
    assert fault is None
    cleared = desired_object(set_, RULE1, "stockmanager-1", None, None)
    assert spec_weights(cleared, RULE1) == {"stockmanager-v1": 100, "stockmanager-v2": 0}
    assert "annotations" not in cleared["metadata"]


def test_an_edited_spec_outranks_the_annotation():
    obj = desired_object(httproute(), RULE1, "stockmanager-1",
                         WeightOverride({"stockmanager-v1": 50, "stockmanager-v2": 50}), None)
    edited = with_weights(obj, RULE1, {"stockmanager-v1": 80, "stockmanager-v2": 20})
    assert restored("stockmanager-1", edited, RULE1, now=0.0) == (None, None)


def test_faults_carry_their_expiry_and_end_on_every_replica_by_themselves():
    active = ActiveFault("stockmanager-1", Fault(abort=AbortFault(503, 50.0)), 100.0, 40.0)
    obj = desired_object(httproute(), RULE1, "stockmanager-1", None, active)
    assert spec_weights(obj, RULE1) == spec_weights(httproute(), RULE1)
    _, fault = restored("stockmanager-1", obj, RULE1, now=99.0)
    assert fault == active
    assert restored("stockmanager-1", obj, RULE1, now=100.0) == (None, None)


class StandIn:
    """One object with a resourceVersion; replace needs the current one."""

    def __init__(self, obj: dict):
        self.obj = copy.deepcopy(obj)
        self.replaced = 0

    async def get(self, resource, namespace, name) -> dict:
        return copy.deepcopy(self.obj)

    async def replace(self, resource, obj: dict) -> dict:
        if obj["metadata"]["resourceVersion"] != self.obj["metadata"]["resourceVersion"]:
            raise KubeApiError(409, "Conflict")
        self.replaced += 1
        self.obj = copy.deepcopy(obj)
        self.obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"])
                                                      + 1)
        return copy.deepcopy(self.obj)


def replica(api: StandIn, watched: dict) -> tuple[Overrides, KubeRuntimeStore]:
    overrides = Overrides(refresh=lambda: None)
    overrides.set_routes({"stockmanager-1": ["stockmanager-v1", "stockmanager-v2"],
                          "from-a-file": ["local"]})
    store = KubeRuntimeStore(api, lambda: {"stockmanager-1": (RULE1, watched["obj"])},
                             overrides)
    return overrides, store


def test_two_replicas_follow_one_set_weight_through_the_object():
    async def main() -> None:
        api = StandIn(httproute())
        watched = {"obj": copy.deepcopy(api.obj)}  # what the watch delivered last
        a, store_a = replica(api, watched)
        b, store_b = replica(api, watched)
        a.set_weights("stockmanager-1", {"stockmanager-v1": 0, "stockmanager-v2": 100})
        b.set_weights("from-a-file", {"local": 1})  # a file route: local only, no write
        await store_a.flush()
        assert api.replaced == 1
        # the watch has not delivered the write yet: the writer keeps its own entry
        assert store_a.restore() is False
        assert "stockmanager-1" in a.weights
        assert spec_weights(api.obj, RULE1) == {"stockmanager-v1": 0, "stockmanager-v2": 100}
        watched["obj"] = copy.deepcopy(api.obj)  # the watch event reaches both
        assert store_b.restore() is True
        assert b.weights["stockmanager-1"].weights == {"stockmanager-v1": 0,
                                                       "stockmanager-v2": 100}
        assert "from-a-file" in b.weights
        assert store_a.restore() is False  # the writer already had it
        b.clear_weights("stockmanager-1")
        await store_b.flush()
        watched["obj"] = copy.deepcopy(api.obj)
        store_a.restore()
        assert "stockmanager-1" not in a.weights
        assert spec_weights(api.obj, RULE1) == {"stockmanager-v1": 100, "stockmanager-v2": 0}

    asyncio.run(main())


def test_a_stale_copy_is_read_again_on_conflict():
    async def main() -> None:
        api = StandIn(httproute())
        watched = {"obj": copy.deepcopy(api.obj)}
        api.obj["metadata"]["resourceVersion"] = "7"  # changed since the watch saw it
        a, store = replica(api, watched)
        a.set_weights("stockmanager-1", {"stockmanager-v2": 1})
        await store.flush()
        assert api.replaced == 1 and api.obj["metadata"]["resourceVersion"] == "8"

    asyncio.run(main())


def test_a_route_another_controller_manages_is_refused():
    obj = httproute()
    obj["metadata"]["ownerReferences"] = [{"apiVersion": "flagger.app/v1beta1",
                                           "kind": "Canary", "name": "stockmanager",
                                           "uid": "u", "controller": True}]
    a, _ = replica(StandIn(obj), {"obj": obj})
    with pytest.raises(InvalidOverride, match="Canary stockmanager"):
        a.set_weights("stockmanager-1", {"stockmanager-v2": 1})
    assert not a.weights


def test_route_origins_follow_the_importers_naming():
    split = {"kind": "TrafficSplit", "metadata": {"name": "s", "namespace": "shop"},
             "spec": {"backends": []}}
    named = httproute()
    named["spec"]["rules"][1]["name"] = "canary"
    found = route_origins(["stockmanager-0", "stockmanager-canary-m1", "s", "s-apex", "file"],
                          [named, split])
    assert found["stockmanager-0"].rule == 0
    assert found["stockmanager-canary-m1"].rule == 1
    assert found["s"].resource.kind == "TrafficSplit"
    assert set(found) == {"stockmanager-0", "stockmanager-canary-m1", "s"}
