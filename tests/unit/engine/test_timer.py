"""engine.timer.Deadline: fires once, at the latest deadline set, and re-arms lazily."""

from __future__ import annotations

import heapq

from pyproxy.engine.timer import Deadline


class ManualLoop:
    """Just enough of an event loop for Deadline: a clock moved by hand and a timer heap."""

    def __init__(self):
        self.now = 0.0
        self.timers: list = []
        self.created = 0
        self._seq = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when, callback):
        self.created += 1
        self._seq += 1
        handle = _Handle()
        heapq.heappush(self.timers, (when, self._seq, handle, callback))
        return handle

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while self.timers and self.timers[0][0] <= self.now:
            _, _, handle, callback = heapq.heappop(self.timers)
            if not handle.cancelled:
                callback()


class _Handle:
    cancelled = False

    def cancel(self):
        self.cancelled = True


def test_fires_once_when_due():
    loop, fired = ManualLoop(), []
    deadline = Deadline(loop, lambda: fired.append(loop.now))
    deadline.arm(5)
    loop.advance(4.9)
    assert fired == []
    loop.advance(0.2)
    assert len(fired) == 1
    assert not deadline.armed
    loop.advance(100)
    assert len(fired) == 1


def test_moving_later_reuses_the_loop_timer_and_fires_at_the_new_time():
    loop, fired = ManualLoop(), []
    deadline = Deadline(loop, lambda: fired.append(loop.now))
    deadline.arm(10)
    for _ in range(1000):  # a busy connection re-arming its keep-alive timeout per request
        loop.advance(0.001)
        deadline.arm(10)
    assert loop.created == 1
    loop.advance(9.9)
    assert fired == []  # the original timer fired early and slept again for the rest
    loop.advance(0.2)
    assert len(fired) == 1 and abs(fired[0] - 11.1) < 1e-6  # due at 11.0, seen at 11.1
    assert loop.created == 2


def test_moving_sooner_replaces_the_loop_timer():
    loop, fired = ManualLoop(), []
    deadline = Deadline(loop, lambda: fired.append(loop.now))
    deadline.arm(60)
    deadline.arm(1)
    loop.advance(1)
    assert fired == [1]
    loop.advance(100)
    assert fired == [1]


def test_disarm_and_close():
    loop, fired = ManualLoop(), []
    deadline = Deadline(loop, lambda: fired.append(loop.now))
    deadline.arm(1)
    deadline.disarm()
    loop.advance(2)
    assert fired == []
    deadline.arm(1)
    deadline.close()
    assert all(handle.cancelled for _, _, handle, _ in loop.timers)
    loop.advance(2)
    assert fired == []
