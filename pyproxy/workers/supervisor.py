"""``pyproxy run --workers N``: the supervisor process.

It checks the config as a single process would (an invalid one: exit 2 before any worker
starts) and that nothing listens on the listen address yet, then forks N workers
(``server.run_worker``). Each binds the listen port with ``SO_REUSEPORT``, so the kernel
spreads new connections over them; worker 0, the leader, serves the public admin API and
merges the others' metrics (``server.py``, ``workers/peers.py``); run-time state goes through
the state directory (``--state-dir``, else a temporary one removed at exit;
``workers/state_file.py``). The supervisor serves nothing itself: it waits for signals and for
workers to exit.

* A worker that exits while it should be serving (a crash, kill -9, the OOM killer) is
  started again after a short delay. The delay doubles, up to 2 s, while that worker keeps
  exiting within 5 s of its start; at the 5th such quick exit in a row the supervisor gives
  up — stops the other workers and exits 1 — because a worker that cannot start (its address
  taken, the config on disk invalid by now) would otherwise be restarted forever.
* SIGTERM and SIGINT are passed on to every worker, which drain as a single process does
  (docs/operations.md); the supervisor waits for all of them and exits 0 (1 if one did not
  exit cleanly).
* SIGHUP is passed on: every worker reloads its config.

Why fork rather than start new interpreters: the supervisor has no threads and no event loop,
which is what makes forking safe, and a worker then starts with everything already imported —
a restart takes milliseconds — and with no arguments to pass across.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from pyproxy.config.model import Address
from pyproxy.port_in_use import is_address_in_use, port_in_use_message
from pyproxy.server import LOG_FORMAT, Worker, prepare, run_worker
from pyproxy.workers.peers import clear_registry

logger = logging.getLogger("pyproxy.supervisor")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


class RestartPolicy:
    """When to start an exited worker again, and when to stop trying."""

    def __init__(self, *, quick: float = 5.0, first_delay: float = 0.25, max_delay: float = 2.0,
                 max_quick_exits: int = 5):
        self.quick = quick  # an exit this soon after the start counts against the worker
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.max_quick_exits = max_quick_exits
        self._quick_exits: dict[int, int] = {}  # worker index → quick exits in a row

    def after_exit(self, index: int, uptime: float) -> float | None:
        """Seconds to wait before starting worker ``index`` again; None: give up."""
        if uptime >= self.quick:
            self._quick_exits[index] = 0
            return self.first_delay
        exits = self._quick_exits[index] = self._quick_exits.get(index, 0) + 1
        if exits >= self.max_quick_exits:
            return None
        return min(self.max_delay, self.first_delay * 2.0 ** (exits - 1))

    def quick_exits(self, index: int) -> int:
        return self._quick_exits.get(index, 0)


@dataclass
class _Slot:
    """Worker ``index``: its process while one runs, else when to start the next."""

    index: int
    pid: int | None = None
    started: float = 0.0
    start_at: float | None = None


class Supervisor:
    """Keeps ``count`` workers running until told to stop; ``work(index)`` is what a worker
    process runs (it returns the exit code)."""

    def __init__(self, count: int, work: Callable[[int], int], *,
                 policy: RestartPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.slots = [_Slot(index) for index in range(count)]
        self._work = work
        self._policy = policy or RestartPolicy()
        self._clock = clock
        self._stopping = False
        self._gave_up = False
        self._unclean = False  # a worker did not exit cleanly while stopping
        self._wakeup: tuple[int, int] | None = None

    def run(self) -> int:
        # Signals are handled here, between waits: the C handler writes the signal's number
        # to the wakeup pipe, which the loop select()s on together with its timers.
        read_fd, write_fd = self._wakeup = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd)
        for sig in SIGNALS:
            signal.signal(sig, _numbers_only)
        try:
            for slot in self.slots:
                self._start(slot)
            while not self._stopping or any(slot.pid for slot in self.slots):
                select.select([read_fd], [], [], self._next_start_in())
                try:
                    received = os.read(read_fd, 256)
                except BlockingIOError:
                    received = b""
                for signum in received:
                    self._on_signal(signal.Signals(signum))
                self._reap()
                self._start_due()
        finally:
            signal.set_wakeup_fd(-1)
            for sig in SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            os.close(read_fd)
            os.close(write_fd)
        if self._gave_up or self._unclean:
            return 1
        logger.info("all workers stopped")
        return 0

    # ------------------------------------------------------------------ events

    def _on_signal(self, sig: signal.Signals) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            if not self._stopping:
                logger.info("%s: stopping the workers (they drain)", sig.name)
            self._stop(sig)
        elif sig == signal.SIGHUP:
            logger.info("SIGHUP: every worker reloads its config")
            self._signal_all(sig)

    def _stop(self, sig: signal.Signals) -> None:
        self._stopping = True
        for slot in self.slots:
            slot.start_at = None
        self._signal_all(sig)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            slot.pid = None
            code = os.waitstatus_to_exitcode(status)
            how = (f"exited with code {code}" if code >= 0
                   else f"was killed by {signal.Signals(-code).name}")
            if self._stopping:
                logger.info("worker %d (pid %d) %s", slot.index, pid, how)
                self._unclean |= code != 0
                continue
            uptime = self._clock() - slot.started
            delay = self._policy.after_exit(slot.index, uptime)
            if delay is None:
                logger.error("worker %d exited %d times in a row within %.0fs of starting "
                             "(last: pid %d %s); giving up, stopping the other workers",
                             slot.index, self._policy.quick_exits(slot.index),
                             self._policy.quick, pid, how)
                self._gave_up = True
                self._stop(signal.SIGTERM)
                continue
            logger.warning("worker %d (pid %d) %s after %.1fs; starting it again in %.2fs",
                           slot.index, pid, how, uptime, delay)
            slot.start_at = self._clock() + delay

    def _start_due(self) -> None:
        now = self._clock()
        for slot in self.slots:
            if slot.start_at is not None and slot.start_at <= now:
                self._start(slot)

    def _next_start_in(self) -> float | None:
        due = [slot.start_at for slot in self.slots if slot.start_at is not None]
        return max(0.0, min(due) - self._clock()) if due else None

    def _signal_all(self, sig: signal.Signals) -> None:
        for slot in self.slots:
            if slot.pid is not None:
                try:
                    os.kill(slot.pid, sig)
                except ProcessLookupError:
                    pass  # exited: reaped on the next round

    # ------------------------------------------------------------------ processes

    def _start(self, slot: _Slot) -> None:
        sys.stdout.flush()  # or the child would write the parent's buffered output again
        sys.stderr.flush()
        # Signals wait until the child has put its own handlers in place: one arriving in
        # between must not run the supervisor's handler in the child.
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._child(slot.index)  # never returns
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        slot.pid, slot.started, slot.start_at = pid, self._clock(), None
        logger.info("worker %d started (pid %d)", slot.index, pid)

    def _child(self, index: int) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            if self._wakeup is not None:  # set while the supervisor runs, which forks us
                os.close(self._wakeup[0])
                os.close(self._wakeup[1])
            for sig in SIGNALS:  # until the worker's event loop installs its own
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            code = self._work(index)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            # Not sys.exit: the supervisor's frames (and its cleanup) must not run here.
            os._exit(code)


def _numbers_only(signum: int, frame: FrameType | None) -> None:
    """A Python-level handler must exist for the wakeup pipe to carry the signal."""


def check_listen_address(address: Address) -> Address:
    """Bind the listen address as a worker will, minus ``SO_REUSEPORT``: this fails when
    anything listens there — another pyproxy's workers included, which ``SO_REUSEPORT`` would
    otherwise let ours join without a word. Returns the address with port 0 resolved.
    Raises OSError."""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        address.host or None, address.port, type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(sockaddr)
        return Address(address.host, probe.getsockname()[1])


def run_workers(paths: Sequence[str], count: int, *, listen: str | None = None,
                admin: str | None = None, state_dir: str | None = None,
                kubernetes: bool = False) -> int:
    """``pyproxy run --workers N`` (N ≥ 2); returns the exit code."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT)
    startup = prepare(paths, listen=listen, admin=admin, kubernetes=kubernetes)
    if isinstance(startup, int):
        return startup
    try:
        address = check_listen_address(startup.config.listen)
    except OSError as exc:
        if is_address_in_use(exc):
            print(port_in_use_message("listen", startup.config.listen,
                                      startup.config.admin.listen), file=sys.stderr)
            return 2
        print(f"pyproxy: cannot listen on {startup.config.listen}: {exc}", file=sys.stderr)
        return 1
    # Every worker binds the same port, even when the config says 0 (any free port).
    host = f"[{address.host}]" if ":" in address.host else address.host
    listen = f"{host}:{address.port}"
    temporary = state_dir is None
    directory = tempfile.mkdtemp(prefix="pyproxy-state-") if state_dir is None else state_dir
    clear_registry(directory)
    supervisor = os.getpid()
    logger.info("starting %d workers on %s, state in %s%s", count, listen, directory,
                " (temporary)" if temporary else "")

    def work(index: int) -> int:
        return run_worker(paths, Worker(index, count, directory, supervisor), listen=listen,
                          admin=admin, kubernetes=kubernetes)

    try:
        return Supervisor(count, work).run()
    finally:
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
