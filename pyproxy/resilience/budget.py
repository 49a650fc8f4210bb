"""Retry budget: cap concurrent retries at a share of the traffic, not at a fixed number.

A fixed ``max_retries`` is either too low for a busy service or, for a quiet one, high
enough that retries multiply the load on a backend that is already failing (a retry
storm). Envoy's ``retry_budget`` (Istio ``retryBudget``) scales with load instead: retries
in flight may not exceed ``percent`` of the requests in flight, with a floor of
``min_concurrency`` so a quiet service can still retry at all:

    allowed = max(min_concurrency, floor(percent / 100 × active_requests))
    a retry may start while active_retries < allowed

``active_requests`` is every request in flight to the service, pending ones included (as
Envoy's "active + pending"); with ``CircuitBreaker`` that is its ``requests`` counter, and
``CircuitBreaker(limits, budget)`` applies the budget for you. Pure arithmetic, no state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryBudget:
    """Envoy's defaults: 20% of active requests, at least 3 concurrent retries."""

    percent: float = 20.0
    min_concurrency: int = 3

    def limit(self, active_requests: int) -> int:
        """How many retries may be in flight with ``active_requests`` requests in flight."""
        # Rounded down: the budget is a ceiling, and 20% of 4 requests is no whole retry.
        # The epsilon keeps float noise (18.4 × 375 / 100 = 68.99…) from losing a whole retry.
        share = math.floor(self.percent * active_requests / 100 + 1e-9)
        return max(self.min_concurrency, share)

    def can_retry(self, active_requests: int, active_retries: int) -> bool:
        """Whether one more retry may start now."""
        return active_retries < self.limit(active_requests)
