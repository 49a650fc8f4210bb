import pytest_asyncio

from tests.integration.progressive_delivery.replay import NS
from tests.support.fake_kube import FakeKube


@pytest_asyncio.fixture
async def kube():
    """The fake API server with the replays' namespace."""
    async with FakeKube(bookmark_interval=0.5) as k:
        k.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        yield k
