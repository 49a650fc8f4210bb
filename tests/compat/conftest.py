import pytest
import pytest_asyncio

from tests.compat.support import Mesh
from tests.support.harness import ProxyProcess


@pytest.fixture(scope="module")
def mesh_proxy(tmp_path_factory):
    """One real ``pyproxy run`` per test module; each test reloads it with its own config."""
    config = tmp_path_factory.mktemp("mesh") / "config.yaml"
    config.write_text("access_log: {format: off}\nservices: {}\n")
    for attempt in range(3):
        try:  # free_port() can race with other processes on this machine: try new ports
            proxy = ProxyProcess(config).start()
            break
        except RuntimeError:
            if attempt == 2:
                raise
    yield proxy, config
    proxy.stop()


@pytest_asyncio.fixture
async def mesh(mesh_proxy):
    proxy, config = mesh_proxy
    view = Mesh(proxy, config)
    yield view
    await view.close()
