"""The delivery hot path: compiled module and pure-Python twin produce the same bytes."""
from __future__ import annotations

import pytest

from mq9fast import deliver_py, router_py
from twins import twin_params

try:
    from mq9fast import _deliver, _router
except ImportError:  # pragma: no cover
    _deliver = _router = None

PAIRS = twin_params((deliver_py, router_py), None if _deliver is None else (_deliver, _router),
                    "mq9fast._deliver", "cython")


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


def _queue_setup(mods):
    d, r = mods
    router = r.Router()
    dirty: list = []
    pub = d.Conn("pub", dirty)
    local = d.Conn("local", dirty)
    route = d.Conn("route", dirty)
    route.route = True
    route.headers = True
    for conn, sid in ((local, b"l"), (route, b"r")):
        sub = d.Sub(conn, sid, b"jobs", b"q")
        conn.subs[sid] = sub
        router.insert(sub)
    return d, router, pub, local, route


@pytest.mark.parametrize("mods", PAIRS)
def test_queue_group_prefers_member_on_this_worker(mods):
    d, router, pub, local, route = _queue_setup(mods)
    for i in range(10):
        assert d.publish(router, pub, b"jobs", None, 0, b"%d" % i) == 1
    assert bytes(local.out).count(b"MSG jobs l ") == 10
    assert bytes(route.out) == b""
    # the local member leaves: the route gets the group's messages again
    d.remove_sub(router, local.subs.pop(b"l"))
    assert d.publish(router, pub, b"jobs", None, 0, b"x") == 1
    assert bytes(route.out) == b"MSG jobs r 1\r\nx\r\n"


@pytest.mark.parametrize("mods", PAIRS)
def test_queue_group_skips_publisher_without_echo(mods):
    d, router, pub, local, route = _queue_setup(mods)
    local.echo = False
    for i in range(4):  # the only local member is the publisher itself: the route gets it
        assert d.publish(router, local, b"jobs", None, 0, b"%d" % i) == 1
    assert bytes(route.out).count(b"MSG jobs r ") == 4
    assert bytes(local.out) == b""


@pytest.mark.parametrize("mods", PAIRS)
def test_link_frames_deliver_to_local_interest(mods):
    d, r = mods
    router = r.Router()
    dirty: list = []
    a = d.Conn("a", dirty)
    a.headers = True
    sub = d.Sub(a, b"7", b"ev.*", None)
    a.subs[b"7"] = sub
    router.insert(sub)
    hdr = b"NATS/1.0\r\n\r\n"
    frames = [(12, b"ev.1", b"s1", None, b"one"),
              (13, b"ev.2", b"s1", b"inbox", len(hdr), hdr + b"two"),
              (12, b"ev.3", b"gone", None, b"dropped"),   # interest withdrawn: at-most-once
              (12, b"$E.x", b"E", None, b"event"),         # an event: the link layer's
              (12, b"ev.4", b"s1", None, b"four"),
              (5,)]
    local_by_sid = {b"s1": (b"ev.*", None)}
    i = d.link_frames(frames, 0, local_by_sid, router, b"E")
    assert i == 3
    assert d.link_frames(frames, i + 1, local_by_sid, router, b"E") == 5
    assert bytes(a.out) == (b"MSG ev.1 7 3\r\none\r\nHMSG ev.2 7 inbox 12 15\r\nNATS/1.0\r\n\r\ntwo\r\n"
                            b"MSG ev.4 7 4\r\nfour\r\n")


@pytest.mark.parametrize("mods", PAIRS)
def test_responder_answers_only_the_requester(mods):
    d, r = mods
    router = r.Router()
    dirty: list = []
    me, other = d.Conn("me", dirty), d.Conn("other", dirty)
    for conn, sid in ((me, b"1"), (other, b"2")):  # both listen on the same inbox pattern
        sub = d.Sub(conn, sid, b"_INBOX.x.*", None)
        conn.subs[sid] = sub
        router.insert(sub)
    flushes = []
    d.Responder(router, me, b"_INBOX.x.7", lambda: flushes.append(1))(b'{"error":""}')
    assert bytes(me.out) == b'MSG _INBOX.x.7 1 12\r\n{"error":""}\r\n'
    assert bytes(other.out) == b""
    assert flushes == [1]
    d.Responder(router, me, None, flushes.append)(b"{}")  # no reply subject: nothing
    me.closed = True
    d.Responder(router, me, b"_INBOX.x.8", flushes.append)(b"{}")  # requester gone: nothing
    assert flushes == [1] and b"_INBOX.x.8" not in bytes(me.out)
