import pytest_asyncio

from tests.support.backends import EchoBackend
from tests.support.harness import InProcessProxy


@pytest_asyncio.fixture
async def echo_factory():
    """Start any number of echo backends; all are closed after the test."""
    started = []

    async def make(name: str) -> EchoBackend:
        backend = await EchoBackend(name).start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        await backend.close()


@pytest_asyncio.fixture
async def proxy_factory():
    started = []

    async def make(config, seed: int = 1) -> InProcessProxy:
        proxy = await InProcessProxy(config, seed).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        await proxy.close()
