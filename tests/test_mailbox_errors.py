"""Malformed requests: JSON error replies with the PROTOCOL.md §11 texts; nothing half-stored."""
from __future__ import annotations

import pytest

from test_mailbox_support import client, create, err, fetch, ids, ok, query, send, uniq  # noqa: F401

FETCH_BAD = [
    b"{", b"[]", b"null", b"true", b'"x"', b"12", b"\xff",
    b'{"deliver":"newest"}', b'{"deliver":5}', b'{"deliver":"EARLIEST"}',
    b'{"group_name":1}', b'{"group_name":["g"]}',
    b'{"from_time":-1}', b'{"from_time":1.5}', b'{"from_time":"1"}',
    b'{"from_id":-2}', b'{"from_id":2.0}', b'{"from_id":true}',
    b'{"force_deliver":"yes"}', b'{"force_deliver":1}',
    b'{"config":5}', b'{"config":[]}',
    b'{"config":{"num_msgs":-1}}', b'{"config":{"num_msgs":0.5}}', b'{"config":{"num_msgs":"10"}}',
    b'{"config":{"num_msgs":4294967296}}',
    b'{"config":{"max_wait_ms":-1}}', b'{"config":{"max_wait_ms":1e3}}',
    b'{"config":{"ack_wait_ms":-5}}',
    b'{"payload_encoding":"utf8"}',
    # JSON a strict client could not read back, or Python could not take (jsonbody.py)
    b'{"group_name":"g","x":NaN}', b'{"config":{"max_wait_ms":Infinity}}', b'{"x":1e400}',
    b'{"group_name":"\\ud800"}', b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}",
]


@pytest.mark.parametrize("body", FETCH_BAD)
async def test_fetch_bad_input(client, body):
    name = await create(client, uniq())
    text = await err(client, f"$mq9.AI.MSG.FETCH.{name}", body)
    assert text.startswith("invalid MSG.FETCH payload: "), text


async def test_bad_group_fetch_creates_no_group(client):
    name = await create(client, uniq())
    for i in range(3):
        await send(client, name, b"%d" % i)
    await err(client, f"$mq9.AI.MSG.FETCH.{name}",
              {"group_name": "g", "deliver": "latest", "config": {"num_msgs": -1}})
    # had the bad request created group g at 'latest', this would return only [2]
    assert ids(await fetch(client, name, group_name="g", deliver="earliest")) == [0, 1, 2]


async def test_missing_mailbox_texts(client):
    name = uniq("nobody")
    gone = f"mailbox {name} does not exist"
    assert await err(client, f"$mq9.AI.MSG.SEND.{name}", b"x") == gone
    assert await err(client, f"$mq9.AI.MSG.SEND.{name}", b"x", headers={"mq9-delay": "5"}) == gone
    assert await err(client, f"$mq9.AI.MSG.FETCH.{name}", b"") == gone
    assert await err(client, f"$mq9.AI.MSG.FETCH.{name}", {"group_name": "g"}) == gone
    assert await err(client, f"$mq9.AI.MSG.QUERY.{name}", b"{}") == gone
    assert await err(client, f"$mq9.AI.MSG.DELETE.{name}.3", b"") == gone
    assert await err(client, f"$mq9.AI.MSG.ACK.{name}",
                     {"group_name": "g", "mail_address": "", "msg_id": 0}) == gone
    # a failed SEND created nothing
    assert await err(client, f"$mq9.AI.MSG.QUERY.{name}", b"") == gone


async def test_validation_precedes_existence(client):
    name = uniq("nobody")
    assert (await err(client, f"$mq9.AI.MSG.FETCH.{name}", b"{")).startswith("invalid MSG.FETCH payload: ")
    assert (await err(client, f"$mq9.AI.MSG.QUERY.{name}", b"[")).startswith("invalid query request: ")
    assert await err(client, f"$mq9.AI.MSG.DELETE.{name}.x", b"") == "invalid msg_id: x"


async def test_connection_survives_a_burst_of_bad_requests(client):
    name = await create(client, uniq())
    for body in FETCH_BAD:
        await err(client, f"$mq9.AI.MSG.FETCH.{name}", body)
    await err(client, "$mq9.AI.MAILBOX.CREATE", b"{")
    await err(client, f"$mq9.AI.MSG.ACK.{name}", b"{}")
    await err(client, f"$mq9.AI.MSG.QUERY.{name}", b'{"limit":-1}')
    await err(client, f"$mq9.AI.MSG.DELETE.{name}.nope", b"")
    # still connected and fully usable
    assert client.is_connected
    assert await send(client, name, b"fine") == 0
    assert [m["msg_id"] for m in await query(client, name)] == [0]
    assert (await ok(client, f"$mq9.AI.MSG.FETCH.{name}", {"deliver": "earliest"}))["messages"]


async def test_garbage_option_values_are_ignored(client):
    name = await create(client, uniq())
    await send(client, name, b"x", extra={"mq9-priority": "\u2603", "mq9-ttl": "\u0661"})
    m = (await fetch(client, name, deliver="earliest"))[0]
    assert m["priority"] == "normal" and "expire_at" not in m


async def test_absurd_addresses_do_not_exist(client):
    long_addr = "a" * 3000
    assert await err(client, f"$mq9.AI.MSG.SEND.{long_addr}", b"x") == f"mailbox {long_addr} does not exist"
    assert await err(client, f"$mq9.AI.MSG.FETCH.{long_addr}", b"") == f"mailbox {long_addr} does not exist"
    name = await create(client, uniq())
    long_mail = "m" * 600
    assert await err(client, f"$mq9.AI.MSG.ACK.{name}",
                     {"group_name": "g", "mail_address": long_mail, "msg_id": 0}) == \
        f"mailbox {long_mail} does not exist"
    assert client.is_connected
