"""Fault decisions: sub-percent precision, independent draws, header faults behind the secret."""

from __future__ import annotations

import pytest

from pyproxy.config.model import AbortFault, DelayFault, Fault
from pyproxy.filters import fault
from pyproxy.messages import RequestHead


def head(path="/", headers_=(), host="shop", query=""):
    return RequestHead("GET", path, query, "1.1", list(headers_), host, "10.1.2.3")


def draws(*values):
    it = iter(values)
    return lambda: next(it)


def test_fault_percentages_are_sub_percent_precise():
    f = Fault(abort=AbortFault(status=503, percent=0.1))
    assert fault.decide(f, head(), draws(0.000999)).abort == 503
    assert fault.decide(f, head(), draws(0.001)).abort == 0


def test_delay_and_abort_use_independent_draws():
    f = Fault(delay=DelayFault(fixed=2.5, percent=50), abort=AbortFault(status=500, percent=50))
    decision = fault.decide(f, head(), draws(0.1, 0.9))
    assert decision.delay == 2.5 and decision.abort == 0
    decision = fault.decide(f, head(), draws(0.9, 0.1))
    assert decision.delay == 0 and decision.abort == 500


def test_header_faults_need_the_secret():
    f = Fault(header_secret="s3cret")
    asks = [("x-pyproxy-fault-abort", "418")]
    assert fault.decide(f, head(headers_=asks), draws(0.5)) == fault.NO_FAULT
    wrong = [*asks, ("x-pyproxy-fault-secret", "nope")]
    assert fault.decide(f, head(headers_=wrong), draws(0.5)) == fault.NO_FAULT
    right = [*asks, ("x-pyproxy-fault-secret", "s3cret"), ("x-pyproxy-fault-delay", "200ms")]
    decision = fault.decide(f, head(headers_=right), draws(0.5, 0.5))
    assert decision.abort == 418 and decision.delay == pytest.approx(0.2)
    bad = [("x-pyproxy-fault-secret", "s3cret"), ("x-pyproxy-fault-abort", "nope")]
    assert fault.decide(f, head(headers_=bad), draws(0.5)) == fault.NO_FAULT
