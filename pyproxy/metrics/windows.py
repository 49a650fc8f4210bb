"""Live per-second windows per (route, backend): request rate, success rate and latency
percentiles over the last seconds (default 30 s, in 1-s buckets), for the dashboard,
``pyproxy status`` and the canary judge.

Nothing runs on a timer: a second's bucket is reset when it is first used again. Each
window also keeps totals since it was created, so two snapshots (``Totals``) give exact
counts for an interval of any length.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from pyproxy.outcome import RequestOutcome

# Window percentiles need finer buckets than the exported histogram: a p99 judged against
# "500ms" must not jump from 250 ms to 500 ms. Geometric bounds (×1.1 from 0.5 ms to ~65 s):
# an interpolated percentile stays inside the bucket of the true one, so within 10 % of it.
WINDOW_BUCKETS = tuple(0.0005 * 1.1**i for i in range(125))

# [[bucket, count], ...] of the non-zero latency buckets: latencies bunch up in a few.
Sparse = list[list[int]]


class WindowExport(TypedDict):
    """A window as plain JSON values, for another worker to add up (``Window.absorb``)."""

    first: int
    seconds: list[tuple[int, int, int, Sparse]]  # [second, requests, successes, latency]
    totals: tuple[int, int, Sparse]  # [requests, successes, latency] since ``first``


class RouteWindowExport(WindowExport):
    """One entry of ``GET /api/v1/windows``."""

    route: str
    backend: str


class WindowSummary(TypedDict):
    """``success_rate`` in percent, percentiles in seconds; None without requests."""

    requests: int
    rps: float
    success_rate: float | None
    p50: float | None
    p95: float | None
    p99: float | None


class BackendSummary(WindowSummary):
    """A backend in ``Windows.by_route``: its summary, configured ``weight`` (share 0–1, None
    when no longer configured) and observed ``share`` of the route's requests (None idle)."""

    weight: float | None
    share: float | None


# (route, backend) → other workers' exports of it (``--workers N``, on the leader)
PeerWindows = Callable[[], Mapping[tuple[str, str], Sequence[WindowExport]]]


class Window:
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

    def export(self, now: int) -> WindowExport:
        """Plain values (JSON) for another worker to add up: the seconds still in the window
        with their counts and non-zero latency buckets, and the totals."""
        seconds = [(second, self.requests[i], self.successes[i], sparse(self.latency[i]))
                   for i, second in enumerate(self.second) if now - self.size < second <= now]
        return {"first": self.first, "seconds": seconds,
                "totals": (self.total_requests, self.total_successes,
                           sparse(self.total_latency))}

    def absorb(self, export: WindowExport, now: int) -> None:
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

    def summary(self, now: int) -> WindowSummary:
        requests = successes = 0
        latency = [0] * (len(WINDOW_BUCKETS) + 1)
        for i, second in enumerate(self.second):
            if now - self.size < second <= now:
                requests += self.requests[i]
                successes += self.successes[i]
                latency = [a + b for a, b in zip(latency, self.latency[i], strict=False)]
        span = max(1, min(self.size, now - self.first + 1))
        return summarize(requests, successes, span, latency)


def route_window_export(value: Any) -> RouteWindowExport:
    """An entry of another worker's ``GET /api/v1/windows``, parsed from its JSON: the arrays
    become the tuples the types promise (the compiled build checks them), and anything of
    another shape raises ``TypeError``, ``KeyError`` or ``ValueError``."""

    def sparse_of(buckets: Any) -> Sparse:
        return [[int(bucket), int(count)] for bucket, count in buckets]

    requests, successes, latency = value["totals"]
    return RouteWindowExport(
        route=str(value["route"]), backend=str(value["backend"]), first=int(value["first"]),
        seconds=[(int(second), int(n), int(ok), sparse_of(buckets))
                 for second, n, ok, buckets in value["seconds"]],
        totals=(int(requests), int(successes), sparse_of(latency)))


def sparse(counts: list[int]) -> Sparse:
    """[[bucket, count], ...] of the non-zero buckets: latencies bunch up in a few."""
    return [[bucket, count] for bucket, count in enumerate(counts) if count]


@dataclass(frozen=True)
class Totals:
    """A (route, backend)'s counts since it was first seen. ``later.since(earlier)``
    summarizes exactly the requests finished in between — unlike ``Windows.summary``, whose
    1-s buckets and fixed span do not line up with an arbitrary interval."""

    requests: int = 0
    successes: int = 0
    latency: tuple[int, ...] = ()

    def since(self, earlier: Totals, seconds: float) -> WindowSummary:
        """Same keys as ``Windows.summary``, over the ``seconds`` between the two snapshots."""
        before = earlier.latency or (0,) * len(self.latency)
        latency = [a - b for a, b in zip(self.latency, before, strict=False)]
        return summarize(self.requests - earlier.requests, self.successes - earlier.successes,
                         max(seconds, 1e-9), latency)


def idle() -> WindowSummary:
    """The summary of a window without requests: rates and percentiles are None, because
    no data is not 100 % — the canary must hold rather than judge an idle backend."""
    return {"requests": 0, "rps": 0.0, "success_rate": None, "p50": None, "p95": None,
            "p99": None}


def summarize(requests: int, successes: int, span: float, latency: list[int]) -> WindowSummary:
    if not requests:
        return idle()
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


# The window "backend" of the requests answered by an injected abort (flag ``FI``): a row of
# their own in every view, so the route's success rate counts them and no backend's does —
# the backend never saw them. Backend names cannot contain a space, so this never collides.
# Only the windows use it; ``pyproxy_requests_total`` keeps the backend picked, if any.
INJECTED_ABORT = "injected abort (fault)"


def window_backend(o: RequestOutcome) -> str:
    """The backend whose window counts ``o``: ``INJECTED_ABORT`` when an injected abort
    answered it (request scope: before the split; attempt scope: instead of the backend)."""
    # Most requests have no flag: skip the split for them (this runs for every request).
    return INJECTED_ABORT if o.flags and "FI" in o.flags.split(",") else o.backend


class Windows:
    """Every (route, backend)'s window in this process; with ``peers`` set (the leader of
    ``--workers N``), summaries add up the other workers' windows too, so the views and the
    canary judge see the whole proxy.

    Window seconds are whole seconds of ``clock``, ``time.monotonic()`` by default: one clock
    for every process on the machine, so they line up across workers.
    """

    def __init__(self, size: int = 30, clock: Callable[[], float] = time.monotonic):
        self.size = size  # seconds covered by a summary
        self.clock = clock
        # Filled by ``Stats.record`` on the request path (it adds to this dict directly).
        self.by_key: dict[tuple[str, str], Window] = {}
        self.peers: PeerWindows | None = None

    def summary(self, route: str, backend: str) -> WindowSummary:
        """``requests``, ``rps``, ``success_rate`` (percent) and ``p50``/``p95``/``p99``
        (seconds) over the last ``size`` seconds; ``rps`` is averaged over the whole
        seconds covered (fewer right after start). Rates and percentiles are None
        without requests."""
        now = int(self.clock())
        window = self._window((route, backend), now)
        if window is None:
            return idle()
        return window.summary(now)

    def totals(self, route: str, backend: str) -> Totals:
        """Cumulative counts for interval deltas (see ``Totals``)."""
        window = self._window((route, backend), int(self.clock()))
        if window is None:
            return Totals(0, 0, (0,) * (len(WINDOW_BUCKETS) + 1))
        return Totals(window.total_requests, window.total_successes, tuple(window.total_latency))

    def by_route(self, weights: Iterable[tuple[str, str, float]]
                 ) -> dict[str, dict[str, BackendSummary]]:
        """route → backend → summary with configured ``weight`` and observed ``share``, for
        the configured ``weights`` (route, backend, share 0–1).

        Every configured backend appears, idle or not; a backend that is no longer
        configured appears while it still has requests in the window.
        """
        configured = {(route, backend): share for route, backend, share in weights}
        now = int(self.clock())
        peers = self.peers() if self.peers else {}
        summaries: dict[str, dict[str, WindowSummary]] = {}
        for key in {**self.by_key, **peers}:
            window = self._window(key, now, peers)
            summary = window.summary(now) if window is not None else idle()
            if summary["requests"] or key in configured:
                summaries.setdefault(key[0], {})[key[1]] = summary
        for route, backend in configured:
            summaries.setdefault(route, {}).setdefault(backend, idle())
        routes: dict[str, dict[str, BackendSummary]] = {}
        for route, backends in summaries.items():
            total = sum(s["requests"] for s in backends.values())
            routes[route] = {
                backend: BackendSummary(
                    **summary, weight=configured.get((route, backend)),
                    share=round(summary["requests"] / total, 4) if total else None)
                for backend, summary in backends.items()}
        return routes

    def route_stats(self, routes: Iterable[str] = ()) -> dict[str, WindowSummary]:
        """route → a summary over every request of the route: its backends', the injected
        aborts' (``INJECTED_ABORT``) and those answered without a backend (a direct
        response, every weight 0). The route's success rate, as its callers saw it.
        ``routes`` are included even when idle."""
        now = int(self.clock())
        peers = self.peers() if self.peers else {}
        merged: dict[str, Window] = {}
        for key in {**self.by_key, **peers}:
            window = self._window(key, now, peers)
            if window is None:
                continue
            whole = merged.get(key[0])
            if whole is None:
                whole = merged[key[0]] = Window(self.size, now)
            whole.absorb(window.export(now), now)
        summaries = {route: window.summary(now) for route, window in merged.items()}
        for route in routes:
            summaries.setdefault(route, idle())
        return summaries

    def export(self) -> list[RouteWindowExport]:
        """Every (route, backend)'s window as plain values, for the leader of ``--workers N``
        to add up (``GET /api/v1/windows``)."""
        now = int(self.clock())
        return [RouteWindowExport(route=route, backend=backend, **window.export(now))
                for (route, backend), window in list(self.by_key.items())]

    def _window(self, key: tuple[str, str], now: int,
                peers: Mapping[tuple[str, str], Sequence[WindowExport]] | None = None
                ) -> Window | None:
        """This process's window of ``key``, or with ``peers`` a new one adding up every
        worker's."""
        own = self.by_key.get(key)
        if peers is None:
            peers = self.peers() if self.peers else {}
        others = peers.get(key, ())
        if not others:
            return own
        merged = Window(self.size, now)
        for export in ([own.export(now)] if own is not None else []) + list(others):
            merged.absorb(export, now)
        return merged
