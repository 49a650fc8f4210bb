"""Adding up several workers' numbers (``pyproxy run --workers N``): their Prometheus
expositions, parsed, and their live windows. Pure arithmetic over plain values; which
workers to ask and when is ``workers.peers``.

Counters and histograms are summed per label set. Gauges are combined by what they measure
(``GAUGE_MERGE``); every other gauge (backend weights, config generation, canary weight,
phase and failed checks) describes state the workers share, or that only the leader has:
the leader's value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pyproxy.metrics.windows import WINDOW_BUCKETS, WindowExport, sparse

GAUGE_MERGE: Mapping[str, Callable[[list[float]], float]] = {
    # requests in flight in each process: the proxy's are their sum
    "pyproxy_active_requests": sum,
    # outlier detection runs in each worker: 1 while any worker has the endpoint ejected
    "pyproxy_endpoint_ejected": max,
    # every worker reloads the same files: 0 when any worker's last reload failed
    "pyproxy_config_last_reload_success": min,
}


class SampleLike(Protocol):
    """One sample of a family: what prometheus_client's parser yields, and ``Sample``."""

    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def value(self) -> float: ...


class FamilyLike(Protocol):
    """A metric family: a parsed exposition's (``exposition.parse_exposition``), or
    ``Family``."""

    @property
    def name(self) -> str: ...
    @property
    def documentation(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def samples(self) -> Sequence[SampleLike]: ...


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


@dataclass
class Family:
    """A merged family (``exposition.render_families`` writes it out)."""

    name: str
    documentation: str
    type: str  # counter, gauge, histogram, …
    samples: list[Sample] = field(default_factory=list)


def merge_expositions(workers: Sequence[Sequence[FamilyLike]]) -> list[Family]:
    """One exposition from several workers' families. ``workers[0]`` is the leader's: a
    shared-state gauge takes the first value seen, which is the leader's when it has one."""
    families: dict[str, Family] = {}
    # family → (sample name, labels) → (labels as first seen, values from each worker)
    samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]],
                            tuple[Mapping[str, str], list[float]]]] = {}
    for worker in workers:
        for family in worker:
            if family.name not in families:
                families[family.name] = Family(family.name, family.documentation, family.type)
                samples[family.name] = {}
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[family.name].setdefault(key, (sample.labels, []))[1].append(sample.value)
    for name, merged in families.items():
        combine = GAUGE_MERGE.get(name, _first) if merged.type == "gauge" else sum
        for (sample_name, _), (labels, values) in samples[name].items():
            merged.samples.append(Sample(sample_name, labels, combine(values)))
    return list(families.values())


def _first(values: list[float]) -> float:
    return values[0]


def cumulative_only(families: Iterable[FamilyLike]) -> list[FamilyLike]:
    """The counters and histograms: what a worker that has exited still contributes, so the
    proxy's totals do not drop (Prometheus would read a drop as a reset)."""
    return [f for f in families if f.type in ("counter", "histogram")]


def window_totals(exports: Iterable[WindowExport]) -> WindowExport:
    """Window exports of one (route, backend) folded into one that keeps only their summed
    totals: what a worker that has exited still contributes to the canary's interval counts
    (its seconds simply age out)."""
    requests = successes = 0
    latency = [0] * (len(WINDOW_BUCKETS) + 1)
    first: int | None = None
    for export in exports:
        more_requests, more_successes, more_latency = export["totals"]
        requests += more_requests
        successes += more_successes
        for bucket, count in more_latency:
            latency[bucket] += count
        first = export["first"] if first is None else min(first, export["first"])
    return {"first": first if first is not None else 0, "seconds": [],
            "totals": (requests, successes, sparse(latency))}
