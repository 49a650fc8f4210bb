"""The container suite (``pytest -m containers``): every module here marks itself
``containers`` and runs real containers."""

from __future__ import annotations

import pytest

from tests.containers.support import ensure_images, require_engine


@pytest.fixture(scope="session")
def images() -> None:
    """A running engine with pyproxy:local and the Prometheus image in it."""
    require_engine()
    ensure_images()
