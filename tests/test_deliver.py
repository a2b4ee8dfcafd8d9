"""The delivery hot path: compiled module and pure-Python twin produce the same bytes."""
from __future__ import annotations

import pytest

from mq9fast import deliver_py, router_py

try:
    from mq9fast import _deliver, _router
except ImportError:  # pragma: no cover
    _deliver = _router = None

PAIRS = [pytest.param((deliver_py, router_py), id="python"),
         pytest.param((_deliver, _router), id="cython",
                      marks=pytest.mark.skipif(_deliver is None, reason="extension not built"))]


def scenario(mods):
    d, r = mods
    router = r.Router()
    dirty: list = []
    a = d.Conn("a", dirty)
    b = d.Conn("b", dirty)
    b.headers = True
    c = d.Conn("c", dirty)
    c.echo = False
    c.headers = True
    c.no_responders = True
    subs = [d.Sub(a, b"1", b"x.*", None), d.Sub(b, b"22", b"x.>", None), d.Sub(c, b"3", b"x.y", None),
            d.Sub(a, b"q1", b"x.y", b"grp"), d.Sub(b, b"q2", b"x.y", b"grp"), d.Sub(c, b"i", b"_I.c.*", None)]
    for s in subs:
        s.conn.subs[s.sid] = s
        router.insert(s)
    subs[0].max = 2
    hdr = b"NATS/1.0\r\nK: v\r\n\r\n"
    counts = [
        d.publish(router, c, b"x.y", None, 0, b"plain"),
        d.publish(router, a, b"x.y", b"_I.c.1", len(hdr), hdr + b"with-headers"),
        d.publish(router, c, b"x.z", None, 0, b""),
        d.publish(router, c, b"nobody", b"_I.c.2", 0, b"?"),   # c gets a 503 on its inbox
        d.publish(router, b, b"x.q", None, 0, b"after-max"),
    ]
    frames = [(1, b"x.w", None, b"f1"), (2, b"x.w", b"r", len(hdr), hdr + b"f2"), (3, b"x.w", None, b"9"),
              (1, b"x.w", None, b"f3")]
    idx = [d.route_frames(frames, 0, a, router)]
    idx.append(d.route_frames(frames, idx[0] + 1, a, router))
    return counts, idx, [bytes(x.out) for x in (a, b, c)], len(dirty), sorted(a.subs), router.count


@pytest.mark.parametrize("mods", PAIRS)
def test_delivery_bytes(mods):
    counts, idx, outs, ndirty, a_subs, nsubs = scenario(mods)
    a, b, c = outs
    assert counts == [3, 4, 1, 0, 1]
    assert idx == [2, 4]
    assert a.startswith(b"MSG x.y 1 5\r\nplain\r\n")
    assert b"MSG x.y 1 _I.c.1 12\r\nwith-headers\r\n" in a  # headers stripped for a
    assert b"HMSG x.y 22 _I.c.1 18 30\r\nNATS/1.0\r\nK: v\r\n\r\nwith-headers\r\n" in b
    assert b"HMSG _I.c.2 i 16 16\r\nNATS/1.0 503\r\n\r\n\r\n" in c
    assert b"plain" not in c  # echo off: c never receives its own publish
    assert a.count(b"MSG x.y 1 ") == 2 and b"MSG x.z 1 " not in a  # sid 1 removed after max=2
    assert b"1" not in a_subs
    assert ndirty == 3
    assert nsubs == 5


def test_twins_agree():
    assert _deliver is not None
    assert scenario((deliver_py, router_py)) == scenario((_deliver, _router))
