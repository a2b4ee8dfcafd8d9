"""MAILBOX.CREATE and mailbox expiry (PROTOCOL.md §3)."""
from __future__ import annotations

import asyncio
import re

import nats
import pytest

from test_mailbox_support import client, create, err, fetch, ok, query, send, uniq  # noqa: F401

CREATE = "$mq9.AI.MAILBOX.CREATE"


async def test_explicit_name_is_returned_verbatim(client):
    name = uniq("agent.inbox")
    assert await create(client, name, ttl=3600) == name
    assert await send(client, name, b"x") == 0


async def test_auto_names_are_128_bit_hex_and_distinct(client):
    names = {(await ok(client, CREATE, b""))["mail_address"] for _ in range(20)}
    names |= {await create(client, None, ttl=0) for _ in range(5)}
    assert len(names) == 25
    for n in names:
        assert re.fullmatch(r"[0-9a-f]{32}", n), n
    # null name means auto as well
    auto = (await ok(client, CREATE, {"name": None, "ttl": 60}))["mail_address"]
    assert re.fullmatch(r"[0-9a-f]{32}", auto)


@pytest.mark.parametrize("name,text", [
    ("", "prefix must not be empty"),
    ("Upper.case", "name may only contain lowercase letters, digits, and dots"),
    ("a_b", "name may only contain lowercase letters, digits, and dots"),
    ("a-b", "name may only contain lowercase letters, digits, and dots"),
    ("a b", "name may only contain lowercase letters, digits, and dots"),
    ("é", "name may only contain lowercase letters, digits, and dots"),
    (".abc", "prefix must start and end with a lowercase letter or digit"),
    ("abc.", "prefix must start and end with a lowercase letter or digit"),
    ("a..b", "name must not contain consecutive dots"),
    ("a" * 129, "name must be at most 128 characters"),
])
async def test_name_rules(client, name, text):
    assert await err(client, CREATE, {"name": name}) == text


async def test_name_rule_order(client):
    # rule 2 (characters) is checked before rule 3 (first/last) and rule 4 (..)
    assert await err(client, CREATE, {"name": "-a..b"}) == \
        "name may only contain lowercase letters, digits, and dots"
    assert await err(client, CREATE, {"name": ".a..b"}) == \
        "prefix must start and end with a lowercase letter or digit"
    assert await err(client, CREATE, {"name": "a.." + "b" * 130}) == \
        "name must not contain consecutive dots"


async def test_longest_name_and_digits(client):
    name = uniq("9x").ljust(128, "z")
    assert len(name) == 128
    assert await create(client, name) == name
    assert await send(client, name, b"x") == 0
    assert await create(client, "7") == "7"  # the broker is fresh per module: no clash


async def test_duplicate(client):
    name = uniq()
    await create(client, name, ttl=100)
    assert await err(client, CREATE, {"name": name}) == f"mailbox {name} already exists"
    assert await err(client, CREATE, {"name": name, "ttl": 0}) == f"mailbox {name} already exists"


@pytest.mark.parametrize("body", [
    b"{", b"[]", b"null", b'"name"', b"42", b"\xff\xfe",
    b'{"ttl":-1}', b'{"ttl":1.5}', b'{"ttl":"10"}', b'{"ttl":true}', b'{"ttl":18446744073709551616}',
    b'{"name":5}', b'{"name":["a"]}', b'{"desc":7}',
])
async def test_invalid_payload(client, body):
    text = await err(client, CREATE, body)
    assert text.startswith("invalid MAILBOX.CREATE payload: "), text


async def test_bad_payload_stores_nothing(client):
    name = uniq()
    await err(client, CREATE, {"name": name, "ttl": -5})
    assert await err(client, f"$mq9.AI.MSG.SEND.{name}", b"x") == f"mailbox {name} does not exist"
    assert await create(client, name) == name


async def test_unknown_fields_ignored_and_desc_accepted(client):
    name = uniq()
    reply = await ok(client, CREATE, {"name": name, "ttl": 60, "desc": "hello", "extra": [1]})
    assert reply == {"error": "", "mail_address": name}


async def test_expiry_is_exact_and_destroys_everything(client):
    name = uniq("exp")
    await create(client, name, ttl=1)
    for i in range(3):
        await send(client, name, b"m%d" % i, key="k" if i == 0 else None, tags="t")
    await send(client, name, b"later", delay=5)
    assert len(await fetch(client, name, group_name="g", deliver="earliest", config={"num_msgs": 1})) == 1
    await asyncio.sleep(1.15)
    gone = f"mailbox {name} does not exist"
    assert await err(client, f"$mq9.AI.MSG.SEND.{name}", b"x") == gone
    assert await err(client, f"$mq9.AI.MSG.FETCH.{name}", {"config": {"max_wait_ms": 0}}) == gone
    assert await err(client, f"$mq9.AI.MSG.QUERY.{name}", b"") == gone
    assert await err(client, f"$mq9.AI.MSG.DELETE.{name}.0", b"") == gone
    assert await err(client, f"$mq9.AI.MSG.ACK.{name}",
                     {"group_name": "g", "mail_address": name, "msg_id": 0}) == gone
    # the name can be re-created and starts empty: no messages, no group state, ids from 0
    await create(client, name, ttl=0)
    assert await query(client, name) == []
    assert await fetch(client, name, deliver="earliest") == []
    assert await fetch(client, name, group_name="g", deliver="earliest") == []
    assert await query(client, name, key="k") == []
    assert await query(client, name, tags=["t"]) == []
    assert await send(client, name, b"fresh") == 0
    msgs = await fetch(client, name, group_name="g", deliver="earliest")
    assert [m["msg_id"] for m in msgs] == [0]


async def test_ttl_zero_never_expires(client):
    name = uniq()
    await create(client, name, ttl=0)
    await asyncio.sleep(1.1)
    assert await send(client, name, b"still here") == 0


async def test_long_poll_on_expiring_mailbox_ends(client):
    name = uniq()
    await create(client, name, ttl=1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    reply = await client.request(f"$mq9.AI.MSG.FETCH.{name}",
                                 b'{"config":{"max_wait_ms":10000}}', timeout=10)
    assert loop.time() - t0 < 5
    assert b"does not exist" in reply.data or b'"messages":[]' in reply.data


async def test_default_ttl_from_config(broker_factory):
    b = broker_factory(mailbox_default_ttl=1)
    nc = await nats.connect(b.url, allow_reconnect=False)
    try:
        auto = (await ok(nc, CREATE, b""))["mail_address"]
        named = (await ok(nc, CREATE, {"name": "js.style"}))["mail_address"]  # JS SDK sends {}
        forever = await create(nc, "forever", ttl=0)
        await asyncio.sleep(1.2)
        for n in (auto, named):
            assert await err(nc, f"$mq9.AI.MSG.SEND.{n}", b"x") == f"mailbox {n} does not exist"
        assert await send(nc, forever, b"x") == 0
    finally:
        await nc.close()
