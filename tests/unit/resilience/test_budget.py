"""Retry budget: retries in flight capped at a share of the requests in flight."""

from __future__ import annotations

import pytest

from pyproxy.resilience.budget import RetryBudget


@pytest.mark.parametrize("percent, min_concurrency, active_requests, limit", [
    (20, 3, 0, 3),       # a quiet service can still retry
    (20, 3, 10, 3),
    (20, 3, 15, 3),
    (20, 3, 20, 4),
    (20, 3, 24, 4),      # 4.8 rounds down: the budget is a ceiling
    (20, 3, 100, 20),
    (20, 3, 1000, 200),
    (70, 0, 10, 7),
    (18.4, 0, 375, 69),  # float noise: 18.4 × 375 / 100 = 68.99…
    (0, 3, 1000, 3),     # budget off: the floor alone
    (0.1, 0, 1000, 1),   # sub-percent budgets
    (100, 1, 7, 7),
])
def test_limit(percent, min_concurrency, active_requests, limit):
    assert RetryBudget(percent, min_concurrency).limit(active_requests) == limit


@pytest.mark.parametrize("active_requests, active_retries, allowed", [
    (0, 0, True), (0, 2, True), (0, 3, False),
    (50, 9, True), (50, 10, False), (50, 11, False),
])
def test_can_retry_with_envoy_defaults(active_requests, active_retries, allowed):
    assert RetryBudget().can_retry(active_requests, active_retries) is allowed
