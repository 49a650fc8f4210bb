"""In-cluster mode's moving part: reflectors in, one config swap out per batch of changes.

``KubernetesProvider.run`` connects, finds which kinds the cluster serves (CRDs that are
not installed are skipped), starts one reflector per kind and namespace, and then waits
for changes. Changes are batched: the first one starts a short window
(``kubernetes.batch_delay``); everything that arrives within it becomes ONE consistent
config, built from the whole store and applied through ``ProxyControl.apply_built`` — the
same compile and swap as a file reload, so a config never mixes two moments of the API.

Until every reflector has listed its kind once, nothing is built and ``/readyz`` answers
503: a half-synced store would route to a subset of the routes.

Only what changed is recomputed: a Service's endpoints when the Service or one of its
EndpointSlices changed; a manifest document when its resourceVersion moved. A batch that
changes endpoints only (pod churn) skips the importers and replaces the endpoints of the
serving config (``translate.replace_endpoints``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from pyproxy.config.assemble import assemble
from pyproxy.config.document import ConfigInvalid, Document
from pyproxy.config.load import LoadedConfig, read_documents
from pyproxy.config.model import Endpoint, KubernetesConfig
from pyproxy.discovery.kubernetes import resources, translate
from pyproxy.discovery.kubernetes.client import KubeApiError, KubeClient, pod_namespace
from pyproxy.discovery.kubernetes.report import Conflict, ImportResult, ObjectKey, ObjectReport
from pyproxy.discovery.kubernetes.resources import Resource
from pyproxy.discovery.kubernetes.store import Key, Store
from pyproxy.discovery.kubernetes.watch import Backoff, Reflector
from pyproxy.metrics.stats import KubernetesMetrics
from pyproxy.tasks import TaskGroup

if TYPE_CHECKING:
    from pyproxy.control import ProxyControl, ReloadResult

__all__ = ["KubernetesProvider"]

T = TypeVar("T")

logger = logging.getLogger("pyproxy.kubernetes")

_ENDPOINT_KINDS = {"Service", "EndpointSlice"}
Connect = Callable[[KubernetesConfig], Awaitable[KubeClient]]


async def _connect(settings: KubernetesConfig) -> KubeClient:
    return await KubeClient.connect(settings.kubeconfig, token_file=settings.token_file)


class KubernetesProvider:
    """Watches the API and keeps the running proxy's config in step with it."""

    def __init__(self, settings: KubernetesConfig, control: ProxyControl, *,
                 paths: Sequence[str], documents: Sequence[Document], digest: str,
                 env: Mapping[str, str] | None = None, connect: Connect = _connect):
        self.settings = settings
        self.control = control
        self.paths = list(paths)
        self.env = os.environ if env is None else env
        self.connect = connect
        self.store = Store()
        self.report = ObjectReport()
        self.reflectors: list[Reflector] = []
        self.client: KubeClient | None = None
        self.namespaces = self._namespaces()
        self.selection = translate.Selection(
            settings.controller_name, settings.gateways,
            qualified_services=self.namespaces == ["*"] or len(self.namespaces) > 1)
        # Called after every build, once the report is up to date (the status writer).
        self.on_report: list[Callable[[], None]] = []
        self.snapshots = {"success": 0, "failure": 0, "endpoints": 0}
        self._documents = list(documents)
        self._digest = digest
        self._files = tuple(self.control.loaded.files)
        self._wake = asyncio.Event()
        self._tasks = TaskGroup()
        self._applied = False  # a config with the API's objects is serving
        self._build_lock = asyncio.Lock()
        self._manifests: dict[tuple[ObjectKey, object], translate.ApiManifest] = {}
        self._route_cache: dict[object, object] = {}  # HTTPRoute imports, for the importer
        self._endpoints: dict[str, tuple[Endpoint, ...]] = {}  # native name → pods
        self._slice_owner: dict[Key, tuple[str, str]] = {}  # slice → (namespace, Service)
        self._slices_of: dict[tuple[str, str], set[Key]] = {}  # the reverse
        self._last: translate.Built | None = None
        self._logged_conflicts: tuple[Conflict, ...] = ()
        self._logged_rejections: set[tuple[ObjectKey, int, str]] = set()

    # ------------------------------------------------------------------ state

    @property
    def ready(self) -> bool:
        """Every kind listed once and a config built from them serving."""
        return self._applied and bool(self.reflectors) and all(
            r.synced.is_set() for r in self.reflectors)

    @property
    def synced(self) -> bool:
        return bool(self.reflectors) and all(r.synced.is_set() for r in self.reflectors)

    def metrics(self) -> KubernetesMetrics:
        synced: dict[str, bool] = {}
        relists: dict[str, int] = {}
        for reflector in self.reflectors:
            kind = reflector.resource.kind
            synced[kind] = synced.get(kind, True) and reflector.synced.is_set()
            relists[kind] = relists.get(kind, 0) + reflector.machine.relists
        conflicts = {"service": 0, "route": 0}
        for conflict in self.report.conflicts:
            conflicts[conflict.kind] = conflicts.get(conflict.kind, 0) + 1
        return {"objects": self.report.counts(), "conflicts": conflicts, "synced": synced,
                "relists": relists, "snapshots": dict(self.snapshots)}

    def _namespaces(self) -> list[str]:
        """The namespaces to watch; ``["*"]`` for all."""
        if self.settings.namespaces:
            return list(self.settings.namespaces)
        return [pod_namespace() or "default"]

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Connect (retrying), start the reflectors, then build a config per batch."""
        try:
            self.client = await self._with_retries("connect", lambda: self.connect(
                self.settings))
            if not self.settings.namespaces and pod_namespace() is None and \
                    self.client.namespace:
                # Outside a pod: the kubeconfig context's namespace, as kubectl would use.
                self.namespaces = [self.client.namespace]
            kinds = await self._with_retries("discover", self._discover)
            self._start(kinds)
            while True:
                await self._wake.wait()
                # Everything that arrives within the window joins this batch.
                await asyncio.sleep(self.settings.batch_delay)
                self._wake.clear()
                if self.synced:
                    try:
                        await self.rebuild()
                    except Exception:
                        # An object the importers choke on must not stop the provider: the
                        # last good config keeps serving, the next change builds again.
                        logger.exception("kubernetes: building a config failed")
                        self.snapshots["failure"] += 1
        finally:
            await self._tasks.cancel_all()
            if self.client is not None:
                await self.client.close()

    async def _with_retries(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        backoff, failures = Backoff(base=1.0, cap=30.0), 0
        while True:
            try:
                return await attempt()
            except KubeApiError as problem:
                failures += 1
                delay = backoff.delay(failures, random.random)
                if problem.status == 429 and problem.retry_after is not None:
                    delay = problem.retry_after
                logger.error("kubernetes: cannot %s: %s; again in %.1fs", what, problem, delay)
                await asyncio.sleep(delay)

    async def _discover(self) -> list[Resource]:
        """The kinds to read that this API server serves."""
        assert self.client is not None
        wanted = set(self.settings.kinds) or {r.kind for r in resources.READ_KINDS}
        found = []
        for resource in resources.READ_KINDS:
            if resource.kind not in wanted:
                continue
            served = await self.client.discover(resource)
            if served is None:
                log = logger.warning if self.settings.kinds else logger.info
                log("kubernetes: %s (%s) is not served by the API server (CRD not "
                    "installed); not read", resource.kind, resource.group)
                continue
            found.append(served)
        logger.info("kubernetes: reading %s in %s from %s",
                    ", ".join(r.kind for r in found),
                    "every namespace" if self.namespaces == ["*"] else
                    ", ".join(self.namespaces), self.client.host)
        return found

    def _start(self, kinds: Sequence[Resource]) -> None:
        assert self.client is not None
        idle = self.settings.idle_timeout
        for resource in kinds:
            spaces: list[str | None] = [None] if not resource.namespaced or \
                self.namespaces == ["*"] else list(self.namespaces)
            for namespace in spaces:
                reflector = Reflector(self.client, resource, namespace, self.store,
                                      self._wake.set,
                                      timeout_seconds=max(1, int(self.settings.watch_timeout)),
                                      idle_timeout=idle)
                self.reflectors.append(reflector)
                self._tasks.spawn(reflector.run(),
                                  f"kubernetes-watch-{resource.plural}-{namespace or 'all'}")

    # ------------------------------------------------------------------ files

    async def reload_files(self) -> ReloadResult:
        """The files changed (or SIGHUP, or POST /api/v1/reload): read them again and
        rebuild with the API's objects as they are."""
        try:
            files, documents, digest = await asyncio.to_thread(read_documents, self.paths)
        except ConfigInvalid as invalid:
            return await self.control.apply_built(invalid)
        if digest == self._digest:
            return {"result": "unchanged", "generation": self.control.runtime.generation,
                    "errors": []}
        self._documents, self._digest, self._files = documents, digest, tuple(files)
        if any(isinstance(d.value, dict) and d.value.get("kubernetes") is not None
               for d in documents) and "kubernetes" not in self.control.overrides:
            logger.info("kubernetes: changes to the kubernetes: block apply at the next "
                        "restart")
        if not self.synced:
            # Not serving API objects yet: apply the new settings; routes come with the sync.
            return await self._apply_settings_only()
        return await self.rebuild(full=True)

    async def _apply_settings_only(self) -> ReloadResult:
        try:
            config, warnings = assemble(translate.settings_documents(self._documents),
                                        self.env)
        except ConfigInvalid as invalid:
            return await self.control.apply_built(invalid)
        return await self.control.apply_built(LoadedConfig(config, warnings, self._files,
                                                           self._digest))

    # ------------------------------------------------------------------ building

    async def rebuild(self, *, full: bool = False) -> ReloadResult:
        """One config from the files and everything in the store, applied."""
        async with self._build_lock:
            changes = self.store.take_changes()
            changed_services = self._refresh_endpoints(changes)
            endpoints_only = bool(changes) and all(kind in _ENDPOINT_KINDS
                                                   for kind, _, _ in changes)
            if endpoints_only and not full and self._last is not None and \
                    self._last.config is not None and self._applied:
                serving = self.control.loaded.config
                fast = translate.replace_endpoints(serving, self._endpoints, changed_services,
                                                   self._last.endpoint_sources)
                if fast is not None:
                    self.snapshots["endpoints"] += 1
                    return await self.control.apply_built(LoadedConfig(
                        fast, self.control.loaded.warnings, self._files, self._stamp()))
            objects = {kind: self.store.objects(kind) for kind in translate.IMPORTED_KINDS}
            objects["GatewayClass"] = self.store.objects("GatewayClass")
            manifests = translate.manifest_documents(objects, self.selection, self._manifests)
            built = await asyncio.to_thread(translate.build, self._documents, self.env,
                                            manifests, dict(self._endpoints),
                                            self._route_cache)
            self._report(built)
            if built.config is None:
                self.snapshots["failure"] += 1
                return await self.control.apply_built(ConfigInvalid(built.errors,
                                                                    built.warnings))
            self._last = built
            self.snapshots["success"] += 1
            file_warnings = tuple(w for w in built.warnings
                                  if not w.file.startswith("kubernetes:"))
            result = await self.control.apply_built(LoadedConfig(
                built.config, file_warnings, self._files, self._stamp()))
            if result["result"] == "success":
                if not self._applied:
                    logger.info("kubernetes: every kind synced; serving %d routes and %d "
                                "services from the API and the files",
                                len(built.config.routes), len(built.config.services))
                self._applied = True
            return result

    def _stamp(self) -> str:
        """A digest for the config built now: the files' and the store's version."""
        return hashlib.sha256(f"{self._digest}\0{self.store.version}".encode()).hexdigest()

    def _refresh_endpoints(self, changes: set[Key]) -> set[str]:
        """Recompute the endpoints of the Services touched by ``changes``; their native
        names."""
        touched: set[tuple[str, str]] = set()
        for kind, namespace, name in changes:
            if kind == "Service":
                touched.add((namespace, name))
            elif kind == "EndpointSlice":
                key = (kind, namespace, name)
                before = self._slice_owner.pop(key, None)
                if before is not None:
                    touched.add(before)
                    self._slices_of.get(before, set()).discard(key)
                obj = self.store.get(key)
                owner = ((obj or {}).get("metadata") or {}).get("labels", {}).get(
                    "kubernetes.io/service-name")
                if obj is not None and owner:
                    owned_by = (namespace, str(owner))
                    self._slice_owner[key] = owned_by
                    self._slices_of.setdefault(owned_by, set()).add(key)
                    touched.add(owned_by)
        names = set()
        for namespace, name in touched:
            native = translate.native_service_name(namespace, name,
                                                   self.selection.qualified_services)
            names.add(native)
            service = self.store.get(("Service", namespace, name))
            if service is None:
                self._endpoints.pop(native, None)
                continue
            slices = [obj for key in self._slices_of.get((namespace, name), ())
                      if (obj := self.store.get(key))]
            self._endpoints[native] = translate.endpoints_of(service, slices)
        return names

    def _report(self, built: translate.Built) -> None:
        """Update the table the status writer reads; log what is new."""
        results = dict(built.results)
        for gateway_class in self.store.objects("GatewayClass"):
            key = translate.object_key(gateway_class)
            if key.name in translate.claimed_classes([gateway_class],
                                                     self.settings.controller_name):
                results[key] = {None: ImportResult(True, True, "Accepted", "",
                                                   translate.generation(gateway_class))}
        self.report.update(results, built.conflicts)
        for callback in self.on_report:
            callback()
        if built.conflicts != self._logged_conflicts:
            for conflict in built.conflicts:
                if conflict not in self._logged_conflicts:
                    logger.warning("kubernetes: conflict: %s", conflict.message)
            self._logged_conflicts = built.conflicts
        rejected = set()
        for key, parents in built.results.items():
            for result in parents.values():  # an object's parents share its result
                seen = (key, result.generation, result.reason)
                if not result.accepted:
                    rejected.add(seen)
                    if seen not in self._logged_rejections:
                        logger.warning("kubernetes: %s %s/%s not imported (%s): %s",
                                       key.kind, key.namespace, key.name, result.reason,
                                       result.message)
                break
        self._logged_rejections = rejected  # once per object and generation
