"""Run-time state shared by the workers of ``pyproxy run --workers N``, and kept across
restarts: the state file.

What operators and the canary change at run time — weight overrides, time-boxed faults,
canary progress — lives in memory (``Runtime``, ``CanaryController``). With a state
directory (``--state-dir DIR``, or a private temporary one for ``--workers N``) it is also
kept in ``DIR/state.json``, so that

* every worker serves the same overrides and faults: the leader (worker 0: the public admin
  API, the only one running canaries) writes the file after each change; the other workers
  look at it five times a second (one ``stat``) and apply what it says;
* a restarted worker, or the whole proxy restarted with the same ``--state-dir``, carries on:
  faults keep their wall-clock expiry (a restart never extends one), canaries resume at the
  step they had reached;
* ``POST /api/v1/reload`` reaches every worker: the leader counts the request in ``reloads``
  and the others reload when the count grows.

One writer, so no locks: the leader writes the whole state to a temporary file and renames
it over the old one (``os.replace``), so a reader sees the old state or the new one, never
half of it. A file rather than messages between processes because it needs no connection or
ordering, and it outlives every process — which is the point of surviving restarts.

``SharedState``, ``encode``, ``decode`` and ``describe_changes`` are plain values and pure
functions; ``StateFile`` is the file; ``StateSync`` runs in each worker and connects them to
the runtime.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pyproxy.canary.analysis import CanaryState
from pyproxy.config.model import AbortFault, DelayFault, Fault
from pyproxy.overrides import ActiveFault, WeightOverride
from pyproxy.runtime import Runtime

logger = logging.getLogger("pyproxy.state")

VERSION = 1
POLL_INTERVAL = 0.2  # seconds between a follower's looks at the file


@dataclass
class SharedState:
    """What the state file holds."""

    weights: dict[str, WeightOverride] = field(default_factory=dict)  # route → override
    faults: dict[str, ActiveFault] = field(default_factory=dict)  # route → fault
    canaries: dict[str, CanaryState] = field(default_factory=dict)  # CanaryController.export()
    reloads: int = 0  # POST /api/v1/reload requests so far


# ---------------------------------------------------------------------- pure: encode, decode


def encode(state: SharedState) -> dict[str, object]:
    return {
        "version": VERSION,
        "weights": {route: {"weights": o.weights, "source": o.source, "since": o.since}
                    for route, o in state.weights.items()},
        "faults": {route: {"abort": None if f.fault.abort is None else {
                               "status": f.fault.abort.status, "percent": f.fault.abort.percent},
                           "delay": None if f.fault.delay is None else {
                               "fixed": f.fault.delay.fixed, "percent": f.fault.delay.percent},
                           "scope": f.fault.scope, "expires": f.expires, "since": f.since}
                   for route, f in state.faults.items()},
        "canaries": state.canaries,
        "reloads": state.reloads,
    }


def decode(data: Any) -> SharedState:
    """The inverse of ``encode``; raises ValueError for anything else. ``data`` is JSON read
    from the file, of any shape: each value is checked (or fails) as it is read."""
    try:
        if data["version"] != VERSION:
            raise ValueError(f"state file version {data['version']!r}, expected {VERSION}")
        weights = {str(route): WeightOverride({str(b): float(w) for b, w in o["weights"].items()},
                                              str(o["source"]), float(o["since"]))
                   for route, o in data["weights"].items()}
        faults: dict[str, ActiveFault] = {}
        for route, f in data["faults"].items():
            abort = None if f["abort"] is None else AbortFault(int(f["abort"]["status"]),
                                                               float(f["abort"]["percent"]))
            delay = None if f["delay"] is None else DelayFault(float(f["delay"]["fixed"]),
                                                               float(f["delay"]["percent"]))
            if f["scope"] not in ("request", "attempt"):
                raise ValueError(f"fault scope {f['scope']!r}")
            faults[str(route)] = ActiveFault(str(route), Fault(delay=delay, abort=abort,
                                                               scope=f["scope"]),
                                             float(f["expires"]), float(f["since"]))
        canaries = {str(name): dict(saved) for name, saved in data["canaries"].items()}
        return SharedState(weights, faults, canaries, int(data["reloads"]))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a pyproxy state file: {exc!r}") from None


def describe_changes(before: SharedState, after: SharedState, now: float) -> list[str]:
    """What a follower logs when it applies ``after`` over ``before``."""
    changes = []
    for route in sorted(before.weights.keys() | after.weights.keys()):
        old, new = before.weights.get(route), after.weights.get(route)
        if new is None:
            changes.append(f"weight override of route {route} cleared")
        elif new != old:
            changes.append(f"weights of route {route} set by {new.source}: {new.weights}")
    for route in sorted(before.faults.keys() | after.faults.keys()):
        old_fault, new_fault = before.faults.get(route), after.faults.get(route)
        # an expired one was already logged as such
        if new_fault is None and old_fault is not None and old_fault.expires > now:
            changes.append(f"fault on route {route} cleared")
        elif new_fault is not None and new_fault != old_fault and new_fault.expires > now:
            changes.append(f"fault on route {route} for {new_fault.remaining(now):.1f}s: "
                           f"{new_fault.fault}")
    return changes


# ---------------------------------------------------------------------- the file


# (inode, mtime in ns, size): a rename over the file changes the inode, a rewrite the others
FileStamp = tuple[int, int, int]


class StateFile:
    """``DIR/state.json``: written whole and renamed into place; read when it changed."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.path = Path(directory) / "state.json"
        self._stamp: FileStamp | None = None  # what the file was when last read

    def write(self, state: SharedState) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(encode(state), f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())  # the rename must not outrun the data on a power cut
        os.replace(tmp, self.path)
        self._stamp = self._current_stamp()

    def read(self) -> SharedState | None:
        """The state now in the file; None when there is no file or it cannot be read
        (logged: the caller keeps what it has)."""
        self._stamp = self._current_stamp()
        try:
            return decode(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.error("state file %s ignored: %s", self.path, exc)
            return None

    def changed(self) -> bool:
        """Has the file been replaced or rewritten since ``read`` or ``write``?"""
        return self._current_stamp() != self._stamp

    def _current_stamp(self) -> FileStamp | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size


# ---------------------------------------------------------------------- a worker's side


class StateSync:
    """Keeps one worker's runtime and the state file in step.

    The leader (``leader=True``: worker 0, or the only process) writes: ``save`` after every
    change (``Overrides.on_change``, the canary controller's ``on_change``) and after a reload
    pruned overrides. Every other worker follows: it applies the file when it changes, again
    after each of its own reloads (an override for a route it only now knows), and reloads
    when the leader counted a reload request.
    """

    def __init__(self, file: StateFile, runtime: Runtime, *, leader: bool,
                 reload: Callable[[], Awaitable[object]]):
        self.file = file
        self.runtime = runtime
        self.leader = leader
        self._reload = reload
        # the leader's: CanaryController.export
        self.canaries: Callable[[], dict[str, CanaryState]] | None = None
        self.state = SharedState()  # leader: last written; follower: last read
        self._generation = 0  # the config generation the state was last applied to

    def load(self) -> SharedState:
        """At start, before serving: apply what the file holds. Returns it (the leader's
        canary controller resumes from ``canaries``)."""
        state = self.file.read()
        if state is not None:
            self.state = state
            self._apply(state)
            logger.info("run-time state from %s: %d weight overrides, %d faults, %d canaries",
                        self.file.path, len(self.runtime.overrides.weights),
                        len(self.runtime.overrides.faults), len(state.canaries))
        return self.state

    def save(self) -> None:
        """Leader: write the state now in memory, if it differs from the file's."""
        overrides = self.runtime.overrides
        state = SharedState(dict(overrides.weights), dict(overrides.faults),
                            self.canaries() if self.canaries else self.state.canaries,
                            self.state.reloads)
        if encode(state) != encode(self.state):
            self._write(state)

    def request_reload(self) -> None:
        """Leader: ask the other workers to reload (``POST /api/v1/reload``)."""
        self._write(replace(self.state, reloads=self.state.reloads + 1))

    def _write(self, state: SharedState) -> None:
        try:
            self.file.write(state)
        except OSError as exc:
            # Serving goes on; the other workers keep the last state they read.
            logger.error("cannot write the state file %s: %s", self.file.path, exc)
            return
        self.state = state

    async def run(self) -> None:
        self._generation = self.runtime.generation
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            reloaded = self.runtime.generation != self._generation
            self._generation = self.runtime.generation
            if self.leader:
                if reloaded:
                    self.save()  # a reload may have pruned overrides of vanished routes
                continue
            state = self.file.read() if self.file.changed() else None
            if state is not None:
                for change in describe_changes(self.state, state, time.time()):
                    logger.info("shared state: %s", change)
                wanted_reload = state.reloads > self.state.reloads
                self.state = state
                self._apply(state)
                if wanted_reload:
                    logger.info("reload requested through the admin API")
                    await self._reload()
            elif reloaded:
                self._apply(self.state)

    def _apply(self, state: SharedState) -> None:
        now = time.time()
        live_faults = {route: f for route, f in state.faults.items() if f.expires > now}
        overrides = self.runtime.overrides
        if state.weights == overrides.weights and live_faults == overrides.faults:
            return  # e.g. only a canary's progress changed: no need to recompile routes
        self.runtime.overrides.restore(state.weights, state.faults)
        for fault in self.runtime.overrides.faults.values():
            # at the deadline here too, not the next tick
            self.runtime.overrides.schedule_expiry(fault)
