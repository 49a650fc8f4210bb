"""Composition root: load the config, start the listener and the admin, handle signals.

``run_server`` is what ``pyproxy run`` calls; with ``--workers N`` the supervisor
(``workers/supervisor.py``) starts N processes that each call ``run_worker``. Lifecycle
(docs/operations.md): SIGTERM turns /readyz 503 at once, keeps serving for ``drain_delay``
so load balancers notice, then stops accepting, lets in-flight requests finish for up to
``drain_timeout`` and exits 0. SIGHUP, ``POST /api/v1/reload`` and file changes reload the
config; an invalid one is rejected whole and the last good one keeps serving.

A worker differs from the single process in a few places only: it binds the listener with
``SO_REUSEPORT`` (the kernel spreads connections over the workers), it keeps run-time state
in step through the state file (``workers/state_file.py``), and only the leader (worker 0)
serves the public admin, runs canaries and merges the others' metrics
(``workers/peers.py``); the others serve a read-only admin on a private loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import signal
import ssl
import sys
from collections.abc import Callable, Sequence

import uvloop

from pyproxy import compiled
from pyproxy.access_log import AccessLog
from pyproxy.admin.api import build_admin_app, check_admin_binding, start_admin
from pyproxy.canary.analysis import CanaryState
from pyproxy.canary.controller import CanaryController
from pyproxy.config.assemble import assemble
from pyproxy.config.document import Document
from pyproxy.config.load import ConfigInvalid, LoadedConfig, read_documents
from pyproxy.config.model import Address, Config, ListenerTLS
from pyproxy.control import ConfigOverrides, ProxyControl
from pyproxy.discovery.dns import RESOLVE_TIMEOUT, DnsWatcher
from pyproxy.discovery.kubernetes.translate import settings_documents, with_kubernetes
from pyproxy.engine.server import Listener
from pyproxy.metrics.linkerd import backend_workloads
from pyproxy.metrics.stats import Stats
from pyproxy.port_in_use import is_address_in_use, port_in_use_message
from pyproxy.proxy import Proxy
from pyproxy.reload import watch
from pyproxy.runtime import Runtime
from pyproxy.tasks import TaskGroup
from pyproxy.workers.peers import Peers, register
from pyproxy.workers.state_file import StateFile, StateSync

logger = logging.getLogger("pyproxy")

# What getsockname() gives for a TCP socket: (host, port), or for IPv6 (host, port, flow, scope)
SocketAddress = tuple[str | int, ...]


def _parse_address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return Address(host.strip("[]") or "0.0.0.0", int(port))


@dataclasses.dataclass(frozen=True)
class Worker:
    """One of the N processes of ``pyproxy run --workers N`` (started by ``supervisor``)."""

    index: int  # 0 is the leader: the public admin, the canaries, the state file's writer
    count: int
    state_dir: str
    supervisor: int  # its pid: a worker whose supervisor is gone stops

    @property
    def is_leader(self) -> bool:
        return self.index == 0


@dataclasses.dataclass(frozen=True)
class Startup:
    """What is checked before anything binds: the config as it will serve."""

    loaded: LoadedConfig
    config: Config
    overrides: ConfigOverrides  # --listen / --admin / --kubernetes: they outlive reloads
    listener_tls: ListenerCertificate | None
    documents: tuple[Document, ...] = ()  # the files' documents (in-cluster mode reuses them)


def prepare(paths: Sequence[str], *, listen: str | None = None,
            admin: str | None = None, kubernetes: bool = False) -> Startup | int:
    """Load and check the config (and the listener certificate); on a problem, print it and
    return the exit code (2). The supervisor of ``--workers N`` runs this before any worker
    starts, each worker again.

    In in-cluster mode (``kubernetes:`` in a file, or ``--kubernetes``) only the files'
    settings are checked here: their routes and services may name Kubernetes Services,
    known once the API has been read (docs/kubernetes-combining.md)."""
    try:
        files, documents, digest = read_documents(paths)
        in_cluster = kubernetes or any(
            isinstance(d.value, dict) and d.value.get("kubernetes") is not None
            and "apiVersion" not in d.value for d in documents)
        config, warnings = assemble(settings_documents(documents) if in_cluster else documents,
                                    os.environ)
        if in_cluster:  # the routes and services come with the API's objects
            warnings = tuple(w for w in warnings if "no routes and no services" not in w.message)
        loaded = LoadedConfig(config, warnings, tuple(files), digest)
    except ConfigInvalid as invalid:
        print("pyproxy: invalid configuration:", file=sys.stderr)
        for issue in invalid.issues:
            print(f"  {issue}", file=sys.stderr)
        return 2
    for warning in loaded.warnings:
        logger.warning("config: %s", warning)

    overrides: ConfigOverrides = {}
    if listen:
        overrides["listen"] = _parse_address(listen)
    if admin:
        overrides["admin"] = dataclasses.replace(loaded.config.admin, listen=_parse_address(admin))
    in_cluster_settings = with_kubernetes(loaded.config.kubernetes, kubernetes)
    if kubernetes and in_cluster_settings is not None:
        overrides["kubernetes"] = in_cluster_settings
    config = dataclasses.replace(loaded.config, **overrides) if overrides else loaded.config
    try:
        check_admin_binding(config.admin.listen.host, config.admin.token)
    except ValueError as exc:
        print(f"pyproxy: {exc}", file=sys.stderr)
        return 2
    listener_tls = None
    if config.tls is not None:
        try:
            listener_tls = ListenerCertificate(config.tls)
        except (OSError, ssl.SSLError) as exc:
            print(f"pyproxy: cannot load the listener certificate: {exc}", file=sys.stderr)
            return 2
    return Startup(loaded, config, overrides, listener_tls, tuple(documents))


async def serve(paths: Sequence[str], *, listen: str | None = None, admin: str | None = None,
                started: asyncio.Future[tuple[SocketAddress, SocketAddress | None]] | None = None,
                rng: random.Random | None = None,
                state_dir: str | None = None, worker: Worker | None = None,
                kubernetes: bool = False) -> int:
    """Run until SIGTERM/SIGINT (or cancellation); returns the process exit code.
    ``state_dir``: keep run-time state in a state file there; ``worker``: run as one of
    ``--workers N`` (its ``state_dir`` is the supervisor's); ``kubernetes``: in-cluster
    mode even without a ``kubernetes:`` block."""
    startup = prepare(paths, listen=listen, admin=admin, kubernetes=kubernetes)
    if isinstance(startup, int):
        return startup
    loaded, config, overrides = startup.loaded, startup.config, startup.overrides
    listener_tls = startup.listener_tls
    if worker is not None:
        state_dir = worker.state_dir
    leader = worker is None or worker.is_leader

    loop = asyncio.get_running_loop()
    runtime = Runtime()
    runtime.swap(runtime.compile(config))
    stats = Stats()
    stats.weights_provider = runtime.backend_weights
    stats.ejections_provider = runtime.ejections
    stats.workloads_provider = lambda: backend_workloads(runtime.current.config)
    stats.linkerd_compat = config.metrics.linkerd_compat
    stats.record_reload(True, runtime.generation)
    access_log = AccessLog(config.access_log.format, shared=worker is not None)
    proxy = Proxy(runtime, stats, access_log, rng=rng)
    listener = Listener(proxy.handle, timeouts=config.timeouts, limits=config.limits,
                        scheme="https" if listener_tls else "http", serve_now=proxy.serve_now)
    listener.on_reject = stats.record_rejected
    control = ProxyControl(paths, loaded, runtime, stats, listener, overrides)
    _share_state(control, state_dir, leader)
    peers = None
    if worker is not None and leader:
        peers = Peers(worker.state_dir, worker.count)
        stats.windows.peers = peers.windows
    tasks = TaskGroup()
    # A first round of DNS before serving, bounded: a name that does not resolve yet is
    # connected to by name until it does (docs/operations.md, DNS discovery).
    control.dns = DnsWatcher(runtime)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(control.dns.step(), RESOLVE_TIMEOUT)

    try:
        server = await loop.create_server(
            listener.protocol_factory, config.listen.host, config.listen.port,
            reuse_address=True, reuse_port=worker is not None, backlog=2048,
            ssl=listener_tls.context if listener_tls else None)
    except OSError as exc:
        if is_address_in_use(exc):  # usually an earlier pyproxy, running or draining
            print(await asyncio.to_thread(port_in_use_message, "listen", config.listen,
                                          config.admin.listen), file=sys.stderr)
            return 2
        print(f"pyproxy: cannot listen on {config.listen}: {exc}", file=sys.stderr)
        return 1
    # The leader (or the only process) serves the admin where configured; any other worker
    # privately, for the leader to merge its metrics and windows.
    admin_address = config.admin.listen if leader else Address("127.0.0.1", 0)
    try:
        admin_runner = await start_admin(
            build_admin_app(control, config.admin.token, peers=peers, read_only=not leader),
            admin_address.host, admin_address.port)
    except OSError as exc:
        server.close()
        if leader and is_address_in_use(exc):
            print(await asyncio.to_thread(port_in_use_message, "admin", admin_address,
                                          admin_address), file=sys.stderr)
            return 2
        print(f"pyproxy: cannot listen on admin {admin_address}: {exc}", file=sys.stderr)
        return 1
    admin_bound = admin_runner.addresses[0] if admin_runner.addresses else None
    if worker is not None and not leader:
        assert admin_bound is not None  # a bound TCP server has an address
        register(worker.state_dir, worker.index, *admin_bound[:2])

    stop = loop.create_future()

    def request_stop(signame: str) -> None:
        if not stop.done():
            logger.info("%s: draining", signame)
            stop.set_result(signame)

    for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
        loop.add_signal_handler(sig, request_stop, name)
    loop.add_signal_handler(signal.SIGHUP, lambda: tasks.spawn(_sighup(control), "sighup-reload"))
    if config.kubernetes is not None:
        # Routes and endpoints from the API; /readyz is 503 until every kind is synced.
        # Imported here: kubernetes_asyncio is only loaded in in-cluster mode.
        from pyproxy.discovery.kubernetes.provider import KubernetesProvider

        provider = KubernetesProvider(config.kubernetes, control, paths=paths,
                                      documents=startup.documents, digest=loaded.digest)
        control.source = provider
        stats.kubernetes_provider = provider.metrics
        tasks.spawn(provider.run(), "kubernetes")
        # Every replica follows the objects' run-time state; the Lease holder writes status
        # and runs the canaries.
        from pyproxy.discovery.kubernetes.leader import Leadership, identity

        # With --workers N each process is a candidate of its own: one process leads.
        who = identity() if worker is None else f"{identity()}-w{worker.index}"
        tasks.spawn(Leadership(provider, control, name=who).run(), "kubernetes-leader")
    if paths:
        tasks.spawn(watch(paths, control.reload), "config-watch")
    tasks.spawn(_tick(runtime, listener_tls), "tick")
    tasks.spawn(control.dns.run(), "dns-discovery")
    if control.canaries is not None and config.kubernetes is None:
        # In-cluster mode: only the Lease holder runs canaries (discovery/kubernetes/leader.py)
        tasks.spawn(control.canaries.run(), "canaries")
    if control.shared is not None:
        tasks.spawn(control.shared.run(), "state-sync")
    if peers is not None:
        tasks.spawn(peers.run(), "peer-windows")
    if worker is not None:
        tasks.spawn(_watch_supervisor(worker.supervisor, request_stop), "supervisor-watch")

    control.serving = True
    bound = server.sockets[0].getsockname()
    logger.info("pyproxy listening on %s:%s, admin on %s%s", bound[0], bound[1],
                Address(*admin_bound[:2]) if admin_bound else admin_address,
                "" if leader else " (private, read-only)")
    if compiled.is_compiled():
        logger.info("hot path: %s", compiled.describe())
    else:
        logger.warning("pyproxy runs %s", compiled.describe())
    if started is not None and not started.done():
        started.set_result((bound, admin_bound))
    try:
        signame = await stop
    except asyncio.CancelledError:
        signame = "cancelled"
    # SIGTERM is an orchestrator's stop: stay in rotation for drain_delay so load balancers
    # notice /readyz. Ctrl-C is a person at a terminal: stop accepting at once.
    await _drain(server, listener, runtime.current.config, delay=signame == "SIGTERM")
    await tasks.cancel_all()
    await admin_runner.cleanup()
    if peers is not None:
        await peers.aclose()
    await runtime.aclose()
    access_log.close()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(sig)
    return 0


def _share_state(control: ProxyControl, state_dir: str | None, leader: bool) -> None:
    """Give the proxy its state file (with a state directory) and its canaries (the leader):
    run-time state from an earlier run or the other workers is applied before serving, and
    the leader writes the file after every change — its own, the canaries'."""
    runtime = control.runtime
    saved_canaries: dict[str, CanaryState] = {}
    if state_dir is not None:
        control.shared = StateSync(StateFile(state_dir), runtime, leader=leader,
                                   reload=control.reload)
        saved_canaries = control.shared.load().canaries
    if not leader:
        return  # canaries run in the leader only; their weights reach here through the file
    control.canaries = CanaryController(runtime, control.stats, saved=saved_canaries)
    if control.shared is not None:
        control.shared.canaries = control.canaries.export
        runtime.overrides.on_change = control.canaries.on_change = control.shared.save
        control.shared.save()  # what no longer fits the config is gone from the file too


async def _watch_supervisor(supervisor: int, stop: Callable[[str], None]) -> None:
    """A worker whose supervisor is gone (killed outright) stops rather than serve alone:
    nothing would restart it or tell it to drain."""
    # Polled: nothing signals the death of a parent to a child (no event to wait on).
    while os.getppid() == supervisor:  # noqa: ASYNC110
        await asyncio.sleep(1.0)
    stop("supervisor gone")


async def _sighup(control: ProxyControl) -> None:
    logger.info("SIGHUP: reloading the config")
    result = await control.reload()
    logger.info("SIGHUP reload: %s (generation %d)", result["result"], result["generation"])


async def _tick(runtime: Runtime, listener_tls: ListenerCertificate | None) -> None:
    """Once-a-second work off the request path: ejected endpoints return, faults expire,
    a rotated listener certificate is picked up."""
    while True:
        await asyncio.sleep(1.0)
        runtime.tick()
        if listener_tls is not None:
            listener_tls.reload_if_changed()


class ListenerCertificate:
    """The listener's TLS context. Certificate files are re-read when they change: new
    handshakes use the new certificate, established connections keep theirs. A broken new
    pair is logged and the old one keeps serving."""

    def __init__(self, tls: ListenerTLS):
        self.tls = tls
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(tls.cert, tls.key)
        self._stamp = self._files_stamp()

    def _files_stamp(self) -> tuple[tuple[int, int], ...] | None:
        try:
            return tuple((os.stat(p).st_mtime_ns, os.stat(p).st_size)
                         for p in (self.tls.cert, self.tls.key))
        except OSError:
            return None

    def reload_if_changed(self) -> None:
        stamp = self._files_stamp()
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self.context.load_cert_chain(self.tls.cert, self.tls.key)
            logger.info("listener certificate reloaded from %s", self.tls.cert)
        except (OSError, ssl.SSLError) as exc:
            logger.error("listener certificate reload failed, keeping the old one: %s", exc)


async def _drain(server: asyncio.AbstractServer, listener: Listener, config: Config, *,
                 delay: bool) -> None:
    """Not ready at once; keep accepting for drain_delay; then finish in-flight requests."""
    listener.draining = True
    if delay:
        await asyncio.sleep(config.timeouts.drain_delay)
    server.close()
    listener.close_idle()
    deadline = asyncio.get_running_loop().time() + config.timeouts.drain_timeout
    while listener.in_flight() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        listener.close_idle()
    for conn in list(listener.connections):
        conn.close()
    logger.info("drained; %d requests still in flight were cut", listener.in_flight())


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run_server(paths: Sequence[str], *, listen: str | None = None, admin: str | None = None,
               state_dir: str | None = None, kubernetes: bool = False) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT)
    return uvloop.run(serve(paths, listen=listen, admin=admin, state_dir=state_dir,
                            kubernetes=kubernetes))


def run_worker(paths: Sequence[str], worker: Worker, *, listen: str | None = None,
               admin: str | None = None, kubernetes: bool = False) -> int:
    """One worker process of ``--workers N``; its log lines say which."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format=LOG_FORMAT.replace("%(name)s", f"%(name)s worker {worker.index}"))
    return uvloop.run(serve(paths, listen=listen, admin=admin, worker=worker,
                            kubernetes=kubernetes))
