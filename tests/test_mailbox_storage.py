"""The group-commit writer (``Store``) and the bulk SEND path that rides on it.

``Store.submit`` segments: one ``apply`` call per run of consecutive submissions, results in
submission order, failures confined to the item that caused them; ``Store.write`` keeps its
per-request isolation; both share one transaction and are applied in submission order.  Then the
dispatcher's SEND fast path end to end on a real ``Store`` (replies, errors, counters, fallback).
"""
from __future__ import annotations

import asyncio
import json

import lmdb
import pytest

from mq9fast.config import Config
from mq9fast.control import Control
from mq9fast.mailbox import MailboxService
from mq9fast.storage import Store


class Bulk:
    """Puts ``key -> value`` per item; an item whose value is None makes ``apply`` raise."""

    def __init__(self, store):
        self.store = store
        self.calls = []
        self.done_calls = []
        self.db = store.db("t")

    def apply(self, txn, items):
        self.calls.append(len(items))
        out = []
        for key, value in items:
            if value is None:
                raise ValueError(f"bad item {key!r}")
            prev = txn.get(key, db=self.db)
            txn.put(key, value, db=self.db)
            out.append(None if prev is None else bytes(prev))
        return out

    def done(self, items, results):
        self.done_calls.append((list(items), results))


@pytest.fixture
async def store(tmp_path):
    s = Store(str(tmp_path / "data"), map_size=1 << 26)
    s.start()
    yield s
    await s.drain()
    s.close()


def get(store, key, db="t"):
    with store.read() as txn:
        v = txn.get(key, db=store.db(db))
        return None if v is None else bytes(v)


async def test_segments_share_one_commit_and_keep_order(store):
    bulk = Bulk(store)
    for i in range(5):
        store.submit(bulk, (b"k%d" % i, b"v%d" % i))

    def fn(txn):  # a write between two runs of submissions sees the first run
        assert txn.get(b"k4", db=bulk.db) == b"v4"
        txn.put(b"k0", b"from-write", db=bulk.db)
        return "w"

    fut = store.write(fn)
    store.submit(bulk, (b"k0", b"again"))
    assert await fut == "w"
    await store.drain()
    assert bulk.calls == [5, 1]  # two segments, one apply call each
    assert store.batches == 1 and store.last_batch_size == 7
    assert [r for _, r in bulk.done_calls] == [[None] * 5, [b"from-write"]]
    assert get(store, b"k0") == b"again"


async def test_failing_item_is_isolated(store):
    bulk = Bulk(store)
    store.submit(bulk, (b"a", b"1"))
    store.submit(bulk, (b"b", None))
    store.submit(bulk, (b"c", b"3"))
    await store.drain()
    (items, results), = bulk.done_calls
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], ValueError)
    assert get(store, b"a") == b"1" and get(store, b"c") == b"3" and get(store, b"b") is None
    assert bulk.calls == [3, 1, 1, 1]  # the segment, then each item alone


async def test_write_failures_stay_isolated_and_next_batches_run(store):
    db = store.db("t")

    def bad(txn):
        txn.put(b"x", b"partial", db=db)
        raise RuntimeError("boom")

    def good(txn):
        txn.put(b"y", b"ok", db=db)
        return 1

    f1, f2 = store.write(bad), store.write(good)
    with pytest.raises(RuntimeError):
        await f1
    assert await f2 == 1
    assert get(store, b"x") is None and get(store, b"y") == b"ok"
    # requests arriving while a commit runs form the next batch
    futs = [store.write(good) for _ in range(3)]
    await asyncio.sleep(0)
    futs += [store.write(good) for _ in range(3)]
    assert await asyncio.gather(*futs) == [1] * 6


async def test_a_failing_write_transaction_fails_the_batch_and_never_hangs(tmp_path):
    """LMDB refusing to begin the write transaction (here: the real environment closed under the
    store) answers every request of the batch with that error; the writer thread survives, so
    the next batch is answered too and drain/close finish."""
    s = Store(str(tmp_path / "data"), map_size=1 << 26)
    s.start()
    bulk = Bulk(s)
    db = s.db("t")
    assert await s.write(lambda txn: txn.put(b"a", b"1", db=db)) is True
    s.env.close()
    f = s.write(lambda txn: txn.put(b"b", b"2", db=db))
    s.submit(bulk, (b"c", b"3"))
    with pytest.raises(lmdb.Error):  # (a hung writer would raise TimeoutError instead)
        await asyncio.wait_for(f, 5)
    for _ in range(50):
        if bulk.done_calls:
            break
        await asyncio.sleep(0.05)
    assert isinstance(bulk.done_calls[0][1], lmdb.Error)
    with pytest.raises(lmdb.Error):
        await asyncio.wait_for(s.write(lambda txn: None), 5)  # the writer thread is still there
    await asyncio.wait_for(s.drain(), 5)
    s.close()


async def test_when_done_waits_for_every_request_queued_before(store):
    """``when_done(seq)`` runs once the first ``seq`` requests are answered (after their results
    are delivered), at once if they are; waiters registered out of order each run as soon as
    their own requests are done."""
    db = store.db("t")
    bulk = Bulk(store)
    order = []
    assert store.submitted == store.completed == 0
    store.when_done(0, lambda: order.append("now"))
    f1 = store.write(lambda txn: txn.put(b"1", b"x", db=db))
    f1.add_done_callback(lambda f: order.append("w1"))
    seq1 = store.submitted
    store.submit_many(bulk, [(b"2", b"y"), (b"3", b"z")])
    seq3 = store.submitted
    assert (seq1, seq3) == (1, 3)
    store.when_done(seq3, lambda: order.append("after 3"))
    store.when_done(seq1, lambda: order.append("after 1"))
    await f1
    for _ in range(100):
        if "after 3" in order:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0)
    # one batch held all three: both waiters ran when it was answered (after the results were
    # delivered, before the future's own callbacks, which asyncio runs a step later)
    assert order == ["now", "after 3", "after 1", "w1"]
    assert bulk.done_calls and store.completed == 3
    assert get(store, b"3") == b"z"
    store.when_done(2, lambda: order.append("done already"))
    assert order[-1] == "done already"


async def test_submit_after_close_fails_the_item(tmp_path):
    s = Store(str(tmp_path / "data"), map_size=1 << 26)
    s.start()
    bulk = Bulk(s)
    s.close()
    s.submit(bulk, (b"k", b"v"))
    (items, results), = bulk.done_calls
    assert isinstance(results, RuntimeError)


# -- the SEND fast path ---------------------------------------------------------------------------
@pytest.fixture
async def control(tmp_path):
    store = Store(str(tmp_path / "data"), map_size=1 << 28)
    store.start()
    svc = MailboxService(store, Config(data_dir=str(tmp_path / "data")))
    await svc.start()
    yield Control(svc, None)
    await svc.close()
    await store.drain()
    store.close()


async def call(control, subject: bytes, payload: bytes = b"", headers: bytes | None = None) -> dict:
    fut = asyncio.get_running_loop().create_future()
    control.dispatch(subject, headers, payload, lambda body: fut.set_result(json.loads(body)))
    return await asyncio.wait_for(fut, 10)


async def test_send_fast_path(control):
    assert (await call(control, b"$mq9.AI.MAILBOX.CREATE", b'{"name":"a.b","ttl":0}'))["error"] == ""
    replies = await asyncio.gather(*(call(control, b"$mq9.AI.MSG.SEND.a.b", b"p%d" % i) for i in range(50)))
    assert sorted(r["msg_id"] for r in replies) == list(range(50))
    assert [r["msg_id"] for r in replies] == list(range(50))  # one connection's order is kept
    hdr = b"NATS/1.0\r\nmq9-priority: critical\r\nmq9-key: k\r\nmq9-tags: x,y\r\nmq9-ttl: 60\r\n\r\n"
    assert (await call(control, b"$mq9.AI.MSG.SEND.a.b", b"opt", hdr))["msg_id"] == 50
    hdr_delay = b"NATS/1.0\r\nmq9-delay: 60\r\n\r\n"
    assert await call(control, b"$mq9.AI.MSG.SEND.a.b", b"later", hdr_delay) == {"error": "", "msg_id": -1}
    assert await call(control, b"$mq9.AI.MSG.SEND.nope", b"x") == {"error": "mailbox nope does not exist"}
    assert await call(control, b"$mq9.AI.MSG.SEND.a..b", b"x") == \
        {"error": "unrecognized mq9 subject: $mq9.AI.MSG.SEND.a..b"}
    assert await call(control, b"$mq9.AI.MSG.SEND.a.b.", b"x") == \
        {"error": "unrecognized mq9 subject: $mq9.AI.MSG.SEND.a.b."}
    got = await call(control, b"$mq9.AI.MSG.FETCH.a.b",
                     b'{"deliver":"earliest","config":{"num_msgs":100},"payload_encoding":"raw"}')
    msgs = got["messages"]
    assert msgs[0]["msg_id"] == 50 and msgs[0]["key"] == "k" and msgs[0]["tags"] == ["x", "y"]
    assert [m["payload"] for m in msgs[1:]] == ["p%d" % i for i in range(50)]
    counts = control.counts
    assert counts[("MSG.SEND", "ok")] == 52
    assert counts[("MSG.SEND", "error")] == 1
    assert counts[("unknown", "error")] == 2  # as before: the router rejects those subjects
