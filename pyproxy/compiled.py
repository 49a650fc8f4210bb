"""The compiled hot path: which modules mypyc compiles, and whether this process runs them.

``pip install .`` (and ``pip install -e .``) compiles the modules in ``MODULES`` with mypyc
(setup.py reads the list from this file): the same Python source, type-checked by mypy, turned
into a C extension beside each ``.py``. Python's import system prefers the extension, so
nothing else in pyproxy knows which build it runs. Three things select the pure-Python source
instead, module by module the same for all of them (they call each other natively, so a mix
of compiled and source modules would run old code without saying so):

- ``PYPROXY_PURE_PYTHON=1`` in the environment (a comparison, a debugger, a profiler that
  must see Python frames);
- an extension older than its source, as after editing a module of an editable install: the
  edit wins, and start-up says to rebuild (``pip install -e .``);
- no extensions at all, when compiling was skipped or failed at install time.

``describe()`` says which of these holds; ``pyproxy run`` and ``pyproxy demo`` log it at
start-up, and ``pyproxy --version`` prints it. See docs/performance.md.

This module must import nothing from pyproxy: setup.py loads it before pyproxy is built.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# The request path, and nothing else (compiling costs install time; code that runs once per
# config or per scrape gains nothing): the engine (sockets and HTTP/1.1 framing), the fast
# path and the pipeline it drives, what a request meets on the way (route table and matchers,
# fault draw, split, endpoint pick, circuit breaker, the upstream attempt and its headers),
# the message types, the outcome record and the counters it lands in.
MODULES = (
    "pyproxy.engine.pool",
    "pyproxy.engine.server",
    "pyproxy.engine.timer",
    "pyproxy.engine.wire",
    "pyproxy.fast_path",
    "pyproxy.filters.fault",
    "pyproxy.messages",
    "pyproxy.metrics.stats",
    "pyproxy.metrics.windows",
    "pyproxy.outcome",
    "pyproxy.proxy",
    "pyproxy.resilience.breaker",
    "pyproxy.routing.matchers",
    "pyproxy.routing.paths",
    "pyproxy.routing.table",
    "pyproxy.runtime",
    "pyproxy.traffic.balancer",
    "pyproxy.traffic.split",
    "pyproxy.upstream.attempt",
    "pyproxy.upstream.forwarding",
)
# mypyc puts the code of all MODULES into one shared library inside the package (the
# per-module extensions are small shims that load it).
SHARED_LIBRARY = "pyproxy.compiled_hot_path__mypyc"
PURE_ENV = "PYPROXY_PURE_PYTHON"

_ROOT = Path(__file__).resolve().parent.parent  # the directory that holds the package


def _source(module: str, root: Path = _ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def _extension(module: str, root: Path) -> Path | None:
    """The built extension of ``module`` beside its source, if there is one."""
    source = _source(module, root)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = source.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return None


def _is_checkout(root: Path) -> bool:
    """Whether ``root`` is pyproxy's source tree. Its pyproject.toml must name pyproxy: a
    site-packages may hold another distribution's (kubernetes_asyncio 36.1 installs one)."""
    try:
        with (root / "pyproject.toml").open("rb") as file:
            project = tomllib.load(file).get("project")
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return isinstance(project, dict) and project.get("name") == "pyproxy"


def why_pure(environ: Mapping[str, str], root: Path = _ROOT) -> str | None:
    """None when the compiled modules under ``root`` are to be used, else why not."""
    if environ.get(PURE_ENV, "") not in ("", "0"):
        return f"{PURE_ENV}={environ[PURE_ENV]} is set"
    built = {m: _extension(m, root) for m in (*MODULES, SHARED_LIBRARY)}
    missing = [m for m, ext in built.items() if ext is None]
    if len(missing) == len(built):
        return "not compiled at install time: no C compiler, or compiling failed"
    if missing:
        return f"partly compiled ({', '.join(missing)} missing): reinstall to compile"
    # Only a source checkout (an editable install) is edited in place; an installed wheel's
    # file times say when pip unpacked it, in no useful order.
    if _is_checkout(root):
        for module in MODULES:
            source, ext = _source(module, root), built[module]
            if ext is not None and source.stat().st_mtime > ext.stat().st_mtime:
                return (f"{source.relative_to(root)} changed after it was compiled: "
                        "`pip install -e .` compiles it again")
    return None


class _SourceFirst:
    """A meta path finder that loads ``MODULES`` from their ``.py`` files, skipping the
    extension the path finder would otherwise prefer."""

    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if name not in MODULES:
            return None
        return importlib.util.spec_from_file_location(name, _source(name))


_REASON = why_pure(os.environ)
if _REASON is not None and not any(isinstance(f, _SourceFirst) for f in sys.meta_path):
    sys.meta_path.insert(0, _SourceFirst())


def is_compiled() -> bool:
    """Whether this process runs the compiled hot path."""
    return _REASON is None


def describe() -> str:
    """One line for start-up and ``pyproxy --version``."""
    if _REASON is None:
        return f"compiled hot path (mypyc, {len(MODULES)} modules)"
    return f"uncompiled, pure Python ({_REASON})"
