"""The Linkerd-compatible series' workload labels (docs/metrics.md, "Linkerd-compatible
series"): the destination's namespace and deployment as Flagger's linkerd queries group
them, and pyproxy's own identity from the downward API on the outbound series."""

from __future__ import annotations

import pytest

from pyproxy.config.model import Backend, Config, Endpoint, KubernetesConfig, Route, Service
from pyproxy.metrics.linkerd import (
    backend_workloads,
    deployment_of_pod,
    response_samples,
    source_labels,
)


@pytest.mark.parametrize("pod, deployment", [
    ("podinfo-primary-7d9c8b5f6-x2x9z", "podinfo-primary"),
    ("podinfo-5b8c9d7f4d-q8w2k", "podinfo"),
    ("web-0", None),                     # a StatefulSet's pod
    ("podinfo-primary-abcde", None),     # vowels: not a generated hash
    (None, None),
])
def test_the_deployment_a_pod_name_belongs_to(pod: str | None, deployment: str | None) -> None:
    assert deployment_of_pod(pod) == deployment


def test_own_identity_comes_from_the_downward_api() -> None:
    env = {"POD_NAMESPACE": "edge", "POD_NAME": "pyproxy-6f7b9c8d5c-kq2zt"}
    assert source_labels(env) == {"namespace": "edge", "deployment": "pyproxy",
                                  "pod": "pyproxy-6f7b9c8d5c-kq2zt"}
    assert source_labels({**env, "POD_DEPLOYMENT": "gateway"})["deployment"] == "gateway"
    assert source_labels({}) == {}


def _flagger_services(kubernetes: KubernetesConfig | None, canary: str, primary: str) -> Config:
    """Flagger's two Services, endpoints as in-cluster mode builds them from EndpointSlices
    (the pod name from ``targetRef``)."""
    def pods(service: str, *names: str) -> Service:
        return Service(service, tuple(Endpoint(f"10.0.0.{i}", 9898, {"app": service, "pod": n})
                                      for i, n in enumerate(names)))

    return Config(
        services={canary: pods(canary, "podinfo-5b8c9d7f4d-q8w2k", "podinfo-5b8c9d7f4d-z7x4p"),
                  primary: pods(primary, "podinfo-primary-7d9c8b5f6-x2x9z")},
        routes=(Route("podinfo-0", (Backend(primary, weight=90), Backend(canary, weight=10))),),
        kubernetes=kubernetes)


def test_in_cluster_backends_report_their_pods_deployment_and_namespace() -> None:
    config = _flagger_services(KubernetesConfig(namespaces=("test",)), "podinfo-canary",
                               "podinfo-primary")
    assert backend_workloads(config, {}) == {
        "podinfo-primary": ("test", "podinfo-primary", "podinfo-primary"),
        "podinfo-canary": ("test", "podinfo", "podinfo-canary")}
    # the pod's own namespace when none is configured; NAME.NS when several are watched
    own = _flagger_services(KubernetesConfig(), "podinfo-canary", "podinfo-primary")
    assert backend_workloads(own, {"POD_NAMESPACE": "test"})["podinfo-canary"][0] == "test"
    several = _flagger_services(KubernetesConfig(namespaces=("*",)), "podinfo-canary.test",
                                "podinfo-primary.test")
    assert backend_workloads(several, {})["podinfo-canary.test"][:2] == ("test", "podinfo")


def test_files_alone_keep_the_defaults() -> None:
    config = _flagger_services(None, "podinfo-canary", "podinfo-primary")
    assert backend_workloads(config, {"POD_NAMESPACE": "test"})["podinfo-canary"] == (
        "default", "podinfo-canary", "podinfo-canary")


def test_outbound_series_carry_the_source_inbound_the_destination() -> None:
    workloads = {"podinfo-canary": ("test", "podinfo", "podinfo-canary")}
    source = {"namespace": "edge", "deployment": "pyproxy", "pod": "pyproxy-6f7b9c8d5c-kq2zt"}
    samples = response_samples({("podinfo-0", "podinfo-canary", "503", "UH"): 4}, workloads,
                               source)
    inbound, outbound = (labels for _, labels, _ in samples)
    assert inbound == {"direction": "inbound", "namespace": "test", "deployment": "podinfo",
                       "classification": "failure", "status_code": "503"}
    assert outbound == {**source, "direction": "outbound", "dst_namespace": "test",
                        "dst_deployment": "podinfo", "dst_service": "podinfo-canary",
                        "classification": "failure", "status_code": "503"}
