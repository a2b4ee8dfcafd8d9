"""SEND options (key compaction, delay, TTL, tags), MSG.QUERY and MSG.DELETE."""
from __future__ import annotations

import asyncio
import time

import pytest

from test_mailbox_support import (  # noqa: F401
    ack, client, create, data, err, fetch, ids, ok, query, req, send, uniq,
)


# ------------------------------------------------------------------ key compaction (§4.4)
async def test_key_compaction_keeps_latest(client):
    name = await create(client, uniq())
    got = [await send(client, name, b"v%d" % i, key="status") for i in range(5)]
    assert got == [0, 1, 2, 3, 4]  # each store gets a fresh id
    by_key = await query(client, name, key="status")
    assert [(m["msg_id"], data(m), m["key"]) for m in by_key] == [(4, b"v4", "status")]
    assert ids(await fetch(client, name, deliver="earliest")) == [4]
    assert ids(await query(client, name)) == [4]


async def test_two_keys_and_unkeyed(client):
    name = await create(client, uniq())
    await send(client, name, b"a1", key="a")
    await send(client, name, b"b1", key="b")
    await send(client, name, b"plain")
    await send(client, name, b"a2", key=" a ")  # trimmed
    await send(client, name, b"no key", key="  ")  # empty after trim: no key
    msgs = await fetch(client, name, deliver="earliest")
    assert [data(m) for m in msgs] == [b"b1", b"plain", b"a2", b"no key"]
    assert "key" not in msgs[-1]
    assert await query(client, name, key="missing") == []


async def test_compaction_across_priorities(client):
    name = await create(client, uniq())
    await send(client, name, b"old", key="k", priority="critical")
    await send(client, name, b"new", key="k", priority="normal")
    msgs = await fetch(client, name, deliver="earliest")
    assert [(data(m), m["priority"]) for m in msgs] == [(b"new", "normal")]


async def test_compaction_and_groups(client):
    name = await create(client, uniq())
    await send(client, name, b"v0", key="cfg")
    consumed = await fetch(client, name, group_name="done", deliver="earliest")
    await ack(client, name, "done", consumed[-1]["msg_id"])
    pending = await fetch(client, name, group_name="pending", deliver="earliest", config={"num_msgs": 0})
    assert pending == []
    await send(client, name, b"v1", key="cfg")
    # a group that consumed the old value receives the new one; one that had not sees only the new one
    assert [data(m) for m in await fetch(client, name, group_name="done")] == [b"v1"]
    assert [data(m) for m in await fetch(client, name, group_name="pending")] == [b"v1"]


# ------------------------------------------------------------------ tags and QUERY (§6.1)
async def test_tags_filter(client):
    name = await create(client, uniq())
    await send(client, name, b"inv-1", tags="billing,urgent")
    await send(client, name, b"chat", tags="chat")
    await send(client, name, b"inv-2", tags=" billing ")
    await send(client, name, b"untagged")
    assert [data(m) for m in await query(client, name, tags=["billing"])] == [b"inv-1", b"inv-2"]
    assert await query(client, name, tags=["nope"]) == []
    assert [data(m) for m in await query(client, name, tags=["chat", "urgent"])] == [b"inv-1", b"chat"]
    assert [data(m) for m in await query(client, name, tags=["billing", "chat"], limit=2)] == \
        [b"inv-1", b"chat"]
    assert len(await query(client, name, tags=[])) == 4  # empty tag list = everything
    assert (await query(client, name, tags=["billing"]))[0]["tags"] == ["billing", "urgent"]
    assert await query(client, name, tags=["Billing"]) == []  # case-sensitive


async def test_query_order_limit_and_precedence(client):
    name = await create(client, uniq())
    for i in range(120):
        await send(client, name, b"%d" % i, priority=("critical", "normal")[i % 2],
                   key="k" if i == 7 else None, tags="t" if i % 10 == 0 else None)
    everything = await query(client, name)
    assert ids(everything) == list(range(100))  # oldest first, priority ignored, default limit 100
    assert ids(await query(client, name, limit=1000)) == list(range(100))
    assert ids(await query(client, name, limit=3)) == [0, 1, 2]
    assert await query(client, name, limit=0) == []
    assert ids(await query(client, name, since=0, limit=2)) == [0, 1]
    assert await query(client, name, since=int(time.time()) + 100) == []
    # key > tags > since
    assert ids(await query(client, name, key="k", tags=["t"], since=10**10)) == [7]
    assert ids(await query(client, name, tags=["t"], since=10**10)) == list(range(0, 120, 10))
    # QUERY never consumes
    assert len(await query(client, name)) == 100


async def test_query_since(client):
    name = await create(client, uniq())
    await send(client, name, b"old")
    await asyncio.sleep(1.05)
    t = int(time.time())
    await send(client, name, b"new")
    assert [data(m) for m in await query(client, name, since=t)] == [b"new"]
    assert [data(m) for m in await query(client, name, since=t - 5)] == [b"old", b"new"]


async def test_query_raw_encoding_per_request(client):
    name = await create(client, uniq())
    await send(client, name, "héllo ✓".encode())
    assert (await query(client, name, payload_encoding="raw"))[0]["payload"] == "héllo ✓"
    assert data((await query(client, name))[0]) == "héllo ✓".encode()


@pytest.mark.parametrize("body", [
    b"{", b"[]", b"3", b'{"limit":-1}', b'{"limit":"5"}', b'{"since":1.5}', b'{"key":5}',
    b'{"tags":"billing"}', b'{"tags":[1]}', b'{"payload_encoding":"hex"}',
])
async def test_query_bad_input(client, body):
    name = await create(client, uniq())
    assert (await err(client, f"$mq9.AI.MSG.QUERY.{name}", body)).startswith("invalid query request: ")


async def test_query_empty_body_and_missing_mailbox(client):
    name = await create(client, uniq())
    await send(client, name, b"x")
    assert len((await ok(client, f"$mq9.AI.MSG.QUERY.{name}", b""))["messages"]) == 1
    missing = uniq()
    assert await err(client, f"$mq9.AI.MSG.QUERY.{missing}", b"") == f"mailbox {missing} does not exist"


# ------------------------------------------------------------------ DELETE (§6.2)
async def test_delete(client):
    name = await create(client, uniq())
    await send(client, name, b"a", key="ka", tags="t")
    await send(client, name, b"b")
    assert await req(client, f"$mq9.AI.MSG.DELETE.{name}.0", b"") == {"error": "", "deleted": True}
    assert await req(client, f"$mq9.AI.MSG.DELETE.{name}.0", b'""') == {"error": "", "deleted": False}
    assert await req(client, f"$mq9.AI.MSG.DELETE.{name}.99", b"{}") == {"error": "", "deleted": False}
    assert ids(await query(client, name)) == [1]
    assert await query(client, name, key="ka") == []
    assert await query(client, name, tags=["t"]) == []
    assert ids(await fetch(client, name, deliver="earliest")) == [1]
    assert await send(client, name, b"c") == 2  # ids are never reused


async def test_delete_bad_token_and_missing_mailbox(client):
    name = await create(client, uniq())
    for token in ("abc", "-1", "1e3", "18446744073709551616", "0x10", "٣"):
        assert await err(client, f"$mq9.AI.MSG.DELETE.{name}.{token}", b"") == f"invalid msg_id: {token}"
    missing = uniq()
    assert await err(client, f"$mq9.AI.MSG.DELETE.{missing}.0", b"") == f"mailbox {missing} does not exist"


async def test_delete_inside_a_group_backlog(client):
    name = await create(client, uniq())
    for i in range(4):
        await send(client, name, b"%d" % i)
    await ok(client, f"$mq9.AI.MSG.DELETE.{name}.1", b"")
    assert ids(await fetch(client, name, group_name="g", deliver="earliest")) == [0, 2, 3]


# ------------------------------------------------------------------ delay (§4.6)
async def test_delay(client):
    name = await create(client, uniq())
    await send(client, name, b"now-0")
    t0 = time.time()
    assert await send(client, name, b"later", delay=1) == -1
    assert await send(client, name, b"now-1") == 1
    assert ids(await query(client, name)) == [0, 1]
    assert ids(await fetch(client, name, deliver="earliest")) == [0, 1]
    loop = asyncio.get_running_loop()
    start = loop.time()
    # a long-polling FETCH is woken when the delayed message becomes visible
    msgs = await fetch(client, name, deliver="from_id", from_id=2, config={"max_wait_ms": 10000})
    assert loop.time() - start < 3.0
    assert [(m["msg_id"], data(m)) for m in msgs] == [(2, b"later")]  # id at visibility time
    assert time.time() - t0 >= 0.9
    assert msgs[0]["create_time"] >= int(t0)
    assert ids(await query(client, name)) == [0, 1, 2]


async def test_delay_zero_is_immediate_and_bad_values_ignored(client):
    name = await create(client, uniq())
    assert await send(client, name, b"a", delay=0) == 0
    assert await send(client, name, b"b", delay="soon") == 1
    assert await send(client, name, b"c", delay=-3) == 2
    assert await send(client, name, b"d", ttl=0) == 3
    assert await send(client, name, b"e", ttl="x") == 4
    assert len(await query(client, name)) == 5


async def test_delayed_compaction_happens_at_visibility(client):
    name = await create(client, uniq())
    await send(client, name, b"v1", key="k")
    assert await send(client, name, b"v2", key="k", delay=1) == -1
    assert [data(m) for m in await query(client, name, key="k")] == [b"v1"]
    await asyncio.sleep(1.6)
    got = await query(client, name, key="k")
    assert [(m["msg_id"], data(m)) for m in got] == [(1, b"v2")]
    assert ids(await query(client, name)) == [1]


async def test_delayed_message_keeps_options(client):
    name = await create(client, uniq())
    await send(client, name, b"d", delay=1, priority="critical", tags="x,y", extra={"mq9-reply-to": "r"})
    await send(client, name, b"n")
    msgs = await fetch(client, name, group_name="g", deliver="earliest", config={"max_wait_ms": 0})
    assert [data(m) for m in msgs] == [b"n"]
    await ack(client, name, "g", msgs[-1]["msg_id"])
    later = await fetch(client, name, group_name="g", config={"max_wait_ms": 5000})
    assert [(data(m), m["priority"], m["tags"], m["headers"]["mq9-reply-to"]) for m in later] == \
        [(b"d", "critical", ["x", "y"], "r")]


async def test_delay_longer_than_ttl_never_visible(client):
    name = await create(client, uniq())
    assert await send(client, name, b"ghost", delay=1, ttl=1) == -1
    await asyncio.sleep(1.5)
    assert await query(client, name) == []
    assert await send(client, name, b"x") == 0  # the ghost never took an id


async def test_delayed_message_dies_with_its_mailbox(client):
    name = await create(client, uniq(), ttl=1)
    assert await send(client, name, b"too late", delay=2) == -1
    await asyncio.sleep(1.1)
    await create(client, name, ttl=0)  # re-created while the old delayed message is pending
    await asyncio.sleep(1.5)
    assert await query(client, name) == []


# ------------------------------------------------------------------ message TTL (§4.5)
async def test_message_ttl(client):
    name = await create(client, uniq())
    await send(client, name, b"short", ttl=1, key="k", tags="t")
    await send(client, name, b"long", ttl=100)
    await send(client, name, b"forever")
    first = await query(client, name)
    assert [data(m) for m in first] == [b"short", b"long", b"forever"]
    assert first[0]["expire_at"] - int(time.time()) in (0, 1, 2)
    await asyncio.sleep(1.1)
    assert [data(m) for m in await query(client, name)] == [b"long", b"forever"]
    assert [data(m) for m in await fetch(client, name, deliver="earliest")] == [b"long", b"forever"]
    assert [data(m) for m in await fetch(client, name, group_name="g", deliver="earliest")] == \
        [b"long", b"forever"]
    assert await query(client, name, key="k") == []
    assert await query(client, name, tags=["t"]) == []
    assert await req(client, f"$mq9.AI.MSG.DELETE.{name}.0", b"") == {"error": "", "deleted": False}
