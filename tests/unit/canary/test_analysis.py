"""The canary's pure decisions: the judge, the weight plan and the state machine, driven
with plain values and a fake clock."""

from __future__ import annotations

import pytest

from pyproxy.canary.analysis import (
    CanaryMachine,
    CommandRefused,
    HookResult,
    IntervalStats,
    aggregate,
    judge,
    weight_steps,
)
from pyproxy.config.model import Canary, CanaryChecks
from pyproxy.metrics.stats import Stats
from pyproxy.outcome import RequestOutcome
from tests.support.clock import FakeClock

OK = HookResult(True, "answered 200")
DENIED = HookResult(False, "answered 403")


def canary(**kw) -> Canary:
    fields = dict(name="shop", route="shop", primary="shop/v1", candidate="shop/v2",
                  interval=1.0, step_weight=10, max_weight=30, threshold=3, min_requests=10,
                  checks=CanaryChecks(success_rate_min=99, latency_p99_max=0.5))
    fields.update(kw)
    return Canary(**fields)


def stats(requests=100, success_rate=100.0, p99=0.01) -> IntervalStats:
    return IntervalStats(requests, success_rate if requests else None, p99 if requests else None)


CHECKS = CanaryChecks(success_rate_min=99, latency_p99_max=0.5)
RELATIVE = CanaryChecks(success_rate_min=99, latency_p99_max=0.5, relative_to_primary=True)

PASS = judge(CHECKS, 10, stats())
FAIL = judge(CHECKS, 10, stats(success_rate=50.0))
NO_DATA = judge(CHECKS, 10, stats(requests=3))


# ---------------------------------------------------------------------------- judge


@pytest.mark.parametrize("checks, min_requests, candidate, primary, verdict, reasons", [
    # fewer than min_requests: hold, whatever the numbers say
    (CHECKS, 20, stats(0), None, "no_data", ["0 requests < min_requests 20"]),
    (CHECKS, 20, stats(19, 0.0), None, "no_data", ["19 requests < min_requests 20"]),
    # min_requests 0 still needs one request: an idle candidate is not a healthy one
    (CHECKS, 0, stats(0), None, "no_data", ["0 requests < min_requests 1"]),
    (CHECKS, 20, stats(20), None, "pass", []),
    # the thresholds themselves pass
    (CHECKS, 10, stats(100, 99.0, 0.5), None, "pass", []),
    (CHECKS, 10, stats(100, 98.9), None, "fail", ["success rate 98.9% < 99%"]),
    (CHECKS, 10, stats(100, 100.0, 0.8), None, "fail", ["p99 800ms > 500ms"]),
    (CHECKS, 10, stats(100, 50.0, 0.8), None, "fail",
     ["success rate 50.0% < 99%", "p99 800ms > 500ms"]),
    # a check that is not configured is not applied
    (CanaryChecks(success_rate_min=None, latency_p99_max=None), 10, stats(100, 1.0, 9.0), None,
     "pass", []),
    (CanaryChecks(success_rate_min=95), 10, stats(100, 96.0, 30.0), None, "pass", []),
    # relative: up to (100 - 99) = 1 point below the primary, up to 500ms slower
    (RELATIVE, 10, stats(100, 95.5), stats(100, 96.0), "pass", []),
    (RELATIVE, 10, stats(100, 94.0), stats(100, 96.0), "fail",
     ["success rate 94.0% < 95% (primary 96.0%)"]),
    (RELATIVE, 10, stats(100, 100.0, 0.8), stats(100, 100.0, 0.4), "pass", []),
    (RELATIVE, 10, stats(100, 100.0, 1.0), stats(100, 100.0, 0.4), "fail",
     ["p99 1000ms > 900ms (primary 400ms)"]),
    # relative without enough primary traffic to compare with: the absolute checks apply
    (RELATIVE, 10, stats(100, 96.0), stats(5, 96.0), "fail", ["success rate 96.0% < 99%"]),
    (RELATIVE, 10, stats(100, 96.0), None, "fail", ["success rate 96.0% < 99%"]),
])
def test_judge(checks, min_requests, candidate, primary, verdict, reasons):
    judgement = judge(checks, min_requests, candidate, primary)
    assert judgement.verdict == verdict
    assert list(judgement.reasons) == reasons


def test_judgement_message_and_dict():
    assert PASS.message == "check passed (100 requests, success 100.0%, p99 10ms)"
    assert FAIL.message == "check failed: success rate 50.0% < 99%"
    assert NO_DATA.message == "no data: 3 requests < min_requests 10"
    assert FAIL.as_dict() == {"verdict": "fail", "reasons": ["success rate 50.0% < 99%"],
                              "candidate": {"requests": 100, "success_rate": 50.0,
                                            "p99_ms": 10.0},
                              "primary": None}


def test_interval_stats_from_a_stats_summary():
    assert IntervalStats.of({"requests": 0, "success_rate": None, "p99": None}) == IntervalStats()
    assert IntervalStats.of({"requests": 5, "success_rate": 80.0, "p99": 0.2}) == \
        IntervalStats(5, 80.0, 0.2)


# ---------------------------------------------------------------------------- weight plan


@pytest.mark.parametrize("kw, steps", [
    (dict(step_weight=10, max_weight=50), (10, 20, 30, 40, 50)),
    (dict(step_weight=15, max_weight=50), (15, 30, 45, 50)),  # the last step is max_weight
    (dict(step_weight=30, max_weight=50), (30, 50)),
    (dict(step_weight=60, max_weight=50), (50,)),
    (dict(step_weight=20, max_weight=100), (20, 40, 60, 80, 100)),
    (dict(step_weight=0.5, max_weight=1), (0.5, 1)),
    (dict(step_weights=(5, 10, 25, 50), max_weight=50), (5, 10, 25, 50)),
    # step_weights are the plan as written (promotion after the last), capped at max_weight
    (dict(step_weights=(1, 2, 5), max_weight=50), (1, 2, 5)),
    (dict(step_weights=(5, 10, 80, 90), max_weight=50), (5, 10, 50)),
])
def test_weight_steps(kw, steps):
    assert weight_steps(canary(**kw)) == steps


# ---------------------------------------------------------------------------- machine


def machine(clock=None, events=None, **kw) -> CanaryMachine:
    sink = None if events is None else (lambda event, before: events.append((before, event)))
    return CanaryMachine(canary(**kw), clock=clock or FakeClock(), on_event=sink)


def run(m: CanaryMachine, ticks) -> list[tuple[str, float, int]]:
    """Feed (judgement, hooks) pairs; collect (phase, weight, failed_checks) after each."""
    seen = []
    for judgement, hooks in ticks:
        m.tick(judgement, hooks)
        seen.append((m.phase, m.weight, m.failed_checks))
    return seen


@pytest.mark.parametrize("name, kw, ticks, expected", [
    ("healthy candidate climbs every step and is promoted", {},
     [(None, {}), (PASS, {}), (PASS, {}), (PASS, {})],
     [("progressing", 10, 0), ("progressing", 20, 0), ("progressing", 30, 0),
      ("promoting", 100, 0)]),
    ("no data holds: no step, no failed check", {},
     [(None, {}), (NO_DATA, {}), (NO_DATA, {}), (PASS, {})],
     [("progressing", 10, 0), ("progressing", 10, 0), ("progressing", 10, 0),
      ("progressing", 20, 0)]),
    ("threshold failed checks roll back to 0", {},
     [(None, {}), (FAIL, {}), (FAIL, {}), (FAIL, {}), (PASS, {})],
     [("progressing", 10, 0), ("progressing", 10, 1), ("progressing", 10, 2),
      ("rolling_back", 0, 3), ("rolling_back", 0, 3)]),
    ("failed checks accumulate across passes, as in Flagger", dict(max_weight=50),
     [(None, {}), (FAIL, {}), (PASS, {}), (FAIL, {}), (PASS, {}), (FAIL, {})],
     [("progressing", 10, 0), ("progressing", 10, 1), ("progressing", 20, 1),
      ("progressing", 20, 2), ("progressing", 30, 2), ("rolling_back", 0, 3)]),
    ("threshold 1 rolls back on the first failure", dict(threshold=1),
     [(None, {}), (FAIL, {})],
     [("progressing", 10, 0), ("rolling_back", 0, 1)]),
    ("step_weights with max_weight", dict(step_weights=(5, 25, 80), max_weight=50),
     [(None, {}), (PASS, {}), (PASS, {}), (PASS, {})],
     [("progressing", 5, 0), ("progressing", 25, 0), ("progressing", 50, 0),
      ("promoting", 100, 0)]),
    ("pre-rollout failure is a failed check at weight 0", dict(threshold=2),
     [(None, {"pre-rollout": DENIED}), (None, {"pre-rollout": OK}), (PASS, {})],
     [("initializing", 0, 1), ("progressing", 10, 1), ("progressing", 20, 1)]),
    ("pre-rollout failing threshold times rolls back", dict(threshold=2),
     [(None, {"pre-rollout": DENIED}), (None, {"pre-rollout": DENIED})],
     [("initializing", 0, 1), ("rolling_back", 0, 2)]),
    ("a failing rollout hook is a failed check, even when the metrics pass", {},
     [(None, {}), (PASS, {"rollout": DENIED}), (PASS, {"rollout": OK})],
     [("progressing", 10, 0), ("progressing", 10, 1), ("progressing", 20, 1)]),
    ("confirm-promotion gates promotion; metrics are still checked while waiting", {},
     [(None, {}), (PASS, {}), (PASS, {}),
      (PASS, {"confirm-promotion": DENIED}), (FAIL, {}), (NO_DATA, {}),
      (PASS, {"confirm-promotion": DENIED}), (PASS, {"confirm-promotion": OK})],
     [("progressing", 10, 0), ("progressing", 20, 0), ("progressing", 30, 0),
      ("waiting_promotion", 30, 0), ("waiting_promotion", 30, 1), ("waiting_promotion", 30, 1),
      ("waiting_promotion", 30, 1), ("promoting", 100, 1)]),
    ("a rollback hook answering 2xx rolls back at once", {},
     [(None, {}), (PASS, {"rollback": HookResult(False)}), (PASS, {"rollback": OK})],
     [("progressing", 10, 0), ("progressing", 20, 0), ("rolling_back", 0, 0)]),
])
def test_machine_transitions(name, kw, ticks, expected):
    assert run(machine(**kw), ticks) == expected, name


def test_initial_state_and_repr():
    m = machine()
    assert (m.phase, m.weight, m.primary_weight, m.step, m.steps) == \
        ("initializing", 0.0, 100.0, 0, (10, 20, 30))
    assert repr(m) == "<CanaryMachine shop initializing weight=0 step=0/3 failed=0>"
    m.tick(None)
    assert repr(m) == "<CanaryMachine shop progressing weight=10 step=1/3 failed=0>"


def test_finish_ends_the_analysis_and_later_ticks_do_nothing():
    m = machine()
    run(m, [(None, {}), (FAIL, {}), (FAIL, {}), (FAIL, {})])
    assert m.is_finishing and not m.is_final
    m.finish()
    assert (m.phase, m.weight) == ("rolled_back", 0) and m.is_final
    m.tick(PASS, {"rollback": OK})
    assert (m.phase, m.weight) == ("rolled_back", 0)
    assert m.hooks_due(PASS) == ()

    m = machine()
    run(m, [(None, {}), (PASS, {}), (PASS, {}), (PASS, {})])
    m.finish()
    assert (m.phase, m.weight, m.primary_weight) == ("promoted", 100, 0)


@pytest.mark.parametrize("ticks, judgement, due", [
    ([], None, ("rollback", "pre-rollout")),
    ([(None, {})], PASS, ("rollback", "rollout")),
    ([(None, {}), (PASS, {}), (PASS, {})], PASS, ("rollback", "rollout", "confirm-promotion")),
    ([(None, {}), (PASS, {}), (PASS, {})], FAIL, ("rollback", "rollout")),
    ([(None, {}), (PASS, {}), (PASS, {})], NO_DATA, ("rollback", "rollout")),
])
def test_hooks_due(ticks, judgement, due):
    m = machine()
    run(m, ticks)
    assert m.hooks_due(judgement) == due


def test_pause_holds_and_resume_returns_where_it_was():
    m = machine()
    run(m, [(None, {}), (PASS, {}), (PASS, {}), (PASS, {"confirm-promotion": DENIED})])
    assert m.phase == "waiting_promotion"
    m.pause()
    assert (m.phase, m.paused_from, m.weight) == ("paused", "waiting_promotion", 30)
    assert m.hooks_due(PASS) == ("rollback",)
    run(m, [(FAIL, {}), (PASS, {"confirm-promotion": OK})])  # ignored while paused
    assert (m.phase, m.weight, m.failed_checks) == ("paused", 30, 0)
    events = len(m.events)
    m.pause()  # pausing twice is a no-op
    assert len(m.events) == events
    m.resume()
    assert (m.phase, m.paused_from) == ("waiting_promotion", None)
    m.resume()  # resuming a running canary is a no-op
    assert len(m.events) == events + 1
    m.tick(PASS, {"confirm-promotion": OK})
    assert m.phase == "promoting"


def test_a_rollback_hook_works_while_paused():
    m = machine()
    m.tick(None)
    m.pause()
    m.tick(None, {"rollback": OK})
    assert (m.phase, m.weight) == ("rolling_back", 0)


def test_export_and_restore_continue_the_analysis_where_it_stood():
    m = machine()
    run(m, [(None, {}), (PASS, {}), (FAIL, {})])
    m.pause()
    saved = m.export()
    assert (saved["phase"], saved["step"], saved["weight"], saved["failed_checks"],
            saved["paused_from"]) == ("paused", 2, 20, 1, "progressing")

    clock = FakeClock(2000.0)
    again = machine(clock=clock)  # the same canary after a restart
    again.restore(saved)
    assert (again.phase, again.step, again.weight, again.failed_checks, again.paused_from) == \
        ("paused", 2, 20, 1, "progressing")
    assert [e.message for e in again.events][:-1] == [e.message for e in m.events]
    assert again.events[-1].message == "resumed after a restart at 20%"
    assert again.events[-1].time == 2000.0
    again.resume()
    run(again, [(FAIL, {}), (FAIL, {})])  # failed checks carried over: 3 reach the threshold
    assert (again.phase, again.weight) == ("rolling_back", 0)


@pytest.mark.parametrize("change", [
    {"phase": "dancing"}, {"step": 9}, {"paused_from": "promoted"}, {"weight": "lots"},
    {"events": [{"time": 1.0}]},
])
def test_restore_refuses_what_is_not_an_export_of_this_canary(change):
    saved = {**machine().export(), **change}
    with pytest.raises(ValueError, match="not a saved canary analysis"):
        machine().restore(saved)


def test_pause_during_initializing_resumes_initializing():
    m = machine()
    m.pause()
    m.resume()
    assert m.phase == "initializing"


@pytest.mark.parametrize("command, phase, weight", [
    ("promote", "promoting", 100),
    ("abort", "rolling_back", 0),
])
def test_operator_promote_and_abort(command, phase, weight):
    for setup in ([], [(None, {})], [(None, {}), (PASS, {})]):
        m = machine()
        run(m, setup)
        getattr(m, command)()
        assert (m.phase, m.weight) == (phase, weight)
    m = machine()
    m.tick(None)
    m.pause()
    getattr(m, command)()  # also from paused
    assert (m.phase, m.weight, m.paused_from) == (phase, weight, None)


@pytest.mark.parametrize("end", ["promote", "abort"])
@pytest.mark.parametrize("command", ["promote", "abort", "pause", "resume"])
def test_commands_are_refused_once_the_analysis_ends(end, command):
    m = machine()
    m.tick(None)
    getattr(m, end)()
    with pytest.raises(CommandRefused, match=f"cannot {command} canary shop: it is "):
        getattr(m, command)()  # while finishing
    m.finish()
    with pytest.raises(CommandRefused, match="change its definition"):
        getattr(m, command)()


def test_events_carry_the_clock_phase_weight_and_reach_the_sink():
    clock, seen = FakeClock(50.0), []
    m = machine(clock=clock, events=seen)
    clock.now = 51.0
    m.tick(None)
    clock.now = 52.0
    m.tick(NO_DATA)
    clock.now = 53.0
    m.tick(FAIL)
    assert [(e.time, e.phase, e.weight) for e in m.events] == \
        [(50.0, "initializing", 0), (51.0, "progressing", 10), (52.0, "progressing", 10),
         (53.0, "progressing", 10)]
    assert [before for before, _ in seen] == ["initializing", "initializing", "progressing",
                                              "progressing"]
    assert m.events[1].message == "started: candidate at 10%"
    assert m.events[2].message == "no data: 3 requests < min_requests 10; holding at 10%"
    assert m.events[3].message == ("check failed: success rate 50.0% < 99%; "
                                   "1/3 failed checks, holding at 10%")
    assert m.events[3].as_dict() == {"time": 53.0, "phase": "progressing", "weight": 10,
                                     "message": m.events[3].message}
    assert m.last_check is FAIL and m.last_check_time == 53.0


def test_waiting_for_confirmation_is_one_event_not_one_per_interval():
    m = machine()
    run(m, [(None, {}), (PASS, {}), (PASS, {})] + [(PASS, {"confirm-promotion": DENIED})] * 5)
    waiting = [e for e in m.events if "waiting for confirm-promotion" in e.message]
    assert len(waiting) == 1 and "(answered 403)" in waiting[0].message


def test_events_are_bounded():
    m = CanaryMachine(canary(), clock=FakeClock(), max_events=5)
    m.tick(None)
    for _ in range(20):
        m.tick(NO_DATA)
    assert len(m.events) == 5


def test_aggregate_hooks_of_one_type():
    assert aggregate([OK, OK]) == HookResult(True, "answered 200; answered 200")
    assert aggregate([OK, DENIED]).ok is False
    assert aggregate([]).ok is True
    # rollback: any hook may ask for it
    assert aggregate([HookResult(False), OK], any_ok=True).ok is True
    assert aggregate([HookResult(False)], any_ok=True).ok is False


# ---------------------------------------------------------------------------- the numbers


def test_totals_give_exact_numbers_for_any_interval():
    clock = FakeClock(0.0)
    s = Stats(window=30, clock=clock)

    def record(status, duration, backend="shop/v2"):
        s.record(RequestOutcome(start=0.0, route="shop", backend=backend, status=status,
                                duration=duration))

    for _ in range(5):
        record(200, 0.010)
    before = s.windows.totals("shop", "shop/v2")
    clock.now = 45.0  # longer than the 30-s window: totals do not care
    for _ in range(3):
        record(200, 0.010)
    record(503, 0.200)
    record(200, 0.010, backend="shop/v1")
    summary = s.windows.totals("shop", "shop/v2").since(before, 45.0)
    assert summary["requests"] == 4
    assert summary["success_rate"] == 75.0
    assert 0.18 <= summary["p99"] <= 0.21
    idle = s.windows.totals("shop", "shop/v2").since(s.windows.totals("shop", "shop/v2"), 1.0)
    assert idle["requests"] == 0 and idle["success_rate"] is None
    unseen = s.windows.totals("shop", "nope")
    assert unseen.since(unseen, 1.0)["requests"] == 0


def test_the_documented_config_loads_cleanly(tmp_path):
    from pathlib import Path

    from pyproxy.config.load import load_config

    text = (Path(__file__).parents[3] / "docs" / "canary.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "canary.yaml").write_text(block)
    loaded = load_config([str(tmp_path / "canary.yaml")])
    assert not loaded.warnings, [str(w) for w in loaded.warnings]
    (documented,) = loaded.config.canaries
    assert weight_steps(documented) == (10, 20, 30, 40, 50)
    assert loaded.config.metrics.linkerd_compat
