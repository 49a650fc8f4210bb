"""Fault injection decisions (delay, then abort), drawn independently per request.

Pure: ``decide`` takes the route's fault and a source of uniform draws and says what to do.
Percentages keep sub-percent precision (``0.1`` = one request in a thousand). Header-
triggered faults (docs/responses.md) apply only when the request carries the route's shared secret.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from pyproxy.config.model import AbortFault, DelayFault, Fault, parse_duration
from pyproxy.messages import RequestHead

SECRET_HEADER = "x-pyproxy-fault-secret"


@dataclass(frozen=True, slots=True)
class FaultDecision:
    delay: float = 0.0  # seconds to wait before forwarding (0 = none)
    abort: int = 0  # status to answer instead of forwarding (0 = none)


NO_FAULT = FaultDecision()


def _header_fault(fault: Fault, head: RequestHead) -> Fault | None:
    """The fault a trusted request asks for with x-pyproxy-fault-* headers, if any."""
    secret = head.header(SECRET_HEADER)
    if not fault.header_secret or secret is None or not hmac.compare_digest(
            secret.encode(), fault.header_secret.encode()):
        return None
    delay = abort = None
    try:
        if (value := head.header("x-pyproxy-fault-delay")) and (seconds := parse_duration(value)):
            pct = float(head.header("x-pyproxy-fault-delay-percent") or 100)
            delay = DelayFault(fixed=min(seconds, 60.0), percent=min(max(pct, 0.0), 100.0))
        if value := head.header("x-pyproxy-fault-abort"):
            status = int(value)
            if 200 <= status <= 599:
                pct = float(head.header("x-pyproxy-fault-abort-percent") or 100)
                abort = AbortFault(status=status, percent=min(max(pct, 0.0), 100.0))
    except ValueError:
        return None  # malformed control headers are ignored, never echoed
    if delay is None and abort is None:
        return None
    return Fault(delay=delay, abort=abort)


def decide(fault: Fault | None, head: RequestHead, draw: Callable[[], float]) -> FaultDecision:
    """Delay and abort are independent draws: a request can be delayed and then aborted."""
    if fault is None:
        return NO_FAULT
    if fault.header_secret:
        fault = _header_fault(fault, head) or fault
    delay = 0.0
    abort = 0
    if fault.delay is not None and draw() * 100 < fault.delay.percent:
        delay = fault.delay.fixed
    if fault.abort is not None and draw() * 100 < fault.abort.percent:
        abort = fault.abort.status
    if not delay and not abort:
        return NO_FAULT
    return FaultDecision(delay, abort)
