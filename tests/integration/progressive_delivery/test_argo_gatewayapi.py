"""Argo Rollouts with the Gateway API plugin driving pyproxy: weight steps on the user's
HTTPRoute, a header route (``end-user: tester`` to the canary only, everyone else on the
split), its removal, and the promotion — with the Service selectors the Rollout controller
moves between ReplicaSets, so endpoints follow the EndpointSlices.

Replayed from the plugin v0.15.0 (see ``replay.py``), ``pkg/plugin/httproute.go``:
``setHTTPRouteWeight`` sets the canary's weight and the stable's ``100 - weight`` in every
rule it does not manage and labels the route ``rollouts.argoproj.io/gatewayapi-canary:
in-progress`` while the weight is above 0 (``labels.go``); ``setHTTPHeaderRoute`` appends a
rule named after the managed route, with the source rule's matches plus the header match and
only the canary backend (no weight); ``removeHTTPManagedRoutes`` drops it. Each is a GET and
a full update, retried on conflict. The user's objects are the plugin's examples
(``examples/traefik/httproute.yml``, ``examples/cilium-header-based/``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import yaml

from tests.integration.kubernetes.cluster import admin_json, eventually
from tests.integration.progressive_delivery.replay import (
    NS,
    REPLAY_TIMEOUT,
    REPO,
    Api,
    Conflict,
    Log,
    Pods,
    Rig,
    Step,
    assert_imported_cleanly,
    gateway,
    running,
)
from tests.support.fake_kube import GATEWAY_GROUP, Obj

ROUTE = "argo-rollouts-http-route"
STABLE = "argo-rollouts-stable-service"
CANARY = "argo-rollouts-canary-service"
MANAGED = "header-route"  # spec.strategy.canary.trafficRouting.managedRoutes[].name
IN_PROGRESS = ("rollouts.argoproj.io/gatewayapi-canary", "in-progress")  # defaults.go
HASH_LABEL = "rollouts-pod-template-hash"
HOST = "rollouts-demo.example.com"
TESTER = {"end-user": "tester"}
ANALYSIS = yaml.safe_load((REPO / "deploy/kubernetes/argo/analysis-template.yaml").read_text())


class Plugin:
    """The plugin's writes to the HTTPRoute."""

    def __init__(self, api: Api):
        self.api = api

    async def _update(self, change: Any) -> Obj:
        # retry.RetryOnConflict(retry.DefaultRetry, ...): read again, change, update
        for _ in range(5):
            route = await self.api.get("HTTPRoute", ROUTE)
            if change(route) is False:
                return route
            try:
                return await self.api.update(route)
            except Conflict:
                continue
        raise AssertionError("five conflicts in a row")

    async def set_weight(self, weight: int) -> Obj:
        def change(route: Obj) -> None:
            for rule in route["spec"]["rules"]:
                if rule.get("name") == MANAGED:
                    continue
                for ref in rule["backendRefs"]:
                    if ref["name"] == CANARY:
                        ref["weight"] = weight
                    elif ref["name"] == STABLE:
                        ref["weight"] = 100 - weight
            labels = route["metadata"].setdefault("labels", {})
            if weight == 0:
                labels.pop(IN_PROGRESS[0], None)
            else:
                labels[IN_PROGRESS[0]] = IN_PROGRESS[1]
        return await self._update(change)

    async def set_header_route(self, header: str, value: str) -> Obj:
        def change(route: Obj) -> None:
            rules = [r for r in route["spec"]["rules"] if r.get("name") != MANAGED]
            source = next(r for r in rules
                          if {b["name"] for b in r["backendRefs"]} >= {CANARY, STABLE})
            port = next(b["port"] for b in source["backendRefs"] if b["name"] == CANARY)
            match = {"type": "Exact", "name": header, "value": value}
            managed = {
                "name": MANAGED,
                "matches": [{**({"path": m["path"]} if "path" in m else {}),
                             "headers": [*(m.get("headers") or []), match],
                             **({"queryParams": m["queryParams"]} if "queryParams" in m
                                else {}),
                             **({"method": m["method"]} if "method" in m else {})}
                            for m in source.get("matches") or [{}]],
                "filters": list(source.get("filters") or []),
                "backendRefs": [{"group": "", "kind": "Service", "name": CANARY,
                                 "port": port}]}
            route["spec"]["rules"] = [*rules, managed]
        return await self._update(change)

    async def remove_header_routes(self) -> Obj:
        def change(route: Obj) -> bool:
            kept = [r for r in route["spec"]["rules"] if r.get("name") != MANAGED]
            if len(kept) == len(route["spec"]["rules"]):
                return False  # nothing managed: no update
            route["spec"]["rules"] = kept
            return True
        return await self._update(change)


async def served(rig: Rig) -> tuple[dict[str, float], bool]:
    """(the split's weights, whether a canary-only rule is served) from the admin API."""
    routes = (await admin_json(rig.proxy, "/api/v1/routes"))["routes"]
    split: dict[str, float] = {}
    header_rule = False
    for route in routes:
        names = {b["backend"] for b in route["backends"]}
        if names == {CANARY}:
            header_rule = True
        elif names == {CANARY, STABLE}:
            split = {b["backend"]: b["configured_weight"] for b in route["backends"]}
    return split, header_rule


async def test_argo_weights_header_route_and_removal(kube, tmp_path):
    api = Api(kube)
    pods = Pods(kube)
    plugin = Plugin(api)
    gateway(kube)
    for name in (STABLE, CANARY):  # the user's Services (examples/cilium-header-based)
        await api.create({"apiVersion": "v1", "kind": "Service",
                          "metadata": {"name": name, "namespace": NS},
                          "spec": {"selector": {"app": "rollouts-demo"},
                                   "ports": [{"port": 80, "targetPort": "http"}]}})
    await api.create({"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": "HTTPRoute",
                      "metadata": {"name": ROUTE, "namespace": NS},
                      "spec": {"parentRefs": [{"name": "public", "namespace": NS}],
                               "rules": [{"backendRefs": [{"name": STABLE, "port": 80},
                                                          {"name": CANARY, "port": 80}]}]}})
    v1_hash = pods.template_hash("rollouts-demo", "v1")
    v2_hash = pods.template_hash("rollouts-demo", "v2")
    stable_pods = await pods.run("rollouts-demo", {"app": "rollouts-demo",
                                                   HASH_LABEL: v1_hash}, "v1", 2)
    # the Rollout controller points both Services at the stable ReplicaSet...
    await select(api, pods, STABLE, v1_hash)
    await select(api, pods, CANARY, v1_hash)
    # ...and the plugin sets the weight to 0 on the first reconcile
    await plugin.set_weight(0)
    log = Log("argo gatewayapi plugin")
    async with running(kube, pods, tmp_path, HOST, log.title) as rig, \
            asyncio.timeout(REPLAY_TIMEOUT):
        rig.log = log

        async def step(n: int, what: str, weight: int, header_rule: bool) -> None:
            async def applied() -> bool:
                split, has_header_rule = await served(rig)
                return split == {STABLE: 100 - weight, CANARY: weight} and \
                    has_header_rule == header_rule
            await eventually(applied, f"step {n} served", interval=0.01)
            route = kube.get("HTTPRoute", NS, ROUTE)
            labelled = (route["metadata"].get("labels") or {}).get(IN_PROGRESS[0])
            assert labelled == (IN_PROGRESS[1] if weight else None), route["metadata"]
            canary_names = {p.name for p in pods.pods.values()
                            if p.labels[HASH_LABEL] == v2_hash} if weight else set()
            tally, on_canary = await rig.traffic(canary_names, weight / 100)
            share = f"{on_canary}/{tally.total} ({on_canary / tally.total:.1%})"
            tester = ""
            if header_rule:
                tally, on_canary = await rig.traffic(canary_names, 1.0, headers=TESTER)
                tester = f"; testers {on_canary}/{tally.total} on the canary"
            elif weight:
                tally, on_canary = await rig.traffic(canary_names, weight / 100,
                                                     headers=TESTER)
                tester = f"; testers {on_canary}/{tally.total} on the split"
            queries = ""
            if weight:
                await rig.scraped()
                values = await analysis(rig)
                queries = " ".join(f"{k}={v:.4g}" for k, v in values.items())
                assert values["success-rate"] >= 0.99 and values["latency-p99"] <= 0.5, values
            rig.log.add(Step(n, what, f"{100 - weight}/{weight}", share + tester, queries,
                             f"generation {route['metadata']['generation']}, "
                             f"label {labelled}"))
            await eventually(lambda: status_current(kube), "status current")
            assert_imported_cleanly(kube.get("HTTPRoute", NS, ROUTE))

        await step(0, "stable", 0, False)
        # a new revision: the canary ReplicaSet, and the canary Service pointed at it
        await pods.run("rollouts-demo", {"app": "rollouts-demo", HASH_LABEL: v2_hash},
                       "v2", 2)
        await select(api, pods, CANARY, v2_hash)
        await plugin.set_weight(30)
        await step(1, "setWeight", 30, False)
        await plugin.set_header_route("end-user", "tester")
        await step(2, "setHeader", 30, True)
        await plugin.set_weight(60)
        await step(3, "setWeight", 60, True)
        await plugin.remove_header_routes()
        await step(4, "removeHdr", 60, False)
        # promotion: the stable Service to the new ReplicaSet, the weight back to 0, the
        # old ReplicaSet scaled down
        await select(api, pods, STABLE, v2_hash)
        await plugin.set_weight(0)
        await pods.stop(stable_pods)
        await step(5, "promoted", 0, False)
        tally, _ = await rig.traffic(set(), 0.0)
        assert {pods.version_of(name) for name in tally.names} == {"v2"}


async def analysis(rig: Rig) -> dict[str, float]:
    """The shipped AnalysisTemplate's measurements (deploy/kubernetes/argo/), its args
    rendered as Argo renders ``{{args.NAME}}``, against the real Prometheus."""
    assert rig.prom is not None
    values = {}
    for metric in ANALYSIS["spec"]["metrics"]:
        query = metric["provider"]["prometheus"]["query"].replace(
            "{{args.canary-service}}", CANARY)
        value = await asyncio.to_thread(rig.prom.query, query)
        assert value is not None, (metric["name"], query)
        values[metric["name"]] = value
    return values


async def select(api: Api, pods: Pods, service: str, template_hash: str) -> None:
    """The Rollout controller: the Service's selector gets the ReplicaSet's hash."""
    for _ in range(5):
        obj = await api.get("Service", service)
        obj["spec"]["selector"][HASH_LABEL] = template_hash
        try:
            await api.update(obj)
            break
        except Conflict:
            continue
    pods.sync()


def status_current(kube: Any) -> bool:
    route = kube.get("HTTPRoute", NS, ROUTE)
    generation = route["metadata"]["generation"]
    return any(c["type"] == "Accepted" and c["status"] == "True"
               and c["observedGeneration"] == generation
               for p in (route.get("status") or {}).get("parents") or []
               for c in p["conditions"])
