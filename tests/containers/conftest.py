"""The container suite (``pytest -m containers``): every test here runs real containers."""

from __future__ import annotations

import pytest

from tests.containers.support import ensure_images, require_engine


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/containers/" in item.nodeid:
            item.add_marker(pytest.mark.containers)


@pytest.fixture(scope="session")
def images() -> None:
    """A running engine with pyproxy:local and the Prometheus image in it."""
    require_engine()
    ensure_images()
