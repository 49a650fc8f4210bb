"""Builds pyproxy's hot path with mypyc; everything else is in pyproject.toml.

``pip install .`` and ``pip install -e .`` compile the modules listed in
pyproxy/compiled.py into C extensions (about a minute on one core). The install never fails
for want of a compiler: if mypyc cannot be imported or gcc fails, the built pieces are
removed, a warning is printed and pyproxy installs as pure Python, which behaves the same
and says at start-up that it runs uncompiled. ``PYPROXY_COMPILE=0`` skips compiling.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
# Read the list without importing pyproxy (it is not built yet).
_COMPILED = runpy.run_path(str(HERE / "pyproxy" / "compiled.py"))


def _warn(message: str) -> None:
    print(f"\n*** pyproxy: {message}; installing the pure-Python build ***\n", file=sys.stderr)


# pip runs this file for metadata first (egg_info, dist_info) and then to build: translating
# the modules costs ~10 s each time, and only a build needs them.
_METADATA_ONLY = {"egg_info", "dist_info", "sdist"}


def _extensions() -> list[Any]:
    if os.environ.get("PYPROXY_COMPILE", "1") == "0":
        return []
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")
    if command in _METADATA_ONLY:
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        _warn(f"mypyc is not available ({exc})")
        return []
    paths = [str(Path(*m.split(".")).with_suffix(".py")) for m in _COMPILED["MODULES"]]
    try:
        # The shared library's name is "<group_name>__mypyc": inside the package, so an
        # editable install finds it where it finds the package.
        group = _COMPILED["SHARED_LIBRARY"].removesuffix("__mypyc")
        return list(mypycify(paths, opt_level="3", group_name=group))
    except (Exception, SystemExit) as exc:  # mypyc exits on code it cannot type: still install
        _warn(f"mypyc could not translate the hot path ({exc})")
        return []


class OptionalBuildExt(build_ext):
    """build_ext that falls back to pure Python instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # CompileError, LinkError, a missing Python.h ...
            self._remove_built()
            _warn(f"compiling the hot path failed ({exc})")

    def _remove_built(self) -> None:
        # The per-module extensions load one shared library: keeping some without the others
        # would fail at import, so none stays.
        for ext in self.extensions:
            for path in (Path(self.get_ext_fullpath(ext.name)),
                         HERE / Path(self.get_ext_filename(ext.name))):
                path.unlink(missing_ok=True)

    def get_outputs(self) -> list[str]:
        return [path for path in super().get_outputs() if Path(path).exists()]


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import it
    setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
