"""Background tasks with an owner and a name, so none is garbage-collected mid-flight and
none fails silently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger("pyproxy")


class TaskGroup:
    """Long-lived tasks (reload watcher, ticks): started by name, cancelled together."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task %s failed", task.get_name(),
                         exc_info=task.exception())

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


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
