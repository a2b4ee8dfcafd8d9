"""The NATS frame parser: the compiled module and its pure-Python twin, side by side."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mq9fast import parser_py
from twins import twin_params

try:
    from mq9fast import _parser
except ImportError:  # pragma: no cover
    _parser = None

IMPLS = twin_params(parser_py, _parser, "mq9fast._parser", "cython")

P = parser_py  # op codes are identical in both modules


@pytest.fixture(params=IMPLS)
def impl(request):
    return request.param


def test_op_codes_match():
    assert _parser is not None, "the compiled parser must be built (pip install . builds it)"
    for name in dir(parser_py):
        if name.startswith("OP_") or name.startswith("ERR_"):
            assert getattr(_parser, name) == getattr(parser_py, name), name


def feed_all(impl, data: bytes, **kw):
    return impl.Parser(**kw).feed(data)


def test_basic_ops(impl):
    data = (b"CONNECT {\"verbose\":false}\r\nPING\r\nPONG\r\nSUB foo 1\r\nSUB foo.* q 2\r\n"
            b"UNSUB 1\r\nUNSUB 2 5\r\nPUB foo 5\r\nhello\r\nPUB foo bar 0\r\n\r\n"
            b"HPUB h r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n+OK\r\n-ERR 'x'\r\n")
    frames = feed_all(impl, data)
    assert frames == [
        (P.OP_CONNECT, b'{"verbose":false}'),
        (P.OP_PING,), (P.OP_PONG,),
        (P.OP_SUB, b"foo", None, b"1"),
        (P.OP_SUB, b"foo.*", b"q", b"2"),
        (P.OP_UNSUB, b"1", None),
        (P.OP_UNSUB, b"2", 5),
        (P.OP_PUB, b"foo", None, b"hello"),
        (P.OP_PUB, b"foo", b"bar", b""),
        (P.OP_HPUB, b"h", b"r", 12, b"NATS/1.0\r\n\r\nhi"),
        (P.OP_OK,),
        (P.OP_ERR, b"'x'"),
    ]


def test_case_insensitive_verbs_tabs_and_bare_lf(impl):
    frames = feed_all(impl, b"pub\tfoo  \t 3\nabc\r\nsub a  1\r\nping\nPiNg\r\nhpub x 12 12\r\nNATS/1.0\r\n\r\n\r\n")
    assert frames == [(P.OP_PUB, b"foo", None, b"abc"), (P.OP_SUB, b"a", None, b"1"),
                      (P.OP_PING,), (P.OP_PING,), (P.OP_HPUB, b"x", None, 12, b"NATS/1.0\r\n\r\n")]


def test_binary_payload_with_crlf_inside(impl):
    payload = bytes(range(256)) + b"\r\nPUB x 1\r\n"
    frames = feed_all(impl, b"PUB bin %d\r\n" % len(payload) + payload + b"\r\n")
    assert frames == [(P.OP_PUB, b"bin", None, payload)]


@pytest.mark.parametrize("line,err", [
    (b"FOO bar\r\n", P.ERR_UNKNOWN_OP),
    (b"PUB\r\n", P.ERR_PARSER),
    (b"PUB a b c d\r\n", P.ERR_PARSER),
    (b"PUB a -1\r\n", P.ERR_PARSER),
    (b"PUB a x\r\n", P.ERR_PARSER),
    (b"HPUB a 10 5\r\n", P.ERR_PARSER),
    (b"HPUB a 5\r\n", P.ERR_PARSER),
    (b"SUB a\r\n", P.ERR_PARSER),
    (b"SUB a b c d\r\n", P.ERR_PARSER),
    (b"UNSUB\r\n", P.ERR_PARSER),
    (b"UNSUB 1 x\r\n", P.ERR_PARSER),
    (b"PUB a 3\r\nabcd\r\n", P.ERR_PARSER),   # payload longer than declared
    (b"PUB a 2000\r\n", P.ERR_MAX_PAYLOAD),
    (b"HPUB a 10 2000\r\n", P.ERR_MAX_PAYLOAD),
])
def test_errors(impl, line, err):
    p = impl.Parser(max_payload=1024)
    frames = p.feed(b"PING\r\n" + line)
    assert frames[0] == (P.OP_PING,)
    assert frames[-1] == (P.OP_PROTO_ERROR, err)
    assert p.dead
    assert p.feed(b"PING\r\n") == []


def test_control_line_limit_before_newline(impl):
    p = impl.Parser(max_control_line=64)
    assert p.feed(b"SUB " + b"a" * 40) == []           # still within the limit: kept
    frames = p.feed(b"b" * 40)                          # now over it, no newline yet: refused
    assert frames == [(P.OP_PROTO_ERROR, P.ERR_CONTROL_LINE)]


def test_control_line_limit_complete_line(impl):
    frames = feed_all(impl, b"SUB " + b"a" * 100 + b" 1\r\n", max_control_line=64)
    assert frames == [(P.OP_PROTO_ERROR, P.ERR_CONTROL_LINE)]


def test_connect_line_may_exceed_control_limit(impl):
    body = b'{"name":"' + b"n" * 200 + b'"}'
    frames = feed_all(impl, b"CONNECT " + body + b"\r\n", max_control_line=64)
    assert frames == [(P.OP_CONNECT, body)]


def test_max_payload_refused_before_buffering(impl):
    p = impl.Parser(max_payload=10)
    frames = p.feed(b"PUB a 11\r\n")
    assert frames == [(P.OP_PROTO_ERROR, P.ERR_MAX_PAYLOAD)]


def test_payload_split_across_many_reads(impl):
    p = impl.Parser()
    payload = b"x" * 100000
    data = b"PUB big 100000\r\n" + payload + b"\r\nPING\r\n"
    frames = []
    for i in range(0, len(data), 1000):
        frames += p.feed(data[i:i + 1000])
    assert frames == [(P.OP_PUB, b"big", None, payload), (P.OP_PING,)]


# --- property: any split of a valid stream parses to the same frames -----------------------------

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8).map(str.encode)
_subject = st.lists(_token, min_size=1, max_size=4).map(lambda t: b".".join(t))
_payload = st.binary(max_size=300)


@st.composite
def _frame(draw):
    kind = draw(st.sampled_from(["pub", "pubr", "hpub", "sub", "subq", "unsub", "unsubm", "ping", "pong",
                                 "connect", "msg", "hmsg"]))
    subj = draw(_subject)
    if kind in ("pub", "pubr"):
        payload = draw(_payload)
        reply = draw(_subject) if kind == "pubr" else None
        line = b"PUB " + subj + (b" " + reply if reply else b"") + b" %d\r\n" % len(payload)
        return line + payload + b"\r\n", (P.OP_PUB, subj, reply, payload)
    if kind == "hpub":
        hdr = b"NATS/1.0\r\nk: " + draw(_token) + b"\r\n\r\n"
        payload = draw(_payload)
        block = hdr + payload
        line = b"HPUB " + subj + b" %d %d\r\n" % (len(hdr), len(block))
        return line + block + b"\r\n", (P.OP_HPUB, subj, None, len(hdr), block)
    if kind == "msg":
        payload = draw(_payload)
        reply = draw(st.one_of(st.none(), _subject))
        line = b"MSG " + subj + b" s1" + (b" " + reply if reply else b"") + b" %d\r\n" % len(payload)
        return line + payload + b"\r\n", (P.OP_MSG, subj, b"s1", reply, payload)
    if kind == "hmsg":
        hdr = b"NATS/1.0\r\n\r\n"
        payload = draw(_payload)
        line = b"HMSG " + subj + b" 9 r.x %d %d\r\n" % (len(hdr), len(hdr) + len(payload))
        return line + hdr + payload + b"\r\n", (P.OP_HMSG, subj, b"9", b"r.x", len(hdr), hdr + payload)
    if kind in ("sub", "subq"):
        sid = str(draw(st.integers(0, 10**6))).encode()
        q = draw(_token) if kind == "subq" else None
        return b"SUB " + subj + (b" " + q if q else b"") + b" " + sid + b"\r\n", (P.OP_SUB, subj, q, sid)
    if kind in ("unsub", "unsubm"):
        sid = str(draw(st.integers(0, 10**6))).encode()
        m = draw(st.integers(0, 1000)) if kind == "unsubm" else None
        return b"UNSUB " + sid + (b" %d" % m if m is not None else b"") + b"\r\n", (P.OP_UNSUB, sid, m)
    if kind == "ping":
        return b"PING\r\n", (P.OP_PING,)
    if kind == "pong":
        return b"PONG\r\n", (P.OP_PONG,)
    return b'CONNECT {"echo":true}\r\n', (P.OP_CONNECT, b'{"echo":true}')


@st.composite
def _stream_and_splits(draw):
    frames = draw(st.lists(_frame(), min_size=1, max_size=25))
    data = b"".join(f[0] for f in frames)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=30)))
    return data, [f[1] for f in frames], cuts


@pytest.mark.parametrize("impl_mod", IMPLS)
@settings(max_examples=300, deadline=None)
@given(case=_stream_and_splits())
def test_any_split_parses_the_same(impl_mod, case):
    data, expected, cuts = case
    p = impl_mod.Parser()
    got = []
    prev = 0
    for c in cuts + [len(data)]:
        got += p.feed(data[prev:c])
        prev = c
    assert got == expected
    assert impl_mod.Parser().feed(data) == expected


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=10))
def test_twins_agree_on_arbitrary_bytes(data, cuts):
    """Garbage in: both parsers produce the same frames and errors, for the same splits."""
    assert _parser is not None
    results = []
    for mod in (parser_py, _parser):
        p = mod.Parser(max_control_line=128, max_payload=200)
        out = []
        prev = 0
        for c in sorted(min(c, len(data)) for c in cuts) + [len(data)]:
            out += p.feed(data[prev:c])
            prev = c
        results.append(out)
    assert results[0] == results[1]
