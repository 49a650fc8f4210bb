"""One reflector per kind and namespace: list, then watch, as the Kubernetes API requires.

The API's rules (https://kubernetes.io/docs/reference/using-api/api-concepts/):

- a **list** (in pages of ``limit``, following ``continue``) returns the collection and its
  ``resourceVersion``; a **watch** from that version sends every change after it;
- a watch ends when the server's ``timeoutSeconds`` is up: resume from the last
  resourceVersion seen; ``BOOKMARK`` events (``allowWatchBookmarks``) move it forward
  without an object change, so a resume is cheap;
- a version the server no longer keeps answers **410 Gone** — as the HTTP status, or as an
  ``ERROR`` event inside the stream; then list again, and objects missing from the new
  list were deleted meanwhile (their DELETED is synthesised, ``store.Store.replace``);
- **429** carries ``Retry-After``: wait that long; other failures back off exponentially
  with jitter, so many replicas do not reconnect in step;
- a stream that sends nothing for longer than the server timeout is stalled: drop it and
  resume (the client's idle timeout).

:class:`ReflectorMachine` makes those decisions from plain values (an injected clock and
random source, no sockets); :class:`Reflector` carries them out with the client.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Literal

from pyproxy.discovery.kubernetes.client import KubeApiError, KubeClient, Object, WatchEvent
from pyproxy.discovery.kubernetes.resources import Resource
from pyproxy.discovery.kubernetes.store import Store

__all__ = ["Backoff", "Reflector", "ReflectorMachine", "Step"]

logger = logging.getLogger("pyproxy.kubernetes")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits a random time in
    [d/2, d] where d = min(cap, base·2^(n-1))."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, failures: int, rng: Callable[[], float]) -> float:
        if failures <= 0:
            return 0.0
        ceiling = min(self.cap, self.base * 2.0 ** min(failures - 1, 32))
        return ceiling / 2 + rng() * ceiling / 2


@dataclass(frozen=True)
class Step:
    """What to do next: ``list`` from scratch, or ``watch`` from ``resource_version``,
    after waiting ``delay`` seconds."""

    action: Literal["list", "watch"]
    delay: float = 0.0
    resource_version: str = ""


# A watch that ends this soon after it started, having delivered nothing, counts as a
# failure: a server (or proxy) that closes streams at once must not be hammered.
_SHORT_STREAM = 1.0


class ReflectorMachine:
    """The reflector's decisions, pure: feed it what happened, it says what to do next."""

    def __init__(self, *, clock: Callable[[], float], rng: Callable[[], float],
                 backoff: Backoff = Backoff()):
        self.clock = clock
        self.rng = rng
        self.backoff = backoff
        self.resource_version = ""
        self.failures = 0
        self.synced = False  # a full list has been applied at least once
        self.relists = 0  # lists after the first: 410s, for metrics
        self._need_list = True
        self._watch_started = 0.0
        self._watch_events = 0

    def start(self) -> Step:
        return Step("list")

    def listed(self, resource_version: str) -> Step:
        """A complete list was applied: watch from its version."""
        if self.synced:
            self.relists += 1
        self.synced = True
        self._need_list = False
        # failures are not reset here but once a watch works: a list that succeeds and a
        # watch that answers 410 at once, over and over (a 410 storm), backs off.
        self.resource_version = resource_version
        return self.watching()

    def watching(self) -> Step:
        """The step that opens a watch from the current version (and notes when)."""
        self._watch_started = self.clock()
        self._watch_events = 0
        return Step("watch", 0.0, self.resource_version)

    def event(self, event: WatchEvent) -> Literal["apply", "skip", "relist", "error"]:
        """An event from the stream: ``apply`` it to the store, ``skip`` it (a bookmark),
        or stop the stream: ``relist`` (410 inside the stream), ``error`` (another ERROR
        event; call :meth:`failed` with :func:`status_error` of it)."""
        self._watch_events += 1
        if event.type == "ERROR":
            if event.object.get("code") == 410:
                self._need_list = True
                return "relist"
            return "error"
        version = (event.object.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = str(version)
        if event.type == "BOOKMARK":
            return "skip"
        if event.type in ("ADDED", "MODIFIED", "DELETED"):
            self.failures = 0  # the stream works
            return "apply"
        return "skip"  # an event type this version of the API does not define

    def ended(self) -> Step:
        """The stream ended: normally the server timeout, or a 410 ERROR event."""
        if self._need_list:
            return self._list_after_gone()
        if self._watch_events == 0 and self.clock() - self._watch_started < _SHORT_STREAM:
            self.failures += 1
            return self._retry(self.backoff.delay(self.failures, self.rng))
        self.failures = 0
        return self.watching()

    def failed(self, error: KubeApiError) -> Step:
        """A list page or a watch failed."""
        if error.status == 410:
            self._need_list = True
            return self._list_after_gone()
        self.failures += 1
        delay = self.backoff.delay(self.failures, self.rng)
        if error.status == 429 and error.retry_after is not None:
            delay = max(error.retry_after, 0.0)
        return self._retry(delay)

    def _list_after_gone(self) -> Step:
        # The first 410 re-lists at once; a storm of them (each list answered by another
        # 410 soon after) backs off like any failure.
        self.failures += 1
        return Step("list", self.backoff.delay(self.failures - 1, self.rng))

    def _retry(self, delay: float) -> Step:
        if self._need_list:
            return Step("list", delay)
        self._watch_started = self.clock() + delay
        self._watch_events = 0
        return Step("watch", delay, self.resource_version)


def status_error(status: Object) -> KubeApiError:
    """A KubeApiError from the Status object of an ERROR event."""
    code = status.get("code")
    return KubeApiError(code if isinstance(code, int) else 500,
                        str(status.get("reason") or "Error"), None,
                        str(status.get("message") or ""))


Changed = Callable[[], None]


class Reflector:
    """Keeps ``store``'s objects of one kind (in one namespace, or all) in step with the
    API server; calls ``changed`` after every batch of changes it applied."""

    def __init__(self, client: KubeClient, resource: Resource, namespace: str | None,
                 store: Store, changed: Changed, *, timeout_seconds: int = 300,
                 idle_timeout: float | None = None, page_size: int = 500,
                 clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep):
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.store = store
        self.changed = changed
        self.timeout_seconds = timeout_seconds
        self.idle_timeout = idle_timeout
        self.page_size = page_size
        self.machine = ReflectorMachine(clock=clock, rng=rng)
        self.sleep = sleep
        self.synced = asyncio.Event()

    @property
    def name(self) -> str:
        return f"{self.resource.kind} in {self.namespace or 'all namespaces'}"

    async def run(self) -> None:
        step = self.machine.start()
        while True:
            if step.delay > 0:
                await self.sleep(step.delay)
            try:
                if step.action == "list":
                    step = self.machine.listed(await self._list())
                    if not self.synced.is_set():
                        self.synced.set()
                        self.changed()  # synced, even when the list was empty
                else:
                    step = await self._watch(step.resource_version)
            except KubeApiError as error:
                step = self.machine.failed(error)
                log = logger.info if error.status in (0, 410) else logger.warning
                log("kubernetes: %s: %s; %s in %.1fs", self.name, error,
                    "listing again" if step.action == "list" else "resuming the watch",
                    step.delay)
            except Exception as problem:
                # A bug or an answer nobody foresaw must not stop this kind for good: it
                # is logged, and the reflector backs off and goes on like after any failure.
                logger.exception("kubernetes: %s: unexpected error", self.name)
                step = self.machine.failed(KubeApiError(0, "Unexpected",
                                                        message=repr(problem)))

    async def _list(self) -> str:
        """Every page; then the store holds exactly the list (deletes synthesised)."""
        items: list[Object] = []
        continue_: str | None = None
        while True:
            page = await self.client.list(self.resource, self.namespace, limit=self.page_size,
                                          continue_=continue_)
            items += page.items
            continue_ = page.continue_
            if not continue_:
                break
        if self.store.replace(self.resource.kind, self.namespace, items):
            self.changed()
        return page.resource_version

    async def _watch(self, resource_version: str) -> Step:
        stream = self.client.watch(self.resource, self.namespace,
                                   resource_version=resource_version,
                                   timeout_seconds=self.timeout_seconds,
                                   idle_timeout=self.idle_timeout)
        async with aclosing(stream):
            async for event in stream:
                verdict = self.machine.event(event)
                if verdict == "apply":
                    if self.store.apply(self.resource.kind, event):
                        self.changed()
                elif verdict == "relist":
                    logger.info("kubernetes: %s: resourceVersion %s expired (410 in the "
                                "stream); listing again", self.name, resource_version)
                    break
                elif verdict == "error":
                    raise status_error(event.object)
        return self.machine.ended()
