"""Circuit-breaker limits: fail-fast admission, release symmetry, reload, snapshot."""

from __future__ import annotations

import pytest

from pyproxy.config.model import ConnectionPool
from pyproxy.resilience.breaker import CircuitBreaker
from pyproxy.resilience.budget import RetryBudget

LIMITS = ConnectionPool(max_connections=2, max_pending_requests=3, max_requests=4,
                        max_retries=1)


def overflow_of(admit):
    """Adapt each admission call to "None when admitted, else the limit's name"."""
    if admit.__name__ == "try_open_connection":
        return lambda: None if admit() else "max_connections"
    return admit


# (admit, release, limit name, configured maximum) for each counter
CASES = [
    ("admit_request", "release_request", "max_requests", 4),
    ("admit_retry", "release_retry", "max_retries", 1),
    ("try_open_connection", "connection_closed", "max_connections", 2),
    ("enter_queue", "leave_queue", "max_pending_requests", 3),
]


@pytest.mark.parametrize("admit, release, limit, maximum", CASES)
def test_each_limit_admits_up_to_its_maximum_and_a_release_frees_one_slot(admit, release,
                                                                          limit, maximum):
    breaker = CircuitBreaker(LIMITS)
    take = overflow_of(getattr(breaker, admit))
    assert [take() for _ in range(maximum)] == [None] * maximum
    assert take() == limit
    assert take() == limit
    getattr(breaker, release)()
    assert take() is None
    assert take() == limit


@pytest.mark.parametrize("admit, release, limit, maximum", CASES)
def test_admit_and_release_are_symmetric(admit, release, limit, maximum):
    breaker = CircuitBreaker(LIMITS)
    take = overflow_of(getattr(breaker, admit))
    for _ in range(3):
        for _ in range(maximum):
            take()
        for _ in range(maximum):
            getattr(breaker, release)()
    assert (breaker.requests, breaker.retries, breaker.connections, breaker.pending) == \
        (0, 0, 0, 0)
    with pytest.raises(RuntimeError, match=release):
        getattr(breaker, release)()


def test_a_refusal_takes_no_slot_and_is_counted():
    breaker = CircuitBreaker(LIMITS)
    for _ in range(4):
        breaker.admit_request()
    for _ in range(3):
        assert breaker.admit_request() == "max_requests"
    assert breaker.requests == 4
    assert breaker.try_open_connection() and breaker.try_open_connection()
    assert not breaker.try_open_connection()  # no overflow: the request may queue
    assert breaker.pending_timed_out() == "max_pending_requests"
    assert breaker.overflows == {"max_requests": 3, "max_pending_requests": 1}


def test_counters_are_independent():
    breaker = CircuitBreaker(LIMITS)
    assert breaker.admit_request() is None
    assert breaker.admit_retry() is None
    assert breaker.try_open_connection()
    assert breaker.enter_queue() is None
    assert (breaker.requests, breaker.retries, breaker.connections, breaker.pending) == \
        (1, 1, 1, 1)


def test_max_retries_and_the_retry_budget_both_hold():
    breaker = CircuitBreaker(ConnectionPool(max_retries=2), RetryBudget(20, 3))
    assert [breaker.admit_retry() for _ in range(3)] == [None, None, "max_retries"]


def test_the_retry_budget_scales_with_active_requests():
    breaker = CircuitBreaker(ConnectionPool(max_requests=4, max_retries=0),
                             RetryBudget(percent=20, min_concurrency=3))
    assert [breaker.admit_retry() for _ in range(4)] == [None, None, None, "retry_budget"]
    for _ in range(4):
        breaker.admit_request()
    breaker.set_limits(ConnectionPool(max_requests=100, max_retries=0), RetryBudget(20, 3))
    for _ in range(16):
        breaker.admit_request()
    assert breaker.requests == 20
    assert breaker.admit_retry() is None  # 20% of 20 = 4
    assert breaker.admit_retry() == "retry_budget"
    assert breaker.overflows == {"retry_budget": 2}


def test_set_limits_keeps_counts_and_lower_limits_refuse_until_counts_drop():
    breaker = CircuitBreaker(LIMITS)
    for _ in range(4):
        breaker.admit_request()
    breaker.set_limits(ConnectionPool(max_requests=2))
    assert breaker.requests == 4
    assert breaker.admit_request() == "max_requests"
    breaker.release_request()
    breaker.release_request()
    assert breaker.admit_request() == "max_requests"
    breaker.release_request()
    assert breaker.admit_request() is None
    assert breaker.limits.max_requests == 2


def test_snapshot_and_repr():
    breaker = CircuitBreaker(LIMITS)
    breaker.admit_request()
    breaker.try_open_connection()
    breaker.admit_retry()
    breaker.admit_retry()
    assert breaker.snapshot() == {
        "requests": {"active": 1, "max": 4},
        "pending": {"active": 0, "max": 3},
        "connections": {"active": 1, "max": 2, "above_max": 0},
        "retries": {"active": 1, "max": 1, "budget": False},
        "overflows": {"max_retries": 1},
    }
    assert repr(breaker) == ("<CircuitBreaker requests=1/4 pending=0/3 connections=1/2 "
                             "retries=1/1 overflows={'max_retries': 1}>")
    budgeted = CircuitBreaker(LIMITS, RetryBudget())
    assert budgeted.snapshot()["retries"] == {"active": 0, "max": 3, "budget": True}
    assert "retries=0/budget" in repr(budgeted)


def test_an_endpoint_without_connections_may_always_open_its_first():
    breaker = CircuitBreaker(ConnectionPool(max_connections=1))
    assert breaker.try_open_connection()
    assert not breaker.try_open_connection()
    assert breaker.try_open_connection(endpoint_has_none=True)  # another endpoint's first
    assert breaker.connections == 2


def test_snapshot_explains_connections_above_max():
    # Three endpoints, max_connections 1: each may open its first connection anyway, so the
    # view must not read as a broken limit.
    breaker = CircuitBreaker(ConnectionPool(max_connections=1))
    for _ in range(3):
        assert breaker.try_open_connection(endpoint_has_none=True)
    connections = breaker.snapshot()["connections"]
    assert connections["active"] == 3 and connections["max"] == 1
    assert connections["above_max"] == 2
    assert "first" in connections["note"] and "always" in connections["note"]
    assert "connections=3/1(+2 endpoints' first)" in repr(breaker)
    breaker.connection_closed()
    breaker.connection_closed()
    assert breaker.snapshot()["connections"] == {"active": 1, "max": 1, "above_max": 0}
