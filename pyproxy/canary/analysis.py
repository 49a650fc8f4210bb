"""The automated canary's decisions, free of I/O: a judge and a state machine.

``judge`` looks at one interval's numbers for the candidate (and, with
``relative_to_primary``, the primary) and says ``pass``, ``fail`` (with reasons) or
``no_data``. ``CanaryMachine`` turns those judgements, the webhooks' answers and operator
commands into phases and a candidate weight. Nothing here reads a clock except the injected
one (for event timestamps), talks to the network or touches routing: the controller
(``canary/controller.py``) gathers the numbers, calls the webhooks and applies the weight.

Phases (Flagger's, shortened)::

    initializing ──pre-rollout ok──▶ progressing ──pass at the last step──▶ waiting_promotion
         │                             │    ▲ pass: next step                 │ confirm-promotion ok
         │                             │    └─────────┘                       ▼
         │                             └── failed checks ≥ threshold ──▶ rolling_back ─▶ rolled_back
         └── (any active phase) ── pause ──▶ paused ── resume ──▶ (where it was)
    progressing ── pass at the last step, confirm-promotion ok ──▶ promoting ─▶ promoted

A no-data interval (fewer than ``min_requests``) holds: no step, no failed check. Failed
checks accumulate over the whole analysis, as in Flagger (a flapping candidate is rolled back
too). ``promoting`` and ``rolling_back`` last while the post-rollout webhooks run.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from pyproxy.config.model import Canary, CanaryChecks

__all__ = [
    "ACTIVE",
    "FINAL",
    "PHASES",
    "CanaryMachine",
    "CanaryState",
    "CommandRefused",
    "Event",
    "HookResult",
    "IntervalStats",
    "Judgement",
    "aggregate",
    "judge",
    "weight_steps",
]

Verdict = Literal["pass", "fail", "no_data"]

PHASES = ("initializing", "progressing", "waiting_promotion", "paused", "promoting",
          "promoted", "rolling_back", "rolled_back")
ACTIVE = frozenset({"initializing", "progressing", "waiting_promotion"})  # ticks do work
FINISHING = frozenset({"promoting", "rolling_back"})  # post-rollout webhooks running

# A canary's analysis as JSON values (``CanaryMachine.export``), kept in the state file. What
# comes back from the file may be anything: ``restore`` checks every value it reads.
CanaryState = dict[str, Any]


class IntervalNumbers(TypedDict):
    """The part of a window summary the judge reads (``success_rate`` in percent, ``p99`` in
    seconds; None without requests)."""

    requests: int
    success_rate: float | None
    p99: float | None
FINAL = frozenset({"promoted", "rolled_back"})


# ---------------------------------------------------------------------------- the judge


@dataclass(frozen=True)
class IntervalStats:
    """One backend over one interval: requests, success rate (percent) and p99 (seconds);
    the rates are None without requests."""

    requests: int = 0
    success_rate: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, summary: IntervalNumbers) -> IntervalStats:
        """From a window summary (``metrics.windows.WindowSummary``) or any dict with these
        keys."""
        return cls(int(summary.get("requests") or 0), summary.get("success_rate"),
                   summary.get("p99"))

    def with_failovers(self, count: int) -> IntervalStats:
        """Add ``count`` requests drawn for this backend that it could not serve (no
        available endpoint: they failed over to another backend) as failed requests. Users
        got answers, but a canary whose endpoints are all ejected must still fail its
        checks and be rolled back rather than hold for lack of data. Latency is unchanged:
        it never answered them."""
        if count <= 0:
            return self
        succeeded = (self.success_rate or 0.0) * self.requests / 100.0
        total = self.requests + count
        return IntervalStats(total, round(100.0 * succeeded / total, 3), self.p99)

    def as_dict(self) -> dict[str, object]:
        return {"requests": self.requests, "success_rate": self.success_rate,
                "p99_ms": None if self.p99 is None else round(self.p99 * 1000, 3)}

    def __str__(self) -> str:
        if not self.requests:
            return "0 requests"
        parts = [f"{self.requests} requests"]
        if self.success_rate is not None:
            parts.append(f"success {self.success_rate:.1f}%")
        if self.p99 is not None:
            parts.append(f"p99 {_ms(self.p99)}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reasons: tuple[str, ...]  # why it failed, or why there is no data; empty on a pass
    candidate: IntervalStats
    primary: IntervalStats | None = None

    @property
    def message(self) -> str:
        if self.verdict == "pass":
            return f"check passed ({self.candidate})"
        if self.verdict == "no_data":
            return "no data: " + "; ".join(self.reasons)
        return "check failed: " + "; ".join(self.reasons)

    def as_dict(self) -> dict[str, object]:
        return {"verdict": self.verdict, "reasons": list(self.reasons),
                "candidate": self.candidate.as_dict(),
                "primary": None if self.primary is None else self.primary.as_dict()}


def judge(checks: CanaryChecks, min_requests: int, candidate: IntervalStats,
          primary: IntervalStats | None = None) -> Judgement:
    """Judge the candidate's last interval.

    Fewer than ``min_requests`` (and never fewer than one) is ``no_data``: an idle backend
    is not a healthy one, so the canary holds. Absolute checks: success rate at least
    ``success_rate_min`` percent, p99 at most ``latency_p99_max`` seconds. With
    ``relative_to_primary`` the primary's numbers over the same interval are the baseline —
    the candidate may be at most ``100 - success_rate_min`` points less successful and
    ``latency_p99_max`` slower than the primary — so trouble both versions share (a slow
    database) is not blamed on the candidate. Without enough primary traffic to compare
    with, the absolute checks apply.
    """
    needed = max(min_requests, 1)
    if candidate.requests < needed:
        return Judgement("no_data", (f"{candidate.requests} requests < min_requests {needed}",),
                         candidate, primary)
    baseline = primary if (checks.relative_to_primary and primary is not None
                           and primary.requests >= needed) else None
    reasons = []
    if checks.success_rate_min is not None and candidate.success_rate is not None:
        floor, against = checks.success_rate_min, ""
        if baseline is not None and baseline.success_rate is not None:
            floor = baseline.success_rate - (100.0 - checks.success_rate_min)
            against = f" (primary {baseline.success_rate:.1f}%)"
        if candidate.success_rate < floor:
            reasons.append(f"success rate {candidate.success_rate:.1f}% < {round(floor, 2):g}%"
                           f"{against}")
    if checks.latency_p99_max is not None and candidate.p99 is not None:
        ceiling, against = checks.latency_p99_max, ""
        if baseline is not None and baseline.p99 is not None:
            ceiling = baseline.p99 + checks.latency_p99_max
            against = f" (primary {_ms(baseline.p99)})"
        if candidate.p99 > ceiling:
            reasons.append(f"p99 {_ms(candidate.p99)} > {_ms(ceiling)}{against}")
    return Judgement("fail" if reasons else "pass", tuple(reasons), candidate, primary)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds >= 0.01 else f"{seconds * 1000:.1f}ms"


# ---------------------------------------------------------------------------- the machine


def weight_steps(canary: Canary) -> tuple[float, ...]:
    """The candidate weights, step by step. ``step_weights`` are the plan as written (as in
    Flagger, the last one is where promotion is decided), capped at ``max_weight``;
    ``step_weight`` climbs in equal steps and ends exactly at ``max_weight``."""
    cap = canary.max_weight
    if canary.step_weights:
        steps = [min(w, cap) for w in canary.step_weights]
    else:
        steps, n = [], 1
        while canary.step_weight * n < cap:
            steps.append(round(canary.step_weight * n, 6))
            n += 1
        steps.append(cap)
    unique: list[float] = []
    for w in steps:
        if not unique or w > unique[-1]:
            unique.append(w)
    return tuple(unique)


@dataclass(frozen=True)
class Event:
    """A transition or a decision, as shown in the API and logged."""

    time: float  # wall clock
    phase: str
    weight: float  # candidate weight after the event
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"time": self.time, "phase": self.phase, "weight": self.weight,
                "message": self.message}


@dataclass(frozen=True)
class HookResult:
    """What the webhooks of one type answered this tick. ``ok`` means every hook of the type
    answered 2xx in time — for ``rollback`` hooks that is a request to roll back now."""

    ok: bool
    detail: str = ""


class CommandRefused(Exception):
    """An operator command that does not apply in the canary's phase (the message says why)."""


EventSink = Callable[[Event, str], None]  # (event, phase before it)


class CanaryMachine:
    """One canary analysis. The controller calls ``tick`` once per interval with the
    interval's judgement and the webhook answers it asked for (``hooks_due``), applies
    ``weight`` to the route, and calls ``finish`` once the post-rollout webhooks ran."""

    def __init__(self, canary: Canary, *, clock: Callable[[], float] = time.time,
                 on_event: EventSink | None = None, max_events: int = 50):
        self.canary = canary
        self.steps = weight_steps(canary)
        self._clock = clock
        self._on_event = on_event
        self.phase = "initializing"
        self.step = 0  # 1-based index of the current step in ``steps``; 0 = none yet
        self.weight = 0.0
        self.failed_checks = 0
        self.last_check: Judgement | None = None
        self.last_check_time: float | None = None
        self.paused_from: str | None = None
        self.events: deque[Event] = deque(maxlen=max_events)
        self._record(f"analysis of {canary.candidate} against {canary.primary} on route "
                     f"{canary.route}: steps {', '.join(_pct(w) for w in self.steps)} every "
                     f"{canary.interval:g}s, rollback after {canary.threshold} failed checks")

    # ------------------------------------------------------------------ reading

    @property
    def primary_weight(self) -> float:
        return 100.0 - self.weight

    @property
    def is_final(self) -> bool:
        return self.phase in FINAL

    @property
    def is_finishing(self) -> bool:
        return self.phase in FINISHING

    def hooks_due(self, judgement: Judgement | None) -> tuple[str, ...]:
        """The webhook types whose answers ``tick`` needs for this judgement."""
        if self.phase not in ACTIVE and self.phase != "paused":
            return ()
        due = ["rollback"]
        if self.phase == "initializing":
            due.append("pre-rollout")
        elif self.phase in ("progressing", "waiting_promotion"):
            due.append("rollout")
            if judgement is not None and judgement.verdict == "pass" \
                    and self.step == len(self.steps):
                due.append("confirm-promotion")
        return tuple(due)

    def export(self) -> CanaryState:
        """Where the analysis stands, as plain values (JSON): ``restore`` continues from it
        after a restart."""
        return {"phase": self.phase, "step": self.step, "weight": self.weight,
                "failed_checks": self.failed_checks, "paused_from": self.paused_from,
                "events": [event.as_dict() for event in self.events]}

    def restore(self, saved: CanaryState) -> None:
        """Continue the analysis ``export`` saved for the same canary definition; raises
        ValueError when ``saved`` is not such an export."""
        try:
            phase, paused_from = saved["phase"], saved["paused_from"]
            step, weight = int(saved["step"]), float(saved["weight"])
            failed_checks = int(saved["failed_checks"])
            events = [Event(float(e["time"]), str(e["phase"]), float(e["weight"]),
                            str(e["message"])) for e in saved["events"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a saved canary analysis: {exc!r}") from None
        if phase not in PHASES or paused_from not in (None, *ACTIVE) \
                or not 0 <= step <= len(self.steps):
            raise ValueError("not a saved canary analysis of this definition")
        self.phase, self.paused_from = phase, paused_from
        self.step, self.weight, self.failed_checks = step, weight, failed_checks
        self.events.clear()
        self.events.extend(events)
        self._record(f"resumed after a restart at {_pct(self.weight)}")

    def __repr__(self) -> str:
        return (f"<CanaryMachine {self.canary.name} {self.phase} weight={self.weight:g} "
                f"step={self.step}/{len(self.steps)} failed={self.failed_checks}>")

    # ------------------------------------------------------------------ one interval

    def tick(self, judgement: Judgement | None,
             hooks: Mapping[str, HookResult] | None = None) -> None:
        """Decide on one interval. A webhook type missing from ``hooks`` counts as passed
        (and a missing ``rollback`` as not asking for one)."""
        hooks = hooks or {}
        if self.phase not in ACTIVE and self.phase != "paused":
            return
        rollback = hooks.get("rollback")
        if rollback is not None and rollback.ok:
            self._roll_back("rollback webhook asked for a rollback" + _detail(rollback))
            return
        if self.phase == "paused":
            return
        if self.phase == "initializing":
            pre = hooks.get("pre-rollout")
            if pre is not None and not pre.ok:
                self._failed_check("pre-rollout webhook failed" + _detail(pre))
                return
            self.step, self.weight = 1, self.steps[0]
            self._record(f"started: candidate at {_pct(self.weight)}", phase="progressing")
            return
        rollout = hooks.get("rollout")
        if rollout is not None and not rollout.ok:
            self._failed_check("rollout webhook failed" + _detail(rollout))
            return
        if judgement is None:
            return
        self.last_check, self.last_check_time = judgement, self._clock()
        if judgement.verdict == "no_data":
            self._record(f"{judgement.message}; holding at {_pct(self.weight)}")
            return
        if judgement.verdict == "fail":
            self._failed_check(judgement.message)
            return
        if self.step < len(self.steps):
            before = self.weight
            self.step += 1
            self.weight = self.steps[self.step - 1]
            self._record(f"{judgement.message}; candidate {_pct(before)} → {_pct(self.weight)}",
                         phase="progressing")
            return
        confirm = hooks.get("confirm-promotion")
        if confirm is not None and not confirm.ok:
            if self.phase != "waiting_promotion":  # one event per wait, not one per interval
                self._record(f"{judgement.message}; waiting for confirm-promotion"
                             + _detail(confirm), phase="waiting_promotion")
            return
        self._promote(f"{judgement.message} at {_pct(self.weight)}; promoting")

    def finish(self) -> None:
        """The post-rollout webhooks ran (their failures are only logged): end the analysis."""
        if self.phase == "promoting":
            self._record("promoted: candidate takes all traffic", phase="promoted")
        elif self.phase == "rolling_back":
            self._record("rolled back: primary takes all traffic", phase="rolled_back")

    # ------------------------------------------------------------------ operator commands

    def pause(self, reason: str = "paused by operator") -> None:
        """Hold the current weight; no checks until ``resume``. Pausing twice is a no-op."""
        if self.phase == "paused":
            return
        self._refuse_unless_running("pause")
        self.paused_from = self.phase
        self._record(f"{reason}; holding at {_pct(self.weight)}", phase="paused")

    def resume(self) -> None:
        """Continue where ``pause`` left off. Resuming a running canary is a no-op."""
        if self.phase in ACTIVE:
            return
        self._refuse_unless_running("resume")
        phase, self.paused_from = self.paused_from or "progressing", None
        self._record(f"resumed at {_pct(self.weight)}", phase=phase)

    def promote(self) -> None:
        """Skip the remaining steps (and confirm-promotion): the candidate takes over."""
        self._refuse_unless_running("promote")
        self._promote("promoted by operator")

    def abort(self, reason: str = "aborted by operator") -> None:
        """Roll back now: the primary takes all traffic."""
        self._refuse_unless_running("abort")
        self._roll_back(reason)

    # ------------------------------------------------------------------ internals

    def _refuse_unless_running(self, command: str) -> None:
        if self.phase in ACTIVE or self.phase == "paused":
            return
        state = self.phase.replace("_", " ")
        raise CommandRefused(
            f"cannot {command} canary {self.canary.name}: it is {state}; change its definition "
            "in the config (or remove it) to start over")

    def _failed_check(self, why: str) -> None:
        self.failed_checks += 1
        if self.failed_checks >= self.canary.threshold:
            self._roll_back(f"{why}; {self.failed_checks}/{self.canary.threshold} failed checks")
        else:
            self._record(f"{why}; {self.failed_checks}/{self.canary.threshold} failed checks, "
                         f"holding at {_pct(self.weight)}")

    def _roll_back(self, why: str) -> None:
        self.weight, self.paused_from = 0.0, None
        self._record(f"{why}; rolling back", phase="rolling_back")

    def _promote(self, why: str) -> None:
        self.weight, self.paused_from = 100.0, None
        self._record(why, phase="promoting")

    def _record(self, message: str, phase: str | None = None) -> None:
        before = self.phase
        if phase is not None:
            self.phase = phase
        event = Event(self._clock(), self.phase, self.weight, message)
        self.events.append(event)
        if self._on_event is not None:
            self._on_event(event, before)


def _pct(weight: float) -> str:
    return f"{weight:g}%"


def _detail(result: HookResult) -> str:
    return f" ({result.detail})" if result.detail else ""


def aggregate(results: Iterable[HookResult], *, any_ok: bool = False) -> HookResult:
    """The hooks of one type as one answer: all must be ok (``any_ok``: one is enough, as
    for ``rollback``, where any hook may ask for it); details joined."""
    results = list(results)
    ok = any(r.ok for r in results) if any_ok else all(r.ok for r in results)
    return HookResult(ok, "; ".join(r.detail for r in results if r.detail))
