"""Every background task is started here, with a name, so none is garbage-collected
mid-flight and none fails silently: a task that ends with an exception is logged with its
name and traceback.

Which one to use:

* ``TaskGroup.spawn(coro, name)`` — a task with an owner: something that lives as long as
  its owner and is cancelled when the owner stops (the reload watcher, the once-a-second
  tick, a health checker's probes, a canary's loop). The owner keeps a ``TaskGroup`` and
  calls ``cancel_all()`` when it shuts down.
* ``spawn_detached(coro, name)`` — fire-and-forget work nobody waits for or cancels (closing
  a service's health checker after a reload removed it). Its reference is kept until it
  ends.

ruff bans ``asyncio.create_task`` and ``asyncio.ensure_future`` outside this module (TID251).
Not background tasks, and so not started here: the engine's per-request tasks
(``engine/server.py``) and an attempt's request-body pump (``upstream/attempt.py``). Each is
awaited or cancelled by the code that created it, on the request path, where an extra call
per request counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

logger = logging.getLogger("pyproxy")

T = TypeVar("T")

# Detached tasks, referenced until they end: the event loop itself only keeps weak references.
_detached: set[asyncio.Task[Any]] = set()


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("background task %s failed", task.get_name(), exc_info=task.exception())


class TaskGroup:
    """Tasks with one owner: started by name, cancelled together."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        _log_failure(task)

    async def cancel_all(self) -> None:
        """Cancel every task still running and wait until they have ended."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def spawn_detached(coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    """Start ``coro`` with no owner; needs a running event loop."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _detached.add(task)
    task.add_done_callback(_detached.discard)
    task.add_done_callback(_log_failure)
    return task


async def race(*coros: Coroutine[Any, Any, None]) -> None:
    """Run ``coros`` side by side until the first one ends, then cancel the rest (the two
    directions of a tunnel and its idle watchdog): tasks owned by the awaiting caller."""
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(coro) for coro in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
