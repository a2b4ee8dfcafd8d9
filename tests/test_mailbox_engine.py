"""Engine-level checks the wire cannot observe: physical purging, index hygiene, volatile state.

These drive ``MailboxService`` directly on a real ``Store`` in a temporary directory.
"""
from __future__ import annotations

import asyncio
import time
import json

import pytest

from mq9fast.control import Mq9Error
from mq9fast.mailbox import MailboxService
from mq9fast.mailbox import service as service_mod
from test_mailbox_support import call, engine


@pytest.fixture
async def svc(tmp_path):
    async with engine(tmp_path / "data") as s:
        yield s


def db_entries(svc) -> dict[str, int]:
    out = {}
    with svc.store.read() as txn:
        for name in ("boxes", "msgs", "keys", "tags", "time", "groups", "gacks", "delayed", "mbexp",
                     "msgexp"):
            out[name] = txn.stat(getattr(svc, "d_" + name))["entries"]
    return out


def hdr(**opts) -> bytes:
    lines = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in opts.items())
    return f"NATS/1.0\r\n{lines}\r\n".encode()


async def test_expired_mailbox_is_physically_purged(svc):
    await call(svc.create(b'{"name":"keep","ttl":0}'))
    await call(svc.send("keep", None, b"stays"))
    before = db_entries(svc)
    await call(svc.create(b'{"name":"doomed","ttl":1}'))
    for i in range(20):
        await call(svc.send("doomed", hdr(mq9_key=f"k{i % 3}", mq9_tags="a,b", mq9_ttl=100,
                                          mq9_priority=("urgent", "normal")[i % 2]), b"x" * 50))
    await call(svc.send("doomed", hdr(mq9_delay=100), b"later"))
    got = await call(svc.fetch("doomed", b'{"group_name":"g","deliver":"earliest","config":{"num_msgs":2}}'))
    await call(svc.ack("doomed", json.dumps({"group_name": "g", "mail_address": "doomed",
                                             "msg_id": got["messages"][0]["msg_id"]}).encode()))
    assert db_entries(svc)["msgs"] == before["msgs"] + 3 + 0  # compaction left 3 keyed messages
    await asyncio.sleep(1.05)
    with pytest.raises(Mq9Error):
        await call(svc.send("doomed", None, b"x"))
    while await svc.sweep_once():
        pass
    after = db_entries(svc)
    # only the pending delayed message remains (it is dropped when due); everything else is gone
    assert {k: v for k, v in after.items() if k != "delayed"} == \
        {k: v for k, v in before.items() if k != "delayed"}
    assert after["delayed"] == 1
    with svc.vol.env.begin() as vt:
        assert vt.stat(svc.vol.leases)["entries"] == 0


async def test_large_purge_runs_in_several_commits(svc, monkeypatch):
    monkeypatch.setattr(service_mod, "SWEEP_BUDGET", 50)
    for task in svc._tasks:  # this test counts the purge rounds itself: no background sweeper
        if task.get_name() == "mq9-sweep":
            task.cancel()
    t0 = time.monotonic()
    await call(svc.create(b'{"name":"big","ttl":4}'))  # room for 400 SENDs on a loaded machine
    await asyncio.gather(*(call(svc.send("big", None, b"%d" % i)) for i in range(400)))
    await asyncio.sleep(max(0.0, 4.05 - (time.monotonic() - t0)))
    rounds = 1
    while await svc.sweep_once():
        rounds += 1
    assert rounds > 5
    assert db_entries(svc)["msgs"] == 0 and db_entries(svc)["boxes"] == 0


async def test_expired_messages_are_purged_with_their_indexes(svc):
    await call(svc.create(b'{"name":"m","ttl":0}'))
    await call(svc.send("m", hdr(mq9_ttl=1, mq9_key="k", mq9_tags="t1,t2"), b"short"))
    await call(svc.send("m", None, b"long"))
    await asyncio.sleep(1.05)
    await svc.sweep_once()
    e = db_entries(svc)
    assert (e["msgs"], e["keys"], e["tags"], e["msgexp"]) == (1, 0, 0, 0)


async def test_delete_and_compaction_clean_indexes(svc):
    await call(svc.create(b'{"name":"c","ttl":0}'))
    for i in range(5):
        await call(svc.send("c", hdr(mq9_key="same", mq9_tags=f"t{i}", mq9_ttl=1000), b"%d" % i))
    e = db_entries(svc)
    assert (e["msgs"], e["keys"], e["tags"], e["msgexp"]) == (1, 1, 1, 1)
    assert (await call(svc.delete("c", "4")))["deleted"] is True
    e = db_entries(svc)
    assert (e["msgs"], e["keys"], e["tags"], e["msgexp"]) == (0, 0, 0, 0)


async def test_gacks_do_not_accumulate(svc):
    await call(svc.create(b'{"name":"g","ttl":0}'))
    for i in range(30):
        await call(svc.send("g", hdr(mq9_priority=("critical", "normal", "urgent")[i % 3]), b"%d" % i))
    seen = []
    while True:
        r = await call(svc.fetch("g", b'{"group_name":"w","deliver":"earliest","config":{"num_msgs":4,"max_wait_ms":0}}'))
        if not r["messages"]:
            break
        for m in reversed(r["messages"]):  # ACK out of order
            seen.append(m["msg_id"])
            await call(svc.ack("g", json.dumps({"group_name": "w", "mail_address": "",
                                                "msg_id": m["msg_id"]}).encode()))
    assert sorted(seen) == list(range(30))
    assert db_entries(svc)["gacks"] == 0  # every acknowledgement folded into the watermarks
    with svc.vol.env.begin() as vt:
        assert vt.stat(svc.vol.leases)["entries"] == 0
        assert vt.stat(svc.vol.batches)["entries"] == 0


async def test_non_utf8_header_block_is_kept_but_not_interpreted(svc):
    await call(svc.create(b'{"name":"h","ttl":0}'))
    block = b"NATS/1.0\r\nmq9-priority: critical\r\nx-bin: \xff\r\n\r\n"
    await call(svc.send("h", block, b"p"))
    m = (await call(svc.fetch("h", b'{"deliver":"earliest","config":{"max_wait_ms":0}}')))["messages"][0]
    assert m["priority"] == "normal"
    assert bytes(m["header"]) == block
    assert m["headers"]["x-bin"] == "\ufffd"


async def test_leases_do_not_survive_a_restart(svc, tmp_path):
    await call(svc.create(b'{"name":"l","ttl":0}'))
    await call(svc.send("l", None, b"job"))
    r = await call(svc.fetch("l", b'{"group_name":"g","deliver":"earliest","config":{"max_wait_ms":0}}'))
    assert len(r["messages"]) == 1
    r = await call(svc.fetch("l", b'{"group_name":"g","config":{"max_wait_ms":0}}'))
    assert r["messages"] == []
    await svc.close()
    again = MailboxService(svc.store, svc.config)
    await again.start()
    try:
        r = await call(again.fetch("l", b'{"group_name":"g","config":{"max_wait_ms":0}}'))
        assert [m["msg_id"] for m in r["messages"]] == [0]
    finally:
        await again.close()
        svc.vol = None


async def test_long_names_and_keys_are_hashed_into_keys(svc):
    await call(svc.create(b'{"name":"long","ttl":0}'))
    key = "k" * 2000
    tag = "t" * 900
    await call(svc.send("long", hdr(mq9_key=key, mq9_tags=tag), b"1"))
    await call(svc.send("long", hdr(mq9_key=key, mq9_tags=tag), b"2"))
    q = await call(svc.query("long", json.dumps({"key": key}).encode()))
    assert [m["payload"] for m in q["messages"]] == ["Mg=="]
    q = await call(svc.query("long", json.dumps({"tags": [tag]}).encode()))
    assert len(q["messages"]) == 1
    group = "g" * 3000
    r = await call(svc.fetch("long", json.dumps({"group_name": group, "deliver": "earliest",
                                                 "config": {"max_wait_ms": 0}}).encode()))
    assert len(r["messages"]) == 1
