"""pyproxy: a sidecar-free L7 routing proxy."""

# First, before any module of the hot path is imported: it decides whether they load compiled
# or from source (PYPROXY_PURE_PYTHON, docs/performance.md).
from pyproxy import compiled as _compiled  # noqa: F401

__version__ = "0.1.0"
