"""``MailboxService.stats()`` / ``list_mailboxes()``: the stored-message counters (``mb.depth``) stay
equal to what ``mb.msgs`` holds through every path that stores or deletes messages, and the lease
and redelivery figures.  In-process, on a real ``Store`` (the wire-level checks are in
``test_http_stats.py``)."""
from __future__ import annotations

import asyncio
import json

import pytest

from mq9fast.mailbox import MailboxService
from mq9fast.mailbox import service as service_mod
from mq9fast.mailbox.stats import DEPTH, TOTAL_KEY
from test_mailbox_support import call, engine

LANES = ("critical", "urgent", "normal")


@pytest.fixture
async def svc(tmp_path):
    async with engine(tmp_path / "data", fsync="never") as s:
        yield s


def hdr(**opts) -> bytes:
    lines = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in opts.items())
    return f"NATS/1.0\r\n{lines}\r\n".encode()


def scanned(svc) -> dict[int, list[int]]:
    """The truth: messages per mailbox incarnation and lane, by a full scan of ``mb.msgs``."""
    out: dict[int, list[int]] = {}
    with svc.store.read() as txn:
        for k in txn.cursor(db=svc.d_msgs).iternext(keys=True, values=False):
            out.setdefault(int.from_bytes(bytes(k[:8]), "big"), [0, 0, 0])[k[8]] += 1
    return out


def counted(svc) -> tuple[list[int], dict[int, list[int]]]:
    rows = {}
    with svc.store.read() as txn:
        total = list(DEPTH.unpack(txn.get(TOTAL_KEY, db=svc.d_depth)))
        for k, v in txn.cursor(db=svc.d_depth):
            mbid = int.from_bytes(bytes(k), "big")
            if mbid:
                rows[mbid] = list(DEPTH.unpack(v))
    return total, rows


def assert_consistent(svc) -> None:
    truth = scanned(svc)
    total, rows = counted(svc)
    assert {m: r for m, r in rows.items() if any(r)} == truth
    assert total == [sum(r[i] for r in truth.values()) for i in range(3)]
    st = svc.stats()
    assert st["messages_by_priority"] == dict(zip(LANES, total))
    assert st["messages_stored"] == sum(total)


def send_bulk(svc, name: str, headers, payload: bytes) -> asyncio.Future:
    """``send_nowait`` (Control's fast path, ``_w_send_many``) as an awaitable."""
    fut = asyncio.get_running_loop().create_future()
    other = svc.send_nowait(name.encode(), headers, payload, lambda r: fut.set_result(json.loads(r)))
    return other if other is not None else fut


async def test_counters_follow_every_write_path(svc, monkeypatch):
    monkeypatch.setattr(service_mod, "SWEEP_BUDGET", 7)  # purge in several transactions
    await call(svc.create(b'{"name":"a","ttl":0}'))
    await call(svc.create(b'{"name":"b","ttl":0}'))
    await call(svc.create(b'{"name":"doomed","ttl":1}'))
    # bulk path: plain SENDs mixed with option SENDs and a missing mailbox in one segment
    futs = []
    for i in range(30):
        name = ("a", "b", "doomed", "nope")[i % 4]
        h = None if i % 3 else hdr(mq9_priority=LANES[i % 3 - 1 if i % 3 else i % 2])
        if i % 5 == 0:
            h = hdr(mq9_key=f"k{i % 2}", mq9_priority="urgent")  # keyed: replaces the older one
        futs.append(send_bulk(svc, name, h, b"%d" % i))
    replies = await asyncio.gather(*futs)
    assert sum(1 for r in replies if r.get("error")) == 7
    assert_consistent(svc)
    # future path, TTL messages, keyed replacement across lanes, delete
    await call(svc.send("a", hdr(mq9_priority="critical", mq9_key="k0"), b"c"))
    await call(svc.send("a", hdr(mq9_ttl=1), b"short"))
    await call(svc.send("b", hdr(mq9_ttl=1, mq9_priority="critical"), b"short"))
    assert (await call(svc.delete("a", "1")))["deleted"] is True
    await call(svc.send("b", hdr(mq9_delay=1, mq9_priority="urgent"), b"later"))
    assert svc.stats()["delayed"] == 1
    assert_consistent(svc)
    urgent = svc.stats()["messages_by_priority"]["urgent"]
    # the delay timer moves the delayed message in; TTL messages and the expired mailbox are swept
    for _ in range(100):
        await asyncio.sleep(0.05)
        if svc.stats()["delayed"] == 0 and svc.stats()["messages_by_priority"]["urgent"] == urgent + 1:
            break
    assert svc.stats()["delayed"] == 0 and svc.delayed_moved == 1
    assert svc.stats()["mailboxes"] == 2  # "doomed" expired, not yet swept: not counted
    rounds = 1
    while await svc.sweep_once():
        rounds += 1
    assert rounds > 1
    assert_consistent(svc)
    total, rows = counted(svc)
    assert len(rows) == 2  # the purged mailbox's record is gone
    assert svc.stats()["mailboxes"] == 2


async def test_counters_of_an_old_data_directory_are_built_at_start(svc):
    await call(svc.create(b'{"name":"old","ttl":0}'))
    for i in range(12):
        await call(svc.send("old", hdr(mq9_priority=LANES[i % 3]), b"x"))

    def forget(txn):
        txn.drop(svc.d_depth, delete=False)

    await svc.store.write(forget)
    await call(svc.send("old", None, b"before the recount"))  # not counted: no totals yet
    await svc.close()
    again = MailboxService(svc.store, svc.config)
    await again.start()
    try:
        assert again.stats()["messages_by_priority"] == {"critical": 4, "urgent": 4, "normal": 5}
        assert_consistent(again)
    finally:
        await again.close()
        svc.vol = None


async def test_leases_redeliveries_and_listing(svc):
    await call(svc.create(b'{"name":"q.one","ttl":0,"desc":"work"}'))
    await call(svc.create(b'{"name":"q.two","ttl":600}'))
    await call(svc.create(b'{"name":"z","ttl":0}'))
    for i in range(6):
        await call(svc.send("q.one", hdr(mq9_priority=LANES[i % 3]), b"%d" % i))
    fetch = b'{"group_name":"g","deliver":"earliest","config":{"num_msgs":%d,"max_wait_ms":0,"ack_wait_ms":%d}}'
    r = await call(svc.fetch("q.one", fetch % (4, 300)))
    short = [m["msg_id"] for m in r["messages"]]
    assert len(short) == 4
    st = svc.stats()
    assert (st["leases"], st["redeliveries"], st["groups"]) == (4, 0, 1)
    # a second group holds two more leases for long; ACK of its first releases it
    r2 = await call(svc.fetch("q.one", b'{"group_name":"h","deliver":"earliest","config":{"num_msgs":2}}'))
    assert svc.stats()["leases"] == 6
    await call(svc.ack("q.one", json.dumps({"group_name": "h", "msg_id": r2["messages"][0]["msg_id"]}).encode()))
    assert svc.stats()["leases"] == 5
    await asyncio.sleep(0.4)  # group g's leases expire
    assert svc.stats()["leases"] == 1
    r = await call(svc.fetch("q.one", fetch % (10, 60000)))
    again = [m for m in r["messages"] if m["msg_id"] in short]
    assert len(again) == 4 and all(m.get("redelivered") for m in again)
    st = svc.stats()
    assert st["redeliveries"] == 4 and st["leases"] == 1 + 6
    # listing: order, paging, prefix, depth, groups with their leases
    total, items = svc.list_mailboxes(0, 10)
    assert total == 3 and [i["address"] for i in items] == ["q.one", "q.two", "z"]
    one = items[0]
    assert one["depth"] == {"critical": 2, "urgent": 2, "normal": 2} and one["desc"] == "work"
    assert {g["name"]: g["leased"] for g in one["groups"]} == {"g": 6, "h": 1}
    assert items[1]["ttl"] == 600 and items[1]["expire_at"] is not None and items[2]["expire_at"] is None
    total, items = svc.list_mailboxes(1, 1)
    assert total == 3 and [i["address"] for i in items] == ["q.two"]
    total, items = svc.list_mailboxes(1, 5, prefix="q.")
    assert total == 2 and [i["address"] for i in items] == ["q.two"]
    assert svc.list_mailboxes(0, 5, prefix="nothing") == (0, [])


async def test_waiting_fetches_counts_parked_long_polls(svc):
    await call(svc.create(b'{"name":"w","ttl":0}'))
    polls = [asyncio.ensure_future(call(svc.fetch("w", b'{"deliver":"latest","config":{"max_wait_ms":5000}}')))
             for _ in range(3)]
    await asyncio.sleep(0.1)
    assert svc.stats()["waiting_fetches"] == 3
    await call(svc.send("w", None, b"wake"))
    await asyncio.gather(*polls)
    assert svc.stats()["waiting_fetches"] == 0
