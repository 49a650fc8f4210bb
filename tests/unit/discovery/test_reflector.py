"""The reflector's decisions (watch.ReflectorMachine), from plain values: no sockets.

The rules are the Kubernetes API's (https://kubernetes.io/docs/reference/using-api/
api-concepts/#efficient-detection-of-changes): list, watch from the list's
resourceVersion, resume from the last version seen (bookmarks included), list again on 410.
"""

from __future__ import annotations

from pyproxy.discovery.kubernetes.client import KubeApiError, WatchEvent
from pyproxy.discovery.kubernetes.watch import Backoff, ReflectorMachine, Step, status_error


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def machine(rng: float = 0.5) -> tuple[ReflectorMachine, Clock]:
    clock = Clock()
    return ReflectorMachine(clock=clock, rng=lambda: rng), clock


def event(kind: str, rv: str) -> WatchEvent:
    return WatchEvent(kind, {"metadata": {"name": "a", "resourceVersion": rv}})


def test_list_then_watch_from_the_lists_version() -> None:
    m, _ = machine()
    assert m.start() == Step("list")
    assert m.listed("41") == Step("watch", 0.0, "41")
    assert m.synced


def test_events_and_bookmarks_move_the_version_a_resume_starts_from() -> None:
    m, clock = machine()
    m.listed("41")
    assert m.event(event("ADDED", "42")) == "apply"
    assert m.event(event("BOOKMARK", "50")) == "skip"
    clock.now += 300  # the server's timeoutSeconds
    assert m.ended() == Step("watch", 0.0, "50")


def test_410_as_an_error_event_lists_again_at_once_and_counts_a_relist() -> None:
    m, _ = machine()
    m.listed("41")
    gone = WatchEvent("ERROR", {"kind": "Status", "code": 410, "reason": "Expired"})
    assert m.event(gone) == "relist"
    assert m.ended() == Step("list", 0.0)
    m.listed("90")
    assert m.relists == 1


def test_410_as_http_status_lists_again() -> None:
    m, _ = machine()
    m.listed("41")
    assert m.failed(KubeApiError(410, "Expired")).action == "list"


def test_a_410_storm_backs_off() -> None:
    m, _ = machine(rng=1.0)
    m.listed("1")
    delays = []
    for version in range(2, 7):
        step = m.failed(KubeApiError(410, "Expired"))
        delays.append(step.delay)
        m.listed(str(version))  # the list works, the next watch answers 410 again
    assert delays[0] == 0.0
    assert delays == sorted(delays) and delays[-1] > delays[1] > 0


def test_429_waits_retry_after_then_resumes_the_watch() -> None:
    m, _ = machine()
    m.listed("41")
    assert m.failed(KubeApiError(429, "TooManyRequests", retry_after=7)) == \
        Step("watch", 7, "41")


def test_429_on_the_first_list_retries_the_list() -> None:
    m, _ = machine()
    m.start()
    assert m.failed(KubeApiError(429, "TooManyRequests", retry_after=2)) == Step("list", 2)


def test_other_failures_back_off_exponentially_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=30)
    assert backoff.delay(1, lambda: 0.0) == 0.25 and backoff.delay(1, lambda: 1.0) == 0.5
    assert backoff.delay(3, lambda: 1.0) == 2.0
    assert backoff.delay(30, lambda: 1.0) == 30
    m, _ = machine(rng=1.0)
    m.listed("41")
    first = m.failed(KubeApiError(0, "Unreachable"))
    second = m.failed(KubeApiError(503, "ServiceUnavailable"))
    assert (first.action, first.resource_version) == ("watch", "41")
    assert second.delay == 2 * first.delay


def test_a_working_stream_resets_the_backoff() -> None:
    m, _ = machine(rng=1.0)
    m.listed("41")
    m.failed(KubeApiError(0, "Unreachable"))
    m.failed(KubeApiError(0, "Unreachable"))
    assert m.event(event("MODIFIED", "43")) == "apply"
    assert m.failed(KubeApiError(0, "Unreachable")).delay == 0.5


def test_a_stream_that_ends_at_once_with_nothing_counts_as_a_failure() -> None:
    m, clock = machine(rng=1.0)
    m.listed("41")
    clock.now += 0.01
    assert m.ended().delay == 0.5
    step = m.watching()
    clock.now += 60
    assert m.ended() == Step("watch", 0.0, step.resource_version)


def test_other_error_events_become_failures() -> None:
    m, _ = machine()
    m.listed("41")
    status = {"kind": "Status", "code": 500, "reason": "InternalError", "message": "etcd"}
    assert m.event(WatchEvent("ERROR", status)) == "error"
    error = status_error(status)
    assert (error.status, error.reason) == (500, "InternalError")
    assert m.failed(error).action == "watch"
