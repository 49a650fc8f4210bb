"""Flagger with ``provider: gatewayapi:v1`` driving pyproxy, judged by the shipped
MetricTemplates over pyproxy's own series in a real Prometheus.

Replayed from Flagger v1.44.0 (see ``replay.py``): the Services ``podinfo``,
``podinfo-primary``, ``podinfo-canary`` (``pkg/router/kubernetes_default.go``), the HTTPRoute
``podinfo`` and its full updates at every step (``pkg/router/gateway_api.go``: Reconcile,
SetRoutes), read back before every step with the v1.42+ status check (GetRoutes: the status
entry for the exact parentRef Accepted, its observedGeneration not behind), and the step,
promotion and rollback order of ``pkg/controller/scheduler.go``.

- A healthy canary is stepped 10 → 50, promoted (the primary's pods replaced by the
  canary's version), and traffic goes back to the primary: 100/0, all on the new version.
- A 50%-failing canary: the success-rate query reports about 50 %, Flagger fails its checks
  up to the threshold and rolls back: 100/0, served after one watch event.
"""

from __future__ import annotations

from typing import Any

from tests.integration.progressive_delivery.replay import (
    NS,
    Api,
    Flagger,
    Metric,
    Pod,
    Pods,
    drive,
    gateway,
    load_metric_templates,
    running,
)

HOST = "www.example.com"

# Flagger's Gateway API tutorial
# (docs/gitbook/tutorials/gatewayapi-progressive-delivery.md), with the Gateway pyproxy's,
# the threshold and intervals shortened for a test run, and the metrics the shipped
# MetricTemplates (deploy/kubernetes/flagger/).
CANARY: dict[str, Any] = {
    "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
    "metadata": {"name": "podinfo", "namespace": NS},
    "spec": {
        "provider": "gatewayapi:v1",
        "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
        "service": {"port": 9898, "hosts": [HOST],
                    "gatewayRefs": [{"name": "public", "namespace": NS}]},
        "analysis": {"interval": "1m", "threshold": 2, "maxWeight": 50, "stepWeight": 10,
                     "metrics": [
                         {"name": "success-rate", "interval": "20s",
                          "templateRef": {"name": "pyproxy-success-rate",
                                          "namespace": "flagger-system"},
                          "thresholdRange": {"min": 99}},
                         {"name": "latency", "interval": "20s",
                          "templateRef": {"name": "pyproxy-latency",
                                          "namespace": "flagger-system"},
                          "thresholdRange": {"max": 0.5}}]}},
}


def template_metrics() -> list[Metric]:
    templates = load_metric_templates()
    metrics = []
    for entry in CANARY["spec"]["analysis"]["metrics"]:
        bounds = entry["thresholdRange"]
        metrics.append(Metric(entry["name"], templates[entry["templateRef"]["name"]],
                              entry["interval"], bounds.get("min"), bounds.get("max")))
    return metrics


async def _set_up(kube: Any) -> tuple[Flagger, Pods]:
    api = Api(kube)
    pods = Pods(kube)
    gateway(kube)
    flagger = Flagger(api, CANARY)
    await pods.run("podinfo-primary", {"app": "podinfo-primary"}, "6.0.0", 2)
    await flagger.initialize()
    pods.sync()
    return flagger, pods


async def test_healthy_canary_stepped_to_50_and_promoted(kube, tmp_path):
    flagger, pods = await _set_up(kube)
    async with running(kube, pods, tmp_path, HOST, "flagger gatewayapi, healthy canary") as rig:
        old_primary = list(pods.pods.values())
        canary: list[Pod] = []

        async def new_revision() -> None:
            canary.extend(await pods.run("podinfo", {"app": "podinfo"}, "6.0.1", 2))

        async def promote() -> None:
            """Promote copies the canary's pod template to podinfo-primary; the Deployment
            controller then rolls the primary's pods to the new version."""
            await pods.run("podinfo-primary", {"app": "podinfo-primary"}, "6.0.1", 2)
            await pods.stop(old_primary)

        await drive(flagger, rig, template_metrics(), new_revision=new_revision,
                    promote=promote,
                    scale_canary_to_zero=lambda: pods.stop(canary),
                    canary_pods=lambda: {p.name for p in canary})
        assert flagger.phase == "Succeeded"
        written = [s.written for s in rig.log.steps if s.written]
        # created 100/0, stepped 10 → 50, back to 100/0 after the promotion
        assert written == ["100/0", "90/10", "80/20", "70/30", "60/40", "50/50", "100/0"]
        for values in flagger.analyses:
            assert values["success-rate"] == 100, values
            assert values["latency"] is not None and values["latency"] <= 0.5, values
        # every read of the route found its status current (GetRoutes asserts it)
        assert flagger.status_reads and all(o >= g for o, g in flagger.status_reads)
        tally, _ = await rig.traffic(set(), 0.0)
        assert {pods.version_of(name) for name in tally.names} == {"6.0.1"}
        print(f"  status reads (observedGeneration, generation): {flagger.status_reads}")


async def test_failing_canary_rolled_back(kube, tmp_path):
    flagger, pods = await _set_up(kube)
    async with running(kube, pods, tmp_path, HOST, "flagger gatewayapi, failing canary") as rig:
        canary: list[Pod] = []

        async def new_revision() -> None:
            canary.extend(await pods.run("podinfo", {"app": "podinfo"}, "6.0.1", 2,
                                         failing=True))

        figures = await drive(flagger, rig, template_metrics(), new_revision=new_revision,
                              promote=_never,
                              scale_canary_to_zero=lambda: pods.stop(canary),
                              canary_pods=lambda: {p.name for p in canary})
        assert flagger.phase == "Failed"
        assert len(flagger.analyses) == CANARY["spec"]["analysis"]["threshold"]
        for values in flagger.analyses:
            # about half fails (dozens of the canary's requests in the window)
            rate = values["success-rate"]
            assert rate is not None and 40 <= rate <= 60, values
        assert figures["rollback_spec_events"] == 1
        assert all(o >= g for o, g in flagger.status_reads)
        print(f"  figures: {figures}; status reads: {flagger.status_reads}")


async def _never() -> None:
    raise AssertionError("a failing canary was promoted")
