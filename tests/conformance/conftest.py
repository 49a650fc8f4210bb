"""Fixtures for the conformance suite (tests/conformance).

``PYPROXY_TEST_UVLOOP=1`` runs the suite on uvloop, the loop ``pyproxy run`` uses; the
default is asyncio's, like the rest of the tests.
"""

from __future__ import annotations

import os

import pytest_asyncio

from tests.conformance.rawhttp import start_recording

if os.environ.get("PYPROXY_TEST_UVLOOP") == "1":
    def pytest_asyncio_loop_factories(config, item):
        import uvloop
        return {"uvloop": uvloop.new_event_loop}


@pytest_asyncio.fixture
async def recording():
    """``await recording(**kw)`` → (RawBackend, RecordingUpstream); closed after the test."""
    started = []

    async def make(**kw):
        backend, recorder = await start_recording(**kw)
        started.append(backend)
        return backend, recorder

    yield make
    for backend in started:
        await backend.close()
