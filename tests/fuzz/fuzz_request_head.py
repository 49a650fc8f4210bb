"""Coverage-guided fuzzing (atheris/libFuzzer) of pyproxy's request-head handling.

Feeds arbitrary bytes, split into arbitrary TCP-segment-sized pieces, to the downstream
protocol with a recording fake transport, and checks the invariants that matter for a
proxy: nothing crashes, every byte written back is an HTTP/1.1 response, and a handler only
ever sees a head that passed validation (a version we speak, an origin-form or '*' path,
a host without whitespace or userinfo).

    python tests/fuzz/fuzz_request_head.py -max_total_time=30     # bounded run
    python tests/fuzz/fuzz_request_head.py corpus_dir/            # keep a corpus
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
from tests.support.fake_transport import FakeTransport

with atheris.instrument_imports():
    from pyproxy.config.model import Limits, Timeouts
    from pyproxy.engine.server import Listener


_LOOP = asyncio.new_event_loop()
_LIMITS = Limits(max_request_line=512, max_header_bytes=2048, max_headers=20,
                 max_body_bytes=4096)


def _check_head(head) -> None:
    assert head.version in ("1.0", "1.1"), head.version
    assert head.path.startswith("/") or head.path == "*", head.path
    assert " " not in head.host and "@" not in head.host, head.host
    assert "#" not in head.path


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    cuts = [fdp.ConsumeIntInRange(1, 64) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())

    async def handler(head, exchange):
        _check_head(head)
        exchange.start_response(200, [], 0)
        exchange.end_response()

    async def run():
        listener = Listener(handler, timeouts=Timeouts(), limits=_LIMITS)
        protocol = listener.protocol_factory()
        transport = FakeTransport()
        protocol.connection_made(transport)
        view = payload
        for cut in cuts:
            if not view or transport.closed:
                break
            protocol.data_received(view[:cut])
            view = view[cut:]
            await asyncio.sleep(0)
        if view and not transport.closed:
            protocol.data_received(view)
        await asyncio.sleep(0)
        protocol.connection_lost(None)
        await asyncio.sleep(0)
        return transport

    transport = _LOOP.run_until_complete(run())
    if transport.out:
        assert transport.out.startswith(b"HTTP/1.1 "), bytes(transport.out[:40])


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
