"""A deadline that moves on every request without touching the event loop's timer heap.

Connections re-arm their timeouts on every request: the header timeout when a request
starts, the keep-alive timeout when it ends, the upstream response deadline, the pooled
connection's idle timeout. A ``call_later`` + ``cancel`` pair per re-arm allocates a handle and
does two heap operations each time, thousands of times a second. A ``Deadline`` only keeps
the wanted time in an attribute; its one loop timer is replaced only when it would fire too
late, and when it fires early (the deadline moved on since), it sleeps again for the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    __slots__ = ("_callback", "_handle", "_handle_when", "_loop", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]):
        self._loop = loop
        self._callback = callback
        self._when: float | None = None  # loop time the callback is due; None = disarmed
        self._handle: asyncio.TimerHandle | None = None
        self._handle_when = 0.0

    def arm(self, delay: float) -> None:
        self.arm_at(self._loop.time() + delay)

    def arm_at(self, when: float) -> None:
        self._when = when
        if self._handle is None or self._handle_when > when:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(when, self._fire)
            self._handle_when = when

    def disarm(self) -> None:
        """Nothing is due; the loop timer may still fire once and find nothing to do."""
        self._when = None

    def close(self) -> None:
        """Disarm and drop the loop timer (the owner is going away)."""
        self._when = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    @property
    def armed(self) -> bool:
        return self._when is not None

    def _fire(self) -> None:
        self._handle = None
        when = self._when
        if when is None:
            return
        if self._loop.time() < when:  # moved later since the timer was set: wait for the rest
            self._handle = self._loop.call_at(when, self._fire)
            self._handle_when = when
            return
        self._when = None
        self._callback()
