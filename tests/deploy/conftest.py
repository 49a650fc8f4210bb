from tests.deploy.support import processes  # noqa: F401  (a fixture for every deploy test)
