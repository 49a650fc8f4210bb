"""docs/architecture.md's import rules, checked over the source with ``ast``.

1. One way down: entry → edges → pipeline → effects → logic → foundation. A module may import
   its own layer or lower ones, never a higher one.
2. No sideways imports between logic packages: ``config``, ``routing``, ``traffic``,
   ``resilience``, ``filters``, ``upstream.forwarding`` and ``canary.analysis`` each decide
   one thing from plain values, so they meet only in the model (``config.model``) and the
   foundation. Inside its own package a logic module imports freely.
3. No import cycles among the imports a module runs when it is loaded.
4. Each third-party library has one home.

Module names are listed for the target layout and, where a module is moving, for the old
one too (marked ``old:``): both trees pass while the restructuring is merged. Once merged,
the old names can go. A module in no layer fails the first test with a message that says
where to add it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3] / "pyproxy"

# Module prefixes per layer, lowest first; the longest matching prefix decides.
LAYERS = [
    ("foundation", ["errors", "outcome", "messages", "tasks", "config.model", "compiled"]),
    ("logic", ["config", "routing", "traffic", "resilience", "filters", "upstream.forwarding",
               "canary.analysis"]),
    ("effects", ["engine", "upstream", "metrics", "access_log",
                 "filters.mirror",  # sends shadow requests: I/O, unlike the other filters
                 "resilience.health"]),  # active health checks: probes over the network
    ("pipeline", ["proxy", "fast_path", "runtime", "overrides", "explain"]),
    ("edges", ["server", "port_in_use", "workers", "control", "admin", "reload", "canary",
               "demo",
               "discovery"]),
    ("entry", ["cli", "cli_text", "__main__"]),
]

# The logic packages that must not import one another (rule 2).
LOGIC_PACKAGES = ["config", "routing", "traffic", "resilience", "filters", "upstream.forwarding",
                  "canary.analysis"]
# What every logic package may import besides itself: the model and the foundation.
SHARED_BELOW = ["config.model", "errors", "outcome", "messages", "tasks"]
# Sideways imports that exist today and are to be removed, each with what has to move.
# The lead prunes this list as the moves land; it should end empty.
KNOWN_SIDEWAYS: dict[tuple[str, str], str] = {}

# Where each third-party library may be imported (module prefixes).
HOMES = {
    "yaml": ["config.load", "demo"],
    "prometheus_client": ["metrics.exposition"],
    "watchfiles": ["reload"],
    "uvloop": ["server", "demo"],
    "httptools": ["engine"],
    "kubernetes_asyncio": ["discovery.kubernetes.client"],
    # The control plane only: health checks, canary webhooks, the leader's scrape of the
    # other workers, the demo. Never the request path (see the last test).
    "aiohttp": ["admin", "workers.peers", "demo", "resilience.health", "canary.controller",
                "cli", "discovery.kubernetes.client"],
}
# Packages and modules a request passes through: aiohttp must not be imported there.
REQUEST_PATH = ["proxy", "fast_path", "runtime", "engine", "routing", "traffic", "filters",
                "upstream"]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _layer(module: str) -> int:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if _within(module, prefix) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, (f"module {module} is in no layer: add it to LAYERS in "
                              f"{Path(__file__).name} and to docs/architecture.md")
    return best


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, absolute, at any depth (imports inside functions too)."""
    tree = ast.parse(path.read_text())
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module:
                    found.append(node.module)
                continue
            base = package[:len(package) - (node.level - 1)]
            module = ".".join(["pyproxy", *base, *([node.module] if node.module else [])])
            found.append(module)
    return found


def _own_imports(path: Path) -> list[str]:
    """The pyproxy modules ``path`` imports, without the ``pyproxy.`` prefix."""
    return [i[len("pyproxy."):] for i in _imports(path) if i.startswith("pyproxy.")]


def _load_time_imports(path: Path) -> set[str]:
    """The pyproxy modules ``path`` imports when it is loaded: its top-level statements,
    not imports inside functions (deferred on purpose) or under ``if TYPE_CHECKING:``."""
    names = {_module_name(p) for p in _sources()}
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {a.name[len("pyproxy."):] for a in node.names
                      if a.name.startswith("pyproxy.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.startswith("pyproxy."):
            module = node.module[len("pyproxy."):]
            found.add(module)
            # `from pyproxy.admin import http` imports the module pyproxy.admin.http
            found |= {f"{module}.{a.name}" for a in node.names
                      if f"{module}.{a.name}" in names}
    return {m for m in found if m in names and m != _module_name(path)}


def _sources() -> list[Path]:
    return [p for p in sorted(ROOT.rglob("*.py")) if _module_name(p)]


def _logic_package(module: str) -> str | None:
    matches = [p for p in LOGIC_PACKAGES if _within(module, p)]
    return max(matches, key=len) if matches else None


def test_no_module_imports_a_higher_layer():
    violations = []
    for path in _sources():
        module = _module_name(path)
        own = _layer(module)
        for target in _own_imports(path):
            if _layer(target) > own:
                violations.append(f"{module} ({LAYERS[own][0]}) imports {target} "
                                  f"({LAYERS[_layer(target)][0]})")
    assert violations == []


def test_logic_packages_do_not_import_each_other():
    violations = []
    for path in _sources():
        module = _module_name(path)
        if LAYERS[_layer(module)][0] != "logic":
            continue
        own = _logic_package(module)
        for target in _own_imports(path):
            if any(_within(target, shared) for shared in SHARED_BELOW):
                continue
            other = _logic_package(target)
            if other is None or other == own or LAYERS[_layer(target)][0] != "logic":
                continue
            if (module, target) in KNOWN_SIDEWAYS:
                continue
            violations.append(f"{module} ({own}) imports {target} ({other}): logic packages "
                              "meet only in config.model and the foundation")
    assert violations == []


def test_known_sideways_imports_still_exist():
    """An entry of KNOWN_SIDEWAYS whose import is gone must leave the list too."""
    present = {(_module_name(p), t) for p in _sources() for t in _own_imports(p)}
    stale = [pair for pair in KNOWN_SIDEWAYS if pair not in present]
    assert stale == []


def test_no_import_cycles():
    graph = {_module_name(p): _load_time_imports(p) for p in _sources()}
    cycles: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            cycles.append([*trail[trail.index(module):], module])
            return
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert [" → ".join(cycle) for cycle in cycles] == []


def test_each_third_party_library_has_one_home():
    violations = []
    for path in _sources():
        module = _module_name(path)
        for imported in _imports(path):
            library = imported.split(".")[0]
            homes = HOMES.get(library)
            if homes is not None and not any(_within(module, h) for h in homes):
                violations.append(f"{module} imports {library}")
    assert violations == []


def test_aiohttp_is_never_on_the_request_path():
    offenders = [_module_name(p) for p in _sources()
                 if any(_within(_module_name(p), r) for r in REQUEST_PATH)
                 and any(i.split(".")[0] == "aiohttp" for i in _imports(p))]
    assert offenders == []
