"""What every part of the bench shares: where things are, which core does what, the run log,
and running a command with a time limit.

Only the standard library is used anywhere in the bench, but for metrics_scrape.py's check of
the scraped text with prometheus_client (a dependency of pyproxy, in the venv run.sh uses).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RESULTS = HERE / "results"
CONFIG_TEMPLATES = HERE / "configs"
VENV_PY = REPO / ".venv" / "bin" / "python"
CACHE = Path(os.environ.get("PYPROXY_BENCH_CACHE", Path.home() / ".cache" / "pyproxy-bench"))
# Core 0 carries the origin and wrk, core 1 the target under test (2-core machine).
LOAD_CPU = int(os.environ.get("BENCH_LOAD_CPU", "0"))
PROXY_CPU = int(os.environ.get("BENCH_PROXY_CPU", "1"))
# Where apt puts nginx/haproxy/wrk, also when the caller's PATH lacks the sbin directories.
SYS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# wrk's kinds of socket error, in the order it prints their counts.
SOCKET_ERRORS = ("connect", "read", "write", "timeout")

_log_file: Path | None = None


class Deadline(Exception):
    """Raised by SIGALRM: the hard time limit of a command was reached."""


def set_log_file(path: Path | None) -> None:
    """Also append every log line to path (results/run.log), from now on."""
    global _log_file
    _log_file = path


def log(msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, file=sys.stderr, flush=True)
    if _log_file is not None:
        with open(_log_file, "a") as f:
            f.write(line + "\n")


def run_cmd(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    """(exit code, stdout+stderr); 124 on timeout and 127 when it cannot start, like the shell."""
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        return r.returncode, r.stdout
    except subprocess.TimeoutExpired as e:
        # Captured output comes as bytes here even with text=True.
        partial = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else ""
        return 124, f"timed out after {timeout}s: {' '.join(argv)}\n{partial}"
    except OSError as e:
        return 127, str(e)


def which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":" + SYS_PATH)


def require(name: str) -> str:
    """The path of a tool that ensure_tools already found (the caller checked it is there)."""
    path = which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed")
    return path
