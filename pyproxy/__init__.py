"""pyproxy: a sidecar-free L7 routing proxy."""

__version__ = "0.1.0"
