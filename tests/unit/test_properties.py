"""Property tests (hypothesis) for the split, the matchers and request-head handling."""

from __future__ import annotations

import re
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from pyproxy.config.model import Match, PathMatch, StringMatch
from pyproxy.messages import RequestHead
from pyproxy.routing.matchers import compile_match
from pyproxy.traffic.split import WeightedSplit
from tests.support.fake_transport import FakeTransport

weights = st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1,
                   max_size=8)
draws = st.floats(min_value=0, max_value=1, exclude_max=True)
text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@given(weights, draws)
def test_split_never_picks_a_zero_weight(ws, draw):
    split = WeightedSplit(list(range(len(ws))), ws)
    picked = split.pick(draw)
    if sum(ws) <= 0:
        assert picked is None
    else:
        assert picked is not None and ws[picked] > 0


@given(weights, draws, draws)
def test_split_is_monotonic_in_the_draw(ws, a, b):
    split = WeightedSplit(list(range(len(ws))), ws)
    low, high = sorted((a, b))
    if sum(ws) > 0 and sum(1 for w in ws if w > 0) > 1:
        assert split.pick(low) <= split.pick(high)


@given(weights)
def test_shares_sum_to_one(ws):
    split = WeightedSplit(list(range(len(ws))), ws)
    total = sum(split.share(i) for i in range(len(ws)))
    assert total == 0 if sum(ws) == 0 else abs(total - 1) < 1e-9


def _head(path="/", headers=()):
    return RequestHead("GET", path, "", "1.1", list(headers), "h", "127.0.0.1")


@given(text, text)
def test_string_matchers_agree_with_their_definitions(value, extra):
    def header(m: StringMatch) -> Callable[[RequestHead], bool]:
        return compile_match(Match(headers=(("x", m),)))

    assert header(StringMatch("exact", value))(_head(headers=[("x", value)]))
    assert header(StringMatch("prefix", value))(_head(headers=[("x", value + extra)]))
    assert header(StringMatch("suffix", value))(_head(headers=[("x", extra + value)]))
    assert header(StringMatch("regex", re.escape(value)))(_head(headers=[("x", value)]))
    inverted = StringMatch("exact", value, invert=True)
    assert not header(inverted)(_head(headers=[("x", value)]))


@given(st.lists(st.text(alphabet="abc/", min_size=1, max_size=5), min_size=1, max_size=4),
       st.text(alphabet="abc", max_size=4))
def test_segment_prefix_is_element_wise(segments, tail):
    base = "/" + "/".join(segments)
    predicate = compile_match(Match(path=PathMatch("segment_prefix", base)))
    assert predicate(_head(base))
    assert predicate(_head(base.rstrip("/") + "/" + tail))
    if tail and not base.endswith("/"):
        assert not predicate(_head(base + tail))


@given(st.text(max_size=200))
def test_cookie_parsing_never_raises(value):
    head = _head(headers=[("cookie", value)])
    head.cookie("a")
    head.query_param("a")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_the_request_parser_never_crashes_and_never_forwards_garbage(data):
    """Arbitrary bytes into the downstream protocol: it either answers with a status line
    or waits for more; a handler runs only for a request whose head validated."""
    import asyncio

    from pyproxy.config.model import Limits, Timeouts
    from pyproxy.engine.server import Listener

    handled = []

    async def handler(head, exchange):
        handled.append(head)
        exchange.start_response(200, [], 0)
        exchange.end_response()

    async def run():
        listener = Listener(handler, timeouts=Timeouts(), limits=Limits())
        protocol = listener.protocol_factory()
        transport = FakeTransport()
        protocol.connection_made(transport)
        protocol.data_received(data)
        await asyncio.sleep(0)
        protocol.connection_lost(None)
        return transport

    transport = asyncio.run(run())
    if transport.out:
        assert transport.out.startswith(b"HTTP/1.1 ")
    for head in handled:
        assert head.version in ("1.0", "1.1")
        assert head.path.startswith("/") or head.path == "*"
