"""Replaying what Flagger and Argo Rollouts write, object by object, on the fake API server.

The tools are not run here (no Go toolchain, no cluster); their writes are. Each write below
follows the tool's own source, cited where it is made, at these versions:

- Flagger v1.44.0 (fluxcd/flagger, commit 15bd6ad): ``pkg/router/kubernetes_default.go``
  (the three Services), ``pkg/router/gateway_api.go`` (the HTTPRoute, ``GetRoutes``,
  ``SetRoutes``), ``pkg/router/smi.go`` (the v1alpha1 TrafficSplit of the ``linkerd``
  provider), ``pkg/controller/scheduler.go`` (the order of steps, promotion and rollback),
  ``pkg/controller/scheduler_metrics.go`` (the MetricTemplate model and threshold ranges),
  ``pkg/metrics/observers/linkerd.go`` (the built-in queries).
- Argo Rollouts Gateway API plugin v0.15.0
  (argoproj-labs/rollouts-plugin-trafficrouter-gatewayapi, commit 96c63fd):
  ``pkg/plugin/httproute.go`` (weights, header routes), ``pkg/plugin/labels.go`` and
  ``internal/defaults/defaults.go`` (the in-progress label).

The tools write through the API, as client-go does: GET, then a full PUT carrying the
resourceVersion read (so the fake answers 409 when pyproxy's status write came in between;
both tools read again and retry). What controllers other than the tool would do in a real
cluster — the Deployment controller starting pods, the EndpointSlice controller writing
slices — ``Pods`` does directly on the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from tests.integration.kubernetes.cluster import (
    CONTROLLER,
    SERVICE_NAME_LABEL,
    SteadyLoad,
    Tally,
    burst,
    eventually,
    served_weights,
    start_proxy,
    stop_proxy,
    write_config,
)
from tests.stats_bounds import assert_binomial
from tests.support.backends import EchoBackend
from tests.support.fake_kube import GATEWAY_GROUP, FakeKube, Obj
from tests.support.harness import ProxyProcess
from tests.support.prometheus import (
    LINKERD_DURATION,
    LINKERD_SUCCESS_RATE,
    Prometheus,
    render_flagger_query,
)

NS = "test"  # the namespace of Flagger's tutorials
FLAGGER = "fluxcd/flagger v1.44.0"
ARGO_PLUGIN = "argoproj-labs/rollouts-plugin-trafficrouter-gatewayapi v0.15.0"
LOAD_RATE = 40  # requests per second of the load tester, throughout a replay
SCRAPE_INTERVAL = "500ms"
SCRAPES_PER_INTERVAL = 4  # scrapes between a step's burst and the next analysis
MAX_INTERVALS = 20  # Flagger's advanceCanary calls a replay may take
REPLAY_TIMEOUT = 90.0  # seconds a whole replay may take (they take 10-25 s)
REPO = Path(__file__).resolve().parents[3]
METRIC_TEMPLATES = REPO / "deploy" / "kubernetes" / "flagger"

_PATHS = {
    "Service": "/api/v1/namespaces/{ns}/services",
    "HTTPRoute": f"/apis/{GATEWAY_GROUP}/v1/namespaces/{{ns}}/httproutes",
    "TrafficSplit": "/apis/split.smi-spec.io/v1alpha1/namespaces/{ns}/trafficsplits",
}


class Conflict(Exception):
    """409: the object changed since it was read."""


class Api:
    """The tool's client: the fake API server over HTTP, with its bearer token."""

    def __init__(self, kube: FakeKube, namespace: str = NS):
        self.kube = kube
        self.ns = namespace
        self.conflicts = 0  # 409s met (each followed by a fresh read and a retry)

    async def _call(self, method: str, kind: str, name: str | None = None,
                    body: Obj | None = None) -> Obj:
        path = _PATHS[kind].format(ns=self.ns) + (f"/{name}" if name else "")
        headers = {"Authorization": f"Bearer {self.kube.token}"}
        async with aiohttp.ClientSession() as session, session.request(
                method, self.kube.url + path, json=body, headers=headers) as response:
            answer: Obj = await response.json()
            if response.status == 409:
                self.conflicts += 1
                raise Conflict(answer.get("message"))
            assert response.status < 300, (method, path, response.status, answer)
            return answer

    async def get(self, kind: str, name: str) -> Obj:
        return await self._call("GET", kind, name)

    async def create(self, obj: Obj) -> Obj:
        return await self._call("POST", obj["kind"], body=obj)

    async def update(self, obj: Obj) -> Obj:
        """A full update (PUT), with the resourceVersion of the read it came from."""
        return await self._call("PUT", obj["kind"], obj["metadata"]["name"], body=obj)


# --- pods and their EndpointSlices ------------------------------------------------------------

class HalfFailingPod(EchoBackend):
    """A pod whose every second answer is a 500: a 50%-failing canary."""

    def __init__(self, name: str):
        super().__init__(name)
        self.seen = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen += 1
        if self.seen % 2 == 0:
            self.requests += 1
            return web.Response(status=500, text=self.name)
        return await super()._handle(request)


@dataclass
class Pod:
    name: str
    labels: dict[str, str]
    backend: EchoBackend
    version: str


_HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for name suffixes


def _suffix(seed: str, length: int) -> str:
    number = int.from_bytes(seed.encode(), "big")
    return "".join(_HASH_ALPHABET[(number >> (5 * i)) % len(_HASH_ALPHABET)]
                   for i in range(length))


class Pods:
    """Pods as Deployments (or ReplicaSets) run them — each a real echo backend on
    127.0.0.1, named ``DEPLOYMENT-HASH-XXXXX`` as Kubernetes names them — and the slices
    the EndpointSlice controller writes for every Service whose selector picks them."""

    def __init__(self, kube: FakeKube, namespace: str = NS):
        self.kube = kube
        self.ns = namespace
        self.pods: dict[str, Pod] = {}

    @staticmethod
    def template_hash(owner: str, version: str) -> str:
        """The pod-template-hash of ``owner``'s pods at ``version``."""
        return _suffix(f"{owner}/{version}", 10)

    async def run(self, owner: str, labels: dict[str, str], version: str, count: int, *,
                  failing: bool = False) -> list[Pod]:
        template_hash = self.template_hash(owner, version)
        started = []
        for i in range(count):
            name = f"{owner}-{template_hash}-{_suffix(f'{owner}/{version}/{i}', 5)}"
            backend = await (HalfFailingPod(name) if failing else EchoBackend(name)).start()
            pod = Pod(name, {**labels, "pod-template-hash": template_hash}, backend, version)
            self.pods[name] = pod
            started.append(pod)
        self.sync()
        return started

    async def stop(self, pods: Iterable[Pod]) -> None:
        """Terminated pods: out of their slices first, then exited."""
        gone = list(pods)
        for pod in gone:
            del self.pods[pod.name]
        self.sync()
        await asyncio.sleep(0.3)  # the grace period: requests in flight finish
        for pod in gone:
            await pod.backend.close()

    async def close(self) -> None:
        for pod in self.pods.values():
            await pod.backend.close()

    def version_of(self, pod_name: str) -> str:
        return self.pods[pod_name].version

    def sync(self) -> None:
        """The EndpointSlice controller: one slice per (Service, selected pod) — a slice's
        port applies to all its endpoints, and every pod here has its own port — labelled
        with the Service's labels, as the controller copies them."""
        wanted: dict[str, Obj] = {}
        for service in self.kube.list_objects("Service", self.ns):
            selector = service["spec"].get("selector") or {}
            if not selector:
                continue
            svc = service["metadata"]["name"]
            for pod in self.pods.values():
                if all(pod.labels.get(k) == v for k, v in selector.items()):
                    name = f"{svc}-{pod.name.rsplit('-', 1)[-1]}"
                    wanted[name] = {
                        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"name": name, "namespace": self.ns, "labels": {
                            **(service["metadata"].get("labels") or {}),
                            SERVICE_NAME_LABEL: svc,
                            "endpointslice.kubernetes.io/managed-by":
                                "endpointslice-controller.k8s.io"}},
                        "addressType": "IPv4",
                        # named as the Service's port ("" when it has no name), the
                        # number the pod's targetPort resolves to
                        "ports": [{"name": port.get("name", ""), "port": pod.backend.port,
                                   "protocol": "TCP"} for port in service["spec"]["ports"]],
                        "endpoints": [{"addresses": ["127.0.0.1"],
                                       "conditions": {"ready": True, "serving": True,
                                                      "terminating": False},
                                       "targetRef": {"kind": "Pod", "namespace": self.ns,
                                                     "name": pod.name}}]}
        for existing in self.kube.list_objects("EndpointSlice", self.ns):
            if existing["metadata"]["name"] not in wanted:
                self.kube.delete("EndpointSlice", self.ns, existing["metadata"]["name"])
        for obj in wanted.values():
            self.kube.apply(obj)


# The Accepted message pyproxy writes when an import raised no issue; otherwise the
# message lists the warnings (fields ignored, references unresolved).
CLEAN_IMPORT = "served by pyproxy"


def assert_imported_cleanly(route: Obj) -> None:
    """Every Accepted condition of ``route`` says the import raised no warning."""
    for parent in (route.get("status") or {}).get("parents") or []:
        for cond in parent["conditions"]:
            if cond["type"] == "Accepted":
                assert cond["message"] == CLEAN_IMPORT, cond


def gateway(kube: FakeKube, name: str = "public", namespace: str = NS) -> None:
    """The platform team's GatewayClass and Gateway for pyproxy."""
    kube.apply({"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": "GatewayClass",
                "metadata": {"name": "pyproxy"}, "spec": {"controllerName": CONTROLLER}})
    kube.apply({"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": "Gateway",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"gatewayClassName": "pyproxy", "listeners": [
                    {"name": "http", "port": 80, "protocol": "HTTP",
                     "allowedRoutes": {"namespaces": {"from": "Same"}}}]}})


# --- Flagger ---------------------------------------------------------------------------------

@dataclass
class Metric:
    """One entry of ``Canary.spec.analysis.metrics``: a query and its threshold range."""
    name: str
    query: str  # the template, before rendering
    interval: str
    min: float | None = None
    max: float | None = None


def load_metric_templates(directory: Path = METRIC_TEMPLATES) -> dict[str, str]:
    """MetricTemplate name → ``spec.query``, from the shipped manifests."""
    found = {}
    for path in sorted(directory.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "MetricTemplate":
                found[doc["metadata"]["name"]] = doc["spec"]["query"]
    return found


# pkg/metrics/observers/linkerd.go, linkerdQueries (v1.44.0): the built-in linkerd
# provider's queries, by the names a Canary's analysis uses.
LINKERD_QUERIES = {
    "request-success-rate": LINKERD_SUCCESS_RATE,
    "request-duration": LINKERD_DURATION,
}

@dataclass
class Step:
    """One line of the printed replay."""
    iteration: int
    phase: str
    written: str  # the weights written (primary/canary), or "" for none
    share: str = ""  # the canary's share of the traffic observed after it
    queries: str = ""  # the analysis' query values before the write
    note: str = ""


@dataclass
class Log:
    title: str
    steps: list[Step] = field(default_factory=list)

    def add(self, step: Step) -> None:
        self.steps.append(step)
        print(f"  [{self.title}] #{step.iteration} {step.phase:<11} wrote {step.written:<9}"
              f" canary share {step.share:<16} queries {step.queries or '-'}"
              f"{'  ' + step.note if step.note else ''}", flush=True)


class Flagger:
    """What Flagger writes for one Canary, for ``provider: gatewayapi:v1`` or ``linkerd``."""

    def __init__(self, api: Api, canary: Obj):
        self.api = api
        self.canary = canary
        self.provider = canary["spec"]["provider"]
        self.target = canary["spec"]["targetRef"]["name"]
        # Canary.GetServiceNames: the apex is spec.service.name or the target's name
        self.apex = canary["spec"]["service"].get("name") or self.target
        self.primary = f"{self.apex}-primary"
        self.canary_svc = f"{self.apex}-canary"
        self.port = canary["spec"]["service"]["port"]
        self.phase = "Initialized"
        self.failed_checks = 0
        self.status_reads: list[tuple[int, int]] = []  # (observedGeneration, generation)
        self.analyses: list[dict[str, float | None]] = []  # each runAnalysis' values

    @property
    def analysis(self) -> Obj:
        return dict(self.canary["spec"]["analysis"])

    # kubernetes_default.go, reconcileService: one per name, the pod selector app=...
    def _service(self, name: str, pod_selector: str) -> Obj:
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": self.api.ns,
                             "labels": {"app": name}, "annotations": {}},
                "spec": {"type": "ClusterIP", "selector": {"app": pod_selector},
                         "ports": [{"name": "http", "protocol": "TCP", "port": self.port,
                                    "targetPort": self.port}]}}

    async def initialize(self) -> None:
        """Initialize (canary and primary Services), Reconcile (apex Service), then the
        router's Reconcile (the HTTPRoute or TrafficSplit with 100/0)."""
        await self.api.create(self._service(self.canary_svc, self.target))
        await self.api.create(self._service(self.primary, f"{self.target}-primary"))
        await self.api.create(self._service(self.apex, f"{self.target}-primary"))
        if self.provider.startswith("gatewayapi"):
            await self.api.create({
                "apiVersion": f"{GATEWAY_GROUP}/v1", "kind": "HTTPRoute",
                "metadata": {"name": self.apex, "namespace": self.api.ns},
                "spec": self._route_spec(100, 0)})
        else:
            await self.api.create({
                "apiVersion": "split.smi-spec.io/v1alpha1", "kind": "TrafficSplit",
                "metadata": {"name": self.apex, "namespace": self.api.ns},
                "spec": {"service": self.apex, "backends": self._split_backends(100, 0)}})

    # gateway_api.go: makeBackendRef, and the spec Reconcile and SetRoutes both build
    def _backend_ref(self, name: str, weight: int) -> Obj:
        return {"group": "", "kind": "Service", "name": name, "port": self.port,
                "weight": weight}

    def _route_spec(self, primary: int, canary: int) -> Obj:
        service = self.canary["spec"]["service"]
        spec: Obj = {
            # toV1ParentRefs: the gatewayRefs, field by field as given
            "parentRefs": copy.deepcopy(service["gatewayRefs"]),
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [self._backend_ref(self.primary, primary),
                                self._backend_ref(self.canary_svc, canary)]}]}
        if service.get("hosts"):
            spec["hostnames"] = list(service["hosts"])
        return spec

    # smi.go SetRoutes: resource.NewQuantity(w, DecimalExponent), a quantity string
    def _split_backends(self, primary: int, canary: int) -> list[Obj]:
        return [{"service": self.canary_svc, "weight": str(canary)},
                {"service": self.primary, "weight": str(primary)}]

    async def get_routes(self) -> tuple[int, int]:
        """GetRoutes. For the Gateway API (v1.42+): for each spec parentRef, the status
        entry whose parentRef is deep-equal to it must have Accepted True and an
        observedGeneration not behind the route's generation, else the step is skipped.
        Here it must never be behind, and the entry for the exact parentRef must exist
        (otherwise Flagger's check would pass without looking)."""
        if not self.provider.startswith("gatewayapi"):
            split = await self.api.get("TrafficSplit", self.apex)
            weights = {b["service"]: int(b["weight"]) for b in split["spec"]["backends"]}
            return weights[self.primary], weights[self.canary_svc]
        route = await self.api.get("HTTPRoute", self.apex)
        generation = route["metadata"]["generation"]
        parents = (route.get("status") or {}).get("parents") or []
        for ref in route["spec"]["parentRefs"]:
            entries = [p for p in parents if p["parentRef"] == ref]
            assert entries, f"no status entry for parentRef {ref}: {parents}"
            for entry in entries:
                for cond in entry["conditions"]:
                    if cond["type"] == "Accepted":
                        self.status_reads.append((cond["observedGeneration"], generation))
                        assert cond["status"] == "True", cond
                        assert cond["observedGeneration"] >= generation, (
                            f"observedGeneration {cond['observedGeneration']} behind "
                            f"generation {generation} when Flagger reads it")
        assert_imported_cleanly(route)
        weights = {r["name"]: r["weight"] for r in route["spec"]["rules"][0]["backendRefs"]}
        return weights[self.primary], weights[self.canary_svc]

    async def set_routes(self, primary: int, canary: int) -> Obj:
        """SetRoutes: read, replace the whole spec (gateway_api.go) or the backends
        (smi.go), update. Flagger does not retry a conflict at once but at the next
        interval; the replay retries at once, which is the same writes sooner."""
        for _ in range(5):
            try:
                if self.provider.startswith("gatewayapi"):
                    route = await self.api.get("HTTPRoute", self.apex)
                    route["spec"] = self._route_spec(primary, canary)
                    return await self.api.update(route)
                split = await self.api.get("TrafficSplit", self.apex)
                split["spec"]["backends"] = self._split_backends(primary, canary)
                return await self.api.update(split)
            except Conflict:
                continue
        raise AssertionError("five conflicts in a row")

    def next_weight(self, canary_weight: int) -> int:
        """nextStepWeight with stepWeight: the step, capped by maxWeight."""
        analysis = self.analysis
        return min(canary_weight + int(analysis["stepWeight"]), int(analysis["maxWeight"]))


# --- the loop: Flagger's advanceCanary, once per interval ------------------------------------

class Rig:
    """What a replay runs against: the fake API server, the pods, pyproxy, Prometheus."""

    def __init__(self, kube: FakeKube, pods: Pods, proxy: ProxyProcess, prom: Prometheus | None,
                 host: str, log: Log, requests: int = 400):
        self.kube = kube
        self.pods = pods
        self.proxy = proxy
        self.prom = prom
        self.host = host
        self.log = log
        self.requests = requests

    async def serving(self, weights: dict[str, int], timeout: float = 10.0) -> float:
        """Seconds until pyproxy serves ``weights`` (backend → weight)."""
        async def applied() -> bool:
            served = await served_weights(self.proxy)
            return all(served.get(name) == w for name, w in weights.items())
        return await eventually(applied, f"{weights} served", timeout=timeout, interval=0.01)

    async def traffic(self, canary_pods: set[str], canary_share: float,
                      headers: dict[str, str] | None = None) -> tuple[Tally, int]:
        """A burst through pyproxy; the requests the canary took, checked with binomial
        bounds. Only a canary fails here, and a failure carries no pod name, so the
        canary's requests are its named answers plus the failures."""
        tally = await burst(self.proxy.url + "/", self.requests,
                            headers={"Host": self.host, **(headers or {})})
        assert not tally.errors, tally.errors[:3]
        on_canary = sum(n for name, n in tally.names.items() if name in canary_pods)
        on_canary += tally.failed
        if canary_share == 0:
            assert on_canary == 0, (tally.names, tally.statuses)
        else:
            assert_binomial(on_canary, tally.total, canary_share)
        return tally, on_canary

    async def series_started(self, canary_pods: set[str]) -> None:
        """Before a burst: every canary pod has answered the load tester twice (so each
        kind of answer it gives, a failing pod's 500 too, has its series), then one scrape.
        A series' first sample holds everything counted so far and rate() sees only what
        comes after it: a series first scraped after the burst would leave the burst out
        of the next analysis."""
        if self.prom is None:
            return
        pods = [self.pods.pods[name].backend for name in canary_pods]
        await eventually(lambda: all(pod.requests >= 2 for pod in pods),
                         "the load tester reached every canary pod twice")
        await asyncio.to_thread(self.prom.wait_for_scrapes, 1)

    async def scraped(self) -> None:
        """The rest of the interval: a few more scrapes of pyproxy, so the last burst and
        some of the steady load after it are in the TSDB (a rate() needs two samples
        apart, and a series that first appears holds everything counted so far)."""
        assert self.prom is not None
        await asyncio.to_thread(self.prom.wait_for_scrapes, SCRAPES_PER_INTERVAL)


async def analyse(flagger: Flagger, rig: Rig, metrics: list[Metric]) -> tuple[bool, str]:
    """runAnalysis: every metric's query, rendered, over Prometheus; a value outside the
    threshold range (or no value: "no values found") halts the advancement."""
    ok = True
    shown = []
    values: dict[str, float | None] = {}
    assert rig.prom is not None
    for metric in metrics:
        query = render_flagger_query(metric.query, namespace=flagger.api.ns,
                                     target=flagger.target, interval=metric.interval,
                                     service=flagger.apex, name=flagger.canary["metadata"]["name"])
        value = await asyncio.to_thread(rig.prom.query, query)
        values[metric.name] = value
        shown.append(f"{metric.name}={'none' if value is None else f'{value:.4g}'}")
        if value is None or (metric.min is not None and value < metric.min) or (
                metric.max is not None and value > metric.max):
            ok = False
    flagger.analyses.append(values)
    return ok, " ".join(shown)


async def drive(flagger: Flagger, rig: Rig, metrics: list[Metric], *,
                new_revision: Callable[[], Awaitable[None]],
                promote: Callable[[], Awaitable[None]],
                scale_canary_to_zero: Callable[[], Awaitable[None]],
                canary_pods: Callable[[], set[str]]) -> dict[str, float]:
    """advanceCanary (scheduler.go) from a detected new revision until Succeeded or Failed,
    one call per interval: GetRoutes (status checked), the threshold check, runAnalysis,
    then runCanary (a step, or Promote at maxWeight), runPromotionTrafficShift, Finalising,
    or rollback. After each write: traffic once pyproxy serves it, and two scrapes.
    Returns figures: the rollback's time to serve 100/0, its watch events."""
    async with asyncio.timeout(REPLAY_TIMEOUT):
        return await _drive(flagger, rig, metrics, new_revision=new_revision,
                            promote=promote, scale_canary_to_zero=scale_canary_to_zero,
                            canary_pods=canary_pods)


async def _drive(flagger: Flagger, rig: Rig, metrics: list[Metric], *,
                 new_revision: Callable[[], Awaitable[None]],
                 promote: Callable[[], Awaitable[None]],
                 scale_canary_to_zero: Callable[[], Awaitable[None]],
                 canary_pods: Callable[[], set[str]]) -> dict[str, float]:
    figures: dict[str, float] = {}
    # Initialized: the route Flagger created serves the primary only, the canary
    # Deployment scaled to zero (its Service without endpoints)
    await flagger.get_routes()
    await rig.serving({flagger.primary: 100, flagger.canary_svc: 0})
    tally, on_canary = await rig.traffic(set(), 0.0)
    rig.log.add(Step(0, flagger.phase, "100/0", f"{on_canary}/{tally.total} (0%)",
                     note="route created; canary scaled to zero, no endpoints"))
    await new_revision()
    flagger.phase = "Progressing"  # checkCanaryStatus: a new revision was detected
    threshold = flagger.analysis["threshold"]
    iterations = 0
    for iteration in range(1, MAX_INTERVALS + 1):
        primary, canary = await flagger.get_routes()
        if flagger.phase == "Promoting":
            await write_and_observe(flagger, rig, iteration, 100, 0, canary_pods(),
                                    note="routing all traffic to primary")
            flagger.phase = "Finalising"
            continue
        if flagger.phase == "Finalising":
            await scale_canary_to_zero()
            flagger.phase = "Succeeded"
            rig.log.add(Step(iteration, "Succeeded", "", note="canary scaled to zero"))
            return figures
        if flagger.failed_checks >= threshold:
            before = rig.kube.store.rv
            await flagger.set_routes(100, 0)
            seconds = await rig.serving({flagger.primary: 100, flagger.canary_svc: 0})
            kind = "HTTPRoute" if flagger.provider.startswith("gatewayapi") else "TrafficSplit"
            events = [e for e in rig.kube.store.history
                      if e.rv > before and e.info.kind == kind and e.obj["spec"] != (
                          e.old or {}).get("spec")]
            figures = {"rollback_seconds": seconds, "rollback_spec_events": len(events)}
            tally, on_canary = await rig.traffic(canary_pods(), 0.0)
            rig.log.add(Step(iteration, "Failed", "100/0",
                             f"{on_canary}/{tally.total} (0%)",
                             note=f"rollback: served {seconds * 1000:.0f} ms after the "
                                  f"write, {len(events)} watch event"))
            await scale_canary_to_zero()
            flagger.phase = "Failed"
            return figures
        queries = ""
        if canary > 0 or iterations > 0:
            ok, queries = await analyse(flagger, rig, metrics)
            if not ok:
                flagger.failed_checks += 1
                rig.log.add(Step(iteration, "Progressing", "", queries=queries,
                                 note=f"halt: failed checks {flagger.failed_checks}"))
                await rig.traffic(canary_pods(), canary / 100)  # the interval's traffic
                await rig.scraped()
                continue
        iterations += 1
        if canary < flagger.analysis["maxWeight"]:
            step = flagger.next_weight(canary) - canary
            await write_and_observe(flagger, rig, iteration, primary - step, canary + step,
                                    canary_pods(), queries=queries)
        else:
            await promote()
            flagger.phase = "Promoting"
            rig.log.add(Step(iteration, "Promoting", "", queries=queries,
                             note="primary's pods replaced by the canary's version"))
    raise AssertionError(f"the canary neither succeeded nor failed in {MAX_INTERVALS} "
                         "intervals")


async def write_and_observe(flagger: Flagger, rig: Rig, iteration: int, primary: int,
                            canary: int, canary_pods: set[str], queries: str = "",
                            note: str = "") -> None:
    await flagger.set_routes(primary, canary)
    seconds = await rig.serving({flagger.primary: primary, flagger.canary_svc: canary})
    await rig.series_started(canary_pods if canary else set())
    tally, on_canary = await rig.traffic(canary_pods, canary / (primary + canary))
    rig.log.add(Step(iteration, flagger.phase, f"{primary}/{canary}",
                     f"{on_canary}/{tally.total} ({on_canary / tally.total:.1%})",
                     queries, note or f"served after {seconds * 1000:.0f} ms"))
    await rig.scraped()


@contextlib.asynccontextmanager
async def running(kube: FakeKube, pods: Pods, directory: Path, host: str, title: str,
                  extra_config: str = "", prometheus: bool = True) -> AsyncIterator[Rig]:
    """pyproxy against the fake API server (namespace ``test``), a Prometheus scraping its
    admin port (unless ``prometheus`` is false: nothing queries it), and a steady load."""
    config = write_config(directory, kube, namespaces=(NS,), extra=extra_config)
    proxy = await start_proxy(config)
    prom: Prometheus | None = None
    try:
        if prometheus:
            prom = await asyncio.to_thread(Prometheus, [f"127.0.0.1:{proxy.admin_port}"],
                                           SCRAPE_INTERVAL)
            await asyncio.to_thread(prom.wait_for_targets_up)
        print(f"\n[{title}]", flush=True)
        # Flagger's load tester: steady traffic all along, as its tutorials run it (`hey`
        # from the loadtester webhook), so every rate() window has requests in it.
        async with SteadyLoad(proxy.url + "/", LOAD_RATE, headers={"Host": host}) as load:
            yield Rig(kube, pods, proxy, prom, host, Log(title))
        print(f"  load tester: {dict(load.tally.statuses)} {load.tally.errors[:3]}")
    finally:
        if prom is not None:
            await asyncio.to_thread(prom.stop)
        await stop_proxy(proxy)
        await pods.close()
