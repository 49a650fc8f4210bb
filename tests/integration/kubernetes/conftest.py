import pytest_asyncio

from tests.integration.kubernetes.cluster import Cluster
from tests.support.fake_kube import FakeKube


@pytest_asyncio.fixture
async def kube():
    async with FakeKube(bookmark_interval=0.5) as k:
        yield k


@pytest_asyncio.fixture
async def cluster(kube):
    return Cluster(kube)


@pytest_asyncio.fixture
async def backends():
    """Start echo backends ("pods") by name; all closed after the test."""
    from tests.support.backends import EchoBackend

    started = []

    async def make(*names: str) -> list[EchoBackend]:
        made = [await EchoBackend(n).start() for n in names]
        started.extend(made)
        return made

    yield make
    for b in started:
        await b.close()
