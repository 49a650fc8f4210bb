"""Child processes in tests: starting them with their output kept, probing them over HTTP,
waiting until they answer, and stopping them (a signal, then a kill after a grace period)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


def http(url: str, headers: dict[str, str] | None = None, method: str = "GET",
         body: bytes | None = None, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body); HTTP errors are answers too, not exceptions."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return (response.status, {k.lower(): v for k, v in response.headers.items()},
                    response.read())
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def wait_until(check: Callable[[], object], what: str, timeout: float = 15.0,
               process: subprocess.Popen[Any] | None = None) -> None:
    """Call ``check`` every 50 ms until it returns True. Anything else it returns, or the
    OSError it raises (nothing listening yet), is the state reported if ``timeout`` runs out.
    Fails at once when ``process`` exits first."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before {what}")
        try:
            last = check()
            if last is True:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def wait_status(url: str, status: int = 200, timeout: float = 15.0,
                process: subprocess.Popen[Any] | None = None) -> None:
    """Wait until GET ``url`` answers ``status``."""
    def answered() -> object:
        got = http(url, timeout=1.0)[0]
        return True if got == status else got

    wait_until(answered, f"{url} answered {status}", timeout, process)


def stop_process(process: subprocess.Popen[Any], sig: int = signal.SIGTERM,
                 timeout: float = 30.0) -> int:
    """Send ``sig``, wait up to ``timeout`` s, then kill; the exit code."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(sig)
    return wait_or_kill(process, timeout)


def wait_or_kill(process: subprocess.Popen[Any], timeout: float = 30.0) -> int:
    """The exit code of a process already asked to stop; killed after ``timeout`` s."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@dataclass
class Processes:
    """Child processes started by a test, output in ``log_dir/<name>.log``; ``stop_all``
    SIGTERMs them all first, then waits for each (killing it after 30 s)."""

    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    log_dir: Path | None = None

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              **kwargs: Any) -> subprocess.Popen[bytes]:
        def popen(stdout: IO[bytes] | int) -> subprocess.Popen[bytes]:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout,
                                    stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})}, **kwargs)

        if self.log_dir is None:
            process = popen(subprocess.DEVNULL)
        else:
            with open(self.log_dir / f"{name}.log", "wb") as log:
                process = popen(log)
        self.started.append((name, process))
        return process

    def fake_service(self, name: str, port: int, *args: str) -> subprocess.Popen[bytes]:
        return self.start(name, [sys.executable, "-m", "pyproxy", "fake-service", "--name", name,
                                 "--port", str(port), *args])

    def pyproxy(self, name: str, *args: str, env: dict[str, str] | None = None
                ) -> subprocess.Popen[bytes]:
        return self.start(name, [sys.executable, "-m", "pyproxy", *args], env=env)

    def log(self, name: str) -> str:
        if self.log_dir is None:
            return "(no logs kept)"
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else "(no log)"

    def stop_all(self) -> None:
        for _, process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in self.started:
            wait_or_kill(process)
