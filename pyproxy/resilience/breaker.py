"""Circuit-breaker limits: per-service concurrency caps that fail fast (Envoy semantics).

A ``CircuitBreaker`` per service holds four counters against the service's
``connection_pool`` limits and answers admit / refuse; it never waits and never sleeps.
A refusal names the limit (a ``ConnectionPool`` field name, the ``limit`` label of
``pyproxy_circuit_breaker_overflows_total``) and the pipeline answers 503 with flag ``UO``
and ``x-pyproxy-overloaded: true`` — except for retries, see below.

- ``max_requests``: requests in flight to the service. Taken once per downstream request
  (held across its retries, which run one after another) until the response has been
  relayed or the request failed.
- ``max_connections``: upstream connections open to the service's endpoints, idle ones
  included (Envoy counts them too). A request that finds no idle connection and no room for
  a new one becomes *pending*.
- ``max_pending_requests``: requests waiting for a connection. A request that would exceed
  it overflows at once; one that waits longer than ``pending_timeout`` overflows too (Envoy
  has no such timeout and waits up to the route timeout; a short bound keeps a stuck pool
  from holding clients for the whole route timeout).
- ``max_retries``: retries in flight (from the decision to retry, backoff included, until
  that attempt ends). A refused retry is *not* a 503 UO: the request ends with the failure
  it already has, as in Envoy, and the overflow is counted. ``max_retries: 0`` means no
  fixed cap. A ``RetryBudget`` (the pipeline always sets one: 20% of active requests, at
  least 3) applies too, and a refusal by it names ``retry_budget``. Unlike Envoy, where a
  budget silently replaces ``max_retries``, both hold when both are set: a configured cap
  is never ignored, and the budget keeps retries from amplifying an outage at any scale.

How ``upstream/attempt.py``'s ``Admission`` uses it (per request to service S with breaker
``b``)::

    limit = b.admit_request()
    if limit: stats.record_overflow(S, limit); raise Overflow()
    try:
        for each attempt:
            if it is a retry:
                limit = b.admit_retry()
                if limit: stats.record_overflow(S, limit); stop retrying, return the failure
            conn = endpoint pool's idle connection, if any
            if conn is None:
                if not b.try_open_connection():           # counts the new connection
                    limit = b.enter_queue()
                    if limit: overflow as above
                    try: wait ≤ pending_timeout until a connection is released to the
                         pool (reuse it) or b.try_open_connection() succeeds;
                         on timeout: overflow with b.pending_timed_out()
                    finally: b.leave_queue()
                connect; if connecting fails: b.connection_closed()
            ... (every opened connection calls b.connection_closed() exactly once when it
                 closes: idle timeout, upstream close, abort)
            if it was a retry: b.release_retry() when the attempt ends
    finally:
        b.release_request()

Checking and counting happen in the same call (``admit_*``, ``try_open_connection``,
``enter_queue``) so no ``await`` can slip between them. Each release must match exactly
one admission; an unmatched release is a bug and raises ``RuntimeError``.

``max_connections`` is not a hard cap: an endpoint with no connection at all may always
open its first one (see ``try_open_connection``), so a service with N endpoints can hold up
to ``max_connections + N - 1`` connections. ``snapshot()`` says so rather than letting
``active > max`` read as a broken limit: ``above_max`` counts the connections open beyond
the limit, each of them an endpoint's first, and ``note`` explains it while there are any.
"""

from __future__ import annotations

from collections import Counter
from typing import NotRequired, TypedDict

from pyproxy.config.model import ConnectionPool
from pyproxy.resilience.budget import RetryBudget

FIRST_CONNECTION_NOTE = ("an endpoint's first connection is always allowed, even at max "
                         "(per-endpoint pools, as in Envoy)")


class Usage(TypedDict):
    active: int
    max: int


class ConnectionsUsage(TypedDict):
    active: int
    max: int
    above_max: int  # open beyond max: endpoints' first connections, which are always allowed
    note: NotRequired[str]  # FIRST_CONNECTION_NOTE, while above_max > 0


class RetriesUsage(TypedDict):
    active: int
    max: int
    budget: bool  # max comes from the retry budget (20% of active requests, at least 3)


class BreakerSnapshot(TypedDict):
    requests: Usage
    pending: Usage
    connections: ConnectionsUsage
    retries: RetriesUsage
    overflows: dict[str, int]



class CircuitBreaker:
    """Counters and fail-fast decisions for one service (see the module docstring)."""

    def __init__(self, limits: ConnectionPool, budget: RetryBudget | None = None):
        self._limits = limits
        self._budget = budget
        self.requests = 0
        self.pending = 0
        self.connections = 0
        self.retries = 0
        self.overflows: Counter[str] = Counter()  # limit name → refusals so far

    @property
    def limits(self) -> ConnectionPool:
        return self._limits

    def set_limits(self, limits: ConnectionPool, budget: RetryBudget | None = None) -> None:
        """Reload: new limits, same counters (requests in flight keep their slots; if a
        limit went down, new admissions wait until the counts drop below it)."""
        self._limits = limits
        self._budget = budget

    # ------------------------------------------------------------------ requests

    def admit_request(self) -> str | None:
        """Take a request slot; None when admitted, else the limit that refused it."""
        if self.requests >= self._limits.max_requests:
            return self._overflow("max_requests")
        self.requests += 1
        return None

    def release_request(self) -> None:
        self.requests = _decrement(self.requests, "release_request")

    # ------------------------------------------------------------------ retries

    def admit_retry(self) -> str | None:
        """Take a retry slot; None when admitted, else ``max_retries`` / ``retry_budget``."""
        max_retries = self._limits.max_retries
        if max_retries and self.retries >= max_retries:
            return self._overflow("max_retries")
        if self._budget is not None and not self._budget.can_retry(self.requests, self.retries):
            return self._overflow("retry_budget")
        self.retries += 1
        return None

    def release_retry(self) -> None:
        self.retries = _decrement(self.retries, "release_retry")

    # ------------------------------------------------------------------ connections

    def try_open_connection(self, endpoint_has_none: bool = False) -> bool:
        """Count a new connection if ``max_connections`` allows one (else open nothing).

        An endpoint with no connection at all may always open its first one, counted over
        the limit (as Envoy's per-host pools do): otherwise an idle connection to one
        endpoint could hold the only slot and starve every other endpoint of the service."""
        if self.connections >= self._limits.max_connections and not endpoint_has_none:
            return False
        self.connections += 1
        return True

    def connection_closed(self) -> None:
        self.connections = _decrement(self.connections, "connection_closed")

    # ------------------------------------------------------------------ pending queue

    def enter_queue(self) -> str | None:
        """Become a pending request; None when queued, else ``max_pending_requests``."""
        if self.pending >= self._limits.max_pending_requests:
            return self._overflow("max_pending_requests")
        self.pending += 1
        return None

    def leave_queue(self) -> None:
        self.pending = _decrement(self.pending, "leave_queue")

    def pending_timed_out(self) -> str:
        """A pending request waited ``pending_timeout`` in vain: count and name the overflow."""
        return self._overflow("max_pending_requests")

    # ------------------------------------------------------------------ reads

    def _overflow(self, limit: str) -> str:
        self.overflows[limit] += 1
        return limit

    def snapshot(self) -> BreakerSnapshot:
        """For the admin API: each counter with its limit, and overflows by limit."""
        limits = self._limits
        retries_max = (self._budget.limit(self.requests) if self._budget is not None
                       else limits.max_retries)
        above_max = max(0, self.connections - limits.max_connections)
        connections: ConnectionsUsage = {"active": self.connections,
                                         "max": limits.max_connections, "above_max": above_max}
        if above_max:
            connections["note"] = FIRST_CONNECTION_NOTE
        return {
            "requests": {"active": self.requests, "max": limits.max_requests},
            "pending": {"active": self.pending, "max": limits.max_pending_requests},
            "connections": connections,
            "retries": {"active": self.retries, "max": retries_max,
                        "budget": self._budget is not None},
            "overflows": dict(self.overflows),
        }

    def __repr__(self) -> str:
        limits = self._limits
        above = self.connections - limits.max_connections
        above_max = f"(+{above} endpoints' first)" if above > 0 else ""
        return (f"<CircuitBreaker requests={self.requests}/{limits.max_requests} "
                f"pending={self.pending}/{limits.max_pending_requests} "
                f"connections={self.connections}/{limits.max_connections}{above_max} "
                f"retries={self.retries}/"
                f"{'budget' if self._budget is not None else limits.max_retries} "
                f"overflows={dict(self.overflows)}>")


def _decrement(value: int, what: str) -> int:
    if value <= 0:
        raise RuntimeError(f"{what} without a matching admission")
    return value - 1
