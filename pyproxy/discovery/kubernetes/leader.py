"""In-cluster mode's duties beside routing (docs/kubernetes.md): every replica follows the
run-time state the route objects carry; the Lease holder alone writes status and runs the
canary controller.

``Leadership`` runs next to the provider (``provider.py``) on its client and its object
store. It looks at the store's version, the report's version and the serving config's
generation when the provider has a new report (``on_report``) and every ``poll`` seconds,
and acts when one has moved — one rebuild, one pass, whatever the number of events in
between.

- every replica: ``KubeRuntimeStore.restore`` gives the override table the weights and
  faults the objects carry (``writeback.py``);
- the leader: ``StatusWriter`` brings the status of each reported object, and of each
  GatewayClass with our controller name, up to date — skipping objects whose copy and
  verdict have not changed since the last pass, so a pass costs O(changed objects);
- the leader: the canary controller runs; losing the Lease stops it where it stands
  (``CanaryController.stand_down``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from pyproxy.discovery.kubernetes.client import KubeClient, pod_namespace
from pyproxy.discovery.kubernetes.lease import LEASE_NAME, LeaderElection, run_election
from pyproxy.discovery.kubernetes.report import ImportResult, ObjectKey, ParentKey
from pyproxy.discovery.kubernetes.resources import (
    GATEWAY,
    GATEWAY_CLASS,
    HTTP_ROUTE,
    LEASE,
    TRAFFIC_SPLIT,
    Resource,
)
from pyproxy.discovery.kubernetes.status import StatusWriter
from pyproxy.discovery.kubernetes.writeback import KubeRuntimeStore, RouteOrigin, route_origins
from pyproxy.tasks import TaskGroup

if TYPE_CHECKING:
    from pyproxy.control import ProxyControl
    from pyproxy.discovery.kubernetes.provider import KubernetesProvider

logger = logging.getLogger("pyproxy.kubernetes")

STATUS_KINDS = {"HTTPRoute": HTTP_ROUTE, "Gateway": GATEWAY, "GatewayClass": GATEWAY_CLASS}


def identity() -> str:
    """This replica's name in the Lease: the pod's (``POD_NAME``, from the downward API),
    else the host name (a pod's host name is its name too)."""
    return os.environ.get("POD_NAME") or socket.gethostname()


class Leadership:
    """The election, status writes, run-time state and canaries of one replica."""

    def __init__(self, provider: KubernetesProvider, control: ProxyControl, *,
                 name: str | None = None, lease_name: str = LEASE_NAME, poll: float = 0.2,
                 election: Callable[[str, str], LeaderElection] | None = None):
        self.provider = provider
        self.control = control
        self.identity = name or identity()
        self.lease_name = lease_name
        self.poll = poll
        self._make_election = election or (
            lambda who, namespace: LeaderElection(who, namespace, lease_name))
        self.election: LeaderElection | None = None
        self.store: KubeRuntimeStore | None = None
        self.writer: StatusWriter[Resource] | None = None
        self._seen: tuple[int, int, int] | None = None
        # (kind, namespace, name) → (resourceVersion, verdicts) at the last status pass
        self._written: dict[ObjectKey, tuple[object, object]] = {}
        self._origins: tuple[tuple[int, int], dict[str, RouteOrigin]] | None = None
        self._tasks = TaskGroup()
        self._canaries: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def leading(self) -> bool:
        return self.election is not None and self.election.is_leader()

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Follow and (when elected) lead until cancelled, from the moment the provider has
        its client."""
        try:
            while True:
                if self.election is None and self.provider.client is not None:
                    self._begin(self.provider.client)
                if self.election is not None:
                    await self.step()
                # A new report wakes us at once; the poll catches the config swap after it.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll)
                self._wake.clear()
        finally:
            await self._stop_canaries()
            await self._tasks.cancel_all()

    def _begin(self, client: KubeClient) -> None:
        namespaces = self.provider.namespaces
        # The Lease lives in the pod's own namespace (where rbac.yaml grants it).
        namespace = pod_namespace() or (namespaces[0] if namespaces != ["*"] else "default")
        self.election = self._make_election(self.identity, namespace)
        self.store = KubeRuntimeStore(client, self.routes, self.control.runtime.overrides)
        self.writer = StatusWriter(client, STATUS_KINDS, self.provider.report,
                                   self.provider.settings.controller_name)
        self._tasks.spawn(run_election(client, LEASE, self.election,
                                       on_change=self._leadership_changed), "lease")
        self.provider.on_report.append(self._wake.set)

    async def step(self) -> None:
        """One look: follow the objects' run-time state; as leader, write status."""
        seen = (self.provider.store.version, self.provider.report.version,
                self.control.runtime.generation)
        if seen == self._seen:
            return
        self._seen = seen
        if self.store is not None and self.provider.ready:
            self.store.restore()
        if self.leading and self.writer is not None:
            await self.write_status()

    async def write_status(self) -> int:
        """Status of every object whose copy or verdict changed since the last pass."""
        assert self.writer is not None
        pending: list[tuple[str, Mapping[str, object]]] = []
        current: dict[ObjectKey, tuple[object, object]] = {}
        store, report = self.provider.store, self.provider.report
        candidates: dict[ObjectKey, Mapping[ParentKey | None, ImportResult]] = {
            key: parents for key, parents in report.results.items()
            if key.kind in STATUS_KINDS}
        for gateway_class in store.objects("GatewayClass"):
            name = str((gateway_class.get("metadata") or {}).get("name") or "")
            candidates.setdefault(ObjectKey("GatewayClass", "", name), {})
        for key, parents in candidates.items():
            obj = store.get((key.kind, key.namespace, key.name))
            if obj is None:
                continue
            version = (obj.get("metadata") or {}).get("resourceVersion")
            # Gateways count the routes attached: any verdict may change their status.
            verdicts: object = report.version if key.kind == "Gateway" else dict(parents)
            current[key] = (version, verdicts)
            if self._written.get(key) != current[key]:
                pending.append((key.kind, obj))
        written = await self.writer.write_all(pending)
        self._written = current
        return written

    def routes(self) -> dict[str, tuple[RouteOrigin, Mapping[str, object]]]:
        """pyproxy route → the object it came from, as the store holds it now."""
        store = self.provider.store
        stamp = (store.version, self.control.runtime.generation)
        if self._origins is None or self._origins[0] != stamp:
            objects = store.objects(HTTP_ROUTE.kind) + store.objects(TRAFFIC_SPLIT.kind)
            self._origins = (stamp, route_origins(self.control.runtime.current.routes,
                                                  objects))
        found: dict[str, tuple[RouteOrigin, Mapping[str, object]]] = {}
        for route, origin in self._origins[1].items():
            obj = store.get((origin.resource.kind, origin.namespace, origin.name))
            if obj is not None:
                found[route] = (origin, obj)
        return found

    # ------------------------------------------------------------------ canaries

    async def _leadership_changed(self, leading: bool) -> None:
        canaries = self.control.canaries
        logger.info("%s %s the leader: %s", self.identity, "is now" if leading else "is no "
                    "longer", "writing status and running canaries" if leading else
                    "following the others")
        if leading:
            self._seen = None  # write what changed while another replica led
            self._written.clear()
            if canaries is not None and self._canaries is None:
                self._canaries = self._tasks.spawn(canaries.run(), "canaries")
        else:
            await self._stop_canaries()

    async def _stop_canaries(self) -> None:
        if self._canaries is None:
            return
        self._canaries.cancel()
        await asyncio.gather(self._canaries, return_exceptions=True)
        self._canaries = None
        if self.control.canaries is not None:
            self.control.canaries.stand_down()
