"""The two builds in real processes: PYPROXY_PURE_PYTHON loads every hot-path module from its
source, the default loads the compiled extensions when the install built them (in CI it must
have), and start-up says which one runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pyproxy import compiled
from tests.support.harness import ProxyProcess

_PRINT_ORIGINS = (
    "import importlib, json; from pyproxy import compiled; "
    "print(json.dumps({m: importlib.import_module(m).__file__ for m in compiled.MODULES}))"
)


def _origins(**env: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    done = subprocess.run([sys.executable, "-c", _PRINT_ORIGINS], env={**environ, **env},
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def test_pure_python_is_selected_by_the_environment():
    origins = _origins(PYPROXY_PURE_PYTHON="1")
    assert {m: path.endswith(".py") for m, path in origins.items()} == \
        dict.fromkeys(compiled.MODULES, True)


def test_the_default_runs_what_the_install_compiled():
    built = compiled.why_pure({}) is None
    if os.environ.get("CI"):
        # .ci/run installs with `pip install -e .`: a silent fallback to pure Python there
        # would leave the compiled build untested.
        assert built, compiled.why_pure({})
    origins = _origins()
    assert {m: not path.endswith(".py") for m, path in origins.items()} == \
        dict.fromkeys(compiled.MODULES, built)


def test_version_says_which_build_runs():
    done = subprocess.run([sys.executable, "-m", "pyproxy", "--version"],
                          env={**os.environ, "PYPROXY_PURE_PYTHON": "1"},
                          capture_output=True, text=True, timeout=60)
    assert done.stdout == ("pyproxy 0.1.0: uncompiled, pure Python "
                           "(PYPROXY_PURE_PYTHON=1 is set)\n")


@pytest.mark.parametrize("pure", [True, False])
def test_start_up_says_which_build_runs(tmp_path, pure):
    config = tmp_path / "pyproxy.yaml"
    config.write_text("services: {app: {endpoints: [{address: 127.0.0.1:9}]}}\n"
                      "routes: [{name: all, backends: [{service: app}]}]\n")
    environ = {compiled.PURE_ENV: "1" if pure else "0"}
    proxy = ProxyProcess(config, env=environ).start()
    proxy.stop()
    log = proxy.stderr_text()
    if pure or compiled.why_pure(environ) is not None:
        assert "pyproxy runs uncompiled, pure Python (" in log
    else:
        assert f"hot path: compiled hot path (mypyc, {len(compiled.MODULES)} modules)" in log
