"""Retry decisions: which failures are retried, and how long to wait before the next try.

Pure: the pipeline reports each attempt's result; the random draw for the jittered backoff
is injected. Semantics follow Envoy's ``retry_on``:

- ``connect-failure``: the connection could not be made.
- ``reset``: the upstream closed or reset before a response.
- ``gateway-error``: a 502, 503 or 504 response, or a per-try timeout.
- ``5xx``: any 5xx response, a connect failure, a reset or a per-try timeout.
- ``retriable-status-codes``: a response whose status is in ``status_codes``.
"""

from __future__ import annotations

from typing import Literal

from pyproxy.config.model import Retries

Failure = Literal["connect-failure", "reset", "timeout", "status"]

_GATEWAY = frozenset({502, 503, 504})


def is_retryable(policy: Retries, failure: Failure, status: int = 0) -> bool:
    on = policy.retry_on
    if failure == "connect-failure":
        return "connect-failure" in on or "5xx" in on
    if failure == "reset":
        return "reset" in on or "5xx" in on
    if failure == "timeout":
        return "5xx" in on or "gateway-error" in on
    if "5xx" in on and status >= 500:
        return True
    if "gateway-error" in on and status in _GATEWAY:
        return True
    return ("retriable-status-codes" in on and status in policy.status_codes) or (
        bool(policy.status_codes) and status in policy.status_codes)


def backoff(policy: Retries, retry_number: int, draw: float) -> float:
    """Fully jittered exponential backoff: uniform in [0, min(max, base * 2**(n-1))]."""
    ceiling = min(policy.backoff.max, policy.backoff.base * 2.0 ** (retry_number - 1))
    return ceiling * draw
