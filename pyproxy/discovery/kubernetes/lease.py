"""Leader election on a ``coordination.k8s.io/v1`` Lease (docs/kubernetes.md).

Every replica watches and routes; one, the leader, also writes status and runs the canary
controller, so two replicas never judge a canary on different halves of the traffic or
fight over a status. The protocol is client-go's ``leaderelection`` on a Lease:

- the Lease names its holder (``holderIdentity``: the pod name) and how long a holder's
  claim lasts without renewal (``leaseDurationSeconds``);
- a candidate takes the Lease when it is free (no holder) or expired; the leader renews it
  (``renewTime``) every ``renew`` seconds;
- every write carries the ``resourceVersion`` it read, so of two candidates writing at once
  the API server accepts one and answers 409 to the other (optimistic concurrency);
- "expired" is judged on this replica's own monotonic clock: the record has not changed for
  ``leaseDurationSeconds`` since this replica first saw it. The holder's ``renewTime`` is
  another machine's wall clock and is never compared with ours;
- a leader that has not renewed for ``renew_deadline`` (shorter than the lease) steps down
  by itself, so it stops acting before anyone else may take over.

``LeaderElection`` is the state machine (no I/O, an injected clock, tested with plain
dicts); ``run_election`` drives it against the API.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from pyproxy.discovery.kubernetes.client import KubeApiError

logger = logging.getLogger("pyproxy.kubernetes")

LEASE_NAME = "pyproxy-leader"
JSON = dict[str, object]


def micro_time(seconds: float) -> str:
    """metav1.MicroTime, as Leases carry it: UTC with microseconds."""
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + \
        f".{int((seconds - whole) * 1_000_000):06d}Z"


@dataclass(frozen=True)
class Write:
    """What to send: ``create`` a Lease, or ``replace`` the one read (its resourceVersion
    kept, so a concurrent writer makes this fail with 409)."""

    verb: Literal["create", "replace"]
    lease: JSON


class LeaderElection:
    """One replica's view of the election. Feed it each Lease read (``next_write``), then
    the outcome of the write it asked for (``written`` / ``write_failed``); ask
    ``is_leader`` whenever acting as the leader."""

    def __init__(self, identity: str, namespace: str, name: str = LEASE_NAME, *,
                 duration: float = 15.0, renew_deadline: float = 10.0, renew: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        if not renew < renew_deadline < duration:
            raise ValueError("need renew < renew_deadline < duration")
        self.identity = identity
        self.namespace = namespace
        self.name = name
        self.duration = duration
        self.renew_deadline = renew_deadline
        self.renew = renew
        self._clock = clock
        self._wall = wall
        self._observed: tuple[object, ...] | None = None  # the record last seen
        self._observed_at = 0.0  # when it was first seen as it is (monotonic)
        self._renewed_at: float | None = None  # our last successful write as leader
        self.holder: str | None = None  # as last read

    # ------------------------------------------------------------------ state

    def is_leader(self) -> bool:
        """True while our last renewal is younger than ``renew_deadline``."""
        return self._renewed_at is not None \
            and self._clock() - self._renewed_at < self.renew_deadline

    def wait(self) -> float:
        """Seconds until the next attempt: renew as leader, else retry as often, which
        also notices an expiry within ``renew`` seconds."""
        return self.renew

    # ------------------------------------------------------------------ steps

    def next_write(self, lease: Mapping[str, object] | None) -> Write | None:
        """Given the Lease as just read (None: there is none), what to write, if anything."""
        now = self._clock()
        if lease is None:
            self.holder = None
            return Write("create", self._lease(None, transitions=0, acquire=True))
        spec = _spec(lease)
        holder = str(spec.get("holderIdentity") or "") or None
        self.holder = holder
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"),
                  _meta(lease).get("resourceVersion"))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        transitions = spec.get("leaseTransitions")
        count = transitions if isinstance(transitions, int) else 0
        if holder == self.identity:
            return Write("replace", self._lease(lease, transitions=count, acquire=False))
        if self._renewed_at is not None:
            self._step_down(f"the Lease is now held by {holder or 'nobody'}")
        seconds = spec.get("leaseDurationSeconds")
        lasts = float(seconds) if isinstance(seconds, (int, float)) else self.duration
        if holder is not None and now - self._observed_at < lasts:
            return None  # held, and renewed within its duration as far as we can see
        return Write("replace", self._lease(lease, transitions=count + 1, acquire=True))

    def written(self, lease: Mapping[str, object]) -> None:
        """Our write was accepted: we lead (again) from now."""
        if self._renewed_at is None:
            logger.info("%s became the leader (Lease %s/%s)", self.identity, self.namespace,
                        self.name)
        self._renewed_at = self._clock()
        self.holder = self.identity
        spec = _spec(lease)
        self._observed = (self.identity, spec.get("renewTime"),
                          spec.get("leaseDurationSeconds"), _meta(lease).get("resourceVersion"))
        self._observed_at = self._renewed_at

    def write_failed(self, why: str) -> None:
        """A read or write failed (409: someone else wrote first). A leader keeps leading
        until ``renew_deadline`` has passed since its last renewal."""
        if self._renewed_at is not None and not self.is_leader():
            self._step_down(f"could not renew for {self.renew_deadline:g}s: {why}")

    def release(self, lease: Mapping[str, object]) -> Write | None:
        """On shutdown: hand the Lease back (no holder, 1 s) so another replica takes over
        at its next attempt rather than after a whole lease duration."""
        if _spec(lease).get("holderIdentity") != self.identity:
            return None
        released = copy.deepcopy(dict(lease))
        spec = dict(_spec(lease))
        spec.update({"holderIdentity": "", "leaseDurationSeconds": 1,
                     "renewTime": micro_time(self._wall())})
        released["spec"] = spec
        self._renewed_at = None
        return Write("replace", released)

    def _step_down(self, why: str) -> None:
        logger.warning("%s is no longer the leader: %s", self.identity, why)
        self._renewed_at = None

    def _lease(self, current: Mapping[str, object] | None, *, transitions: int,
               acquire: bool) -> JSON:
        now = micro_time(self._wall())
        obj: JSON = copy.deepcopy(dict(current)) if current is not None else {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace}}
        spec: JSON = dict(_spec(obj))
        spec.update({"holderIdentity": self.identity,
                     "leaseDurationSeconds": max(1, round(self.duration)),
                     "renewTime": now, "leaseTransitions": transitions})
        if acquire or "acquireTime" not in spec:
            spec["acquireTime"] = now
        obj["spec"] = spec
        return obj


def _spec(obj: Mapping[str, object]) -> Mapping[str, object]:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def _meta(obj: Mapping[str, object]) -> Mapping[str, object]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


# --------------------------------------------------------------------------- the runner


R_contra = TypeVar("R_contra", contravariant=True)


class LeaseClient(Protocol[R_contra]):
    """What the election needs of ``KubeClient`` (``client.py``)."""

    async def get(self, resource: R_contra, namespace: str, name: str) -> JSON: ...

    async def create(self, resource: R_contra, obj: JSON) -> JSON: ...

    async def replace(self, resource: R_contra, obj: JSON) -> JSON: ...


async def run_election(client: LeaseClient[R_contra], resource: R_contra,
                       election: LeaderElection, *,
                       on_change: Callable[[bool], Awaitable[None] | None] | None = None
                       ) -> None:
    """Take part in the election until cancelled; ``on_change(leading)`` is called when this
    replica starts or stops leading. On cancellation a leader releases the Lease."""
    leading = False
    held: JSON | None = None  # the Lease as our last accepted write left it

    async def tell(now_leading: bool) -> None:
        nonlocal leading
        if now_leading != leading:
            leading = now_leading
            if on_change is not None:
                result = on_change(leading)
                if result is not None:
                    await result

    try:
        while True:
            try:
                try:
                    lease: JSON | None = await client.get(resource, election.namespace,
                                                          election.name)
                except KubeApiError as exc:
                    if exc.status != 404:
                        raise
                    lease = None
                write = election.next_write(lease)
                if write is not None:
                    if write.verb == "create":
                        held = await client.create(resource, write.lease)
                    else:
                        held = await client.replace(resource, write.lease)
                    election.written(held)
            except asyncio.CancelledError:
                raise
            except KubeApiError as exc:
                election.write_failed("conflict" if exc.status == 409 else str(exc))
                if exc.status != 409:
                    logger.warning("leader election: %s", exc)
            await tell(election.is_leader())
            await asyncio.sleep(election.wait())
    finally:
        if held is not None and election.is_leader():
            release = election.release(held)
            if release is not None:
                try:
                    await client.replace(resource, release.lease)
                except KubeApiError as exc:  # the Lease expires by itself anyway
                    logger.info("leader election: Lease not released: %s", exc)
        if leading and on_change is not None:
            result = on_change(False)
            if result is not None:
                await result
