"""The bulk SEND loops: the compiled ``_send`` module and its pure-Python twin ``send_py``.

Each test runs on both against the real components (parsed frames, the delivery ``Responder``, a
``MailboxService`` on a real LMDB store); ``test_twins_write_the_same`` checks that the two leave
the same keys and values in LMDB.  The wire tests cover the same path through a broker.
"""
from __future__ import annotations

import asyncio
import json

import pytest

from mq9fast import deliver_py, router_py
from mq9fast.mailbox import send_py
from mq9fast.mailbox.layout import URGENT
from test_mailbox_support import call, engine
from twins import twin_params

try:
    from mq9fast import _deliver, _router
    from mq9fast.mailbox import _send
except ImportError:  # pragma: no cover - the extensions are built by setup.py
    _send = _deliver = _router = None

MODS = twin_params((send_py, deliver_py, router_py),
                   None if _send is None else (_send, _deliver, _router), "mq9fast.mailbox._send")
SUBJ = b"$mq9.AI.MSG.SEND.a.box"
EARLIEST = b'{"deliver":"earliest","config":{"num_msgs":100}}'


def conn_and_router(d, r):
    conn = d.Conn("c", [])
    conn.authed = True
    router = r.Router()
    inbox = d.Sub(conn, b"1", b"_INBOX.>", None)
    conn.subs[b"1"] = inbox
    router.insert(inbox)
    return conn, router


@pytest.mark.parametrize("mods", MODS)
def test_take_sends_takes_a_run_of_known_send_frames(mods):
    s, d, r = mods
    conn, router = conn_and_router(d, r)
    flushes = []
    names = {SUBJ: b"a.box"}
    frames = [(1, SUBJ, b"_INBOX.1", b"one"), (1, SUBJ, None, b""),
              (1, b"$mq9.AI.MSG.SEND.other", b"_INBOX.2", b"x"),  # not in names: stops the run
              (1, SUBJ, b"_INBOX.3", b"three")]
    items: list = []
    assert s.take_sends(frames, 0, conn, router, names, items, lambda: flushes.append(1), False,
                        d.Responder) == 2
    assert [(it[0], it[1], it[3]) for it in items] == [(b"a.box", b"one", None), (b"a.box", b"", None)]
    assert conn.msgs_in == 2
    assert s.take_sends(frames, 2, conn, router, names, items, None, False, d.Responder) == 2
    assert s.take_sends(frames, 3, conn, router, names, items, lambda: flushes.append(1), True,
                        d.Responder) == 4
    assert isinstance(items[-1][3], float)  # timed: arrival time recorded
    # each respond() answers on the request's own reply subject, once
    items[0][2](b"r0")
    items[1][2](b"r1")      # no reply subject: nothing to send
    items[2][2](b"r2")
    assert bytes(conn.out) == b"MSG _INBOX.1 1 2\r\nr0\r\nMSG _INBOX.3 1 2\r\nr2\r\n"
    assert flushes == [1, 1]


@pytest.mark.parametrize("mods", MODS)
def test_take_sends_refuses_unauthenticated_and_answers_verbose(mods):
    s, d, r = mods
    conn, router = conn_and_router(d, r)
    frames = [(1, SUBJ, b"_INBOX.1", b"x"), (2, SUBJ, b"_INBOX.1", 0, b"x")]  # PUB, then an HPUB
    items: list = []
    conn.authed = False
    assert s.take_sends(frames, 0, conn, router, {SUBJ: b"a.box"}, items, None, False, d.Responder) == 0
    conn.authed = True
    conn.verbose = True
    assert s.take_sends(frames, 0, conn, router, {SUBJ: b"a.box"}, items, None, False, d.Responder) == 1
    assert bytes(conn.out) == b"+OK\r\n" and len(items) == 1


def _items(payloads, name=b"a.box", respond=None):
    return [(name, p, respond, None) for p in payloads]


async def _write(svc, mod, items):
    return await svc.store.write(lambda txn: mod.write_sends(svc, txn, items))


@pytest.mark.parametrize("mods", MODS)
async def test_write_sends_stores_messages_and_ids(mods, tmp_path):
    s = mods[0]
    async with engine(tmp_path) as svc:
        await call(svc.create(json.dumps({"name": "a.box", "ttl": 0}).encode()))
        await call(svc.create(json.dumps({"name": "b.box", "ttl": 0}).encode()))
        items = _items([b"p0", b"", bytes(range(256))]) + _items([b"b0"], b"b.box") \
            + _items([b"lost"], b"no.such") + _items([b"p3"])
        # one SEND with options in the middle: urgent lane, a key and tags
        items.insert(2, (b"a.box", URGENT, 0, b"NATS/1.0\r\nmq9-priority: urgent\r\n\r\n", b"k",
                         b'["t"]', ["t"], b"opt", None, None))
        out = await _write(svc, s, items)
        mbid_a = out[0][0]
        assert [r[1] if r else r for r in out] == [0, 1, 2, 3, 0, None, 4]
        assert out[4][0] != mbid_a
        import base64
        msgs = await call(svc.fetch("a.box", json.dumps({"deliver": "earliest", "config": {"num_msgs": 10}}).encode()))
        got = [(m["msg_id"], m["priority"], m["payload"]) for m in msgs["messages"]]
        assert got == [(2, "urgent", base64.b64encode(b"opt").decode())] + [
            (i, "normal", base64.b64encode(p).decode())
            for i, p in ((0, b"p0"), (1, b""), (3, bytes(range(256))), (4, b"p3"))]
        # ids continue in the next segment; the stored-message counters include every message
        out = await _write(svc, s, _items([b"next"]))
        assert out == [(mbid_a, 5)]
        assert svc.stats()["messages_stored"] == 7


@pytest.mark.parametrize("mods", MODS)
def test_answer_sends_replies_counts_and_observes(mods):
    s = mods[0]
    replies: list = []
    woken: list = []
    counts: dict = {}
    seen: list = []
    items = [(b"a", b"x", replies.append, 1.0), (b"a", b"y", replies.append, None),
             (b"zz", b"y", replies.append, None), (b"b", b"w", replies.append, None),
             (b"a", b"v", replies.append, None)]
    results = [(7, 0), (7, 1), None, (9, 18446744073709551615), ValueError("boom")]
    s.answer_sends(items, results, woken.append, counts, [lambda *a: seen.append(a)])
    assert replies == [b'{"error":"","msg_id":0}', b'{"error":"","msg_id":1}',
                       b'{"error":"mailbox zz does not exist"}', b'{"error":"","msg_id":18446744073709551615}',
                       b'{"error":"internal error: boom"}']
    assert woken == [7, 9]
    assert counts == {("MSG.SEND", "ok"): 3, ("MSG.SEND", "error"): 1, ("MSG.SEND", "internal"): 1}
    assert len(seen) == 1 and seen[0][:2] == ("MSG.SEND", "") and seen[0][2] > 0
    # a failed commit fails every item
    replies.clear()
    s.answer_sends(items[:2], RuntimeError("disk"), woken.append, counts, [])
    assert replies == [b'{"error":"internal error: disk"}'] * 2
    assert counts[("MSG.SEND", "internal")] == 3


async def test_twins_write_the_same(tmp_path):
    if _send is None:
        pytest.skip("compiled extension mq9fast.mailbox._send not built "
                    "(pip install . or python setup.py build_ext --inplace)")
    dumps = []
    for mod in (send_py, _send):
        path = tmp_path / mod.__name__
        async with engine(path) as svc:
            await call(svc.create(json.dumps({"name": "a.box", "ttl": 0}).encode()))
            items = _items([b"m%d" % i for i in range(50)]) + _items([b"x"], b"gone")
            await _write(svc, mod, items)
            rtxn = svc.store.env.begin()
            try:
                stats = svc.stats()  # (the counters, compared too)
                vals = {bytes(k): bytes(v)[:1] + bytes(v)[5:]  # (the create time is masked)
                        for k, v in rtxn.cursor(db=svc.d_msgs)}
            finally:
                rtxn.abort()
            dumps.append((stats, vals))
    assert dumps[0] == dumps[1]
    assert len(dumps[0][1]) == 50


def test_pipelined_sends_on_the_wire(shared_broker):
    """One TCP write holding a CREATE, plain SENDs (the first through the ordinary dispatch, the
    rest through ``take_sends``), an HPUB SEND with options and a FETCH in the middle: every
    command gets +OK (verbose), every SEND its own reply with ids in order, the FETCH sees the
    connection's earlier writes and not its later ones, nothing is lost."""
    from test_mailbox_support import uniq
    from test_nats_raw import Raw

    addr = uniq("pipe").encode()
    r = Raw(shared_broker, {"verbose": True})
    subj = b"$mq9.AI.MSG.SEND." + addr
    payloads = [bytes([i]) * i + b"\r\n\x00" for i in range(40)]  # binary, CRLF inside, empty-ish
    hdr = b"NATS/1.0\r\nmq9-priority: urgent\r\n\r\n"
    create = json.dumps({"name": addr.decode(), "ttl": 0}).encode()
    wire = [b"SUB _R.> 1\r\n", b"PUB $mq9.AI.MAILBOX.CREATE _R.c %d\r\n%s\r\n" % (len(create), create)]
    for i, p in enumerate(payloads):
        wire.append(b"PUB %s _R.%d %d\r\n%s\r\n" % (subj, i, len(p), p))
        if i == 20:
            wire.append(b"HPUB %s _R.u %d %d\r\n%sU\r\n" % (subj, len(hdr), len(hdr) + 1, hdr))
            wire.append(b"PUB $mq9.AI.MSG.FETCH.%s _R.f %d\r\n%s\r\n" % (addr, len(EARLIEST), EARLIEST))
    r.send(b"".join(wire))
    oks, replies = 0, {}
    while len(replies) < len(payloads) + 3:
        line = r.line()
        if line == b"+OK":
            oks += 1
            continue
        parts = line.split()
        assert parts[0] == b"MSG", line
        replies[parts[1].decode()] = json.loads(r.read(int(parts[-1]) + 2)[:-2])
    assert oks == 1 + 1 + len(payloads) + 2
    # the FETCH in the middle sees exactly what this connection sent before it (it waited for
    # their commit), and nothing sent after it
    mid = replies.pop("_R.f")
    assert mid["error"] == "", mid
    assert [m["msg_id"] for m in mid["messages"]] == [21] + list(range(21))
    assert all(v["error"] == "" for v in replies.values()), replies
    ids = [replies[f"_R.{i}"]["msg_id"] for i in range(len(payloads))]
    assert ids == list(range(21)) + list(range(22, 41))
    assert replies["_R.u"]["msg_id"] == 21
    # everything is stored, urgent first, payloads byte for byte
    r.send(b"PUB $mq9.AI.MSG.FETCH.%s _R.g %d\r\n%s\r\n" % (addr, len(EARLIEST), EARLIEST))
    while True:
        line = r.line()
        if line != b"+OK":
            break
    import base64
    got = json.loads(r.read(int(line.split()[-1]) + 2)[:-2])["messages"]
    assert [m["msg_id"] for m in got] == [21] + list(range(21)) + list(range(22, 41))
    assert [base64.b64decode(m["payload"]) for m in got] == [b"U"] + payloads
    r.close()


async def test_a_read_sees_the_writes_its_connection_sent_before_it(shared_broker):
    """Fire-and-forget SENDs (no reply subject), then a FETCH on the same connection: the FETCH
    is answered after those SENDs are committed, so it sees them; likewise a REGISTER, then a
    DISCOVER (nats-py, as an agent would)."""
    import nats

    from test_mailbox_support import create, fetch, uniq

    nc = await nats.connect(shared_broker.url, allow_reconnect=False)
    try:
        addr = await create(nc, uniq("ryw"))
        for i in range(50):
            await nc.publish(f"$mq9.AI.MSG.SEND.{addr}", b"m%d" % i)
        msgs = await fetch(nc, addr, deliver="earliest", config={"num_msgs": 100})
        assert [m["msg_id"] for m in msgs] == list(range(50))
        # a REGISTER published without waiting, then a DISCOVER: it waits for the REGISTER's
        # answer (embedding included) and finds the agent
        name = uniq("ryw.agent")
        await nc.publish("$mq9.AI.AGENT.REGISTER",
                         json.dumps({"name": name, "mailbox": addr, "payload": "zebra herding"}).encode())
        reply = json.loads((await nc.request("$mq9.AI.AGENT.DISCOVER",
                                             json.dumps({"text": "zebra herding"}).encode(), timeout=10)).data)
        assert name in [a["name"] for a in reply["agents"]]
        # a long-polling FETCH does not hold back later commands of its connection
        other = await create(nc, uniq("ryw.other"))
        waiting = asyncio.ensure_future(fetch(nc, other, config={"max_wait_ms": 5000}))
        await asyncio.sleep(0.2)
        t0 = asyncio.get_running_loop().time()
        got = await fetch(nc, addr, deliver="earliest", config={"num_msgs": 100})
        assert [m["msg_id"] for m in got] == list(range(50))
        assert asyncio.get_running_loop().time() - t0 < 2.0
        await nc.publish(f"$mq9.AI.MSG.SEND.{other}", b"wake")
        assert [m["payload"] for m in await waiting] == ["d2FrZQ=="]
    finally:
        await nc.close()
