"""ARCHITECTURE.md's one-way imports, checked over the source with ``ast``.

entry → edges → pipeline → effects → logic → foundation; nothing imports upward, and each
third-party library has one home.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3] / "pyproxy"

LAYERS = [
    ("foundation", ["errors", "tasks", "config.model", "messages", "outcome"]),
    ("logic", ["config", "routing", "traffic", "resilience", "upstream.forwarding", "filters",
               "canary.analysis"]),
    ("effects", ["engine", "upstream", "metrics", "access_log"]),
    ("pipeline", ["proxy", "runtime", "explain"]),
    ("edges", ["server", "supervisor", "shared_state", "control", "admin", "reload", "canary",
               "demo"]),
    ("entry", ["cli", "__main__"]),
]

# Where each third-party library may be imported (module prefixes).
HOMES = {
    "yaml": ["config.load", "demo"],
    "prometheus_client": ["metrics"],
    "watchfiles": ["reload"],
    "uvloop": ["server", "demo"],
    "httptools": ["engine"],
    "aiohttp": ["admin", "demo", "resilience.health", "canary.controller", "cli"],
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _layer(module: str) -> int:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"module {module} is in no layer: add it to LAYERS"
    return best


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def _sources():
    return [p for p in ROOT.rglob("*.py") if _module_name(p)]


def test_no_module_imports_a_higher_layer():
    violations = []
    for path in _sources():
        module = _module_name(path)
        own = _layer(module)
        for imported in _imports(path):
            if not imported.startswith("pyproxy."):
                continue
            target = imported[len("pyproxy."):]
            if _layer(target) > own:
                violations.append(f"{module} ({LAYERS[own][0]}) imports {target} "
                                  f"({LAYERS[_layer(target)][0]})")
    assert violations == []


def test_each_third_party_library_has_one_home():
    violations = []
    for path in _sources():
        module = _module_name(path)
        for imported in _imports(path):
            library = imported.split(".")[0]
            homes = HOMES.get(library)
            if homes is not None and not any(module == h or module.startswith(h + ".")
                                             for h in homes):
                violations.append(f"{module} imports {library}")
    assert violations == []


def test_aiohttp_is_never_on_the_request_path():
    for name in ("proxy", "runtime", "engine", "routing", "traffic", "filters", "upstream"):
        for path in ROOT.joinpath(*name.split(".")).parent.glob(f"{name.split('.')[-1]}*"):
            if path.suffix == ".py" or path.is_dir():
                files = [path] if path.is_file() else list(path.rglob("*.py"))
                for f in files:
                    assert not any(i.split(".")[0] == "aiohttp" for i in _imports(f)), f
