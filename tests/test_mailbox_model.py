"""Property test: the engine against a small model, over random SEND/DELETE/FETCH/ACK sequences.

Runs ``MailboxService`` directly on a real ``Store`` (a temporary directory per example).
"""
from __future__ import annotations

import asyncio
import inspect
import json
import shutil
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mq9fast.config import Config
from mq9fast.mailbox import MailboxService
from mq9fast.storage import Store

LANES = ("critical", "urgent", "normal")

op = st.one_of(
    st.tuples(st.just("send"), st.sampled_from(LANES), st.sampled_from([None, None, "a", "b"])),
    st.tuples(st.just("delete"), st.integers(0, 40)),
    st.tuples(st.just("consume"), st.integers(1, 5), st.booleans()),
)


async def _call(r):
    if inspect.isawaitable(r):
        r = await r
    return json.loads(r) if isinstance(r, (bytes, bytearray)) else r


async def _run(ops) -> None:
    path = tempfile.mkdtemp(prefix="mq9model-")
    store = Store(path, fsync="never", map_size=1 << 28)
    store.start()
    svc = MailboxService(store, Config(data_dir=path))
    await svc.start()
    try:
        await _call(svc.create(b'{"name":"m","ttl":0}'))
        live: dict[int, tuple[int, str | None]] = {}  # id -> (lane, key)
        next_id = 0
        delivered: list[int] = []

        async def consume(n: int, ack_each: bool) -> list[int]:
            body = json.dumps({"group_name": "g", "deliver": "earliest",
                               "config": {"num_msgs": n, "max_wait_ms": 0}}).encode()
            msgs = (await _call(svc.fetch("m", body)))["messages"]
            got = [(LANES.index(m["priority"]), m["msg_id"]) for m in msgs]
            assert got == sorted(got), got  # lanes in order, FIFO within a lane
            assert len(msgs) <= n
            targets = [m["msg_id"] for m in msgs] if ack_each else [m["msg_id"] for m in msgs][-1:]
            for mid in targets:
                await _call(svc.ack("m", json.dumps({"group_name": "g", "mail_address": "m",
                                                     "msg_id": mid}).encode()))
            return [m["msg_id"] for m in msgs]

        for o in ops:
            if o[0] == "send":
                _, lane, key = o
                hdr = f"NATS/1.0\r\nmq9-priority: {lane}\r\n" + (f"mq9-key: {key}\r\n" if key else "") + "\r\n"
                mid = (await _call(svc.send("m", hdr.encode(), b"%d" % next_id)))["msg_id"]
                assert mid == next_id
                if key:
                    for old, (_l, k) in list(live.items()):
                        if k == key:
                            del live[old]
                live[mid] = (LANES.index(lane), key)
                next_id += 1
            elif o[0] == "delete":
                r = await _call(svc.delete("m", str(o[1])))
                assert r["deleted"] is (o[1] in live)
                live.pop(o[1], None)
            else:
                got = await consume(o[1], o[2])
                assert all(mid in live for mid in got)
                delivered += got
            # stateless views agree with the model
            q = (await _call(svc.query("m", b'{"limit":100}')))["messages"]
            assert [m["msg_id"] for m in q] == sorted(live)[:100]
            f = (await _call(svc.fetch("m", b'{"deliver":"earliest","config":{"num_msgs":1000,"max_wait_ms":0}}')))
            assert [(LANES.index(m["priority"]), m["msg_id"]) for m in f["messages"]] == \
                sorted((lane, mid) for mid, (lane, _k) in live.items())
        while True:
            got = await consume(3, False)
            if not got:
                break
            delivered += got
        assert len(delivered) == len(set(delivered)), delivered  # never twice
        assert set(live) <= set(delivered)  # every live message reached the group
    finally:
        await svc.close()
        await store.drain()
        store.close()
        shutil.rmtree(path, ignore_errors=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=40))
def test_engine_matches_model(ops):
    asyncio.run(_run(ops))
