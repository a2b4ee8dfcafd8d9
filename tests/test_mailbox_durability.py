"""Crash safety: a SIGKILLed broker loses nothing it acknowledged (DESIGN.md §3.5, PROTOCOL.md §2.1)."""
from __future__ import annotations

import asyncio
import json

import nats

from test_mailbox_support import ack, create, data, fetch, ids, ok, query, req, send


async def connect(b):
    return await nats.connect(b.url, allow_reconnect=False)


async def test_kill_9_loses_no_acknowledged_state(broker_factory):
    b = broker_factory()
    nc = await connect(b)
    box = await create(nc, "durable.box", ttl=0)
    timed = await create(nc, "timed.box", ttl=3600)
    n = 120
    got = await asyncio.gather(*(send(nc, box, b"payload-%d" % i,
                                      priority=("normal", "urgent", "critical")[i % 3],
                                      key="k%d" % i if i % 40 == 0 else None,
                                      tags="even" if i % 2 == 0 else None)
                                 for i in range(n)))
    assert sorted(got) == list(range(n))
    sent = {mid: b"payload-%d" % i for i, mid in enumerate(got)}
    # due well after the restart (a slow restart must not let it take id n before the checks)
    assert await send(nc, box, b"delayed", delay=10) == -1
    # group state: consume and ACK the first 30 (in FETCH order), lease 10 more without ACK
    batch = await fetch(nc, box, group_name="g", deliver="earliest", config={"num_msgs": 30})
    await ack(nc, box, "g", batch[-1]["msg_id"])
    leased = await fetch(nc, box, group_name="g", config={"num_msgs": 10})
    late = await fetch(nc, box, group_name="late", deliver="latest")  # persisted start, no ACK
    assert ids(late) == [n - 1]
    await ok(nc, f"$mq9.AI.MSG.DELETE.{box}.5", b"")
    await send(nc, timed, b"t")
    await nc.close()

    b.kill()
    b.start()
    nc = await connect(b)
    try:
        # every acknowledged message is there with its payload
        everything = await fetch(nc, box, deliver="earliest", config={"num_msgs": 1000})
        assert sorted(ids(everything)) == sorted(set(got) - {5})
        assert all(data(m) == sent[m["msg_id"]] for m in everything)
        deleted_i = got.index(5)
        assert len(await query(nc, box, tags=["even"], limit=100)) == 60 - (deleted_i % 2 == 0)
        # ids continue, never reused
        assert await send(nc, box, b"after restart") == n
        # mailboxes survive, including their TTL bookkeeping
        assert await send(nc, timed, b"t2") == 1
        assert (await req(nc, "$mq9.AI.MAILBOX.CREATE", {"name": box}))["error"] == \
            f"mailbox {box} already exists"
        # the group resumes: the 30 ACKed messages stay consumed; leases did not survive the crash
        rest = await fetch(nc, box, group_name="g", config={"num_msgs": 1000})
        acked = set(ids(batch))
        assert set(ids(rest)) == set(got) - {5} - acked | {n}
        assert set(ids(leased)) <= set(ids(rest))
        # the 'late' group kept its start position
        assert ids(await fetch(nc, box, group_name="late", deliver="earliest", config={"num_msgs": 1000})) \
            == [n - 1, n]
        # the delayed message survived the crash and is delivered when due
        later = await fetch(nc, box, deliver="from_id", from_id=n + 1, config={"max_wait_ms": 15000})
        assert [(m["msg_id"], data(m)) for m in later] == [(n + 1, b"delayed")]
    finally:
        await nc.close()


async def test_kill_9_under_concurrent_load(broker_factory):
    """Kill while SENDs are in flight: every SEND that got a reply is on disk after restart."""
    b = broker_factory()
    nc = await connect(b)
    box = await create(nc, "load.box", ttl=0)
    acked: dict[int, bytes] = {}

    async def producer(p: int) -> None:
        i = 0
        while True:
            payload = b"p%d-%d" % (p, i)
            try:
                reply = await nc.request(f"$mq9.AI.MSG.SEND.{box}", payload, timeout=1.0)
            except Exception:  # noqa: BLE001 - the broker died under us
                return
            acked[json.loads(reply.data)["msg_id"]] = payload
            i += 1

    tasks = [asyncio.ensure_future(producer(p)) for p in range(8)]
    while len(acked) < 300:
        await asyncio.sleep(0.01)
    b.kill()
    snapshot = dict(acked)  # replies received before the kill
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    try:
        await nc.close()
    except Exception:  # noqa: BLE001
        pass
    b.start()
    nc = await connect(b)
    try:
        stored = {}
        from_id = 0
        while True:
            msgs = await fetch(nc, box, deliver="from_id", from_id=from_id, config={"num_msgs": 5000})
            if not msgs:
                break
            stored.update({m["msg_id"]: data(m) for m in msgs})
            from_id = max(ids(msgs)) + 1
        for mid, payload in snapshot.items():
            assert stored.get(mid) == payload, mid
        assert sorted(stored) == list(range(len(stored)))  # no holes, no duplicates
        assert await send(nc, box, b"next") == len(stored)
    finally:
        await nc.close()


async def test_graceful_restart_and_expiry_across_restart(broker_factory):
    b = broker_factory()
    nc = await connect(b)
    short = await create(nc, "short.lived", ttl=2)
    await send(nc, short, b"x")
    await nc.close()
    b.stop()
    await asyncio.sleep(2.1)
    b.start()
    nc = await connect(b)
    try:
        assert (await ok(nc, "$mq9.AI.MAILBOX.CREATE", {"name": short, "ttl": 0}))["mail_address"] == short
        assert await query(nc, short) == []
        assert await send(nc, short, b"y") == 0
    finally:
        await nc.close()


async def test_damaged_lease_files_are_recreated_at_restart(broker_factory):
    """The lease environment is never fsynced, so a power cut may leave garbage in it: the next
    broker run starts it from new files instead of trying to open them, and group consumption
    resumes from the durable group state."""
    b = broker_factory()
    nc = await connect(b)
    box = await create(nc, "lease.damage", ttl=0)
    for i in range(4):
        await send(nc, box, b"m%d" % i)
    got = await fetch(nc, box, group_name="g", deliver="earliest", config={"num_msgs": 2})
    assert ids(got) == [0, 1]
    await ack(nc, box, "g", 1)  # durable: the group resumes after 1
    leased = await fetch(nc, box, group_name="g", config={"num_msgs": 1})
    assert ids(leased) == [2]   # leased, never ACKed
    await nc.close()
    b.kill()
    vol = b.data_dir / "mailbox-volatile"
    for name in ("data.mdb", "lock.mdb"):
        (vol / name).write_bytes(b"\xde\xad\xbe\xef" * 4096)
    b.start()
    nc = await connect(b)
    try:
        # message 2's lease died with the old run: it is delivered again, then 3
        again = await fetch(nc, box, group_name="g", config={"num_msgs": 10})
        assert ids(again) == [2, 3]
        await ack(nc, box, "g", 3)
        assert await fetch(nc, box, group_name="g", config={"num_msgs": 10}) == []
    finally:
        await nc.close()
