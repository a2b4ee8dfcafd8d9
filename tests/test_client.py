"""mq9fast.Mq9Client against a real broker (one per module) plus offline unit tests."""
from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest

from conftest import free_port
from mq9fast import Message, Mq9Client, Mq9Error, Priority
from mq9fast.client import (Mq9ConnectionError, build_header_block, encode_payload, parse_header_block)


# ---------------------------------------------------------------------------------- offline units
def test_priority_enum_matches_sdk():
    assert Priority.NORMAL == "normal" and Priority.URGENT.value == "urgent" and str(Priority.CRITICAL) == "critical"
    assert Priority.parse(" URGENT ") is Priority.URGENT
    assert Priority.parse("bogus") is Priority.NORMAL


def test_encode_payload_types():
    assert encode_payload(b"\x00\xff") == b"\x00\xff"
    assert encode_payload("héllo") == "héllo".encode()
    assert encode_payload({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
    with pytest.raises(TypeError):
        encode_payload(3.5)  # type: ignore[arg-type]


def test_header_block_roundtrip():
    block = build_header_block({"mq9-priority": "urgent", "mq9-reply-to": "a.b"})
    assert block.startswith(b"NATS/1.0\r\n") and block.endswith(b"\r\n\r\n")
    assert parse_header_block(block) == {"mq9-priority": "urgent", "mq9-reply-to": "a.b"}
    assert parse_header_block(b"NATS/1.0\r\nk: 1\r\nk: 2\r\n\r\n") == {"k": "2"}  # last wins
    assert parse_header_block(None) == {}


def test_message_from_json_base64_and_raw_fallback():
    hdr = list(build_header_block({"mq9-key": "state", "mq9-tags": "a, b"}))
    m = Message.from_json({"msg_id": 7, "payload": base64.b64encode(b"\x00bin").decode(), "priority": "critical",
                           "header": hdr, "create_time": 1746000000})
    assert (m.msg_id, m.payload, m.priority, m.create_time) == (7, b"\x00bin", Priority.CRITICAL, 1746000000)
    assert m.key == "state" and m.tags == ["a", "b"]
    raw = Message.from_json({"msg_id": 1, "payload": '{"x": 1}', "priority": "normal", "header": None,
                             "create_time": 1})
    assert raw.payload == b'{"x": 1}' and raw.json() == {"x": 1} and raw.headers == {}


async def test_connect_refused_is_clear():
    port = free_port()
    with pytest.raises(Mq9ConnectionError) as ei:
        await Mq9Client.connect(f"nats://127.0.0.1:{port}", reconnect_attempts=0)
    assert "connection refused" in str(ei.value) and str(port) in str(ei.value)


async def test_not_connected_raises_mq9error():
    client = Mq9Client("nats://127.0.0.1:1")
    with pytest.raises(Mq9Error, match="not connected"):
        await client.mailbox_create()


# ---------------------------------------------------------------------------------- with a broker
@pytest.fixture
async def client(shared_broker):
    c = await Mq9Client.connect(shared_broker.url)
    yield c
    await c.close()


async def test_connect_styles(shared_broker):
    async with Mq9Client(shared_broker.url) as c1:             # documented: constructor + async with
        assert c1.is_connected
        addr = await c1.mailbox_create(ttl=60)
    assert c1.is_closed
    c2 = Mq9Client(shared_broker.url)                            # documented: await client.connect()
    await c2.connect()
    assert len(await c2.query(addr)) == 0
    await c2.close()
    c3 = await Mq9Client.connect(shared_broker.url)             # classmethod style
    assert c3.is_connected
    await c3.close()


async def test_send_fetch_ack_priorities_and_options(client):
    addr = await client.mailbox_create(ttl=300)
    assert len(addr) == 32
    ids = [await client.send(addr, {"n": 0}),
           await client.send(addr, "text-1", priority=Priority.URGENT, tags=["billing", "vip"]),
           await client.send(addr, b"\x00\x01binary", priority="critical", key="state"),
           await client.send(addr, "custom", headers={"mq9-reply-to": "some.box"})]
    assert ids == sorted(ids) and ids[0] >= 0
    msgs = await client.fetch(addr, group_name="g", deliver="earliest")
    assert [m.priority for m in msgs] == [Priority.CRITICAL, Priority.URGENT, Priority.NORMAL, Priority.NORMAL]
    crit, urg, n0, custom = msgs
    assert crit.payload == b"\x00\x01binary" and crit.key == "state"
    assert urg.text() == "text-1" and set(urg.tags) == {"billing", "vip"}
    assert n0.json() == {"n": 0} and n0.headers == {}
    assert custom.reply_to == "some.box"
    assert all(isinstance(m.create_time, int) and m.create_time > 0 for m in msgs)
    await client.ack(addr, "g", msgs[-1].msg_id)
    assert await client.fetch(addr, group_name="g", max_wait_ms=0) == []
    # stateless fetch still sees everything; force_deliver rewinds the group
    assert len(await client.fetch(addr, deliver="earliest", max_wait_ms=0)) == 4
    again = await client.fetch(addr, group_name="g", deliver="earliest", force_deliver=True, max_wait_ms=0)
    assert len(again) == 4


async def test_delay_and_ttl_headers(client):
    addr = await client.mailbox_create(ttl=300)
    assert await client.send(addr, "later", delay=30) == -1
    assert await client.send(addr, "expiring", ttl=600) >= 0
    msgs = await client.query(addr)
    assert [m.text() for m in msgs] == ["expiring"]


async def test_query_and_delete(client):
    addr = await client.mailbox_create(ttl=300)
    a = await client.send(addr, "a", key="k1", tags=["x"])
    b = await client.send(addr, "b", tags=["y"])
    c = await client.send(addr, "c", key="k1")                 # compacts "a"
    assert [m.text() for m in await client.query(addr)] == ["b", "c"]
    assert [m.msg_id for m in await client.query(addr, key="k1")] == [c]
    assert [m.msg_id for m in await client.query(addr, tags=["y"])] == [b]
    assert len(await client.query(addr, limit=1)) == 1
    assert await client.query(addr, since=int(time.time()) + 3600) == []
    assert await client.delete(addr, b) is True
    assert await client.delete(addr, b) is False
    assert await client.delete(addr, a) is False               # compacted away already


async def test_server_errors_are_verbatim(client):
    with pytest.raises(Mq9Error) as ei:
        await client.send("no.such.mailbox", "x")
    assert str(ei.value) == "mailbox no.such.mailbox does not exist"
    assert ei.value.subject == "$mq9.AI.MSG.SEND.no.such.mailbox"
    addr = await client.mailbox_create(ttl=60)
    with pytest.raises(Mq9Error, match=f"mailbox {addr} already exists"):
        await client.mailbox_create(name=addr)
    with pytest.raises(Mq9Error, match="lowercase"):
        await client.mailbox_create(name="Bad_Name")
    with pytest.raises(ValueError):
        await client.send(addr, "x", priority="highest")
    with pytest.raises(ValueError):
        await client.fetch(addr, deliver="sometimes")
    with pytest.raises(ValueError):
        await client.send(addr, "x", delay=-1)
    # the connection survives errors
    assert await client.query(addr) == []


async def test_long_poll_fetch_wakes_on_send(client, shared_broker):
    addr = await client.mailbox_create(ttl=60)

    async def later():
        await asyncio.sleep(0.3)
        async with Mq9Client(shared_broker.url) as other:
            await other.send(addr, "wake")

    t = asyncio.create_task(later())
    t0 = time.monotonic()
    msgs = await client.fetch(addr, group_name="w", deliver="earliest", max_wait_ms=5000)
    assert [m.text() for m in msgs] == ["wake"] and time.monotonic() - t0 < 4
    await t


async def test_consume_acks_reports_errors_and_stop_drains(client):
    addr = await client.mailbox_create(ttl=300)
    for i in range(6):
        await client.send(addr, {"i": i})
    seen, errors = [], []
    gate = asyncio.Event()

    async def handler(msg):
        i = msg.json()["i"]
        if i == 0:
            gate.set()
            await asyncio.sleep(0.2)          # stop() is called while this batch is running
        if i == 3:
            raise RuntimeError("boom")
        seen.append(i)

    async def on_error(msg, exc):
        errors.append((msg.msg_id, str(exc)))

    consumer = await client.consume(addr, handler, group_name="c", deliver="earliest", num_msgs=10,
                                    error_handler=on_error)
    assert consumer.is_running
    await asyncio.wait_for(gate.wait(), 5)
    await consumer.stop()                      # drains the batch in progress
    assert not consumer.is_running
    assert seen == [0, 1, 2, 4, 5]
    assert errors == [(3, "boom")]
    assert consumer.processed_count == 5 and consumer.failed_count == 1
    # everything after the failed message was ACKed: the group is at the end
    assert await client.fetch(addr, group_name="c", max_wait_ms=0) == []


async def test_consume_sync_handler_without_group(client):
    addr = await client.mailbox_create(ttl=60)
    got = []
    consumer = await client.consume(addr, lambda m: got.append(m.text()), deliver="earliest", max_wait_ms=100)
    await client.send(addr, "one")
    for _ in range(50):
        if got:
            break
        await asyncio.sleep(0.05)
    await consumer.stop()
    assert "one" in got


async def test_close_stops_consumers(shared_broker):
    c = await Mq9Client.connect(shared_broker.url)
    addr = await c.mailbox_create(ttl=60)
    consumer = await c.consume(addr, lambda m: None, group_name="x", max_wait_ms=100)
    await c.close()
    assert not consumer.is_running


async def test_agents(client):
    inbox = await client.mailbox_create(ttl=60)
    name = f"client.test.{inbox[:6]}"
    await client.agent_register({"name": name, "mailbox": inbox,
                                 "payload": "Converts currencies and quotes exchange rates"})
    await client.agent_report({"name": name, "status": "busy", "load": 3})
    found = await client.agent_discover(text="exchange rates currencies", limit=5)
    mine = [a for a in found if a["name"] == name]
    assert mine and mine[0]["mailbox"] == inbox and mine[0]["last_report"]["status"] == "busy"
    sem = await client.agent_discover(semantic="I need to convert dollars to euros", limit=50)
    assert any(a["name"] == name for a in sem)
    listed = await client.agent_discover(limit=1000)
    assert any(a["name"] == name for a in listed)
    await client.agent_unregister(inbox)                      # by mailbox (what SDKs send)
    assert not any(a["name"] == name for a in await client.agent_discover(limit=1000))
    with pytest.raises(Mq9Error, match="agent name must not be empty"):
        await client.agent_register({"payload": "no identity"})
    with pytest.raises(TypeError):
        await client.agent_register("not a dict")  # type: ignore[arg-type]


async def test_raw_request_and_call(client):
    raw = await client.request("$mq9.AI.NOPE", b"{}")
    assert json.loads(raw) == {"error": "unrecognized mq9 subject: $mq9.AI.NOPE"}
    with pytest.raises(Mq9Error, match="unrecognized mq9 subject"):
        await client.call("$mq9.AI.NOPE", {})
