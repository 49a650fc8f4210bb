"""Every process the bench starts, each in its own session, so it (and its children) can be
killed by the process group id we created; nothing is ever killed by name."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
from pathlib import Path

from common import log


def raise_fd_limit(want: int = 65536) -> tuple[int, int]:
    """Raise this process's soft limit on open files towards want (never above the hard limit),
    for it and every process it starts: 800 connections (T7) need more than the common 1024
    soft limit in wrk and in the target. The (soft, hard) limits now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        soft = ceiling
    return soft, hard


def pinned_to(cpu: int | None) -> None:
    """For preexec_fn: run the child on one core (None: anywhere)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


class Procs:
    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes] | subprocess.Popen[str]] = {}

    def start(self, name: str, argv: list[str], cpu: int | None, cwd: Path | None = None,
              env: dict[str, str] | None = None,
              stdout: Path | None = None) -> subprocess.Popen[bytes]:
        """Start argv on core cpu, output to logs/<name>.log; with stdout, its standard output
        to that file instead (truncated), standard error still to the log."""
        with contextlib.ExitStack() as files:
            log_file = files.enter_context(open(self.logdir / f"{name}.log", "ab"))
            out = files.enter_context(open(stdout, "wb")) if stdout else log_file
            p = subprocess.Popen(argv, stdout=out,
                                 stderr=log_file if stdout else subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                                 preexec_fn=lambda: pinned_to(cpu), start_new_session=True)
        self.procs[name] = p
        return p

    def stop(self, name: str, grace: float = 5.0) -> None:
        p = self.procs.pop(name, None)
        if p is None:
            return
        kill_group(p, signal.SIGTERM)
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        kill_group(p, signal.SIGKILL)  # stragglers of the group (nginx workers), then the leader
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log(f"warning: {name} (pid {p.pid}) did not exit after SIGKILL")

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name, grace=3.0)


def kill_group(p: subprocess.Popen[bytes] | subprocess.Popen[str], sig: int) -> None:
    try:
        os.killpg(p.pid, sig)  # the group id is the pid: start_new_session=True made it so
    except (ProcessLookupError, PermissionError):
        pass
