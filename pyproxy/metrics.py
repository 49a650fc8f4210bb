"""Request accounting: Prometheus metrics (SPEC §4) and live per-backend windows.

The request path only does plain Python bookkeeping — a dict increment, a bisect into
fixed bucket bounds. Prometheus metric families are built from those numbers when
``/metrics`` is scraped, by a custom collector on a private ``CollectorRegistry`` (no
global registry, so every ``Stats`` — one per process, one per test — starts clean).
This is the only module that imports ``prometheus_client``.

Label conventions (bounded: route, backend, service and endpoint names come from config;
never paths, client IPs or request ids):

* ``code`` is the HTTP status as a string; ``"none"`` when there was no response at all
  (the client went away first, or an upstream attempt failed to connect, was reset or
  timed out before a status line).
* ``flag`` is the request's flag string as recorded (``"URX"``, ``"DI,FI"``); ``""`` when
  the proxy set no flag, so ``flag=""`` selects the requests the proxy did not interfere with.

Besides the cumulative counters, ``Stats`` keeps a sliding window (default 30 s, in 1-s
buckets) per (route, backend) for the dashboard, ``pyproxy status`` and the canary judge:
request rate, success rate and latency percentiles over the last seconds.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from pyproxy.outcome import AttemptOutcome, RequestOutcome

# SPEC §4: the buckets of pyproxy_request_duration_seconds (seconds; +Inf is implied).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Window percentiles need finer buckets than the exported histogram: a p99 judged against
# "500ms" must not jump from 250 ms to 500 ms. Geometric bounds (×1.1 from 0.5 ms to ~65 s):
# an interpolated percentile stays inside the bucket of the true one, so within 10 % of it.
WINDOW_BUCKETS = tuple(0.0005 * 1.1**i for i in range(125))

NO_RESPONSE = "none"  # the ``code`` label when no status line was received

# With ``metrics: {linkerd_compat: true}``: Linkerd's ``response_latency_ms`` bucket bounds
# (linkerd2-proxy linkerd/metrics/src/latency.rs), in milliseconds; +Inf is implied.
LINKERD_LATENCY_BUCKETS_MS = (1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
                              1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000)

WeightsProvider = Callable[[], Iterable[tuple[str, str, float]]]
EjectionsProvider = Callable[[], Iterable[tuple[str, str, bool]]]
# backend name → (namespace, deployment, service): who a backend is, in Linkerd's labels
WorkloadsProvider = Callable[[], Mapping[str, tuple[str, str, str]]]
# one dict per canary: name, weight, phases {phase: 0|1}, failed_checks, transitions, checks
CanariesProvider = Callable[[], Iterable[dict]]
# (route, backend) → other workers' ``_Window.export()`` of it (``--workers N``, on the leader)
PeerWindows = Callable[[], Mapping[tuple[str, str], Sequence[dict]]]


def _code(status: int) -> str:
    return str(status) if status else NO_RESPONSE


def _is_success(o: RequestOutcome) -> bool:
    """Success for the windows: below 500 and no proxy flag other than an injected delay
    (a delayed request still reached its backend and was answered normally)."""
    return o.status < 500 and (not o.flags or o.flags == "DI")


class _Histogram:
    """Per-bucket (non-cumulative) counts and a sum; cumulated only when scraped."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)  # last slot: above the top bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (Prometheus `le`).
        self.counts[bisect_left(DURATION_BUCKETS, value)] += 1
        self.sum += value


_LE = tuple(floatToGoString(b) for b in DURATION_BUCKETS) + ("+Inf",)


class _LinkerdLatency:
    """``response_latency_ms`` of one backend: per-bucket counts and a sum, in ms."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LINKERD_LATENCY_BUCKETS_MS) + 1)
        self.sum = 0.0

    def observe(self, ms: float) -> None:
        self.counts[bisect_left(LINKERD_LATENCY_BUCKETS_MS, ms)] += 1
        self.sum += ms


_LINKERD_LE = tuple(str(b) for b in LINKERD_LATENCY_BUCKETS_MS) + ("+Inf",)  # le="5", as Linkerd writes it


class _Window:
    """A ring of per-second buckets covering the last ``size`` seconds.

    Slot ``s % size`` holds second ``s``; a slot still stamped with an older second is
    stale and reset on first use, so nothing has to run on a timer.
    """

    __slots__ = (
        "first",
        "latency",
        "requests",
        "second",
        "size",
        "successes",
        "total_latency",
        "total_requests",
        "total_successes",
    )

    def __init__(self, size: int, now: int):
        self.size = size
        self.first = now  # the rate is averaged over the seconds since then, at most `size`
        self.second = [-1] * size
        self.requests = [0] * size
        self.successes = [0] * size
        self.latency = [[0] * (len(WINDOW_BUCKETS) + 1) for _ in range(size)]
        # Since the window was created: two snapshots give exact counts for any interval,
        # whatever its length (the canary judges each of its intervals on these).
        self.total_requests = 0
        self.total_successes = 0
        self.total_latency = [0] * (len(WINDOW_BUCKETS) + 1)

    def add(self, now: int, ok: bool, duration: float) -> None:
        i = now % self.size
        if self.second[i] != now:
            self.second[i] = now
            self.requests[i] = self.successes[i] = 0
            self.latency[i] = [0] * (len(WINDOW_BUCKETS) + 1)
        bucket = bisect_left(WINDOW_BUCKETS, duration)
        self.requests[i] += 1
        self.successes[i] += ok
        self.latency[i][bucket] += 1
        self.total_requests += 1
        self.total_successes += ok
        self.total_latency[bucket] += 1

    def export(self, now: int) -> dict:
        """Plain values (JSON) for another worker to add up: the seconds still in the window
        with their counts and non-zero latency buckets, and the totals."""
        seconds = [[second, self.requests[i], self.successes[i], _sparse(self.latency[i])]
                   for i, second in enumerate(self.second) if now - self.size < second <= now]
        return {"first": self.first, "seconds": seconds,
                "totals": [self.total_requests, self.total_successes,
                           _sparse(self.total_latency)]}

    def absorb(self, export: dict, now: int) -> None:
        """Add an ``export`` of the same (route, backend), from another worker."""
        self.first = min(self.first, export["first"])
        for second, requests, successes, latency in export["seconds"]:
            if not now - self.size < second <= now:
                continue  # aged out since it was exported
            i = second % self.size
            if self.second[i] != second:
                self.second[i] = second
                self.requests[i] = self.successes[i] = 0
                self.latency[i] = [0] * (len(WINDOW_BUCKETS) + 1)
            self.requests[i] += requests
            self.successes[i] += successes
            for bucket, count in latency:
                self.latency[i][bucket] += count
        requests, successes, latency = export["totals"]
        self.total_requests += requests
        self.total_successes += successes
        for bucket, count in latency:
            self.total_latency[bucket] += count

    def summary(self, now: int) -> dict:
        requests = successes = 0
        latency = [0] * (len(WINDOW_BUCKETS) + 1)
        for i, second in enumerate(self.second):
            if now - self.size < second <= now:
                requests += self.requests[i]
                successes += self.successes[i]
                latency = [a + b for a, b in zip(latency, self.latency[i])]
        span = max(1, min(self.size, now - self.first + 1))
        return _summarize(requests, successes, span, latency)


def _sparse(counts: list[int]) -> list[list[int]]:
    """[[bucket, count], ...] of the non-zero buckets: latencies bunch up in a few."""
    return [[bucket, count] for bucket, count in enumerate(counts) if count]


@dataclass(frozen=True)
class Totals:
    """A (route, backend)'s counts since it was first seen. ``later.since(earlier)``
    summarizes exactly the requests finished in between — unlike ``window_stats``, whose
    1-s buckets and fixed span do not line up with an arbitrary interval."""

    requests: int = 0
    successes: int = 0
    latency: tuple[int, ...] = ()

    def since(self, earlier: Totals, seconds: float) -> dict:
        """Same keys as ``window_stats``, over the ``seconds`` between the two snapshots."""
        before = earlier.latency or (0,) * len(self.latency)
        latency = [a - b for a, b in zip(self.latency, before)]
        return _summarize(self.requests - earlier.requests, self.successes - earlier.successes,
                          max(seconds, 1e-9), latency)


def _idle() -> dict:
    """The summary of a window without requests: rates and percentiles are None, because
    no data is not 100 % — the canary must hold rather than judge an idle backend."""
    return {"requests": 0, "rps": 0.0, "success_rate": None, "p50": None, "p95": None, "p99": None}


def _summarize(requests: int, successes: int, span: int, latency: list[int]) -> dict:
    if not requests:
        return _idle()
    return {
        "requests": requests,
        "rps": round(requests / span, 3),
        "success_rate": round(100.0 * successes / requests, 3),  # percent, like the config
        "p50": _percentile(latency, requests, 0.50),
        "p95": _percentile(latency, requests, 0.95),
        "p99": _percentile(latency, requests, 0.99),
    }


def _percentile(counts: list[int], total: int, q: float) -> float:
    """Like PromQL ``histogram_quantile``: find the bucket holding rank ``q·total`` and
    interpolate linearly inside it; ranks in the overflow bucket report the top bound."""
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i == len(WINDOW_BUCKETS):
                return WINDOW_BUCKETS[-1]
            lower = WINDOW_BUCKETS[i - 1] if i else 0.0
            upper = WINDOW_BUCKETS[i]
            return round(lower + (upper - lower) * (rank - seen) / count, 6)
        seen += count
    return WINDOW_BUCKETS[-1]


class Stats:
    """Everything the proxy counts; one per process, carried over config reloads so
    counters stay monotonic (only a restart resets them).

    The ``record_*`` methods are called on the event loop and are cheap. ``weights_provider``
    and ``ejections_provider`` are set by the runtime and read at scrape time, so gauges of
    configured state never go stale.
    """

    def __init__(self, *, window: int = 30, clock: Callable[[], float] = time.monotonic):
        self.window = window  # seconds covered by window_stats()
        self._clock = clock
        self.weights_provider: WeightsProvider | None = None
        self.ejections_provider: EjectionsProvider | None = None
        self.workloads_provider: WorkloadsProvider | None = None
        self.canaries_provider: CanariesProvider | None = None
        # The leader of ``--workers N`` sets this: the windows below then add up the other
        # workers' requests, so the views and the canary judge see the whole proxy.
        self.peer_windows: PeerWindows | None = None
        # metrics.linkerd_compat: also export Linkerd-named series (set from the config)
        self.linkerd_compat = False
        self._linkerd_latency: dict[str, _LinkerdLatency] = {}

        self._requests: defaultdict[tuple[str, str, str, str], int] = defaultdict(int)
        self._durations: dict[tuple[str, str], _Histogram] = {}
        self._windows: dict[tuple[str, str], _Window] = {}
        self._upstream: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self._retries: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._faults: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._mirrors: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self._failovers: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self._overflows: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._rejected: defaultdict[tuple[str], int] = defaultdict(int)
        self._ejections: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self._active: defaultdict[str, int] = defaultdict(int)
        # Both results exist from the start so rate() and alerts see a 0, not a missing series.
        self._reloads = {"success": 0, "failure": 0}
        self.last_reload_ok = True  # the initial config is valid, or we would not be running
        self.generation = 0

        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))

    # ------------------------------------------------------------------ recording

    def record(self, o: RequestOutcome) -> None:
        """A finished (or abandoned) downstream request."""
        key = (o.route, o.backend)
        self._requests[(o.route, o.backend, _code(o.status), o.flags)] += 1
        histogram = self._durations.get(key)
        if histogram is None:
            histogram = self._durations[key] = _Histogram()
        histogram.observe(o.duration)

        now = int(self._clock())
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(self.window, now)
        window.add(now, _is_success(o), o.duration)
        if self.linkerd_compat and o.backend:
            latency = self._linkerd_latency.get(o.backend)
            if latency is None:
                latency = self._linkerd_latency[o.backend] = _LinkerdLatency()
            latency.observe(o.duration * 1000.0)

    def record_attempt(self, a: AttemptOutcome) -> None:
        """One upstream attempt: first try, retry or mirror."""
        self._upstream[(a.service, a.endpoint, _code(a.status))] += 1

    def record_retry(self, route: str, backend: str) -> None:
        self._retries[(route, backend)] += 1

    def record_fault(self, route: str, kind: str) -> None:
        """``kind`` is ``delay`` or ``abort``."""
        self._faults[(route, kind)] += 1

    def record_mirror(self, route: str, backend: str, result: str) -> None:
        self._mirrors[(route, backend, result)] += 1

    def record_failover(self, route: str, from_backend: str, to_backend: str) -> None:
        """A request drawn for ``from_backend`` went to ``to_backend``: the first had no
        available endpoint (``when_backend_unavailable: failover``)."""
        self._failovers[(route, from_backend, to_backend)] += 1

    def failovers_from(self, route: str, backend: str) -> int:
        """Requests drawn for ``backend`` that went elsewhere, since start (the canary
        judge counts them as the backend's failures)."""
        return sum(n for (r, source, _), n in list(self._failovers.items())
                   if r == route and source == backend)

    def record_overflow(self, service: str, limit: str) -> None:
        """A circuit-breaker ``limit`` (a ConnectionPool field name) refused a request."""
        self._overflows[(service, limit)] += 1

    def record_rejected(self, status: int) -> None:
        """The engine refused a request before routing (malformed, too large, too slow)."""
        self._rejected[(str(status),)] += 1

    def record_ejection(self, service: str, endpoint: str, reason: str) -> None:
        self._ejections[(service, endpoint, reason)] += 1

    def request_started(self, route: str) -> None:
        self._active[route] += 1

    def request_finished(self, route: str) -> None:
        self._active[route] -= 1

    def record_reload(self, ok: bool, generation: int) -> None:
        """A reload attempt; ``generation`` is the config generation now serving."""
        self._reloads["success" if ok else "failure"] += 1
        self.last_reload_ok = ok
        self.generation = generation

    # ------------------------------------------------------------------ windows

    def window_stats(self, route: str, backend: str) -> dict:
        """``requests``, ``rps``, ``success_rate`` (percent) and ``p50``/``p95``/``p99``
        (seconds) over the last ``window`` seconds; ``rps`` is averaged over the whole
        seconds covered (fewer right after start). Rates and percentiles are None
        without requests."""
        now = int(self._clock())
        window = self._window((route, backend), now)
        if window is None:
            return _idle()
        return window.summary(now)

    def totals(self, route: str, backend: str) -> Totals:
        """Cumulative counts for interval deltas (see ``Totals``)."""
        window = self._window((route, backend), int(self._clock()))
        if window is None:
            return Totals(0, 0, (0,) * (len(WINDOW_BUCKETS) + 1))
        return Totals(window.total_requests, window.total_successes, tuple(window.total_latency))

    def snapshot_routes(self) -> dict[str, dict[str, dict]]:
        """route → backend → window stats, plus ``weight`` (configured share 0–1, None for a
        backend no longer configured) and ``share`` (observed share of the route's requests
        in the window, None without traffic).

        Every configured backend appears, idle or not; a backend that is no longer
        configured appears while it still has requests in the window.
        """
        provided = self.weights_provider() if self.weights_provider else ()
        weights = {(route, backend): share for route, backend, share in provided}
        now = int(self._clock())
        peers = self.peer_windows() if self.peer_windows else {}
        routes: dict[str, dict[str, dict]] = {}
        for key in {**self._windows, **peers}:
            summary = self._window(key, now, peers).summary(now)
            if summary["requests"] or key in weights:
                routes.setdefault(key[0], {})[key[1]] = summary
        for route, backend in weights:
            routes.setdefault(route, {}).setdefault(backend, _idle())
        for route, backends in routes.items():
            total = sum(s["requests"] for s in backends.values())
            for backend, summary in backends.items():
                summary["weight"] = weights.get((route, backend))
                summary["share"] = round(summary["requests"] / total, 4) if total else None
        return routes

    def export_windows(self) -> list[dict]:
        """Every (route, backend)'s window as plain values, for the leader of ``--workers N``
        to add up (``GET /api/v1/windows``). Window seconds are ``time.monotonic()`` seconds,
        one clock for every process on the machine, so they line up across workers."""
        now = int(self._clock())
        return [{"route": route, "backend": backend, **window.export(now)}
                for (route, backend), window in list(self._windows.items())]

    def _window(self, key: tuple[str, str], now: int,
                peers: Mapping[tuple[str, str], Sequence[dict]] | None = None) -> _Window | None:
        """This process's window of ``key``, or with ``peer_windows`` a new one adding up
        every worker's."""
        own = self._windows.get(key)
        if peers is None:
            peers = self.peer_windows() if self.peer_windows else {}
        others = peers.get(key, ())
        if not others:
            return own
        merged = _Window(self.window, now)
        for export in ([own.export(now)] if own is not None else []) + list(others):
            merged.absorb(export, now)
        return merged


class _Collector:
    """Builds the SPEC §4 families from a ``Stats`` at scrape time.

    Dicts are copied before iterating: a scrape from another thread must not trip over a
    series added meanwhile. ``CounterMetricFamily`` appends ``_total`` itself.
    """

    def __init__(self, stats: Stats):
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        yield _counter("pyproxy_requests", "Downstream requests by route, backend, status code "
                       "(\"none\": no response was sent) and response flags (\"\": none).",
                       ["route", "backend", "code", "flag"], s._requests)
        yield _histogram(s)
        yield _counter("pyproxy_upstream_requests", "Upstream attempts (retries and mirrors "
                       "included) by status code (\"none\": connect failure, reset or timeout).",
                       ["service", "endpoint", "code"], s._upstream)
        yield _counter("pyproxy_retries", "Retries of upstream requests.",
                       ["route", "backend"], s._retries)
        yield _counter("pyproxy_faults_injected", "Injected faults (kind: delay or abort).",
                       ["route", "kind"], s._faults)
        yield _counter("pyproxy_mirror_requests", "Mirrored (shadow) requests by result.",
                       ["route", "backend", "result"], s._mirrors)
        yield _counter("pyproxy_backend_failovers", "Requests sent to another backend of the "
                       "route because the one drawn had no available endpoint.",
                       ["route", "from_backend", "to_backend"], s._failovers)

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
                       ["service", "endpoint", "reason"], s._ejections)

        yield _counter("pyproxy_downstream_rejected",
                       "Requests refused before routing (malformed, oversized, too slow, "
                       "over the connection cap), by status.", ["status"], s._rejected)
        yield _counter("pyproxy_circuit_breaker_overflows",
                       "Requests refused by a circuit-breaker limit.",
                       ["service", "limit"], s._overflows)
        active = GaugeMetricFamily("pyproxy_active_requests", "Requests in flight.",
                                   labels=["route"])
        for route, count in list(s._active.items()):
            active.add_metric([route], count)
        yield active

        yield _counter("pyproxy_config_reloads", "Config reload attempts by result.",
                       ["result"], {(result,): n for result, n in s._reloads.items()})
        yield GaugeMetricFamily("pyproxy_config_last_reload_success",
                                "1 if the last config reload succeeded.",
                                value=1.0 if s.last_reload_ok else 0.0)
        yield GaugeMetricFamily("pyproxy_config_generation",
                                "Generation of the config now serving.", value=s.generation)
        if s.canaries_provider is not None:
            yield from _canary_families(list(s.canaries_provider()))
        if s.linkerd_compat:
            yield from _linkerd_families(s)


def _counter(name: str, help_text: str, labels: list[str],
             data: dict[tuple[str, ...], int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=labels)
    for key, value in list(data.items()):
        family.add_metric(key, value)
    return family


def _histogram(s: Stats) -> HistogramMetricFamily:
    family = HistogramMetricFamily("pyproxy_request_duration_seconds",
                                   "Downstream request duration in seconds.",
                                   labels=["route", "backend"])
    for (route, backend), histogram in list(s._durations.items()):
        cumulative, buckets = 0, []
        for le, count in zip(_LE, list(histogram.counts)):
            cumulative += count
            buckets.append((le, cumulative))
        family.add_metric([route, backend], buckets, histogram.sum)
    return family


def _canary_families(canaries: list[dict]) -> Iterator[Metric]:
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


def default_workload(backend: str) -> tuple[str, str, str]:
    """(namespace, deployment, service) when the endpoints' labels do not say: namespace
    ``default``, deployment ``SERVICE-SUBSET`` (or ``SERVICE``)."""
    service, _, subset = backend.partition("/")
    return "default", f"{service}-{subset}" if subset else service, service


def _linkerd_families(s: Stats) -> Iterator[Metric]:
    """Linkerd proxy metric names, so Flagger's built-in ``linkerd`` queries work unchanged::

        response_total{namespace, deployment=~TARGET, classification!="failure",
                       direction="inbound"}
        response_latency_ms_bucket{namespace, deployment=~TARGET, direction="inbound"}

    pyproxy stands for both of a meshed call's proxies, so each response is exported twice,
    from the same counts: ``direction="inbound"`` with the destination's ``namespace`` and
    ``deployment`` (what Flagger queries), and ``direction="outbound"`` with ``dst_namespace``,
    ``dst_deployment`` and ``dst_service`` (what ``linkerd viz stat --from`` shows). Filter on
    ``direction`` when summing. ``classification`` is ``failure`` for 5xx or no response;
    ``status_code`` is empty when no response was sent. Latency is the whole request
    (Linkerd's is time to first byte). Counts come from ``pyproxy_requests_total``, so the
    request path pays nothing extra for them; latency is counted while enabled.
    """
    workloads = dict(s.workloads_provider()) if s.workloads_provider else {}

    def workload(backend: str) -> tuple[str, str, str]:
        return workloads.get(backend) or default_workload(backend)

    responses: defaultdict[tuple[str, str, str, str, str], int] = defaultdict(int)
    for (_route, backend, code, _flag), count in list(s._requests.items()):
        if not backend:
            continue  # no route matched: there is no destination to name
        failure = code == NO_RESPONSE or int(code) >= 500
        status = "" if code == NO_RESPONSE else code
        responses[(*workload(backend), "failure" if failure else "success", status)] += count
    total = Metric("response", "HTTP responses by classification and status code "
                   "(Linkerd-compatible).", "counter")
    for (namespace, deployment, service, classification, status), count in responses.items():
        common = {"classification": classification, "status_code": status}
        total.add_sample("response_total", {"direction": "inbound", "namespace": namespace,
                                            "deployment": deployment, **common}, count)
        total.add_sample("response_total", {"direction": "outbound", "dst_namespace": namespace,
                                            "dst_deployment": deployment, "dst_service": service,
                                            **common}, count)
    yield total

    merged: dict[tuple[str, str, str], tuple[list[int], float]] = {}
    for backend, histogram in list(s._linkerd_latency.items()):
        key = workload(backend)
        counts, total_ms = merged.get(key, ([0] * len(_LINKERD_LE), 0.0))
        merged[key] = ([a + b for a, b in zip(counts, histogram.counts)], total_ms + histogram.sum)
    latency = Metric("response_latency_ms", "Response latency in milliseconds "
                     "(Linkerd-compatible buckets).", "histogram")
    for (namespace, deployment, service), (counts, total_ms) in merged.items():
        for labels in ({"direction": "inbound", "namespace": namespace, "deployment": deployment},
                       {"direction": "outbound", "dst_namespace": namespace,
                        "dst_deployment": deployment, "dst_service": service}):
            cumulative = 0
            for le, count in zip(_LINKERD_LE, counts):
                cumulative += count
                latency.add_sample("response_latency_ms_bucket", {**labels, "le": le}, cumulative)
            latency.add_sample("response_latency_ms_count", labels, cumulative)
            latency.add_sample("response_latency_ms_sum", labels, total_ms)
    yield latency


def backend_workloads(config) -> dict[str, tuple[str, str, str]]:
    """backend name → (namespace, deployment, service) for the Linkerd-compatible series,
    from the labels the backend's endpoints share: ``namespace`` and ``deployment`` (else
    ``default_workload``). Label endpoints ``deployment: podinfo`` to match a Flagger target."""
    workloads: dict[str, tuple[str, str, str]] = {}
    for route in config.routes:
        for backend in route.backends:
            service = config.services.get(backend.service)
            if backend.name in workloads or service is None:
                continue
            namespace, deployment, name = default_workload(backend.name)
            labels = [ep.labels for ep in service.subset_endpoints(backend.subset)]
            for key in ("namespace", "deployment"):
                values = {lab.get(key) for lab in labels}
                if len(values) == 1 and None not in values:
                    value = values.pop()
                    namespace, deployment = ((value, deployment) if key == "namespace"
                                             else (namespace, value))
            workloads[backend.name] = (namespace, deployment, name)
    return workloads


def render_metrics(stats: Stats) -> tuple[bytes, str]:
    """``/metrics``: the body and its content type (the classic Prometheus text format,
    which every scraper version reads)."""
    return generate_latest(stats.registry), CONTENT_TYPE_PLAIN_0_0_4


# ---------------------------------------------------------------------- --workers N

# The leader's /metrics adds up every worker's exposition. Counters and histograms are summed
# per label set. Gauges are combined by what they measure:
GAUGE_MERGE: Mapping[str, Callable[[list[float]], float]] = {
    # requests in flight in each process: the proxy's are their sum
    "pyproxy_active_requests": sum,
    # outlier detection runs in each worker: 1 while any worker has the endpoint ejected
    "pyproxy_endpoint_ejected": max,
    # every worker reloads the same files: 0 when any worker's last reload failed
    "pyproxy_config_last_reload_success": min,
}
# Every other gauge (backend weights, config generation, canary weight, phase and failed
# checks) describes state the workers share, or that only the leader has: the leader's value.


def parse_exposition(text: str) -> list[Metric]:
    """A worker's ``/metrics`` body, parsed by prometheus_client's own parser."""
    return list(text_string_to_metric_families(text))


def merge_expositions(workers: Sequence[Sequence[Metric]]) -> list[Metric]:
    """One exposition from several workers' families. ``workers[0]`` is the leader's: a
    shared-state gauge takes the first value seen, which is the leader's when it has one."""
    families: dict[str, Metric] = {}
    # family → (sample name, labels) → (labels as first seen, values from each worker)
    samples: dict[str, dict[tuple, tuple[dict, list[float]]]] = {}
    for worker in workers:
        for family in worker:
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                samples[family.name] = {}
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[family.name].setdefault(key, (sample.labels, []))[1].append(sample.value)
    for name, family in families.items():
        combine = GAUGE_MERGE.get(name, _first) if family.type == "gauge" else sum
        for (sample_name, _), (labels, values) in samples[name].items():
            family.add_sample(sample_name, labels, combine(values))
    return list(families.values())


def _first(values: list[float]) -> float:
    return values[0]


def cumulative_only(families: Iterable[Metric]) -> list[Metric]:
    """The counters and histograms: what a worker that has exited still contributes, so the
    proxy's totals do not drop (Prometheus would read a drop as a reset)."""
    return [f for f in families if f.type in ("counter", "histogram")]


def window_totals(exports: Iterable[dict]) -> dict:
    """Window exports of one (route, backend) folded into one that keeps only their summed
    totals: what a worker that has exited still contributes to the canary's interval counts
    (its seconds simply age out)."""
    requests = successes = 0
    latency = [0] * (len(WINDOW_BUCKETS) + 1)
    first = None
    for export in exports:
        more_requests, more_successes, more_latency = export["totals"]
        requests += more_requests
        successes += more_successes
        for bucket, count in more_latency:
            latency[bucket] += count
        first = export["first"] if first is None else min(first, export["first"])
    return {"first": first, "seconds": [], "totals": [requests, successes, _sparse(latency)]}


def workers_family(up: int, count: int) -> Metric:
    family = GaugeMetricFamily("pyproxy_workers", "Worker processes (--workers N) by state: up "
                               "answered this scrape, down did not (exited, restarting).",
                               labels=["state"])
    family.add_metric(["up"], up)
    family.add_metric(["down"], count - up)
    return family


class _Fixed:
    """A collector of families already built."""

    def __init__(self, families: Sequence[Metric]):
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def render_families(families: Sequence[Metric]) -> bytes:
    """Families (``merge_expositions``) in the same text format as ``render_metrics``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry)
