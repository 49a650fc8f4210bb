"""``/metrics``: the Prometheus text format (docs/metrics.md), built from a ``Stats`` when
scraped, by a collector on a private ``CollectorRegistry`` — no global registry, so every
``Stats`` (one per process, one per test) starts clean. Also the parsing and writing of
expositions the leader of ``--workers N`` adds up (``merge``).

This is the only module that imports ``prometheus_client``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from pyproxy.metrics.linkerd import latency_samples, response_samples, source_labels
from pyproxy.metrics.merge import FamilyLike
from pyproxy.metrics.stats import DURATION_BUCKETS, CanaryMetrics, KubernetesMetrics, Stats

# The ``le`` label values; repr() writes these bounds as Prometheus does ("0.0025", "1.0").
_LE = (*(repr(b) for b in DURATION_BUCKETS), "+Inf")

LabelValues = TypeVar("LabelValues", bound=tuple[str, ...])


def render_metrics(stats: Stats) -> tuple[bytes, str]:
    """``/metrics``: the body and its content type (the classic Prometheus text format,
    which every scraper version reads)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatsCollector(stats))
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4


class _StatsCollector(Collector):
    """Builds the docs/metrics.md families from a ``Stats`` at scrape time.

    Dicts are copied before iterating: a scrape from another thread must not trip over a
    series added meanwhile. ``CounterMetricFamily`` appends ``_total`` itself.
    """

    def __init__(self, stats: Stats):
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        yield _counter("pyproxy_requests", "Downstream requests by route, backend, status code "
                       "(\"none\": no response was sent) and response flags (\"\": none).",
                       ["route", "backend", "code", "flag"], s.requests)
        yield _histogram(s)
        yield _counter("pyproxy_upstream_requests", "Upstream attempts (retries and mirrors "
                       "included) by status code (\"none\": connect failure, reset or timeout).",
                       ["service", "endpoint", "code"], s.upstream)
        yield _counter("pyproxy_retries", "Retries of upstream requests.",
                       ["route", "backend"], s.retries)
        yield _counter("pyproxy_faults_injected", "Injected faults (kind: delay or abort).",
                       ["route", "kind"], s.faults)
        yield _counter("pyproxy_mirror_requests", "Mirrored (shadow) requests by result.",
                       ["route", "backend", "result"], s.mirrors)
        yield _counter("pyproxy_backend_failovers", "Requests sent to another backend of the "
                       "route because the one drawn had no available endpoint.",
                       ["route", "from_backend", "to_backend"], s.failovers)

        weights = GaugeMetricFamily("pyproxy_backend_weight",
                                    "Configured share of the route's traffic (0-1).",
                                    labels=["route", "backend"])
        for route, backend, share in s.weights_provider() if s.weights_provider else ():
            weights.add_metric([route, backend], share)
        yield weights

        ejected = GaugeMetricFamily("pyproxy_endpoint_ejected",
                                    "1 while outlier detection has the endpoint ejected.",
                                    labels=["service", "endpoint"])
        for service, endpoint, is_ejected in s.ejections_provider() if s.ejections_provider else ():
            ejected.add_metric([service, endpoint], 1.0 if is_ejected else 0.0)
        yield ejected
        yield _counter("pyproxy_endpoint_ejections", "Outlier ejections by reason.",
                       ["service", "endpoint", "reason"], s.ejections)

        yield _counter("pyproxy_downstream_rejected",
                       "Requests refused before routing (malformed, oversized, too slow, "
                       "over the connection cap), by status.", ["status"], s.rejected)
        yield _counter("pyproxy_circuit_breaker_overflows",
                       "Requests refused by a circuit-breaker limit.",
                       ["service", "limit"], s.overflows)
        active = GaugeMetricFamily("pyproxy_active_requests", "Requests in flight.",
                                   labels=["route"])
        for route, count in list(s.active.items()):
            active.add_metric([route], count)
        yield active

        yield _counter("pyproxy_config_reloads", "Config reload attempts by result.",
                       ["result"], {(result,): n for result, n in s.reloads.items()})
        yield GaugeMetricFamily("pyproxy_config_last_reload_success",
                                "1 if the last config reload succeeded.",
                                value=1.0 if s.last_reload_ok else 0.0)
        yield GaugeMetricFamily("pyproxy_config_generation",
                                "Generation of the config now serving.", value=s.generation)
        if s.canaries_provider is not None:
            yield from _canary_families(list(s.canaries_provider()))
        if s.kubernetes_provider is not None:
            yield from _kubernetes_families(s.kubernetes_provider())
        if s.linkerd_compat:
            workloads = dict(s.workloads_provider()) if s.workloads_provider else {}
            source = source_labels()
            total = Metric("response", "HTTP responses by classification and status code "
                           "(Linkerd-compatible).", "counter")
            for name, labels, value in response_samples(s.requests, workloads, source):
                total.add_sample(name, labels, value)
            yield total
            latency = Metric("response_latency_ms", "Response latency in milliseconds "
                             "(Linkerd-compatible buckets).", "histogram")
            for name, labels, value in latency_samples(s.linkerd_latency, workloads, source):
                latency.add_sample(name, labels, value)
            yield latency


def _counter(name: str, help_text: str, labels: list[str],
             data: Mapping[LabelValues, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=labels)
    for key, value in list(data.items()):
        family.add_metric(key, value)
    return family


def _histogram(s: Stats) -> HistogramMetricFamily:
    family = HistogramMetricFamily("pyproxy_request_duration_seconds",
                                   "Downstream request duration in seconds.",
                                   labels=["route", "backend"])
    for (route, backend), histogram in list(s.durations.items()):
        cumulative, buckets = 0, []
        for le, count in zip(_LE, list(histogram.counts), strict=True):
            cumulative += count
            buckets.append((le, float(cumulative)))
        family.add_metric([route, backend], buckets, histogram.sum)
    return family


def _canary_families(canaries: list[CanaryMetrics]) -> Iterator[Metric]:
    weight = GaugeMetricFamily("pyproxy_canary_weight",
                               "Candidate's weight on the canary's route, percent (0-100).",
                               labels=["canary"])
    phase = GaugeMetricFamily("pyproxy_canary_phase",
                              "1 for the canary's current phase, 0 for the others.",
                              labels=["canary", "phase"])
    failed = GaugeMetricFamily("pyproxy_canary_failed_checks",
                               "Failed checks in the current analysis (rollback at threshold).",
                               labels=["canary"])
    transitions = CounterMetricFamily("pyproxy_canary_transitions",
                                      "Canary phase changes, by the phase entered.",
                                      labels=["canary", "to"])
    checks = CounterMetricFamily("pyproxy_canary_checks",
                                 "Interval judgements by result (pass, fail, no_data).",
                                 labels=["canary", "result"])
    for canary in canaries:
        name = canary["name"]
        weight.add_metric([name], canary["weight"])
        failed.add_metric([name], canary["failed_checks"])
        for state, value in canary["phases"].items():
            phase.add_metric([name, state], value)
        for to, count in canary["transitions"].items():
            transitions.add_metric([name, to], count)
        for result, count in canary["checks"].items():
            checks.add_metric([name, result], count)
    return iter((weight, phase, failed, transitions, checks))


def _kubernetes_families(k: KubernetesMetrics) -> Iterator[Metric]:
    objects = GaugeMetricFamily("pyproxy_kubernetes_objects", "API objects pyproxy serves, "
                                "by kind and import result (accepted, unresolved, rejected).",
                                labels=["kind", "result"])
    for (kind, result), count in sorted(k["objects"].items()):
        objects.add_metric([kind, result], count)
    conflicts = GaugeMetricFamily("pyproxy_kubernetes_conflicts", "Conflicts between the "
                                  "config file and API objects, by kind (service, route).",
                                  labels=["kind"])
    for kind, count in sorted(k["conflicts"].items()):
        conflicts.add_metric([kind], count)
    synced = GaugeMetricFamily("pyproxy_kubernetes_synced", "1 once the kind has been listed "
                               "(readiness waits for every kind).", labels=["kind"])
    for kind, done in sorted(k["synced"].items()):
        synced.add_metric([kind], 1.0 if done else 0.0)
    relists = CounterMetricFamily("pyproxy_kubernetes_relists", "Lists after the first, "
                                  "because a watch's resourceVersion expired (410 Gone).",
                                  labels=["kind"])
    for kind, count in sorted(k["relists"].items()):
        relists.add_metric([kind], count)
    snapshots = CounterMetricFamily("pyproxy_kubernetes_snapshots", "Configs built from API "
                                    "changes, by result (success, failure, endpoints: only "
                                    "endpoints changed).", labels=["result"])
    for result, count in sorted(k["snapshots"].items()):
        snapshots.add_metric([result], count)
    return iter((objects, conflicts, synced, relists, snapshots))


# ---------------------------------------------------------------------- --workers N


def parse_exposition(text: str) -> list[Metric]:
    """A worker's ``/metrics`` body, parsed by prometheus_client's own parser."""
    return list(text_string_to_metric_families(text))


def workers_family(up: int, count: int) -> Metric:
    family = GaugeMetricFamily("pyproxy_workers", "Worker processes (--workers N) by state: up "
                               "answered this scrape, down did not (exited, restarting).",
                               labels=["state"])
    family.add_metric(["up"], up)
    family.add_metric(["down"], count - up)
    return family


class _Fixed(Collector):
    """A collector of families already built."""

    def __init__(self, families: Sequence[Metric]):
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def render_families(families: Iterable[FamilyLike]) -> bytes:
    """Families (``merge.merge_expositions``, ``workers_family``) in the same text format as
    ``render_metrics``."""
    built = []
    for family in families:
        metric = Metric(family.name, family.documentation, family.type)
        for sample in family.samples:
            metric.add_sample(sample.name, dict(sample.labels), sample.value)
        built.append(metric)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(built))
    return generate_latest(registry)
