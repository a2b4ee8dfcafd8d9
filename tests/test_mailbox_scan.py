"""The FETCH/ACK hot loops: the compiled ``_scan`` module and its pure-Python twin ``scan_py``.

Every test runs on both (``mod``) against a real LMDB environment, and ``test_twins_agree`` checks
that they produce the same bytes and the same LMDB contents on a mixed mailbox.
"""
from __future__ import annotations

import base64
import json
import random

import lmdb
import pytest

from mq9fast.mailbox import scan_py
from twins import twin_params
from mq9fast.mailbox.layout import (
    BATCH_HEAD, LANE_ID, LEASE, NORMAL, URGENT, CRITICAL, encode_value, lane_prefix, msg_key, u64,
)

try:
    from mq9fast.mailbox import _scan
except ImportError:  # pragma: no cover - the extension is built by setup.py
    _scan = None

MODS = twin_params(scan_py, _scan, "mq9fast.mailbox._scan")
NOW = 1_700_000_000_000
MBID = 7
GID = 3
GP = u64(GID)


@pytest.fixture
def env(tmp_path):
    e = lmdb.open(str(tmp_path / "env"), map_size=1 << 26, max_dbs=8, sync=False)
    yield e
    e.close()


def dbs(env):
    return (env.open_db(b"msgs"), env.open_db(b"gacks"), env.open_db(b"leases"), env.open_db(b"batches"))


def fill(env, msgs):
    """msgs: [(lane, id, value)]"""
    d_msgs = dbs(env)[0]
    with env.begin(write=True) as txn:
        for lane, mid, v in msgs:
            txn.put(msg_key(MBID, lane, mid), v, db=d_msgs)
        # a neighbouring mailbox on both sides, which must never be read
        for other in (MBID - 1, MBID + 1):
            for lane in (CRITICAL, URGENT, NORMAL):
                txn.put(msg_key(other, lane, 0), encode_value(1, 0, None, None, None, b"other"), db=d_msgs)


def plain(payload: bytes, t: int = 1_700_000_000) -> bytes:
    return encode_value(t, 0, None, None, None, payload)


def run_collect(mod, env, pos=(0, 0, 0), limit=100, raw=False, budget=1 << 30, group=False, now=NOW):
    d_msgs, d_gacks, d_leases, _ = dbs(env)
    with env.begin(buffers=True) as rtxn, env.begin(write=True, db=d_leases) as vtxn:
        gc = rtxn.cursor(db=d_gacks)
        if not (gc.set_range(GP) and gc.key()[:8] == GP):
            gc = None
        lc = vtxn.cursor(db=d_leases)
        lc = lc if lc.set_range(GP) and lc.key()[:8] == GP else None
        cur = rtxn.cursor(db=d_msgs)
        return mod.collect(cur, MBID, pos, limit, raw, now, budget, GP if group else None,
                           gc if group else None, lc if group else None)


@pytest.mark.parametrize("mod", MODS)
def test_plain_messages_in_lane_order_with_base64(mod, env):
    payloads = [bytes(range(n)) for n in range(12)] + [b"\xff\xfe" * 40]
    msgs = [((CRITICAL, URGENT, NORMAL)[i % 3], i, plain(p, 1000 + i)) for i, p in enumerate(payloads)]
    fill(env, msgs)
    reply, n, wake, picked = run_collect(mod, env)
    assert (n, wake, picked) == (len(msgs), 0, None)
    obj = json.loads(reply)
    assert obj["error"] == ""
    order = sorted(msgs, key=lambda m: (m[0], m[1]))
    assert [m["msg_id"] for m in obj["messages"]] == [m[1] for m in order]
    for m, (lane, mid, _v) in zip(obj["messages"], order):
        assert base64.b64decode(m["payload"]) == payloads[mid]
        assert m["priority"] == ("critical", "urgent", "normal")[lane]
        assert m["header"] is None and m["create_time"] == 1000 + mid
        assert list(m) == ["msg_id", "payload", "priority", "header", "create_time"]


@pytest.mark.parametrize("mod", MODS)
def test_limit_start_positions_expiry_and_budget(mod, env):
    fill(env, [(NORMAL, i, plain(b"x" * 10)) for i in range(10)]
           + [(URGENT, 20, encode_value(5, NOW - 1, None, None, None, b"expired")),
              (URGENT, 21, encode_value(5, NOW + 5000, None, b"k", None, b"lives"))])
    assert run_collect(mod, env, limit=0)[:2] == (None, 0)
    reply, n, _, _ = run_collect(mod, env, limit=3)
    assert n == 3 and [m["msg_id"] for m in json.loads(reply)["messages"]] == [21, 0, 1]
    reply, n, _, _ = run_collect(mod, env, pos=(0, 22, 8))
    assert [m["msg_id"] for m in json.loads(reply)["messages"]] == [8, 9]
    # budget: at least one message, then only while the payload bytes fit
    reply, n, _, _ = run_collect(mod, env, pos=(0, 22, 0), budget=25)
    assert n == 2
    reply, n, _, _ = run_collect(mod, env, pos=(0, 22, 0), budget=1)
    assert n == 1
    # the expired one is invisible, the one with options is encoded by the Python encoder
    m = json.loads(run_collect(mod, env, pos=(0, 0, 99))[0])["messages"]
    assert [x["msg_id"] for x in m] == [21] and m[0]["key"] == "k" and m[0]["expire_at"] == (NOW + 5000) // 1000
    assert run_collect(mod, env, pos=(0, 99, 99))[:2] == (None, 0)


@pytest.mark.parametrize("mod", MODS)
def test_raw_encoding(mod, env):
    fill(env, [(NORMAL, 0, plain("héllo \"q\"\n".encode())), (NORMAL, 1, plain(b"\xff"))])
    m = json.loads(run_collect(mod, env, raw=True)[0])["messages"]
    assert [x["payload"] for x in m] == ["héllo \"q\"\n", "\ufffd"]


@pytest.mark.parametrize("mod", MODS)
def test_group_skips_acked_and_leased_and_reports_redelivery(mod, env):
    fill(env, [(NORMAL, i, plain(b"m%d" % i)) for i in range(6)])
    d_msgs, d_gacks, d_leases, _ = dbs(env)
    with env.begin(write=True) as txn:
        txn.put(GP + u64(1), b"", db=d_gacks)                                  # acked
        txn.put(GP + u64(2), LEASE.pack(NOW + 500, 9, 1, NORMAL), db=d_leases)  # leased
        txn.put(GP + u64(3), LEASE.pack(NOW - 1, 9, 2, NORMAL), db=d_leases)    # lease expired
        txn.put(u64(GID + 1) + u64(4), b"", db=d_gacks)                        # another group's
    reply, n, wake, picked = run_collect(mod, env, group=True)
    m = json.loads(reply)["messages"]
    assert [(x["msg_id"], x["redelivered"]) for x in m] == [(0, 0), (3, 2), (4, 0), (5, 0)]
    assert wake == NOW + 500
    assert picked == [(NORMAL, 0, 0), (NORMAL, 3, 2), (NORMAL, 4, 0), (NORMAL, 5, 0)]


@pytest.mark.parametrize("mod", MODS)
def test_lease_batch_and_batch_upto(mod, env):
    _, _, d_leases, _ = dbs(env)
    picked = [(CRITICAL, 5, 0), (NORMAL, 2, 3), (NORMAL, 1 << 40, 0)]
    with env.begin(write=True) as txn:
        bv = mod.lease_batch(txn.cursor(db=d_leases).put, GP, picked, NOW + 30000, 77)
    assert bv == BATCH_HEAD.pack(NOW + 30000) + b"".join(LANE_ID.pack(l, m) for l, m, _ in picked)
    with env.begin() as txn:
        got = {bytes(k): LEASE.unpack(v) for k, v in txn.cursor(db=d_leases)}
    assert got == {GP + u64(m): (NOW + 30000, 77, c + 1, l) for l, m, c in picked}
    assert mod.batch_upto(bv, 5) == ([(CRITICAL, 5)], False)
    assert mod.batch_upto(bv, 2) == ([(CRITICAL, 5), (NORMAL, 2)], False)
    assert mod.batch_upto(bv, 1 << 40) == ([(CRITICAL, 5), (NORMAL, 2), (NORMAL, 1 << 40)], True)
    assert mod.batch_upto(bv, 3) == ([], False)
    assert mod.batch_upto(BATCH_HEAD.pack(1), 3) == ([], False)


@pytest.mark.parametrize("mod", MODS)
def test_advance_and_release(mod, env):
    d_msgs, d_gacks, d_leases, _ = dbs(env)
    fill(env, [(NORMAL, i, plain(b"x")) for i in (0, 1, 2, 4, 5, 7, 8)] + [(URGENT, 3, plain(b"u"))])
    with env.begin(write=True) as txn:
        txn.put(GP + u64(2), b"", db=d_gacks)   # an older ACK record on the way
        txn.put(GP + u64(8), b"", db=d_gacks)   # one above a gap
        mc, gc = txn.cursor(db=d_msgs), txn.cursor(db=d_gacks)
        acked = {0, 1, 4, 7}
        assert mod.advance(mc, lane_prefix(MBID, NORMAL), 0, acked, gc, GP) == 5
        assert acked == {7}  # 0, 1, 4 passed over; 7 is above the new watermark
        assert not txn.get(GP + u64(2), db=d_gacks) and txn.get(GP + u64(8), db=d_gacks) is not None
        # nothing acked at the watermark: it stays (or moves onto the first existing id)
        assert mod.advance(mc, lane_prefix(MBID, NORMAL), 6, set(), None, GP) == 7
        assert mod.advance(mc, lane_prefix(MBID, URGENT), 4, {9}, None, GP) == 4       # no key left
        assert mod.advance(mc, lane_prefix(MBID, URGENT), 0, {3}, None, GP) == 4       # ran off the end
        # a whole batch from the watermark on: passed over without reading it, ids that are not
        # in the lane included (12 is not a CRITICAL message)
        acked = {12}
        assert mod.advance(mc, lane_prefix(MBID, CRITICAL), 12, acked, None, GP) == 13
        assert acked == set()
        acked = {5, 6}
        assert mod.advance(mc, lane_prefix(MBID, NORMAL), 5, acked, None, GP) == 7
        assert acked == set()
        # ... and with older ACK records, the walk goes on after it (8 has one, 7 does not)
        acked = {5, 6, 7}
        assert mod.advance(mc, lane_prefix(MBID, NORMAL), 5, acked, gc, GP) == 9
        assert acked == set() and txn.get(GP + u64(8), db=d_gacks) is None
        for m in (1, 2, 3):
            txn.put(GP + u64(m), b"lease", db=d_leases)
        txn.put(u64(GID + 1) + u64(2), b"other", db=d_leases)
        mod.release(txn.cursor(db=d_leases), GP, [1, 3, 99])
        assert [bytes(k) for k, _ in txn.cursor(db=d_leases)] == [GP + u64(2), u64(GID + 1) + u64(2)]


def test_twins_agree(tmp_path):
    assert _scan is not None, "the compiled scan extension must be built (as in CI)"
    rnd = random.Random(5)
    msgs = []
    for i in range(400):
        lane = rnd.choice((CRITICAL, URGENT, NORMAL))
        kind = rnd.random()
        if kind < 0.7:
            v = plain(bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 40))), 1000 + i)
        elif kind < 0.8:
            v = encode_value(1000 + i, NOW + rnd.choice((-1, 1)) * 1000, None, None, None, b"ttl")
        else:
            v = encode_value(1000 + i, 0, b"NATS/1.0\r\nmq9-key: a\r\n\r\n", b"a", b'["t"]', b"opt")
        msgs.append((lane, i, v))
    outs = []
    for mod in (scan_py, _scan):
        env = lmdb.open(str(tmp_path / mod.__name__), map_size=1 << 26, max_dbs=8, sync=False)
        fill(env, msgs)
        d_msgs, d_gacks, d_leases, _ = dbs(env)
        with env.begin(write=True) as txn:
            for i in range(0, 400, 7):
                txn.put(GP + u64(i), b"", db=d_gacks)
            for i in range(3, 400, 11):
                txn.put(GP + u64(i), LEASE.pack(NOW + (i % 2) * 1000 - 500, 1, i % 4, NORMAL), db=d_leases)
        res = [run_collect(mod, env, pos=(5, 9, 0), limit=50, group=True),
               run_collect(mod, env, pos=(0, 0, 0), limit=1000),
               run_collect(mod, env, pos=(0, 0, 0), limit=1000, budget=300, raw=True)]
        with env.begin(write=True) as txn:
            acked = set(range(0, 200, 3))
            res.append([mod.advance(txn.cursor(db=d_msgs), lane_prefix(MBID, lane), 0, acked,
                                    txn.cursor(db=d_gacks), GP) for lane in (CRITICAL, URGENT, NORMAL)])
            res.append(sorted(acked))
            res.append(mod.lease_batch(txn.cursor(db=d_leases).put, GP, res[0][3], NOW, 4))
            mod.release(txn.cursor(db=d_leases), GP, range(0, 400, 2))
        with env.begin() as txn:
            res.append([(bytes(k), bytes(v)) for k, v in txn.cursor(db=d_gacks)])
            res.append([(bytes(k), bytes(v)) for k, v in txn.cursor(db=d_leases)])
        env.close()
        outs.append(res)
    assert outs[0] == outs[1]
