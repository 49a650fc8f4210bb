"""Retry policy: which failures are retryable under each retry_on, and the jittered, capped
backoff."""

from __future__ import annotations

import pytest

from pyproxy.config.model import Backoff, Retries
from pyproxy.resilience.retry import backoff, is_retryable

RETRY_TABLE = [
    (("connect-failure",), "connect-failure", 0, True),
    (("reset",), "connect-failure", 0, False),
    (("reset",), "reset", 0, True),
    (("gateway-error",), "status", 503, True),
    (("gateway-error",), "status", 500, False),
    (("gateway-error",), "timeout", 0, True),
    (("5xx",), "status", 500, True),
    (("5xx",), "status", 404, False),
    (("5xx",), "reset", 0, True),
    (("retriable-status-codes",), "status", 409, True),
    (("connect-failure",), "status", 503, False),
]


@pytest.mark.parametrize("retry_on,failure,status,expected", RETRY_TABLE)
def test_is_retryable(retry_on, failure, status, expected):
    policy = Retries(attempts=2, retry_on=retry_on, status_codes=(409,)
                     if "retriable-status-codes" in retry_on else ())
    assert is_retryable(policy, failure, status) is expected


def test_backoff_is_fully_jittered_and_capped():
    policy = Retries(backoff=Backoff(base=0.025, max=0.25))
    assert backoff(policy, 1, 1.0) == pytest.approx(0.025)
    assert backoff(policy, 3, 1.0) == pytest.approx(0.1)
    assert backoff(policy, 10, 1.0) == pytest.approx(0.25)
    assert backoff(policy, 3, 0.0) == 0.0
