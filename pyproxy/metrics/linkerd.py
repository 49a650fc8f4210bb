"""Linkerd proxy metric names (``metrics: {linkerd_compat: true}``), so Flagger's built-in
``linkerd`` queries work unchanged::

    response_total{namespace, deployment=~TARGET, classification!="failure",
                   direction="inbound"}
    response_latency_ms_bucket{namespace, deployment=~TARGET, direction="inbound"}

pyproxy stands for both of a meshed call's proxies, so each response is exported twice,
from the same counts: ``direction="inbound"`` with the destination's ``namespace`` and
``deployment`` (what Flagger queries), and ``direction="outbound"`` with ``dst_namespace``,
``dst_deployment`` and ``dst_service`` (what ``linkerd viz stat --from`` shows) plus, as a
Linkerd proxy labels its outbound series with its own pod, pyproxy's own ``namespace``,
``deployment`` and ``pod`` from the downward API. Filter on ``direction`` when summing.
``classification`` is ``failure`` for 5xx or no response; ``status_code`` is empty when no
response was sent. Latency is the whole request (Linkerd's is time to first byte). Counts
come from ``pyproxy_requests_total``, so the request path pays nothing extra for them;
latency is counted while enabled.

A destination's workload (docs/metrics.md, "Linkerd-compatible series"): the ``namespace``
and ``deployment`` labels its endpoints share; in in-cluster mode, else the Service's
namespace and the Deployment its pods' names belong to (EndpointSlices name each pod).

This module computes the samples as plain values; ``exposition`` wraps them in families.
"""
from __future__ import annotations

import os
import re
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Mapping

from pyproxy.config.model import Config

# Linkerd's ``response_latency_ms`` bucket bounds (linkerd2-proxy
# linkerd/metrics/src/latency.rs), in milliseconds; +Inf is implied.
LINKERD_LATENCY_BUCKETS_MS = (1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
                              1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000)
LINKERD_LE = (*(str(b) for b in LINKERD_LATENCY_BUCKETS_MS), "+Inf")  # le="5", as Linkerd

# (namespace, deployment, service): who a backend is, in Linkerd's labels
Workload = tuple[str, str, str]
# backend name → its workload
WorkloadsProvider = Callable[[], Mapping[str, Workload]]
# (sample name, labels, value), as a Prometheus sample
Sample = tuple[str, dict[str, str], float]


class LinkerdLatency:
    """``response_latency_ms`` of one backend: per-bucket counts and a sum, in ms."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LINKERD_LATENCY_BUCKETS_MS) + 1)
        self.sum = 0.0

    def observe(self, ms: float) -> None:
        self.counts[bisect_left(LINKERD_LATENCY_BUCKETS_MS, ms)] += 1
        self.sum += ms


def default_workload(backend: str) -> Workload:
    """(namespace, deployment, service) when the endpoints' labels do not say: namespace
    ``default``, deployment ``SERVICE-SUBSET`` (or ``SERVICE``)."""
    service, _, subset = backend.partition("/")
    return "default", f"{service}-{subset}" if subset else service, service


# A Deployment's pod is named DEPLOYMENT-HASH-SUFFIX: the ReplicaSet's pod-template-hash
# and a random suffix, both from the alphabet Kubernetes uses for generated names
# (no vowels, no 0, 1, 3: k8s.io/apimachinery/pkg/util/rand).
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_DEPLOYMENT_POD = re.compile(
    rf"(?P<deployment>[a-z0-9][a-z0-9.-]*?)-[{_NAME_ALPHABET}]{{1,10}}-[{_NAME_ALPHABET}]{{5}}")


def deployment_of_pod(pod: str | None) -> str | None:
    """The Deployment a pod belongs to, read from its name; None when the name is not a
    Deployment pod's (a StatefulSet's ``web-0``, a bare pod)."""
    found = _DEPLOYMENT_POD.fullmatch(pod or "")
    return found.group("deployment") if found else None


def source_labels(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """pyproxy's own ``namespace``, ``deployment`` and ``pod`` for the outbound series, from
    the downward API: ``POD_NAMESPACE``, ``POD_NAME``, and ``POD_DEPLOYMENT`` (else the
    Deployment the pod's name says). Outside a pod: none of them."""
    labels = {"namespace": env.get("POD_NAMESPACE", ""), "pod": env.get("POD_NAME", ""),
              "deployment": env.get("POD_DEPLOYMENT") or deployment_of_pod(
                  env.get("POD_NAME")) or ""}
    return {key: value for key, value in labels.items() if value}


def _home_namespace(config: Config, env: Mapping[str, str]) -> str | None:
    """In in-cluster mode, the namespace of a Service named without one: the one namespace
    watched (``kubernetes.namespaces``, else the pod's own)."""
    if config.kubernetes is None:
        return None
    watched = config.kubernetes.namespaces
    if len(watched) == 1 and watched[0] != "*":
        return watched[0]
    return env.get("POD_NAMESPACE") if not watched else None


def backend_workloads(config: Config, env: Mapping[str, str] = os.environ
                      ) -> dict[str, Workload]:
    """backend name → (namespace, deployment, service) for the Linkerd-compatible series.

    From the labels the backend's endpoints share, ``namespace`` and ``deployment``. In
    in-cluster mode, else: the Service's namespace (``NAME.NS`` when several are watched,
    else the one watched) and the Deployment all its pods belong to (their names, from the
    EndpointSlices), so Flagger's ``NAME-canary`` Service reports as Deployment ``NAME``.
    Else ``default_workload``."""
    home = _home_namespace(config, env)
    # several namespaces watched: in-cluster mode names each Service NAME.NS
    watched = config.kubernetes.namespaces if config.kubernetes is not None else ()
    several = watched == ("*",) or len(watched) > 1
    workloads: dict[str, Workload] = {}
    for route in config.routes:
        for backend in route.backends:
            service = config.services.get(backend.service)
            if backend.name in workloads or service is None:
                continue
            namespace, deployment, name = default_workload(backend.name)
            labels = [ep.labels for ep in service.subset_endpoints(backend.subset)]
            if home is not None:
                namespace = home
            elif several and "." in backend.service:
                namespace = backend.service.rsplit(".", 1)[1]
            if config.kubernetes is not None:
                pods = {deployment_of_pod(lab.get("pod")) for lab in labels}
                if len(pods) == 1 and None not in pods:
                    deployment = pods.pop() or deployment
            for key in ("namespace", "deployment"):
                values = {lab.get(key) for lab in labels}
                if len(values) == 1 and None not in values:
                    value = values.pop()
                    assert value is not None  # checked just above; says so to the type checker
                    namespace, deployment = ((value, deployment) if key == "namespace"
                                             else (namespace, value))
            workloads[backend.name] = (namespace, deployment, name)
    return workloads


def response_samples(requests: Mapping[tuple[str, str, str, str], int],
                     workloads: Mapping[str, Workload],
                     source: Mapping[str, str] | None = None) -> list[Sample]:
    """``response_total`` from ``pyproxy_requests_total``'s counts, keyed (route, backend,
    code, flag); ``source`` labels the outbound series (``source_labels``)."""
    responses: defaultdict[tuple[str, str, str, str, str], int] = defaultdict(int)
    for (_route, backend, code, _flag), count in list(requests.items()):
        if not backend:
            continue  # no route matched: there is no destination to name
        answered = code.isdigit()  # else ``none``: no response was sent
        failure = not answered or int(code) >= 500
        status = code if answered else ""
        workload = workloads.get(backend) or default_workload(backend)
        responses[(*workload, "failure" if failure else "success", status)] += count
    samples: list[Sample] = []
    for (namespace, deployment, service, classification, status), count in responses.items():
        common = {"classification": classification, "status_code": status}
        samples.append(("response_total", {"direction": "inbound", "namespace": namespace,
                                           "deployment": deployment, **common}, count))
        samples.append(("response_total", {**(source or {}), "direction": "outbound",
                                           "dst_namespace": namespace,
                                           "dst_deployment": deployment, "dst_service": service,
                                           **common}, count))
    return samples


def latency_samples(latency: Mapping[str, LinkerdLatency],
                    workloads: Mapping[str, Workload],
                    source: Mapping[str, str] | None = None) -> list[Sample]:
    """``response_latency_ms`` histogram samples, backends of one workload added up;
    ``source`` labels the outbound series."""
    merged: dict[Workload, tuple[list[int], float]] = {}
    for backend, histogram in list(latency.items()):
        key = workloads.get(backend) or default_workload(backend)
        counts, total_ms = merged.get(key, ([0] * len(LINKERD_LE), 0.0))
        merged[key] = ([a + b for a, b in zip(counts, histogram.counts, strict=True)],
                       total_ms + histogram.sum)
    samples: list[Sample] = []
    for (namespace, deployment, service), (counts, total_ms) in merged.items():
        for labels in ({"direction": "inbound", "namespace": namespace, "deployment": deployment},
                       {**(source or {}), "direction": "outbound", "dst_namespace": namespace,
                        "dst_deployment": deployment, "dst_service": service}):
            cumulative = 0
            for le, count in zip(LINKERD_LE, counts, strict=True):
                cumulative += count
                samples.append(("response_latency_ms_bucket", {**labels, "le": le}, cumulative))
            samples.append(("response_latency_ms_count", labels, cumulative))
            samples.append(("response_latency_ms_sum", labels, total_ms))
    return samples
