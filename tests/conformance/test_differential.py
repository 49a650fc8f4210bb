"""Differential check: every request of the conformance corpus (reliability.md §2.1, rows 1–75
and the extras x1–x8 in corpus.py) plus a few well-formed controls, replayed byte for byte on
fresh connections through HAProxy 2.6 (Debian's binary, generated minimal config) and through
an in-process pyproxy, each in front of its own recording upstream.

For each case: the status(es) each proxy answered, and what each upstream received, normalised
(request line; header names lower-cased and sorted, same-name order kept; the fields pyproxy
adds itself removed — its ``Via`` element, its peer in ``X-Forwarded-For``, ``x-request-id``,
``X-Forwarded-Proto``/``-Host``; token-list values of ``Connection``/``Transfer-Encoding``
lower-cased; trailers; de-chunked body; completeness). HAProxy's config adds no header.

Every difference must be a deliberate decision listed in ``DECISIONS`` (case id → kind and
why); a new, unexplained difference fails ``test_every_difference_is_a_recorded_decision``.
Differences that are pyproxy bugs are in ``KNOWN_BUGS`` instead, as strict xfails: once the
fix lands they pass, and the strict xfail fails until the entry is removed.

``PYPROXY_DIFF_REPORT=path`` writes the Markdown table of docs/reliability.md
("Differential check against HAProxy 2.6"). ``PYPROXY_HAPROXY=path`` picks the binary;
decisions were recorded against 2.6 and other versions are skipped unless
``PYPROXY_DIFF_ANY_HAPROXY=1``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conformance import differential as diff
from tests.conformance.corpus import EXTRA_REQUESTS, REQUESTS
from tests.conformance.rawhttp import one_route
from tests.support.harness import InProcessProxy


@dataclass(frozen=True)
class Case:
    label: str  # "1".."75": reliability.md §2.1 rows; "x1".."x8": corpus extras; "c1"..: controls
    id: str
    raw: bytes


# Well-formed requests (not in the corpus): they show that the normalisation leaves nothing
# between two correct proxies, and they probe framing and field handling the corpus, which is
# almost all refusals, does not reach.
CONTROLS: tuple[tuple[str, bytes], ...] = (
    ("PLAIN_GET", b"GET /c?q=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n"),
    ("POST_CL", b"POST /c HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 5\r\n\r\nhello"),
    ("POST_CHUNKED", b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
    ("TE_CHUNKED_CAPS", b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"
                        b"5\r\nhello\r\n0\r\n\r\n"),
    ("CHUNKED_TRAILER", b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                        b"Trailer: X-T\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: t\r\n\r\n"),
    ("REPEATED_FIELDS", b"GET /c HTTP/1.1\r\nHost: a\r\nCookie: a=1\r\nX-M: 1\r\nX-M: 2\r\n"
                        b"Cookie: b=2\r\n\r\n"),
    ("VALUE_TRAILING_OWS", b"GET /c HTTP/1.1\r\nHost: a\r\nX-A:   v  w \t\r\nX-B:\r\n\r\n"),
    ("VALUE_OBS_TEXT", b"GET /c HTTP/1.1\r\nHost: a\r\nX-A: caf\xe9\r\n\r\n"),
    ("CLIENT_VIA_XFF", b"GET /c HTTP/1.1\r\nHost: a\r\nVia: 1.0 edge\r\n"
                       b"X-Forwarded-For: 10.0.0.1\r\n\r\n"),
    ("ABS_FORM_SAME_HOST", b"GET http://a/c?x HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("TARGET_ENCODED", b"GET /a%20b/%7e;p=1?x=%2F&y=/?z HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("HTTP10_KEEPALIVE", b"GET /c HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"),
    ("EXPECT_100", b"POST /c HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                   b"Content-Length: 5\r\n\r\nhello"),
    ("TE_TRAILERS", b"GET /c HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n"),
    ("PROXY_AUTHORIZATION", b"GET /c HTTP/1.1\r\nHost: a\r\nAuthorization: Basic eDp5\r\n"
                            b"Proxy-Authorization: Basic eDp5\r\n\r\n"),
    ("WEBSOCKET", b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                  b"Sec-WebSocket-Version: 13\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"),
    ("DELETE_WITH_BODY", b"DELETE /c HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"),
    ("NINETY_HEADERS", b"GET / HTTP/1.1\r\nHost: a\r\n"
                       + b"".join(b"X-%d: 1\r\n" % i for i in range(90)) + b"\r\n"),
    ("LONG_TARGET_7000", b"GET /" + b"b" * 7000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"),
)

CASES: tuple[Case, ...] = (
    tuple(Case(str(r.row), r.id, r.raw) for r in REQUESTS)
    + tuple(Case(f"x{r.row - 100}", r.id, r.raw) for r in EXTRA_REQUESTS)
    + tuple(Case(f"c{i}", case_id, raw) for i, (case_id, raw) in enumerate(CONTROLS, 1))
)
BY_ID = {case.id: case for case in CASES}


@dataclass(frozen=True)
class Decision:
    kind: str  # one of diff.KINDS other than SAME
    why: str
    # For "both refuse" and "both forward": the difference exactly as diff.classify words
    # it, so a case that starts to differ in another way fails too.
    differs: str | None = None


_P, _H = diff.PYPROXY_REFUSES, diff.HAPROXY_REFUSES
_BR, _BF = diff.BOTH_REFUSE, diff.BOTH_FORWARD

_CLTE = ("HAProxy drops Content-Length, forwards the chunked body and closes afterwards "
         "(RFC 9112 §6.1 allows it). pyproxy refuses with 400 + close, as nginx does (FR-1): "
         "a message that carries both framings is never interpreted, so no hop can read it "
         "the other way.")
_DOT = ("HAProxy 2.6 forwards the path as received (`normalize-uri` is opt-in). pyproxy "
        "refuses dot-segments (HD-16) rather than resolve them, so a route decision is always "
        "made on the path the upstream resolves.")

DECISIONS: dict[str, Decision] = {
    # -- pyproxy refuses what HAProxy forwards: pyproxy takes the strict option each time.
    "CLTE": Decision(_P, _CLTE),
    "TECL": Decision(_P, _CLTE),
    "CLCL_SAME": Decision(_P, "HAProxy merges identical Content-Length values (RFC 9110 §8.6 "
                          "allows it). pyproxy refuses every duplicate or list-valued "
                          "Content-Length, as nginx does (FR-5)."),
    "CL_LIST": Decision(_P, "As CLCL_SAME: `1, 1` is merged to 1 by HAProxy; refused by "
                        "pyproxy (FR-5)."),
    "TE_OBSFOLD": Decision(_P, "HAProxy unfolds obs-fold and frames the body as chunked. "
                           "pyproxy refuses obs-fold anywhere (RFC 9112 §5.2 allows either). "
                           "A folded Transfer-Encoding is a TE.TE obfuscation (FR-11)."),
    "TE_HTTP10": Decision(_P, "HAProxy forwards `Transfer-Encoding: chunked` in an HTTP/1.0 "
                          "request to the upstream as HTTP/1.0. RFC 9112 §6.1 says such "
                          "framing MUST be treated as faulty. pyproxy refuses it with 400 + "
                          "close, as nginx does (FR-4)."),
    "CHUNK_TRAILING_WS": Decision(_P, "HAProxy accepts spaces after the chunk size. pyproxy "
                                  "(llhttp, strict) refuses the malformed chunk line (FR-6)."),
    "CHUNK_BARE_LF": Decision(_P, "HAProxy accepts a bare LF after chunk data. pyproxy refuses "
                              "it (FR-6; HTTP Garden transducer bug 13)."),
    "TRAILER_SMUGGLE": Decision(_P, "HAProxy forwards the trailer section, including "
                                "`Content-Length: 5`, and the upstream's llhttp refuses it (the "
                                "client's 400 comes from the upstream). pyproxy refuses it "
                                "before anything is forwarded (FR-8)."),
    "HDR_NUL": Decision(_P, "HAProxy forwards NUL inside a field value, and the upstream's "
                        "llhttp refuses it. pyproxy refuses it itself (FR-9; RFC 9110 §5.5)."),
    "HDR_CTL": Decision(_P, "HAProxy forwards 0x01 inside a field value, and the upstream "
                        "refuses it. pyproxy refuses CTLs itself (FR-9)."),
    "BARE_LF_LINES": Decision(_P, "HAProxy normalises bare-LF line ends to CRLF. pyproxy "
                              "refuses them (RFC 9112 §2.2 MAY accept; FR-12 takes the strict "
                              "choice)."),
    "OBS_FOLD": Decision(_P, "HAProxy unfolds `one\\r\\n two` to `one   two`. pyproxy refuses "
                         "obs-fold (RFC 9112 §5.2 allows either; FR-11)."),
    "NO_HOST_11": Decision(_P, "HAProxy forwards an HTTP/1.1 request without Host. RFC 9112 "
                           "§3.2 says a server MUST answer 400, and pyproxy does (HD-9)."),
    "HOST_BAD": Decision(_P, "HAProxy forwards `Host: a b`. pyproxy refuses a Host that is not "
                         "a valid authority (HD-9; RFC 9112 §3.2)."),
    "HOST_USERINFO": Decision(_P, "HAProxy forwards `Host: user@a`. pyproxy refuses userinfo "
                              "in Host (HD-9; RFC 9110 §7.2)."),
    "ABS_FORM_HTTPS_PLAIN": Decision(_P, "HAProxy forwards the `https://` absolute-form "
                                     "target unchanged on a plaintext listener. pyproxy refuses "
                                     "a scheme that does not match the listener, as Envoy does "
                                     "(HD-9)."),
    "VERSION_12": Decision(_P, "HAProxy rewrites HTTP/1.2 to 1.1 and forwards it. pyproxy "
                           "answers 505 to every version other than 1.0/1.1 (FR-14)."),
    "VERSION_20": Decision(_P, "HAProxy rewrites HTTP/2.0 to 1.1 and forwards it. pyproxy "
                           "answers 505 (FR-14; aiohttp threat model T1.5)."),
    "TARGET_STAR_GET": Decision(_P, "HAProxy 2.6 forwards `GET *`; newer HAProxy refuses it "
                                "(`h1_request_target_validation.vtc`). pyproxy refuses "
                                "asterisk-form for any method other than OPTIONS (FR-13)."),
    "UNDERSCORE_HDR": Decision(_P, "HAProxy forwards `X_Forwarded_For`. pyproxy refuses "
                               "underscores in field names, because some upstreams read them as "
                               "`X-Forwarded-For` (HD-14; Envoy's edge setting)."),
    "EXPECT_UNKNOWN": Decision(_P, "HAProxy forwards `Expect: foo` for the origin to judge. "
                               "pyproxy strips Expect and answers 100-continue itself (HD-6), so "
                               "it must also answer an expectation it cannot meet: 417, as "
                               "nginx does."),
    "MAXFWD_ZERO": Decision(_P, "HAProxy does not implement Max-Forwards and forwards `OPTIONS "
                            "*` with `Max-Forwards: 0`. RFC 9110 §7.6.2 makes pyproxy the final "
                            "recipient: it answers 200 + Allow itself (HD-4)."),
    "CONNECT": Decision(_P, "HAProxy 2.6 forwards CONNECT to the server, and a 2xx answer "
                        "opens a tunnel through it. pyproxy is a routing proxy and does not "
                        "tunnel: 501 (FR-15)."),
    "TRACE": Decision(_P, "HAProxy forwards TRACE. pyproxy answers 405, because an echoed "
                      "TRACE is a cross-site-tracing vector (FR-15)."),
    "METHOD_UNKNOWN_TOKEN": Decision(_P, "HAProxy forwards any token method (`FOO`), and the "
                                     "llhttp upstream here refuses it. pyproxy answers 501 for "
                                     "a method its parser does not know (RFC 9110 §9.1)."),
    "PATH_DOT_SEGMENT": Decision(_P, _DOT),
    "PATH_ENCODED_DOT_SEGMENT": Decision(_P, _DOT),
    "PATH_DOT_SEGMENT_PARAM": Decision(_P, _DOT),
    # -- pyproxy forwards what HAProxy refuses.
    "ABS_FORM_MISMATCH": Decision(_H, "HAProxy answers 400 when the absolute-form authority "
                                  "differs from Host. pyproxy follows RFC 9112 §3.2.2: it "
                                  "routes on the target's authority and forwards origin-form "
                                  "`GET /x` with `Host: b.example`, so Host and target can never "
                                  "disagree upstream. The reference allows either."),
    # -- both forward, differently.
    "TARGET_ENCODED": Decision(_BF, "pyproxy normalises the path before matching and forwards "
                               "it normalised (docs/responses.md, \"The path routes see\"): a "
                               "percent-encoded unreserved character is decoded (RFC 3986 "
                               "§6.2.2.2), so `/%7e` and `/~` meet the same route and reach the "
                               "upstream alike; the query is passed on as received. HAProxy "
                               "2.6 forwards the path as received (`normalize-uri` is opt-in).",
                               "request line `GET /a%20b/%7e;p=1?x=%2F&y=/?z HTTP/1.1` vs "
                               "`GET /a%20b/~;p=1?x=%2F&y=/?z HTTP/1.1`"),
    # -- both refuse, with a different status.
    "TE_GZIP_CHUNKED": Decision(_BR, "A coding pyproxy does not implement, in a well-framed "
                                "message: 501, as RFC 9112 §6.1 suggests (SHOULD). HAProxy's "
                                "422 is not from the RFC.", "HAProxy 422, pyproxy 501"),
    "TE_COMMA_CHUNKED": Decision(_BR, "An empty list element is a malformed Transfer-Encoding: "
                                 "pyproxy answers 400, HAProxy 422.",
                                 "HAProxy 422, pyproxy 400"),
    "VERSION_09": Decision(_BR, "One rule for every version other than 1.0/1.1: 505 "
                           "(FR-14). HAProxy answers 400 to a malformed one.",
                           "HAProxy 400, pyproxy 505"),
    "VERSION_132": Decision(_BR, "As VERSION_09.", "HAProxy 400, pyproxy 505"),
    "LONG_LINE": Decision(_BR, "pyproxy answers 414 URI Too Long (RFC 9110 §15.5.15; nginx), "
                          "HAProxy a generic 400 (RX-4).", "HAProxy 400, pyproxy 414"),
    "LONG_HEADER": Decision(_BR, "pyproxy answers 431 (RFC 6585; Envoy), HAProxy a generic 400 "
                            "(RX-4).", "HAProxy 400, pyproxy 431"),
    "MANY_HEADERS": Decision(_BR, "As LONG_HEADER: more than `limits.max_headers` (100) gets "
                             "431. HAProxy's limit is `tune.http.maxhdr` 101, answered with 400.",
                             "HAProxy 400, pyproxy 431"),
    # -- both forward, and the upstreams see different requests.
    "CONN_NOMINATES": Decision(
        _BF, "RFC 9110 §7.6.1 (MUST) and HD-1: pyproxy removes Connection, Keep-Alive, "
             "Proxy-Connection and TE, and every field named in Connection (here X-Secret and "
             "the client's X-Forwarded-For; pyproxy's own X-Forwarded-For stands alone). "
             "HAProxy 2.6 only drops the `keep-alive` token from Connection and forwards the "
             "rest.",
        "only via HAProxy: `connection: x-secret,x-forwarded-for`, `keep-alive: timeout=5`, "
        "`proxy-connection: keep-alive`, `te: trailers`, `x-forwarded-for: 6.6.6.6`, "
        "`x-secret: s`"),
    "UPGRADE_H2C": Decision(
        _BF, "h2c smuggling (HD-8; golang/go#80416): pyproxy forwards a plain HTTP/1.1 request "
             "without Upgrade, HTTP2-Settings and Connection. HAProxy forwards all three, so an "
             "upstream answering 101 would get a tunnel that bypasses the proxy's HTTP rules.",
        "only via HAProxy: `connection: upgrade, http2-settings`, "
        "`http2-settings: AAMAAABkAAQAAP__`, `upgrade: h2c`"),
    "HTTP10_NOHOST": Decision(
        _BF, "pyproxy always speaks HTTP/1.1 to upstreams and therefore sends a Host field, "
             "which is empty when the request had no authority (RFC 9112 §3.2). HAProxy "
             "forwards HTTP/1.0 and adds `Connection: keep-alive`.",
        "request line `GET / HTTP/1.0` vs `GET / HTTP/1.1`; only via HAProxy: "
        "`connection: keep-alive`; only via pyproxy: `host: `"),
    "MAXFWD_OPTIONS_TWO": Decision(
        _BF, "RFC 9110 §7.6.2 (MUST): a proxy decrements Max-Forwards on OPTIONS/TRACE (HD-4). "
             "HAProxy does not implement it.",
        "only via HAProxy: `max-forwards: 2`; only via pyproxy: `max-forwards: 1`"),
    # -- controls that differ.
    "CHUNKED_TRAILER": Decision(
        _BF, "pyproxy drops the trailer section of a request and the `Trailer` field. The "
             "reference (FR-8) allows dropping trailers, and pyproxy must never merge them into "
             "the head. HAProxy forwards both.",
        "only via HAProxy: `trailer: X-T`; trailers `x-t: t` via HAProxy, none via pyproxy"),
    "HTTP10_KEEPALIVE": Decision(
        _BF, "pyproxy always speaks HTTP/1.1 to upstreams (HD-2), and Connection is hop-by-hop. "
             "HAProxy keeps the client's version and its own `Connection: keep-alive`.",
        "request line `GET /c HTTP/1.0` vs `GET /c HTTP/1.1`; only via HAProxy: "
        "`connection: keep-alive`"),
    "EXPECT_100": Decision(
        _BF, "pyproxy answers `100 Continue` itself and strips Expect (HD-6, Envoy's default), "
             "so it never asks an upstream for a 1xx it would have to relay (U16/U17). HAProxy "
             "forwards Expect, and the origin's 100 with it.",
        "only via HAProxy: `expect: 100-continue`"),
    "ABS_FORM_SAME_HOST": Decision(
        _BF, "pyproxy forwards origin-form (RFC 9112 §3.2.1: a request to an origin server "
             "carries the path and query only). HAProxy passes the absolute-form target on.",
        "request line `GET http://a/c?x HTTP/1.1` vs `GET /c?x HTTP/1.1`"),
    "TE_TRAILERS": Decision(
        _BF, "TE is hop-by-hop (RFC 9110 §7.6.1, HD-1/HD-5), and pyproxy does not forward "
             "response trailers, so it does not promise them upstream. HAProxy keeps "
             "`TE: trailers`.",
        "only via HAProxy: `te: trailers`"),
    "PROXY_AUTHORIZATION": Decision(
        _BF, "Proxy-Authorization holds credentials for the proxy, not the origin. pyproxy "
             "removes it with the hop-by-hop fields (HD-1, Envoy); HAProxy forwards it.",
        "only via HAProxy: `proxy-authorization: Basic eDp5`"),
}

# Differences that are pyproxy bugs, not decisions: strict xfails until fixed. After the fix
# the case must match DECISIONS (or be the same, when it has no entry there).
KNOWN_BUGS: dict[str, str] = {
    # Fixed: CHUNKED_TRAILER (trailers were merged into the validated head) and
    # VALUE_TRAILING_OWS (trailing whitespace kept in values), both in on_header.
}


# ---------------------------------------------------------------------------- the run


@dataclass
class Outcome:
    case: Case
    haproxy: diff.Side
    pyproxy: diff.Side
    kind: str
    how: str


@dataclass
class Run:
    version: str
    outcomes: dict[str, Outcome]
    sanity: tuple[diff.Side, diff.Side]
    haproxy_alive: bool
    haproxy_log: str
    config: str
    seconds: float


async def _run(binary: str) -> Run:
    started = time.monotonic()
    h_up = await diff.Upstream().start()
    p_up = await diff.Upstream().start()
    haproxy = diff.HAProxy(binary, h_up.port)
    proxy = InProcessProxy(one_route(p_up.backend))
    try:
        await haproxy.start()
        await proxy.start()
        sanity_raw = b"GET /sanity HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        sanity = tuple(await asyncio.gather(
            diff.replay(haproxy.port, h_up, sanity_raw, pyproxy=False),
            diff.replay(proxy.port, p_up, sanity_raw, pyproxy=True)))
        outcomes = {}
        for case in CASES:
            # One case at a time (each upstream's bytes belong to the case being replayed),
            # the two proxies side by side: they share nothing.
            h, p = await asyncio.gather(
                diff.replay(haproxy.port, h_up, case.raw, pyproxy=False),
                diff.replay(proxy.port, p_up, case.raw, pyproxy=True))
            kind, how = diff.classify(h, p)
            outcomes[case.id] = Outcome(case, h, p, kind, how)
        alive = haproxy.proc.poll() is None
        return Run(diff.haproxy_version(binary), outcomes, sanity, alive, haproxy.log(),
                   haproxy.config, time.monotonic() - started)
    finally:
        haproxy.stop()
        await proxy.close()
        await h_up.close()
        await p_up.close()


@pytest.fixture(scope="module")
def run() -> Run:
    binary = diff.haproxy_binary()
    if binary is None:
        pytest.skip("no haproxy binary: `apt-get install -y haproxy` (Debian's 2.6) or set "
                    "PYPROXY_HAPROXY=/path/to/haproxy")
    version = diff.haproxy_version(binary)
    if not version.startswith("2.6.") and os.environ.get("PYPROXY_DIFF_ANY_HAPROXY") != "1":
        pytest.skip(f"the decisions were recorded against HAProxy 2.6, found {version!r} "
                    f"(PYPROXY_DIFF_ANY_HAPROXY=1 runs it anyway)")
    factory = None
    if os.environ.get("PYPROXY_TEST_UVLOOP") == "1":  # as tests/conformance/conftest.py
        import uvloop
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(_run(binary))
    report = os.environ.get("PYPROXY_DIFF_REPORT")
    if report:
        Path(report).write_text(render_markdown(result))
    return result


# ---------------------------------------------------------------------------- the tests


def test_the_cases_are_the_whole_corpus_plus_controls():
    assert len(CASES) == len(REQUESTS) + len(EXTRA_REQUESTS) + len(CONTROLS)
    assert len(BY_ID) == len(CASES)  # ids are unique
    # Normalising drops pyproxy's X-Forwarded-Proto/-Host and a generated x-request-id: that
    # hides nothing only while no case sends them itself.
    for case in CASES:
        lowered = case.raw.lower()
        for name in (b"\nx-forwarded-proto:", b"\nx-forwarded-host:", b"\nx-request-id:"):
            assert name not in lowered, (case.id, name)


def test_the_decision_table_is_well_formed():
    for case_id, decision in DECISIONS.items():
        assert case_id in BY_ID, f"DECISIONS[{case_id!r}] names no case"
        assert decision.kind in diff.KINDS and decision.kind != diff.SAME, case_id
        assert decision.why, case_id
        if decision.kind in (diff.BOTH_REFUSE, diff.BOTH_FORWARD):
            assert decision.differs, f"{case_id}: say exactly how they differ"
    for case_id in KNOWN_BUGS:
        assert case_id in BY_ID, f"KNOWN_BUGS[{case_id!r}] names no case"


def test_haproxy_was_really_exercised(run: Run):
    h, p = run.sanity
    assert run.haproxy_alive, run.haproxy_log
    assert h.statuses == [200] and p.statuses == [200], (h, p, run.haproxy_log)
    assert [m.request_line for m in h.messages] == ["GET /sanity HTTP/1.1"]
    assert [m.request_line for m in p.messages] == ["GET /sanity HTTP/1.1"]
    # HAProxy answered or forwarded every case, and forwarded a good share of them.
    silent = [o.case.id for o in run.outcomes.values()
              if not o.haproxy.statuses and not o.haproxy.forwarded]
    assert not silent, f"HAProxy neither answered nor forwarded: {silent}"
    forwarded = sum(o.haproxy.forwarded for o in run.outcomes.values())
    assert forwarded >= 40, forwarded
    assert run.seconds < 40, f"the differential run took {run.seconds:.1f} s"


def _expected(case_id: str) -> tuple[str, str | None]:
    decision = DECISIONS.get(case_id)
    if decision is None:
        return diff.SAME, ""
    return decision.kind, decision.differs


def _mismatch(outcome: Outcome) -> str | None:
    kind, differs = _expected(outcome.case.id)
    if outcome.kind != kind or (differs is not None and outcome.how != differs):
        return (f"{outcome.case.label} {outcome.case.id}: observed {outcome.kind!r}"
                f"{': ' + outcome.how if outcome.how else ''}; "
                f"recorded {kind!r}{': ' + differs if differs else ''}")
    return None


def test_every_difference_is_a_recorded_decision(run: Run):
    problems = [m for case_id, o in run.outcomes.items()
                if case_id not in KNOWN_BUGS and (m := _mismatch(o))]
    assert not problems, (
        "differences between HAProxy and pyproxy that are not (or no longer) recorded in "
        "DECISIONS — fix pyproxy, or record the decision and why:\n  " + "\n  ".join(problems))


@pytest.mark.parametrize("case_id", [
    pytest.param(case_id, marks=pytest.mark.xfail(strict=True, reason=bug))
    for case_id, bug in KNOWN_BUGS.items()])
def test_known_pyproxy_bugs(case_id: str, run: Run):
    """Passes once the bug is fixed; then remove the case from KNOWN_BUGS."""
    problem = _mismatch(run.outcomes[case_id])
    assert problem is None, problem


# ---------------------------------------------------------------------------- the report


def _cell(side: diff.Side, other: diff.Side, *, pyproxy: bool) -> str:
    status = f"**{side.answer()}**"
    if not side.forwarded:
        return f"{status}; nothing upstream"
    if other.forwarded:
        return f"{status}; forwarded"
    hide = diff.PYPROXY_ADDS if pyproxy else ()
    return f"{status}; upstream got {side.upstream(fields=True, hide=hide)}"


def render_markdown(run: Run) -> str:
    corpus = len(REQUESTS) + len(EXTRA_REQUESTS)
    outcomes = list(run.outcomes.values())
    in_corpus = Counter(o.kind for o in outcomes[:corpus])
    in_controls = Counter(o.kind for o in outcomes[corpus:])
    bugs = Counter(o.kind for o in outcomes if o.case.id in KNOWN_BUGS)
    lines = [
        f"Generated by `tests/conformance/test_differential.py` against HAProxy "
        f"{run.version} (Debian) and an in-process pyproxy: {len(outcomes)} cases "
        f"({corpus} from the corpus, {len(CONTROLS)} controls).",
        "",
        "| Result | corpus (rows 1–75, x1–x8) | controls (c1–c" + str(len(CONTROLS)) + ") |",
        "|---|---|---|",
    ]
    for kind in diff.KINDS:
        note = f" ({bugs[kind]} of them pyproxy bugs)" if bugs.get(kind) else ""
        lines.append(f"| {kind} | {in_corpus.get(kind, 0)} | {in_controls.get(kind, 0)}{note} |")
    lines += [
        f"| **differ** | **{corpus - in_corpus.get(diff.SAME, 0)} of {corpus}** | "
        f"**{len(CONTROLS) - in_controls.get(diff.SAME, 0)} of {len(CONTROLS)}** |",
        "",
        "| # | ID | HAProxy 2.6 (client status; what its upstream got) | pyproxy | Result | "
        "Decision |",
        "|---|---|---|---|---|---|",
    ]
    for o in run.outcomes.values():
        result = o.kind if o.kind in (diff.SAME,) else f"**{o.kind}**"
        if o.kind in (diff.BOTH_FORWARD, diff.BOTH_REFUSE) and o.how:
            result += f": {o.how}"
        if o.case.id in KNOWN_BUGS:
            decision = ("**pyproxy bug** (KNOWN_BUGS): "
                        + KNOWN_BUGS[o.case.id].split(": ", 1)[1].split(". Fix:")[0] + ".")
            fixed = DECISIONS.get(o.case.id)
            decision += (f" Once fixed: {fixed.why}" if fixed else
                         " Once fixed the two upstreams see the same request.")
        elif o.case.id in DECISIONS:
            decision = DECISIONS[o.case.id].why
        else:
            decision = "—"
        lines.append(
            f"| {o.case.label} | {o.case.id} "
            f"| {_cell(o.haproxy, o.pyproxy, pyproxy=False)} "
            f"| {_cell(o.pyproxy, o.haproxy, pyproxy=True)} "
            f"| {result} | {decision.replace('|', '/')} |")
    config = diff.HAPROXY_CONFIG.format(port="<free port>", upstream_port="<upstream port>")
    lines += ["", "HAProxy's generated configuration:", "", "```", config.rstrip(), "```", ""]
    return "\n".join(lines)
