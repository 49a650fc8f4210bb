"""Which build runs (pyproxy/compiled.py), and the install that never fails for want of a
compiler (setup.py). The whole suite runs on both builds in CI; these pin the switch itself."""

from __future__ import annotations

import os
import runpy
import sysconfig
from pathlib import Path

import pytest
from setuptools import Distribution, Extension

from pyproxy import compiled

REPO = Path(__file__).resolve().parents[2]
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")


def _tree(root: Path, *, extensions: bool = True, checkout: bool = True) -> Path:
    """A package tree with every hot-path source and, if asked, an extension beside each."""
    if checkout:
        (root / "pyproject.toml").write_text('[project]\nname = "pyproxy"\n')
    for module in compiled.MODULES:
        source = root.joinpath(*module.split(".")).with_suffix(".py")
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("")
        os.utime(source, (1_000, 1_000))
        if extensions:
            source.with_suffix(SUFFIX).write_bytes(b"")
    if extensions:
        shared = root.joinpath(*compiled.SHARED_LIBRARY.split(".")).with_suffix(SUFFIX)
        shared.write_bytes(b"")
    return root


def test_a_complete_build_runs_compiled(tmp_path):
    assert compiled.why_pure({}, _tree(tmp_path)) is None


@pytest.mark.parametrize("value", ["1", "yes"])
def test_the_environment_variable_selects_pure_python(tmp_path, value):
    reason = compiled.why_pure({"PYPROXY_PURE_PYTHON": value}, _tree(tmp_path))
    assert reason == f"PYPROXY_PURE_PYTHON={value} is set"


def test_zero_or_empty_leaves_the_compiled_build(tmp_path):
    root = _tree(tmp_path)
    assert compiled.why_pure({"PYPROXY_PURE_PYTHON": "0"}, root) is None
    assert compiled.why_pure({"PYPROXY_PURE_PYTHON": ""}, root) is None


def test_no_extensions_means_compiling_was_skipped_or_failed(tmp_path):
    reason = compiled.why_pure({}, _tree(tmp_path, extensions=False))
    assert reason is not None and reason.startswith("not compiled at install time")


def test_a_missing_piece_is_named_and_nothing_compiled_is_used(tmp_path):
    root = _tree(tmp_path)
    root.joinpath("pyproxy", "proxy").with_suffix(SUFFIX).unlink()
    reason = compiled.why_pure({}, root)
    assert reason == "partly compiled (pyproxy.proxy missing): reinstall to compile"
    shared = root.joinpath(*compiled.SHARED_LIBRARY.split(".")).with_suffix(SUFFIX)
    shared.unlink()  # the shims without their library would fail at import
    assert "pyproxy.compiled_hot_path__mypyc" in (compiled.why_pure({}, root) or "")


def test_an_edited_source_in_a_checkout_wins_over_its_stale_extension(tmp_path):
    root = _tree(tmp_path)
    edited = root / "pyproxy" / "routing" / "table.py"
    os.utime(edited, None)  # now: newer than its extension (which is also "now" - 1 s)
    extension = edited.with_suffix(SUFFIX)
    os.utime(extension, (edited.stat().st_mtime - 1, edited.stat().st_mtime - 1))
    assert compiled.why_pure({}, root) == (
        "pyproxy/routing/table.py changed after it was compiled: "
        "`pip install -e .` compiles it again")


def test_an_installed_wheel_ignores_file_times(tmp_path):
    root = _tree(tmp_path, checkout=False)
    os.utime(root / "pyproxy" / "proxy.py", None)
    assert compiled.why_pure({}, root) is None


def test_another_distributions_pyproject_does_not_make_site_packages_a_checkout(tmp_path):
    # kubernetes_asyncio 36.1's wheel installs its pyproject.toml into site-packages.
    root = _tree(tmp_path, checkout=False)
    (root / "pyproject.toml").write_text('[project]\nname = "kubernetes_asyncio"\n')
    os.utime(root / "pyproxy" / "proxy.py", None)
    assert compiled.why_pure({}, root) is None


def test_describe_says_which_build_runs():
    text = compiled.describe()
    if compiled.is_compiled():
        assert text == f"compiled hot path (mypyc, {len(compiled.MODULES)} modules)"
    else:
        assert text.startswith("uncompiled, pure Python (")


def test_every_listed_module_exists_and_is_part_of_the_package():
    for module in compiled.MODULES:
        assert REPO.joinpath(*module.split(".")).with_suffix(".py").is_file(), module


def _setup_module() -> dict[str, object]:
    # run_name other than __main__: the file defines its pieces without calling setup().
    return runpy.run_path(str(REPO / "setup.py"), run_name="pyproxy_setup_under_test")


def test_a_failing_compiler_leaves_a_pure_python_install(tmp_path, capsys):
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C;\n")
    good = tmp_path / "good.c"  # built first, then removed with the rest
    good.write_text('#include <Python.h>\nPyMODINIT_FUNC PyInit_good(void) { return NULL; }\n')
    distribution = Distribution({
        "name": "probe",
        "ext_modules": [Extension("good", [str(good)]), Extension("broken", [str(broken)])],
        "cmdclass": {"build_ext": _setup_module()["OptionalBuildExt"]},
    })
    command = distribution.get_command_obj("build_ext")
    command.build_lib = str(tmp_path / "lib")
    command.build_temp = str(tmp_path / "temp")
    distribution.run_command("build_ext")  # must not raise
    assert list(tmp_path.rglob("*" + SUFFIX)) == []  # good's extension went with broken's
    assert command.get_outputs() == []
    assert "compiling the hot path failed" in capsys.readouterr().err


def test_compiling_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("PYPROXY_COMPILE", "0")
    assert _setup_module()["_extensions"]() == []  # type: ignore[operator]
