"""Leader election on a Lease (pyproxy/discovery/kubernetes/lease.py): the state machine
with a fake clock and an in-memory Lease store that enforces resourceVersion, as the API
server does (409 on a stale write)."""

from __future__ import annotations

import asyncio
import copy

import pytest

from pyproxy.discovery.kubernetes.client import KubeApiError
from pyproxy.discovery.kubernetes.lease import LeaderElection, Write, micro_time, run_election


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def conflict() -> KubeApiError:
    return KubeApiError(409, "Conflict")


def not_found() -> KubeApiError:
    return KubeApiError(404, "NotFound")


class Store:
    """One Lease with a resourceVersion: a replace must carry the current one."""

    def __init__(self) -> None:
        self.lease: dict | None = None
        self.version = 0

    def read(self) -> dict | None:
        return copy.deepcopy(self.lease)

    def apply(self, write: Write) -> dict:
        if write.verb == "create":
            if self.lease is not None:
                raise conflict()  # AlreadyExists is 409 too
        elif self.lease is None or \
                write.lease["metadata"].get("resourceVersion") != str(self.version):
            raise conflict()
        self.version += 1
        self.lease = copy.deepcopy(write.lease)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)


def step(election: LeaderElection, store: Store) -> None:
    write = election.next_write(store.read())
    if write is None:
        return
    try:
        election.written(store.apply(write))
    except KubeApiError:
        election.write_failed("conflict")


def electors(clock: Clock, *names: str) -> list[LeaderElection]:
    return [LeaderElection(name, "shop", duration=15, renew_deadline=10, renew=2,
                           clock=clock, wall=clock) for name in names]


def test_the_first_candidate_creates_the_lease_and_leads():
    clock, store = Clock(), Store()
    a, b = electors(clock, "pod-a", "pod-b")
    step(a, store)
    step(b, store)
    assert a.is_leader() and not b.is_leader()
    spec = store.lease["spec"]
    assert spec["holderIdentity"] == "pod-a"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0
    assert spec["renewTime"] == micro_time(1000.0) == "1970-01-01T00:16:40.000000Z"


def test_two_candidates_racing_one_wins_by_resource_version():
    clock, store = Clock(), Store()
    a, b = electors(clock, "pod-a", "pod-b")
    step(a, store)
    clock.now += 16
    # both read the same expired-looking record... b never saw it change, a holds it
    seen = store.read()
    wa, wb = a.next_write(seen), b.next_write(seen)
    assert wa is not None and wb is None  # b first sees it now: not expired yet for b
    clock.now += 16
    seen = store.read()
    wa, wb = a.next_write(seen), b.next_write(seen)
    assert wa is not None and wb is not None  # a renews, b takes over: both write
    a.written(store.apply(wa))
    with pytest.raises(KubeApiError):
        store.apply(wb)
    b.write_failed("conflict")
    assert a.is_leader() and not b.is_leader()


def test_a_renewing_leader_keeps_the_lease():
    clock, store = Clock(), Store()
    a, b = electors(clock, "pod-a", "pod-b")
    step(a, store)
    for _ in range(30):
        clock.now += 2
        step(a, store)
        step(b, store)
        assert a.is_leader() and not b.is_leader()
    assert store.lease["spec"]["leaseTransitions"] == 0


def test_a_silent_leader_is_replaced_after_the_lease_duration_seen_locally():
    clock, store = Clock(), Store()
    a, b = electors(clock, "pod-a", "pod-b")
    step(a, store)
    step(b, store)  # b first sees a's record now
    clock.now += 14
    step(b, store)
    assert not b.is_leader()
    # a has not renewed for 14 s: past its renew deadline, it no longer acts as leader
    assert not a.is_leader()
    clock.now += 1.5
    step(b, store)
    assert b.is_leader()
    assert store.lease["spec"]["holderIdentity"] == "pod-b"
    assert store.lease["spec"]["leaseTransitions"] == 1
    step(a, store)  # a sees b hold it and stays a follower
    assert not a.is_leader()


def test_a_leader_that_cannot_renew_steps_down_before_the_lease_expires():
    clock, store = Clock(), Store()
    [a] = electors(clock, "pod-a")
    step(a, store)
    clock.now += 9
    a.write_failed("API server unreachable")
    assert a.is_leader()  # within its renew deadline
    clock.now += 1.5
    a.write_failed("API server unreachable")
    assert not a.is_leader()  # 10.5 s < 15 s: stepped down before anyone may take over


def test_remote_wall_clock_is_never_trusted():
    """A holder whose renewTime is far in the past (its clock is wrong) still holds the
    Lease while its record keeps changing."""
    clock, store = Clock(), Store()
    a, b = electors(clock, "pod-a", "pod-b")
    a._wall = lambda: 0.0  # a's wall clock says 1970
    for _ in range(10):
        step(a, store)
        step(b, store)
        clock.now += 5
    assert store.lease["spec"]["holderIdentity"] == "pod-a"
    assert not b.is_leader()


def test_release_hands_the_lease_over_at_once():
    clock, store = Clock(), Store()
    a, b = electors(clock, "pod-a", "pod-b")
    step(a, store)
    step(b, store)
    release = a.release(store.read())
    assert release is not None
    store.apply(release)
    assert not a.is_leader()
    step(b, store)
    assert b.is_leader()


def test_timings_must_nest():
    with pytest.raises(ValueError):
        LeaderElection("pod-a", "shop", duration=10, renew_deadline=10, renew=2)


class StoreClient:
    """The runner's client over the in-memory store."""

    def __init__(self, store: Store):
        self.store = store

    async def get(self, resource: str, namespace: str, name: str) -> dict:
        lease = self.store.read()
        if lease is None:
            raise not_found()
        return lease

    async def create(self, resource: str, obj: dict) -> dict:
        return self.store.apply(Write("create", obj))

    async def replace(self, resource: str, obj: dict) -> dict:
        return self.store.apply(Write("replace", obj))


def test_runner_elects_one_of_two_and_hands_over_on_cancel():
    async def main() -> None:
        store = Store()
        changes: list[tuple[str, bool]] = []
        runs = {}
        for name in ("pod-a", "pod-b"):
            election = LeaderElection(name, "shop", duration=0.6, renew_deadline=0.4,
                                      renew=0.05)
            runs[name] = (election, asyncio.create_task(run_election(
                StoreClient(store), "leases", election,
                on_change=lambda leading, n=name: changes.append((n, leading)))))
        await asyncio.sleep(0.3)
        leaders = [n for n, (e, _) in runs.items() if e.is_leader()]
        assert len(leaders) == 1
        first = leaders[0]
        runs[first][1].cancel()
        await asyncio.gather(runs[first][1], return_exceptions=True)
        await asyncio.sleep(0.2)  # released: the other takes over at its next attempt
        other = next(n for n in runs if n != first)
        assert runs[other][0].is_leader()
        assert changes == [(first, True), (first, False), (other, True)]
        runs[other][1].cancel()
        await asyncio.gather(runs[other][1], return_exceptions=True)

    asyncio.run(main())
