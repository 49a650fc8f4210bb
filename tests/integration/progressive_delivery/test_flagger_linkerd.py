"""Flagger with ``provider: linkerd`` (SMI) driving pyproxy: a 50%-failing canary rolled back
by Flagger's built-in linkerd queries, over pyproxy's Linkerd-compatible series scraped by a
real Prometheus.

Replayed from Flagger v1.44.0 (see ``replay.py``): ``pkg/router/smi.go`` writes a
``split.smi-spec.io/v1alpha1`` TrafficSplit named after the service, backends
``NAME-canary``/``NAME-primary`` with weights as quantities (``resource.NewQuantity(w,
DecimalExponent)``, so ``"10"``, ``"90"``); ``pkg/metrics/observers/linkerd.go`` judges with
``response_total`` and ``response_latency_ms_bucket`` by ``namespace`` and ``deployment``.
The canary starts with no endpoints (Flagger scales it to zero after initializing), which
pyproxy must load.
"""

from __future__ import annotations

from typing import Any

from tests.integration.kubernetes.cluster import metric
from tests.integration.progressive_delivery.replay import (
    LINKERD_QUERIES,
    NS,
    Api,
    Flagger,
    Metric,
    Pod,
    Pods,
    drive,
    running,
)

# Flagger's linkerd tutorial (docs/gitbook/tutorials/linkerd-progressive-delivery.md), with
# the threshold, step and intervals shortened for a test run.
CANARY: dict[str, Any] = {
    "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
    "metadata": {"name": "podinfo", "namespace": NS},
    "spec": {
        "provider": "linkerd",
        "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
        "service": {"port": 9898},
        "analysis": {"interval": "30s", "threshold": 2, "maxWeight": 50, "stepWeight": 10,
                     "metrics": [
                         {"name": "request-success-rate", "interval": "20s",
                          "thresholdRange": {"min": 99}},
                         {"name": "request-duration", "interval": "20s",
                          "thresholdRange": {"max": 500}}]}},
}


def builtin_metrics() -> list[Metric]:
    """The Canary's metrics, by name the built-in linkerd queries (scheduler_metrics.go:
    a metric without templateRef named request-success-rate / request-duration)."""
    metrics = []
    for entry in CANARY["spec"]["analysis"]["metrics"]:
        bounds = entry["thresholdRange"]
        metrics.append(Metric(entry["name"], LINKERD_QUERIES[entry["name"]],
                              entry["interval"], bounds.get("min"), bounds.get("max")))
    return metrics


async def test_linkerd_queries_roll_back_a_failing_canary(kube, tmp_path):
    api = Api(kube)
    pods = Pods(kube)
    flagger = Flagger(api, CANARY)
    primary = await pods.run("podinfo-primary", {"app": "podinfo-primary"}, "6.0.0", 2)
    await flagger.initialize()
    pods.sync()
    async with running(kube, pods, tmp_path, "podinfo", "flagger linkerd, failing canary",
                       "metrics:\n  linkerd_compat: true\n") as rig:
        canary: list[Pod] = []

        async def new_revision() -> None:
            """The Deployment podinfo updated to a bad version: Flagger scales it up."""
            canary.extend(await pods.run("podinfo", {"app": "podinfo"}, "6.0.1", 2,
                                         failing=True))

        figures = await drive(
            flagger, rig, builtin_metrics(), new_revision=new_revision,
            promote=_never, scale_canary_to_zero=lambda: pods.stop(canary),
            canary_pods=lambda: {p.name for p in canary})
        assert flagger.phase == "Failed"
        # the queries saw the failure: about half of the canary's requests failed (the
        # window holds dozens of them), and quickly
        assert len(flagger.analyses) == CANARY["spec"]["analysis"]["threshold"]
        for values in flagger.analyses:
            rate, duration = values["request-success-rate"], values["request-duration"]
            assert rate is not None and 40 <= rate <= 60, values
            assert duration is not None and duration <= 100, values
        assert figures["rollback_spec_events"] == 1
        # the TrafficSplit (no status subresource) imported as accepted all along
        assert await metric(rig.proxy, "pyproxy_kubernetes_objects", kind="TrafficSplit",
                            result="accepted") == 1
        print(f"  figures: {figures}; primary pods {[p.name for p in primary]}")


async def _never() -> None:
    raise AssertionError("a failing canary was promoted")
