"""Group FETCH, ACK, leases and competing consumers (PROTOCOL.md §5, DESIGN.md §3.3)."""
from __future__ import annotations

import asyncio
import collections

import nats
import pytest

from test_mailbox_support import (  # noqa: F401
    ack, client, create, data, err, fetch, ids, ok, send, uniq,
)


async def filled(nc, n: int, priorities=None) -> str:
    name = await create(nc, uniq())
    for i in range(n):
        await send(nc, name, b"msg-%d" % i, priority=priorities[i] if priorities else None)
    return name


async def test_fetch_ack_last_then_empty(client):
    name = await filled(client, 10)
    msgs = await fetch(client, name, group_name="g", deliver="earliest")
    assert ids(msgs) == list(range(10))
    assert all(m["redelivered"] == 0 for m in msgs)
    await ack(client, name, "g", msgs[-1]["msg_id"])
    assert await fetch(client, name, group_name="g", deliver="earliest") == []


async def test_paging_with_ack_last(client):
    name = await filled(client, 9)
    sizes = []
    seen = []
    for _ in range(4):
        msgs = await fetch(client, name, group_name="pager", deliver="earliest", config={"num_msgs": 3})
        sizes.append(len(msgs))
        seen += ids(msgs)
        if msgs:
            await ack(client, name, "pager", msgs[-1]["msg_id"])
    assert sizes == [3, 3, 3, 0]
    assert seen == list(range(9))


async def test_groups_are_independent(client):
    name = await filled(client, 5)
    a = await fetch(client, name, group_name="a", deliver="earliest")
    await ack(client, name, "a", a[-1]["msg_id"])
    b = await fetch(client, name, group_name="b", deliver="earliest")
    assert ids(a) == ids(b) == [0, 1, 2, 3, 4]
    assert await fetch(client, name, group_name="a", deliver="earliest") == []
    # the same group name on another mailbox is another group
    other = await filled(client, 2)
    assert ids(await fetch(client, other, group_name="a", deliver="earliest")) == [0, 1]


async def test_force_deliver_rewinds(client):
    name = await filled(client, 5)
    msgs = await fetch(client, name, group_name="g", deliver="earliest")
    await ack(client, name, "g", msgs[-1]["msg_id"])
    assert await fetch(client, name, group_name="g", deliver="earliest") == []
    again = await fetch(client, name, group_name="g", deliver="earliest", force_deliver=True)
    assert ids(again) == [0, 1, 2, 3, 4]
    # force also skips forward: latest + force = only the newest
    skip = await fetch(client, name, group_name="g", deliver="latest", force_deliver=True)
    assert ids(skip) == [4]
    await ack(client, name, "g", 4)
    assert await fetch(client, name, group_name="g") == []


async def test_force_deliver_on_new_group_is_plain(client):
    name = await filled(client, 3)
    assert ids(await fetch(client, name, group_name="new", deliver="earliest", force_deliver=True)) == [0, 1, 2]


async def test_latest_group_start_is_persisted(client):
    name = await filled(client, 5)
    first = await fetch(client, name, group_name="late", deliver="latest")
    assert ids(first) == [4]
    await ack(client, name, "late", 4)
    await send(client, name, b"msg-5")
    await send(client, name, b"msg-6")
    # the group continues from where it is; deliver is ignored once the group exists
    nxt = await fetch(client, name, group_name="late", deliver="earliest")
    assert ids(nxt) == [5, 6]


async def test_group_start_without_ack_is_kept(client):
    """A new group's start is stored at its first FETCH, even before any ACK."""
    name = await filled(client, 3)
    got = await fetch(client, name, group_name="lazy", deliver="latest", config={"ack_wait_ms": 200})
    assert ids(got) == [2]
    await send(client, name, b"msg-3")
    await asyncio.sleep(0.3)  # the lease of 2 expires
    again = await fetch(client, name, group_name="lazy", deliver="latest")
    assert ids(again) == [2, 3]  # not re-positioned at the new newest message


async def test_ack_each_with_mixed_priorities(client):
    # normal 0,1,2 then critical 3: batch is [3c, 0n, 1n, 2n]
    name = await filled(client, 4, ["normal", "normal", "normal", "critical"])
    batch = await fetch(client, name, group_name="w", deliver="earliest")
    assert ids(batch) == [3, 0, 1, 2]
    for m in batch:
        await ack(client, name, "w", m["msg_id"])
    assert await fetch(client, name, group_name="w") == []


async def test_ack_last_with_mixed_priorities(client):
    name = await filled(client, 4, ["normal", "normal", "normal", "critical"])
    batch = await fetch(client, name, group_name="w", deliver="earliest")
    await ack(client, name, "w", batch[-1]["msg_id"])
    assert await fetch(client, name, group_name="w") == []
    await send(client, name, b"msg-4", priority="urgent")
    assert ids(await fetch(client, name, group_name="w")) == [4]


async def test_num_msgs_one_with_mixed_priorities_is_lossless(client):
    name = await filled(client, 6, ["normal", "normal", "urgent", "critical", "normal", "critical"])
    seen = []
    while True:
        msgs = await fetch(client, name, group_name="one", deliver="earliest", config={"num_msgs": 1})
        if not msgs:
            break
        seen += ids(msgs)
        await ack(client, name, "one", msgs[0]["msg_id"])
    assert seen == [3, 5, 2, 0, 1, 4]


async def test_ack_prefix_of_batch_only(client):
    name = await filled(client, 6)
    batch = await fetch(client, name, group_name="p", deliver="earliest", config={"ack_wait_ms": 300})
    assert ids(batch) == [0, 1, 2, 3, 4, 5]
    await ack(client, name, "p", 2)  # confirms 0, 1, 2
    await asyncio.sleep(0.35)  # leases of 3, 4, 5 expire
    again = await fetch(client, name, group_name="p")
    assert ids(again) == [3, 4, 5]
    assert [m["redelivered"] for m in again] == [1, 1, 1]


async def test_ack_of_unleased_id_confirms_only_it(client):
    name = await filled(client, 5)
    # create the group without taking anything
    assert await fetch(client, name, group_name="u", deliver="earliest", config={"num_msgs": 0}) == []
    await ack(client, name, "u", 2)
    assert ids(await fetch(client, name, group_name="u")) == [0, 1, 3, 4]


async def test_ack_for_unknown_group_uses_robustmq_rule(client):
    name = await filled(client, 5)
    await ack(client, name, "never", 2)
    assert ids(await fetch(client, name, group_name="never", deliver="earliest")) == [3, 4]


async def test_ack_mailbox_from_body_or_subject(client):
    name = await filled(client, 3)
    other = await create(client, uniq())
    msgs = await fetch(client, name, group_name="g", deliver="earliest")
    # body mail_address wins over the subject
    await ok(client, f"$mq9.AI.MSG.ACK.{other}", {"group_name": "g", "mail_address": name, "msg_id": 2})
    assert await fetch(client, name, group_name="g") == []
    assert len(msgs) == 3
    # empty mail_address: the subject's mailbox
    await send(client, name, b"msg-3")
    assert ids(await fetch(client, name, group_name="g")) == [3]
    await ok(client, f"$mq9.AI.MSG.ACK.{name}", {"group_name": "g", "mail_address": "", "msg_id": 3})
    assert await fetch(client, name, group_name="g") == []
    missing = uniq()
    assert await err(client, f"$mq9.AI.MSG.ACK.{name}",
                     {"group_name": "g", "mail_address": missing, "msg_id": 1}) == \
        f"mailbox {missing} does not exist"


async def test_empty_group_name_is_a_group(client):
    name = await filled(client, 3)
    msgs = await fetch(client, name, group_name="", deliver="earliest")
    await ack(client, name, "", msgs[-1]["msg_id"])
    assert await fetch(client, name, group_name="") == []
    assert len(await fetch(client, name, deliver="earliest")) == 3  # stateless is unaffected


async def test_leased_messages_are_skipped_by_the_group(client):
    name = await filled(client, 6)
    a = await fetch(client, name, group_name="q", deliver="earliest", config={"num_msgs": 2})
    b = await fetch(client, name, group_name="q", deliver="earliest", config={"num_msgs": 2})
    c = await fetch(client, name, group_name="q", deliver="earliest", config={"num_msgs": 5})
    assert (ids(a), ids(b), ids(c)) == ([0, 1], [2, 3], [4, 5])
    assert await fetch(client, name, group_name="q") == []
    # another group is not affected by q's leases
    assert len(await fetch(client, name, group_name="other", deliver="earliest")) == 6
    # stateless FETCHes neither lease nor skip
    assert len(await fetch(client, name, deliver="earliest")) == 6


async def test_expired_lease_is_redelivered(client):
    name = await filled(client, 3)
    first = await fetch(client, name, group_name="r", deliver="earliest", config={"ack_wait_ms": 250})
    assert ids(first) == [0, 1, 2]
    assert await fetch(client, name, group_name="r") == []
    await asyncio.sleep(0.3)
    second = await fetch(client, name, group_name="r", config={"ack_wait_ms": 250})
    assert ids(second) == [0, 1, 2]
    assert [m["redelivered"] for m in second] == [1, 1, 1]
    await asyncio.sleep(0.3)
    third = await fetch(client, name, group_name="r")
    assert [m["redelivered"] for m in third] == [2, 2, 2]
    await ack(client, name, "r", 2)
    assert await fetch(client, name, group_name="r") == []


async def test_long_poll_wakes_on_lease_expiry(client):
    name = await filled(client, 2)
    taken = await fetch(client, name, group_name="lp", deliver="earliest", config={"ack_wait_ms": 500})
    assert ids(taken) == [0, 1]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    back = await fetch(client, name, group_name="lp", config={"max_wait_ms": 10000})
    elapsed = loop.time() - t0
    assert ids(back) == [0, 1] and back[0]["redelivered"] == 1
    assert 0.3 < elapsed < 3.0, elapsed


async def test_long_poll_group_wakes_on_send(client):
    name = await create(client, uniq())
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    waiting = asyncio.ensure_future(fetch(client, name, group_name="g", deliver="earliest",
                                          config={"max_wait_ms": 10000}))
    await asyncio.sleep(0.2)
    await send(client, name, b"job")
    msgs = await waiting
    assert [data(m) for m in msgs] == [b"job"] and loop.time() - t0 < 3.0


async def test_three_competing_consumers_see_each_message_once(shared_broker):
    conns = [await nats.connect(shared_broker.url, allow_reconnect=False) for _ in range(3)]
    try:
        name = await create(conns[0], uniq("work"))
        prios = ("normal", "urgent", "critical", None)
        await asyncio.gather(*(send(conns[i % 3], name, b"task-%d" % i, priority=prios[i % 4])
                               for i in range(300)))
        seen: list[int] = []
        per_worker = collections.Counter()

        async def worker(w: int, nc) -> None:
            idle = 0
            while idle < 3:
                msgs = await fetch(nc, name, group_name="workers", deliver="earliest",
                                   config={"num_msgs": 7, "max_wait_ms": 150})
                if not msgs:
                    idle += 1
                    continue
                idle = 0
                for m in msgs:
                    seen.append(m["msg_id"])
                    per_worker[w] += 1
                    await ack(nc, name, "workers", m["msg_id"])

        await asyncio.gather(*(worker(i, nc) for i, nc in enumerate(conns)))
        assert sorted(seen) == list(range(300))  # each exactly once
        assert all(per_worker[w] > 0 for w in range(3)), per_worker
        assert await fetch(conns[0], name, group_name="workers") == []
    finally:
        for nc in conns:
            await nc.close()


async def test_competing_consumers_with_a_crashed_worker(shared_broker):
    """A worker that never ACKs: its messages come back to the others after ack_wait."""
    good = await nats.connect(shared_broker.url, allow_reconnect=False)
    bad = await nats.connect(shared_broker.url, allow_reconnect=False)
    try:
        name = await create(good, uniq("crash"))
        for i in range(20):
            await send(good, name, b"t%d" % i)
        lost = await fetch(bad, name, group_name="g", deliver="earliest",
                           config={"num_msgs": 5, "ack_wait_ms": 400})
        assert len(lost) == 5
        await bad.close()
        done: list[int] = []
        while len(done) < 20:
            msgs = await fetch(good, name, group_name="g", deliver="earliest",
                               config={"num_msgs": 4, "max_wait_ms": 3000})
            assert msgs, done
            for m in msgs:
                done.append(m["msg_id"])
                await ack(good, name, "g", m["msg_id"])
        assert sorted(done) == list(range(20))
        redelivered = {m["msg_id"] for m in lost}
        assert redelivered <= set(done)
    finally:
        await good.close()


@pytest.mark.parametrize("body,fragment", [
    (b"", "missing field `group_name`"),
    (b'{"mail_address":"x","msg_id":1}', "missing field `group_name`"),
    (b'{"group_name":"g","msg_id":-1}', "msg_id"),
    (b'{"group_name":"g","msg_id":1.5}', "msg_id"),
    (b'{"group_name":"g","msg_id":"1"}', "msg_id"),
    (b'{"group_name":"g"}', "missing field `msg_id`"),
    (b'{"group_name":7,"msg_id":1}', "group_name"),
    (b"[1]", ""),
    (b"{", ""),
])
async def test_ack_bad_input(client, body, fragment):
    name = await filled(client, 1)
    text = await err(client, f"$mq9.AI.MSG.ACK.{name}", body)
    assert text.startswith("invalid MSG.ACK payload: ") and fragment in text, text
