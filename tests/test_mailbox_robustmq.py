"""RobustMQ's mq9 integration tests (PROTOCOL.md Appendix C), ported with short timers.

The broker runs with ``payload_encoding=raw`` so payloads compare as text, like RobustMQ's tests.
"""
from __future__ import annotations

import asyncio
import time

import nats
import pytest

from test_mailbox_support import ack, create, err, fetch, module_broker, query, send, uniq


@pytest.fixture(scope="module")
def raw_broker(tmp_path_factory):
    b = module_broker(tmp_path_factory, payload_encoding="raw")
    yield b
    b.stop()


@pytest.fixture
async def nc(raw_broker):
    c = await nats.connect(raw_broker.url, allow_reconnect=False)
    yield c
    await c.close()


def texts(msgs):
    return [m["payload"] for m in msgs]


async def test_mailbox_query(nc):
    name = uniq("mq9.core")
    assert "does not exist" in await err(nc, f"$mq9.AI.MSG.SEND.{name}", b"x")
    await create(nc, name, ttl=300)
    got = [await send(nc, name, f"message-{i}") for i in range(10)]
    assert got[0] == 0 and all(i > 0 for i in got[1:])
    assert sorted(texts(await query(nc, name))) == sorted(f"message-{i}" for i in range(10))


async def test_mailbox_send_fetch_base(nc):
    name = await create(nc, uniq("mq9.base"))
    for i in range(10):
        await send(nc, name, f"msg-{i}")
    msgs = await fetch(nc, name, group_name="g1", deliver="earliest")
    assert len(msgs) == 10
    await ack(nc, name, "g1", msgs[-1]["msg_id"])
    assert await fetch(nc, name, group_name="g1", deliver="earliest") == []


async def test_fetch_earliest(nc):
    name = await create(nc, uniq())
    for i in range(5):
        await send(nc, name, f"msg-{i}")
    assert texts(await fetch(nc, name, group_name="e", deliver="earliest")) == [f"msg-{i}" for i in range(5)]


async def test_fetch_latest(nc):
    name = await create(nc, uniq())
    for i in range(5):
        await send(nc, name, f"msg-{i}")
    assert texts(await fetch(nc, name, group_name="fresh", deliver="latest")) == ["msg-4"]


async def test_fetch_from_time(nc):
    name = await create(nc, uniq())
    for i in range(3):
        await send(nc, name, f"before-{i}")
    await asyncio.sleep(1.05)
    t = int(time.time())
    for i in range(3):
        await send(nc, name, f"after-{i}")
    got = texts(await fetch(nc, name, group_name="t", deliver="from_time", from_time=t))
    assert got == [f"after-{i}" for i in range(3)]


async def test_fetch_from_id(nc):
    name = await create(nc, uniq())
    for i in range(10):
        await send(nc, name, f"msg-{i}")
    msgs = await fetch(nc, name, group_name="i", deliver="from_id", from_id=5)
    assert len(msgs) == 5 and all(m["msg_id"] >= 5 for m in msgs)


async def test_fetch_num_msgs_paging(nc):
    name = await create(nc, uniq())
    for i in range(9):
        await send(nc, name, f"msg-{i}")
    sizes = []
    for _ in range(4):
        msgs = await fetch(nc, name, group_name="p", deliver="earliest", config={"num_msgs": 3})
        sizes.append(len(msgs))
        if msgs:
            await ack(nc, name, "p", msgs[-1]["msg_id"])
    assert sizes == [3, 3, 3, 0]


async def test_fetch_two_groups(nc):
    name = await create(nc, uniq())
    for i in range(5):
        await send(nc, name, f"msg-{i}")
    a = await fetch(nc, name, group_name="ga", deliver="earliest")
    await ack(nc, name, "ga", a[-1]["msg_id"])
    assert len(await fetch(nc, name, group_name="gb", deliver="earliest")) == 5
    assert await fetch(nc, name, group_name="ga", deliver="earliest") == []


async def test_fetch_force_deliver(nc):
    name = await create(nc, uniq())
    for i in range(5):
        await send(nc, name, f"msg-{i}")
    a = await fetch(nc, name, group_name="f", deliver="earliest")
    await ack(nc, name, "f", a[-1]["msg_id"])
    again = await fetch(nc, name, group_name="f", deliver="earliest", force_deliver=True)
    assert texts(again) == [f"msg-{i}" for i in range(5)]


async def test_delay_message(nc):
    name = await create(nc, uniq())
    assert await send(nc, name, "delayed hello", delay=1) == -1
    assert await query(nc, name) == []
    assert await fetch(nc, name, group_name="d", deliver="earliest") == []
    await asyncio.sleep(1.6)
    assert texts(await query(nc, name)) == ["delayed hello"]
    assert texts(await fetch(nc, name, group_name="d", deliver="earliest")) == ["delayed hello"]


async def test_msg_ttl(nc):
    name = await create(nc, uniq())
    await send(nc, name, "short lived", ttl=1)
    assert texts(await query(nc, name)) == ["short lived"]
    assert texts(await fetch(nc, name, deliver="earliest")) == ["short lived"]
    await asyncio.sleep(1.2)
    assert await query(nc, name) == []
    assert await fetch(nc, name, deliver="earliest") == []


async def test_msg_key_compaction(nc):
    name = await create(nc, uniq())
    for i in range(5):
        await send(nc, name, f"status-{i}", key="agent.status")
    assert texts(await query(nc, name, key="agent.status")) == ["status-4"]
    assert texts(await fetch(nc, name, group_name="k", deliver="earliest")) == ["status-4"]
    other = await create(nc, uniq())
    for i in range(4):
        await send(nc, other, f"v-{i}", key=("a", "b")[i % 2])
    assert texts(await fetch(nc, other, group_name="k", deliver="earliest")) == ["v-2", "v-3"]


async def test_msg_tags(nc):
    name = await create(nc, uniq())
    await send(nc, name, "invoice 1", tags="billing")
    await send(nc, name, "invoice 2", tags="billing,vip")
    await send(nc, name, "hello", tags="chat")
    await send(nc, name, "untagged")
    assert texts(await query(nc, name, tags=["billing"])) == ["invoice 1", "invoice 2"]
    assert await query(nc, name, tags=["unknown"]) == []


async def test_priority(nc):
    name = await create(nc, uniq())
    plan = ["normal", "urgent", "critical", "normal", "critical", "urgent", "normal", "critical",
            "urgent", "normal"]
    for i, p in enumerate(plan):
        await send(nc, name, f"{p}-{i}", priority=p)
    msgs = await fetch(nc, name, group_name="prio", deliver="earliest")
    prios = [m["priority"] for m in msgs]
    assert prios == ["critical"] * 3 + ["urgent"] * 3 + ["normal"] * 4
    assert texts(msgs) == ["critical-2", "critical-4", "critical-7", "urgent-1", "urgent-5", "urgent-8",
                           "normal-0", "normal-3", "normal-6", "normal-9"]


async def test_mail_ttl_and_explicit_name(nc):
    name = uniq("mail.named")
    assert await create(nc, name, ttl=1) == name
    await send(nc, name, "x")
    await asyncio.sleep(1.1)
    assert "does not exist" in await err(nc, f"$mq9.AI.MSG.SEND.{name}", b"x")
    assert await create(nc, name, ttl=30) == name


async def test_raw_mode_base64_override(nc):
    name = await create(nc, uniq())
    await send(nc, name, b"\x00\xff")
    m = (await fetch(nc, name, deliver="earliest"))[0]
    assert m["payload"] == "\x00\ufffd"
    m = (await fetch(nc, name, deliver="earliest", payload_encoding="base64"))[0]
    assert m["payload"] == "AP8="
