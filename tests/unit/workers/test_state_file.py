"""The state file: plain values round-trip, the file is replaced whole, and a follower's
runtime ends up with what the leader's has."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from pyproxy.config.model import (
    AbortFault,
    Backend,
    Config,
    DelayFault,
    Endpoint,
    Fault,
    Route,
    Service,
)
from pyproxy.overrides import ActiveFault, WeightOverride
from pyproxy.runtime import Runtime
from pyproxy.workers.state_file import (
    SharedState,
    StateFile,
    StateSync,
    decode,
    describe_changes,
    encode,
)


def _state(now: float = 1000.0) -> SharedState:
    return SharedState(
        weights={"shop": WeightOverride({"shop/v1": 90.0, "shop/v2": 10.0}, "canary", now)},
        faults={"shop": ActiveFault("shop", Fault(abort=AbortFault(503, 50.0)), now + 60, now),
                "cart": ActiveFault("cart", Fault(delay=DelayFault(0.25, 100.0), scope="attempt"),
                                    now + 30, now)},
        canaries={"shop": {"definition": "abc", "phase": "progressing", "step": 2}},
        reloads=3)


def test_encode_decode_round_trip_through_json():
    state = _state()
    assert decode(json.loads(json.dumps(encode(state)))) == state


@pytest.mark.parametrize("data, message", [
    ({}, "not a pyproxy state file"),
    ([], "not a pyproxy state file"),
    ({**encode(_state()), "version": 99}, "version 99"),
    ({**encode(_state()), "weights": {"shop": {"weights": 3}}}, "not a pyproxy state file"),
    ({**encode(_state()), "faults": {"shop": {**encode(_state())["faults"]["shop"],
                                              "scope": "always"}}}, "fault scope"),
])
def test_decode_refuses_anything_else(data, message):
    with pytest.raises(ValueError, match=message):
        decode(data)


def test_describe_changes_names_what_a_follower_applies():
    before = _state()
    after = _state()
    after.weights["shop"] = WeightOverride({"shop/v1": 0.0, "shop/v2": 100.0}, "api", 1001.0)
    del after.faults["shop"]
    del after.faults["cart"]
    after.faults["search"] = ActiveFault("search", Fault(abort=AbortFault(500, 1.0)), 1100, 1001)
    assert describe_changes(before, after, now=1040.0) == [
        "weights of route shop set by api: {'shop/v1': 0.0, 'shop/v2': 100.0}",
        # cart's fault expired at 1030: already logged as expired, not "cleared"
        "fault on route search for 60.0s: " + str(after.faults["search"].fault),
        "fault on route shop cleared",
    ]
    assert describe_changes(after, SharedState(), now=1040.0)[0] == \
        "weight override of route shop cleared"
    assert describe_changes(before, before, now=1040.0) == []


def test_the_file_is_replaced_whole_and_changes_are_seen(tmp_path):
    file = StateFile(tmp_path)
    assert file.read() is None and not file.changed()
    file.write(_state())
    assert not file.changed()  # our own write
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left

    other = StateFile(tmp_path)  # another process
    assert other.changed()
    assert other.read() == _state()
    assert not other.changed()
    file.write(SharedState(reloads=4))
    assert other.changed() and other.read().reloads == 4


def test_an_unreadable_file_is_logged_and_ignored(tmp_path, caplog):
    (tmp_path / "state.json").write_text("{not json")
    assert StateFile(tmp_path).read() is None
    assert "state file" in caplog.text and "ignored" in caplog.text


def _runtime() -> Runtime:
    service = Service("shop", (Endpoint("127.0.0.1", 9, {"version": "1"}),
                               Endpoint("127.0.0.1", 10, {"version": "2"})),
                      subsets={"v1": {"version": "1"}, "v2": {"version": "2"}})
    route = Route(name="shop", backends=(Backend("shop", "v1", 90), Backend("shop", "v2", 10)))
    runtime = Runtime()
    runtime.swap(runtime.compile(Config(services={"shop": service}, routes=(route,))))
    return runtime


async def _eventually(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_follower_applies_what_the_leader_writes(tmp_path):
    leader_runtime, follower_runtime = _runtime(), _runtime()
    leader = StateSync(StateFile(tmp_path), leader_runtime, leader=True, reload=None)
    reloads = []

    async def reload():
        reloads.append(1)

    follower = StateSync(StateFile(tmp_path), follower_runtime, leader=False, reload=reload)
    leader_runtime.overrides.on_change = leader.save
    leader.load()
    follower.load()
    task = asyncio.get_running_loop().create_task(follower.run())
    try:
        leader_runtime.overrides.set_weights("shop", {"shop/v1": 0, "shop/v2": 100}, source="api")
        leader_runtime.overrides.add_fault("shop", Fault(abort=AbortFault(503, 100.0)), 0.6)
        await _eventually(lambda: "shop" in follower_runtime.overrides.faults)
        assert follower_runtime.overrides.weights == leader_runtime.overrides.weights
        assert follower_runtime.overrides.faults == leader_runtime.overrides.faults
        route = follower_runtime.snapshot.routes["shop"]
        assert route.split.weights == (0, 100) and route.fault.abort.status == 503

        # The fault ends at its wall-clock deadline everywhere, with no write in between and
        # no once-a-second tick running here: the deadline's own timer does it.
        expires = follower_runtime.overrides.faults["shop"].expires
        await _eventually(lambda: not follower_runtime.overrides.faults, timeout=1.5)
        assert expires <= time.time() < expires + 0.1
        assert follower_runtime.snapshot.routes["shop"].fault is None

        leader.request_reload()
        await _eventually(lambda: reloads)
        leader_runtime.overrides.clear_weights("shop")
        await _eventually(lambda: not follower_runtime.overrides.weights)
        assert follower_runtime.snapshot.routes["shop"].split.weights == (90, 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_restart_picks_up_where_the_file_left_off(tmp_path):
    first = _runtime()
    sync = StateSync(StateFile(tmp_path), first, leader=True, reload=None)
    first.overrides.on_change = sync.save
    first.overrides.set_weights("shop", {"shop/v2": 1})
    first.overrides.add_fault("shop", Fault(delay=DelayFault(0.1, 10.0)), 60)
    expires = first.overrides.faults["shop"].expires

    again = _runtime()  # the same proxy, restarted
    StateSync(StateFile(tmp_path), again, leader=True, reload=None).load()
    assert again.overrides.weights["shop"].weights == {"shop/v2": 1.0}
    assert again.overrides.faults["shop"].expires == expires  # a restart never extends a fault
    assert again.snapshot.routes["shop"].split.weights == (0, 1)


async def test_what_no_longer_fits_the_config_is_dropped(tmp_path):
    file = StateFile(tmp_path)
    state = _state(now=time.time())
    state.weights["gone"] = WeightOverride({"x/v1": 1.0})
    file.write(state)
    runtime = _runtime()
    sync = StateSync(file, runtime, leader=True, reload=None)
    sync.load()
    assert set(runtime.overrides.weights) == {"shop"}
    assert set(runtime.overrides.faults) == {"shop"}  # "cart" is no route here
    sync.save()
    assert set(file.read().weights) == {"shop"}  # and the leader writes it so
