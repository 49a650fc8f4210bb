"""What the request path counts: ``Stats``, one per process, carried over config reloads so
counters stay monotonic (only a restart resets them).

The ``record_*`` methods run on the event loop for every request and stay plain Python — a
dict increment, a bisect into fixed bucket bounds. Prometheus families are built from these
numbers only when ``/metrics`` is scraped (``exposition``).

Label conventions (bounded: route, backend, service and endpoint names come from config;
never paths, client IPs or request ids):

* ``code`` is the HTTP status as a string; ``"none"`` when there was no response at all
  (the client went away first, or an upstream attempt failed to connect, was reset or
  timed out before a status line).
* ``flag`` is the request's flag string as recorded (``"URX"``, ``"DI,FI"``); ``""`` when
  the proxy set no flag, so ``flag=""`` selects the requests the proxy did not interfere with.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TypedDict

from pyproxy.metrics.linkerd import LinkerdLatency, WorkloadsProvider
from pyproxy.metrics.windows import Window, Windows, window_backend
from pyproxy.outcome import AttemptOutcome, RequestOutcome

# docs/metrics.md: the buckets of pyproxy_request_duration_seconds (seconds; +Inf is implied).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

NO_RESPONSE = "none"  # the ``code`` label when no status line was received


class CanaryMetrics(TypedDict):
    """One canary's numbers for ``/metrics`` (``canary.controller``)."""

    name: str
    weight: float  # candidate's weight, percent
    failed_checks: int
    phases: dict[str, float]  # phase → 1 for the current one, else 0
    transitions: dict[str, int]  # phase entered → times
    checks: dict[str, int]  # result → interval judgements


class KubernetesMetrics(TypedDict):
    """In-cluster mode's numbers for ``/metrics`` (``discovery.kubernetes.provider``)."""

    objects: dict[tuple[str, str], int]  # (kind, result) → objects
    conflicts: dict[str, int]  # "service" | "route" → conflicts between file and API
    synced: dict[str, bool]  # kind → listed at least once
    relists: dict[str, int]  # kind → lists after the first (410 Gone)
    snapshots: dict[str, int]  # result → snapshot builds (success, failure, endpoints)


# (route, backend, configured share 0..1)
WeightsProvider = Callable[[], Iterable[tuple[str, str, float]]]
# (service, endpoint, ejected)
EjectionsProvider = Callable[[], Iterable[tuple[str, str, bool]]]
CanariesProvider = Callable[[], Iterable[CanaryMetrics]]
KubernetesProvider = Callable[[], KubernetesMetrics]


def _code(status: int) -> str:
    return str(status) if status else NO_RESPONSE


def _is_success(o: RequestOutcome) -> bool:
    """Success for the windows: below 500 and no proxy flag other than an injected delay
    (a delayed request still reached its backend and was answered normally)."""
    return o.status < 500 and (not o.flags or o.flags == "DI")


class Histogram:
    """Per-bucket (non-cumulative) counts of ``DURATION_BUCKETS`` and a sum; cumulated only
    when scraped."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)  # last slot: above the top bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (Prometheus `le`).
        self.counts[bisect_left(DURATION_BUCKETS, value)] += 1
        self.sum += value


class Stats:
    """Everything the proxy counts.

    The providers are set by the server and read at scrape time, so gauges of configured
    state never go stale. ``windows`` holds the live per-second windows.
    """

    def __init__(self, *, window: int = 30, clock: Callable[[], float] = time.monotonic):
        self.windows = Windows(window, clock)
        self._clock = clock
        self._windows = self.windows.by_key  # the same dict: read per request, one lookup
        self.weights_provider: WeightsProvider | None = None
        self.ejections_provider: EjectionsProvider | None = None
        self.workloads_provider: WorkloadsProvider | None = None
        self.canaries_provider: CanariesProvider | None = None
        self.kubernetes_provider: KubernetesProvider | None = None
        # metrics.linkerd_compat: also export Linkerd-named series (set from the config)
        self.linkerd_compat = False
        self.linkerd_latency: dict[str, LinkerdLatency] = {}

        # Read by ``exposition`` at scrape time; keys are label values in family order.
        self.requests: defaultdict[tuple[str, str, str, str], int] = defaultdict(int)
        self.durations: dict[tuple[str, str], Histogram] = {}
        self.upstream: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.retries: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.faults: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.mirrors: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.failovers: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.overflows: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.rejected: defaultdict[tuple[str], int] = defaultdict(int)
        self.ejections: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.active: defaultdict[str, int] = defaultdict(int)
        # Both results exist from the start so rate() and alerts see a 0, not a missing series.
        self.reloads = {"success": 0, "failure": 0}
        self.last_reload_ok = True  # the initial config is valid, or we would not be running
        self.generation = 0

    # ------------------------------------------------------------------ recording

    def record(self, o: RequestOutcome) -> None:
        """A finished (or abandoned) downstream request."""
        key = (o.route, o.backend)
        self.requests[(o.route, o.backend, _code(o.status), o.flags)] += 1
        histogram = self.durations.get(key)
        if histogram is None:
            histogram = self.durations[key] = Histogram()
        histogram.observe(o.duration)

        now = int(self._clock())
        window_key = (o.route, window_backend(o))
        window = self._windows.get(window_key)
        if window is None:
            window = self._windows[window_key] = Window(self.windows.size, now)
        window.add(now, _is_success(o), o.duration)
        if self.linkerd_compat and o.backend:
            latency = self.linkerd_latency.get(o.backend)
            if latency is None:
                latency = self.linkerd_latency[o.backend] = LinkerdLatency()
            latency.observe(o.duration * 1000.0)

    def record_attempt(self, a: AttemptOutcome) -> None:
        """One upstream attempt: first try, retry or mirror."""
        self.upstream[(a.service, a.endpoint, _code(a.status))] += 1

    def record_retry(self, route: str, backend: str) -> None:
        self.retries[(route, backend)] += 1

    def record_fault(self, route: str, kind: str) -> None:
        """``kind`` is ``delay`` or ``abort``."""
        self.faults[(route, kind)] += 1

    def record_mirror(self, route: str, backend: str, result: str) -> None:
        self.mirrors[(route, backend, result)] += 1

    def record_failover(self, route: str, from_backend: str, to_backend: str) -> None:
        """A request drawn for ``from_backend`` went to ``to_backend``: the first had no
        available endpoint (``when_backend_unavailable: failover``)."""
        self.failovers[(route, from_backend, to_backend)] += 1

    def failovers_from(self, route: str, backend: str) -> int:
        """Requests drawn for ``backend`` that went elsewhere, since start (the canary
        judge counts them as the backend's failures)."""
        return sum(n for (r, source, _), n in list(self.failovers.items())
                   if r == route and source == backend)

    def record_overflow(self, service: str, limit: str) -> None:
        """A circuit-breaker ``limit`` (a ConnectionPool field name) refused a request."""
        self.overflows[(service, limit)] += 1

    def record_rejected(self, status: int) -> None:
        """The engine refused a request before routing (malformed, too large, too slow)."""
        self.rejected[(str(status),)] += 1

    def record_ejection(self, service: str, endpoint: str, reason: str) -> None:
        self.ejections[(service, endpoint, reason)] += 1

    def request_started(self, route: str) -> None:
        self.active[route] += 1

    def request_finished(self, route: str) -> None:
        self.active[route] -= 1

    def record_reload(self, ok: bool, generation: int) -> None:
        """A reload attempt; ``generation`` is the config generation now serving."""
        self.reloads["success" if ok else "failure"] += 1
        self.last_reload_ok = ok
        self.generation = generation
