"""MSG.SEND and stateless MSG.FETCH: ids, payloads, priorities, deliver policies, limits, long-poll."""
from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest

from test_mailbox_support import (  # noqa: F401
    client, create, data, err, fetch, ids, ok, req, send, uniq,
)


async def test_ids_count_from_zero_per_mailbox(client):
    a, b = await create(client, uniq()), await create(client, uniq())
    assert [await send(client, a, b"a%d" % i) for i in range(5)] == [0, 1, 2, 3, 4]
    assert [await send(client, b, b"b%d" % i) for i in range(3)] == [0, 1, 2]
    assert await send(client, a, b"a5") == 5


async def test_send_reply_shape_and_missing_mailbox(client):
    name = uniq()
    assert await err(client, f"$mq9.AI.MSG.SEND.{name}", b"x") == f"mailbox {name} does not exist"
    await create(client, name)
    assert await req(client, f"$mq9.AI.MSG.SEND.{name}", b"x") == {"error": "", "msg_id": 0}


async def test_binary_payload_round_trip(client):
    name = await create(client, uniq())
    blob = bytes(range(256))
    mid = await send(client, name, blob)
    await send(client, name, b"")  # empty payload is allowed
    msgs = await fetch(client, name, deliver="earliest")
    assert ids(msgs) == [mid, mid + 1]
    assert data(msgs[0]) == blob
    assert msgs[0]["payload"] == base64.b64encode(blob).decode()
    assert data(msgs[1]) == b""
    # per-request raw encoding: lossy UTF-8
    raw = await fetch(client, name, deliver="earliest", payload_encoding="raw")
    assert raw[0]["payload"] == blob.decode("utf-8", "replace")
    assert raw[1]["payload"] == ""
    explicit = await fetch(client, name, deliver="earliest", payload_encoding="base64")
    assert data(explicit[0]) == blob


async def test_message_object_fields(client):
    name = await create(client, uniq())
    await send(client, name, b'{"task":"a"}')
    await send(client, name, b"h", priority="urgent", key="k1", tags="a, b,,a",
               extra={"mq9-reply-to": "reply.box", "X-Custom": "v:1"})
    t0 = int(time.time())
    rich, plain = await fetch(client, name, deliver="earliest")  # the urgent lane comes first
    assert (rich["msg_id"], plain["msg_id"]) == (1, 0)
    assert set(plain) == {"msg_id", "payload", "priority", "header", "create_time"}
    assert plain["priority"] == "normal" and plain["header"] is None
    assert abs(plain["create_time"] - t0) <= 2
    assert data(plain) == b'{"task":"a"}'
    assert rich["priority"] == "urgent"
    header = bytes(rich["header"])
    assert header.startswith(b"NATS/1.0\r\n") and header.endswith(b"\r\n\r\n")
    assert b"mq9-reply-to: reply.box\r\n" in header
    assert rich["headers"]["mq9-reply-to"] == "reply.box"
    assert rich["headers"]["X-Custom"] == "v:1"
    assert rich["key"] == "k1"
    assert rich["tags"] == ["a", "b"]


async def test_priority_lanes_and_fifo(client):
    name = await create(client, uniq())
    plan = ["normal", "critical", "urgent", "normal", "critical", None, "urgent", "critical", "bogus",
            " URGENT "]
    for i, p in enumerate(plan):
        await send(client, name, b"m%d" % i, priority=p)
    msgs = await fetch(client, name, deliver="earliest")
    got = [(m["priority"], m["msg_id"]) for m in msgs]
    assert got == [("critical", 1), ("critical", 4), ("critical", 7),
                   ("urgent", 2), ("urgent", 6), ("urgent", 9),
                   ("normal", 0), ("normal", 3), ("normal", 5), ("normal", 8)]


async def test_num_msgs_is_an_exact_cap_across_lanes(client):
    name = await create(client, uniq())
    for i in range(12):
        await send(client, name, b"%d" % i, priority=("critical", "urgent", "normal")[i % 3])
    for n in (1, 2, 4, 5, 7, 11, 12):
        msgs = await fetch(client, name, deliver="earliest", config={"num_msgs": n})
        assert len(msgs) == n
    assert await fetch(client, name, deliver="earliest", config={"num_msgs": 0}) == []
    assert len(await fetch(client, name, deliver="earliest", config={"num_msgs": 1000})) == 12


async def test_num_msgs_default_is_100(client):
    name = await create(client, uniq())
    await asyncio.gather(*(send(client, name, b"x") for _ in range(130)))
    assert len(await fetch(client, name, deliver="earliest")) == 100
    assert len(await fetch(client, name, deliver="earliest", config={"num_msgs": 10**9})) == 130


async def test_deliver_policies(client):
    name = await create(client, uniq())
    assert await fetch(client, name) == []  # latest on an empty mailbox
    for i in range(5):
        await send(client, name, b"msg-%d" % i)
    assert ids(await fetch(client, name, deliver="earliest")) == [0, 1, 2, 3, 4]
    # latest includes the newest message, every time (stateless)
    assert ids(await fetch(client, name, deliver="latest")) == [4]
    assert ids(await fetch(client, name)) == [4]
    assert ids(await fetch(client, name, deliver=None)) == [4]
    assert ids(await fetch(client, name, deliver="from_id", from_id=2)) == [2, 3, 4]
    assert ids(await fetch(client, name, deliver="from_id", from_id=5)) == []
    assert ids(await fetch(client, name, deliver="from_id", from_id=10**6)) == []
    assert ids(await fetch(client, name, deliver="from_id")) == [0, 1, 2, 3, 4]
    now = int(time.time())
    assert ids(await fetch(client, name, deliver="from_time", from_time=now + 100)) == []
    assert ids(await fetch(client, name, deliver="from_time", from_time=0)) == [0, 1, 2, 3, 4]
    # stateless FETCH never consumes
    assert ids(await fetch(client, name, deliver="earliest")) == [0, 1, 2, 3, 4]


async def test_from_time_returns_only_later_messages(client):
    name = await create(client, uniq())
    for i in range(3):
        await send(client, name, b"old-%d" % i)
    await asyncio.sleep(1.05)
    boundary = int(time.time())
    for i in range(2):
        await send(client, name, b"new-%d" % i)
    msgs = await fetch(client, name, deliver="from_time", from_time=boundary)
    assert [data(m) for m in msgs] == [b"new-0", b"new-1"]
    assert all(m["create_time"] >= boundary for m in msgs)


async def test_empty_body_is_latest(client):
    name = await create(client, uniq())
    await send(client, name, b"a")
    await send(client, name, b"b")
    reply = await ok(client, f"$mq9.AI.MSG.FETCH.{name}", b"")
    assert [data(m) for m in reply["messages"]] == [b"b"]


async def test_sdk_request_shapes(client):
    """Bodies exactly as the Go/JS and Python SDKs send them (Appendix A)."""
    name = await create(client, uniq())
    await send(client, name, b"one")
    go = {"group_name": "", "deliver": "latest", "from_time": 0, "from_id": 0, "force_deliver": False,
          "config": {"num_msgs": 100, "max_wait_ms": 0}}
    assert [data(m) for m in (await ok(client, f"$mq9.AI.MSG.FETCH.{name}", go))["messages"]] == [b"one"]
    py = {"deliver": "earliest", "force_deliver": False, "config": {"num_msgs": 100, "max_wait_ms": 0},
          "group_name": "py"}
    assert len((await ok(client, f"$mq9.AI.MSG.FETCH.{name}", py))["messages"]) == 1
    cs = {"group_name": None, "deliver": "earliest", "from_time": None, "from_id": None,
          "force_deliver": None, "config": {"num_msgs": None, "max_wait_ms": 0}}
    assert len((await ok(client, f"$mq9.AI.MSG.FETCH.{name}", cs))["messages"]) == 1


async def test_long_poll_wakes_on_send(client):
    name = await create(client, uniq())
    loop = asyncio.get_running_loop()

    async def later():
        await asyncio.sleep(0.3)
        return await send(client, name, b"wake up")

    t0 = loop.time()
    sender = asyncio.ensure_future(later())
    msgs = await fetch(client, name, deliver="earliest", config={"max_wait_ms": 10000})
    elapsed = loop.time() - t0
    assert [data(m) for m in msgs] == [b"wake up"]
    assert elapsed < 3.0, elapsed  # returned on the SEND, well before max_wait_ms
    await sender


async def test_long_poll_does_not_block_the_connection(client):
    """A waiting FETCH must not delay other commands on the same connection."""
    name = await create(client, uniq())
    other = await create(client, uniq())
    loop = asyncio.get_running_loop()
    waiting = asyncio.ensure_future(
        fetch(client, name, deliver="earliest", config={"max_wait_ms": 8000}))
    await asyncio.sleep(0.1)
    t0 = loop.time()
    for i in range(5):
        await send(client, other, b"x%d" % i)
    assert len(await fetch(client, other, deliver="earliest")) == 5
    assert loop.time() - t0 < 2.0
    assert not waiting.done()
    await send(client, name, b"finally")
    assert [data(m) for m in await waiting] == [b"finally"]


async def test_long_poll_times_out_empty(client):
    name = await create(client, uniq())
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await fetch(client, name, config={"max_wait_ms": 400}) == []
    assert loop.time() - t0 >= 0.35
    # default max_wait_ms is 500
    t0 = loop.time()
    reply = await ok(client, f"$mq9.AI.MSG.FETCH.{name}", {"deliver": "earliest"})
    assert reply["messages"] == [] and loop.time() - t0 >= 0.45


async def test_long_poll_ignores_other_mailboxes(client):
    name, other = await create(client, uniq()), await create(client, uniq())
    waiting = asyncio.ensure_future(fetch(client, name, deliver="earliest", config={"max_wait_ms": 600}))
    await asyncio.sleep(0.1)
    await send(client, other, b"elsewhere")
    assert await waiting == []


async def test_concurrent_sends_get_distinct_ids(client):
    name = await create(client, uniq())
    got = await asyncio.gather(*(send(client, name, b"%d" % i) for i in range(200)))
    assert sorted(got) == list(range(200))
    msgs = await fetch(client, name, deliver="earliest", config={"num_msgs": 500})
    assert ids(msgs) == list(range(200))
    # a message's payload is the one sent with its id
    by_id = {m["msg_id"]: data(m) for m in msgs}
    assert all(by_id[mid] == b"%d" % i for i, mid in enumerate(got))


async def test_payload_budget_30_mib(client):
    name = await create(client, uniq())
    mib = 1024 * 1024
    chunk = b"z" * mib
    for _ in range(31):
        await send(client, name, chunk)
    reply = await client.request(f"$mq9.AI.MSG.FETCH.{name}",
                                 json.dumps({"deliver": "earliest", "payload_encoding": "raw",
                                             "config": {"num_msgs": 100, "max_wait_ms": 0}}).encode(),
                                 timeout=30)
    msgs = json.loads(reply.data)["messages"]
    assert len(msgs) == 30
    assert ids(msgs) == list(range(30))


@pytest.mark.parametrize("value", ["critical", "Critical", "  CRITICAL\t"])
async def test_priority_header_normalised(client, value):
    name = await create(client, uniq())
    await send(client, name, b"x", priority=value)
    assert (await fetch(client, name, deliver="earliest"))[0]["priority"] == "critical"
