"""The automated canary loop (docs/canary.md): one task per canary, one tick per
``interval``.

Each tick reads the candidate's (and the primary's) numbers for the interval that just
ended, asks the judge (``canary/analysis.py``), calls the webhooks the state machine needs,
feeds both to the machine and applies its weight to the route as a run-time override
(``Overrides.set_weights(..., source="canary")``): the files are never rewritten, and the
override survives reloads like one set with ``pyproxy set-weight``.

Per-interval numbers: ``Windows.totals`` gives cumulative counts per (route, backend); the
controller snapshots them whenever it applies a weight and subtracts at the next tick, so a
judgement covers exactly the requests that finished during that interval, at that weight,
whatever the interval's length (the 30-s ``Windows.summary`` would blur two steps together).

Lifecycle: the controller follows the config — a canary added on reload starts, one whose
definition changed starts over, one removed stops and its override is cleared so the
configured split serves again. State lives in memory, and with a state directory
(``--state-dir``, ``--workers N``) also in the state file (``workers/state_file.py``): ``export``
gives it, ``on_change`` says when to write it, and a controller started with ``saved``
resumes each canary whose definition is unchanged where it stood (phase, step, weight,
failed checks, events) — its next check comes one interval after the restart. Without one,
the analysis starts over after a restart, so make a promotion permanent by editing the split
(and removing the canary). If someone else changes the route's weights while a canary runs
(``pyproxy set-weight``), the canary pauses rather than fight; ``resume`` takes the route back.

Webhooks are POSTed JSON (``name``, ``type``, ``phase``, ``route``, ``primary``,
``candidate``, ``weight``, ``failed_checks``) with the hook's timeout; 2xx is "ok" —
for ``rollback`` hooks, polled every tick, a 2xx means "roll back now".
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pyproxy.canary.analysis import (
    ACTIVE,
    PHASES,
    CanaryMachine,
    CanaryState,
    CommandRefused,
    Event,
    HookResult,
    IntervalStats,
    Judgement,
    aggregate,
    judge,
)
from pyproxy.config.model import Canary, Webhook
from pyproxy.errors import InvalidOverride
from pyproxy.metrics.stats import CanaryMetrics, Stats
from pyproxy.metrics.windows import Totals
from pyproxy.runtime import Runtime
from pyproxy.tasks import TaskGroup

if TYPE_CHECKING:
    import aiohttp

__all__ = ["ACTIONS", "CanaryController", "CanaryNotFound", "CommandRefused"]

logger = logging.getLogger("pyproxy.canary")

ACTIONS = ("promote", "abort", "pause", "resume")


class CanaryNotFound(LookupError):
    """No canary of that name is configured (the message lists the ones that are)."""


class _Runner:
    """One canary's analysis: its machine, task, interval baseline and applied weights."""

    def __init__(self, canary: Canary, machine: CanaryMachine):
        self.canary = canary
        self.machine = machine
        self.task: asyncio.Task[None] | None = None
        self.applied: dict[str, float] | None = None  # the weights we set last
        # candidate, primary, when, and the candidate's failovers so far
        self.baseline: tuple[Totals, Totals, float, int] | None = None
        self.next_check: float | None = None  # monotonic time of the next tick
        self.interval = 0  # judged intervals so far
        self.last_check: dict[str, object] | None = None
        self.finishing = False
        self.resumed = False  # restored from saved state rather than started afresh


class CanaryController:
    """Runs every configured canary; the admin API and ``/metrics`` read it."""

    def __init__(self, runtime: Runtime, stats: Stats, *, poll: float = 0.5,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 saved: Mapping[str, CanaryState] | None = None,
                 on_change: Callable[[], None] | None = None):
        self.runtime = runtime
        self.stats = stats
        # canary name → ``export()`` entry of an earlier run, until that canary starts
        self._saved = dict(saved or {})
        self.on_change = on_change  # called whenever ``export()`` may have changed
        self._poll = poll  # how often the config is checked for added/changed canaries
        self._clock = clock
        self._wall = wall
        self._runners: dict[str, _Runner] = {}
        self._blocked: dict[str, str] = {}  # canary → why it does not run
        self._canaries: tuple[Canary, ...] | None = None
        # Counters per canary name: they outlive one analysis so Prometheus sees them grow.
        self._transitions: dict[str, Counter[str]] = {}
        self._checks: dict[str, Counter[str]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._tasks = TaskGroup()  # each runner's loop, and promotions finishing
        stats.canaries_provider = self.metrics

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Follow the config until cancelled; then stop every canary (weights stay)."""
        try:
            while True:
                self.sync()
                await asyncio.sleep(self._poll)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self._tasks.cancel_all()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def stand_down(self) -> None:
        """After ``run`` is cancelled: forget the running canaries but keep where each
        stood, so the next ``run`` resumes them. In-cluster mode runs canaries on the
        Lease holder only (docs/kubernetes.md); this is leadership lost."""
        self._saved = self.export()
        self._runners.clear()
        self._canaries = None

    def sync(self) -> None:
        """Start, restart and stop canaries to match the config now serving."""
        snapshot = self.runtime.snapshot
        if snapshot is None or snapshot.config.canaries is self._canaries:
            return
        wanted = {c.name: c for c in snapshot.config.canaries}
        for name, runner in list(self._runners.items()):
            if wanted.get(name) != runner.canary:
                self._stop(runner, "removed from the config" if name not in wanted
                           else "definition changed: starting over")
        self._blocked.clear()
        for canary in snapshot.config.canaries:
            if canary.name in self._runners:
                continue
            owner = next((r.canary.name for r in self._runners.values()
                          if r.canary.route == canary.route), None)
            if owner is not None:
                self._blocked[canary.name] = (f"route {canary.route} is already driven by "
                                              f"canary {owner}")
                logger.error("canary %s not started: %s", canary.name,
                             self._blocked[canary.name])
                continue
            self._start(canary)
        self._saved.clear()  # what no started canary took is for canaries no longer configured
        self._canaries = snapshot.config.canaries
        self._changed()

    def _start(self, canary: Canary) -> None:
        self._transitions.setdefault(canary.name, Counter())["initializing"] += 1
        self._checks.setdefault(canary.name, Counter())
        machine = CanaryMachine(canary, clock=self._wall,
                                on_event=functools.partial(self._on_event, canary))
        runner = self._runners[canary.name] = _Runner(canary, machine)
        saved = self._saved.pop(canary.name, None)
        if saved is not None and saved.get("definition") == _fingerprint(canary):
            try:
                machine.restore(saved)
                runner.resumed = True
            except ValueError as exc:
                logger.error("canary %s: saved state ignored, starting over: %s",
                             canary.name, exc)
        runner.task = self._tasks.spawn(self._run(runner), f"canary-{canary.name}")

    def _stop(self, runner: _Runner, why: str) -> None:
        logger.info("canary %s stopped: %s", runner.canary.name, why)
        if runner.task is not None:
            runner.task.cancel()
        del self._runners[runner.canary.name]
        override = self.runtime.overrides.weights.get(runner.canary.route)
        if override is not None and override.source == "canary":
            self.runtime.overrides.clear_weights(runner.canary.route)
        self._changed()

    async def _run(self, runner: _Runner) -> None:
        interval = runner.canary.interval
        try:
            if runner.resumed:
                self._apply(runner)  # where it stood; judged from now on
                runner.baseline = self._snapshot(runner)
                if runner.machine.is_finishing:
                    await self._finish(runner)  # the post-rollout hooks had not run
            else:
                if any(h.type == "pre-rollout" for h in runner.canary.webhooks):
                    self._apply(runner)  # the candidate gets nothing until pre-rollout hooks pass
                await self._tick(runner)
            while not runner.machine.is_final:
                runner.next_check = self._clock() + interval
                await asyncio.sleep(interval)
                await self._tick(runner)
        except Exception:  # a bug must not end the analysis silently
            logger.exception("canary %s: the analysis stopped; route %s keeps its current "
                             "weights", runner.canary.name, runner.canary.route)

    # ------------------------------------------------------------------ one tick

    async def _tick(self, runner: _Runner) -> None:
        machine = runner.machine
        if machine.phase not in ACTIVE and machine.phase != "paused":
            return
        self._check_override(runner)
        judgement = None
        if machine.phase in ("progressing", "waiting_promotion"):
            judgement = self._judge(runner)
        due = [t for t in machine.hooks_due(judgement)
               if any(h.type == t for h in runner.canary.webhooks)]
        answers = await asyncio.gather(*(self._call_hooks(runner, t) for t in due))
        machine.tick(judgement, dict(zip(due, answers, strict=True)))
        self._apply(runner)
        runner.baseline = self._snapshot(runner)
        self._changed()
        if machine.is_finishing:
            await self._finish(runner)

    def _judge(self, runner: _Runner) -> Judgement:
        canary = runner.canary
        now = self._snapshot(runner)
        if runner.baseline is None:
            runner.baseline = now
        cand_before, prim_before, since, failovers_before = runner.baseline
        seconds = now[2] - since
        candidate = IntervalStats.of(now[0].since(cand_before, seconds)).with_failovers(
            now[3] - failovers_before)
        primary = IntervalStats.of(now[1].since(prim_before, seconds))
        judgement = judge(canary.checks, canary.min_requests, candidate, primary)
        runner.interval += 1
        self._checks[canary.name][judgement.verdict] += 1
        runner.last_check = {"time": self._wall(), "interval": runner.interval,
                             "seconds": round(seconds, 3), "weight": runner.machine.weight,
                             **judgement.as_dict()}
        logger.info("canary %s: interval %d at candidate %g%% (%.1fs): candidate %s; "
                    "primary %s -> %s", canary.name, runner.interval, runner.machine.weight,
                    seconds, candidate, primary, judgement.verdict)
        return judgement

    def _snapshot(self, runner: _Runner) -> tuple[Totals, Totals, float, int]:
        canary = runner.canary
        return (self.stats.windows.totals(canary.route, canary.candidate),
                self.stats.windows.totals(canary.route, canary.primary), self._clock(),
                self.stats.failovers_from(canary.route, canary.candidate))

    async def _finish(self, runner: _Runner) -> None:
        """Post-rollout webhooks (failures are only logged), then the final phase."""
        if runner.finishing:
            return
        runner.finishing = True
        if any(h.type == "post-rollout" for h in runner.canary.webhooks):
            result = await self._call_hooks(runner, "post-rollout")
            if not result.ok:
                logger.warning("canary %s: post-rollout webhook failed: %s",
                               runner.canary.name, result.detail)
        runner.machine.finish()
        self._changed()

    # ------------------------------------------------------------------ routing

    def _weights_for(self, runner: _Runner) -> dict[str, float]:
        """The route's split: primary 100−w, candidate w; other backends keep their
        configured weights."""
        canary, machine = runner.canary, runner.machine
        compiled = self.runtime.current.routes.get(canary.route)
        weights = {b.name: b.weight for b in compiled.route.backends} if compiled else {}
        weights[canary.primary] = machine.primary_weight
        weights[canary.candidate] = machine.weight
        return weights

    def _apply(self, runner: _Runner) -> None:
        if runner.machine.phase == "paused":
            return  # hold whatever serves now, including an operator's weights
        weights = self._weights_for(runner)
        override = self.runtime.overrides.weights.get(runner.canary.route)
        if (weights == runner.applied and override is not None and override.source == "canary"
                and override.weights == weights):
            return
        try:
            self.runtime.overrides.set_weights(runner.canary.route, weights, source="canary")
        except InvalidOverride as exc:
            logger.error("canary %s: cannot set the weights of route %s: %s",
                         runner.canary.name, runner.canary.route, exc)
            return
        runner.applied = weights

    def _check_override(self, runner: _Runner) -> None:
        """Someone else set (or cleared) the route's weights: pause instead of fighting."""
        if runner.applied is None or runner.machine.phase == "paused":
            return
        override = self.runtime.overrides.weights.get(runner.canary.route)
        if override is not None and override.source == "canary" \
                and override.weights == runner.applied:
            return
        who = "a weight reset" if override is None else f"weights set by {override.source}"
        runner.applied = None
        runner.machine.pause(f"route {runner.canary.route} changed by {who}; paused "
                             "(resume to hand the route back to the canary)")

    # ------------------------------------------------------------------ webhooks

    async def _call_hooks(self, runner: _Runner, kind: str) -> HookResult:
        hooks = [h for h in runner.canary.webhooks if h.type == kind]
        results = await asyncio.gather(*(self._call(runner, h) for h in hooks))
        return aggregate(results, any_ok=kind == "rollback")

    async def _call(self, runner: _Runner, hook: Webhook) -> HookResult:
        # Imported here: aiohttp's client costs every proxy process ~16 MiB of memory, and
        # only canaries with webhooks need it.
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession()
        machine = runner.machine
        payload = {"name": runner.canary.name, "type": hook.type, "phase": machine.phase,
                   "route": runner.canary.route, "primary": runner.canary.primary,
                   "candidate": runner.canary.candidate, "weight": machine.weight,
                   "failed_checks": machine.failed_checks}
        try:
            async with self._session.post(hook.url, json=payload,
                                          timeout=aiohttp.ClientTimeout(total=hook.timeout)) as r:
                await r.read()
                ok = 200 <= r.status < 300
                result = HookResult(ok, f"{hook.type} {_shown(hook.url)} answered {r.status}")
        except TimeoutError:
            result = HookResult(False, f"{hook.type} {_shown(hook.url)} timed out after "
                                       f"{hook.timeout:g}s")
        except aiohttp.ClientError as exc:
            result = HookResult(False, f"{hook.type} {_shown(hook.url)} failed: "
                                       f"{type(exc).__name__}")
        if hook.type != "rollback" and not result.ok:
            logger.warning("canary %s: %s", runner.canary.name, result.detail)
        return result

    # ------------------------------------------------------------------ events

    def _on_event(self, canary: Canary, event: Event, before: str) -> None:
        if event.phase != before:
            self._transitions[canary.name][event.phase] += 1
        level = logging.WARNING if event.phase in ("rolling_back", "rolled_back") \
            else logging.INFO
        logger.log(level, "canary %s (route %s): %s [phase %s, candidate %g%%]",
                   canary.name, canary.route, event.message, event.phase, event.weight)

    # ------------------------------------------------------------------ admin

    def _runner(self, name: str) -> _Runner:
        runner = self._runners.get(name)
        if runner is None:
            if name in self._blocked:
                raise CanaryNotFound(f"canary {name} is not running: {self._blocked[name]}")
            names = ", ".join(self._runners) or "none configured"
            raise CanaryNotFound(f"no such canary; canaries: {names}")
        return runner

    def command(self, name: str, action: str) -> dict[str, object]:
        """``promote``, ``abort``, ``pause`` or ``resume``; raises ``CanaryNotFound`` or
        ``CommandRefused`` (with a message for the operator)."""
        if action not in ACTIONS:
            raise CommandRefused(f"unknown action; actions: {', '.join(ACTIONS)}")
        runner = self._runner(name)
        machine = runner.machine
        getattr(machine, action)()
        self._apply(runner)
        if action == "resume":
            runner.baseline = self._snapshot(runner)  # judge only what comes after it
        if machine.is_finishing:
            self._tasks.spawn(self._finish(runner), f"canary-{name}-finish")
        self._changed()
        return self.describe(runner)

    def describe_all(self) -> dict[str, object]:
        """Every configured canary: running ones with their state, blocked ones with why."""
        canaries = [self.describe(runner) for runner in self._runners.values()]
        snapshot = self.runtime.snapshot
        for canary in snapshot.config.canaries if snapshot else ():
            if canary.name in self._blocked:
                canaries.append({**_definition(canary), "phase": "blocked",
                                 "message": self._blocked[canary.name]})
        return {"canaries": canaries}

    def describe(self, runner: _Runner) -> dict[str, object]:
        machine, canary = runner.machine, runner.canary
        next_in = None
        if runner.next_check is not None and not machine.is_final:
            next_in = round(max(0.0, runner.next_check - self._clock()), 3)
        return {
            **_definition(canary),
            "phase": machine.phase,
            "candidate_weight": machine.weight,
            "primary_weight": machine.primary_weight,
            "step": machine.step,
            "steps": list(machine.steps),
            "failed_checks": machine.failed_checks,
            "paused_from": machine.paused_from,
            "next_check_in_s": next_in,
            "last_check": runner.last_check,
            "checks": dict(self._checks.get(canary.name, {})),
            "events": [event.as_dict() for event in machine.events],
        }

    def export(self) -> dict[str, CanaryState]:
        """canary name → its analysis as plain values (JSON), with a fingerprint of its
        definition: what ``saved`` takes after a restart. Saved entries of canaries not
        started yet are kept."""
        running = {name: {"definition": _fingerprint(runner.canary), **runner.machine.export()}
                   for name, runner in self._runners.items()}
        return {**self._saved, **running}

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def metrics(self) -> list[CanaryMetrics]:
        """For ``/metrics`` (``Stats.canaries_provider``)."""
        return [{"name": name, "weight": runner.machine.weight,
                 "failed_checks": runner.machine.failed_checks,
                 "phases": {p: 1.0 if p == runner.machine.phase else 0.0 for p in PHASES},
                 "transitions": dict(self._transitions.get(name, {})),
                 "checks": dict(self._checks.get(name, {}))}
                for name, runner in list(self._runners.items())]


def _definition(canary: Canary) -> dict[str, object]:
    return {"name": canary.name, "route": canary.route, "primary": canary.primary,
            "candidate": canary.candidate, "interval_s": canary.interval,
            "max_weight": canary.max_weight, "threshold": canary.threshold,
            "min_requests": canary.min_requests,
            "checks": {"success_rate_min": canary.checks.success_rate_min,
                       "latency_p99_max_s": canary.checks.latency_p99_max,
                       "relative_to_primary": canary.checks.relative_to_primary},
            "webhooks": [{"type": h.type, "url": _shown(h.url)} for h in canary.webhooks]}


def _fingerprint(canary: Canary) -> str:
    """Changes whenever the canary's definition does (a changed definition starts over)."""
    return hashlib.sha256(repr(canary).encode()).hexdigest()[:16]


def _shown(url: str) -> str:
    """A webhook URL for logs and the API: without credentials or query (they may hold
    tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"
