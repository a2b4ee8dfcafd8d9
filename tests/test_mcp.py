"""The MCP endpoint /mcp, driven by the official ``mcp`` SDK client (streamable HTTP)."""
from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request

import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from conftest import BrokerProcess, free_port

TOOLS = {
    "mq9_create_mailbox": ({"name", "ttl", "desc"}, set()),
    "mq9_send_message": ({"mail_address", "payload", "priority", "key", "tags", "delay", "ttl"},
                         {"mail_address", "payload"}),
    "mq9_fetch_messages": ({"mail_address", "group_name", "reset_to", "max_messages", "max_wait_ms"},
                           {"mail_address", "group_name"}),
    "mq9_ack_message": ({"mail_address", "group_name", "msg_id"}, {"mail_address", "group_name", "msg_id"}),
    "mq9_query_mailbox": ({"mail_address", "key", "tags", "since", "limit"}, {"mail_address"}),
    "mq9_delete_message": ({"mail_address", "msg_id"}, {"mail_address", "msg_id"}),
    "mq9_register_agent": ({"name", "payload"}, {"name", "payload"}),
    "mq9_discover_agents": ({"text", "semantic", "limit", "page"}, set()),
    "mq9_unregister_agent": ({"name"}, {"name"}),
}


@pytest.fixture(scope="module")
def mcp_broker(tmp_path_factory):
    b = BrokerProcess(tmp_path_factory.mktemp("mcp") / "data", {"http_port": free_port()})
    b.start()
    b.mcp_url = f"http://127.0.0.1:{b.options['http_port']}/mcp"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(b.mcp_url.replace("/mcp", "/healthz"), timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield b
    b.stop()


@contextlib.asynccontextmanager
async def mcp_session(url: str):
    # (not an async fixture: anyio task groups must be entered and left in the same task)
    async with streamable_http_client(url) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            yield s


async def call(session, name, args):
    res = await session.call_tool(name, args)
    assert not res.is_error, res.content
    # MCP content (compact JSON text) and structured content agree
    assert res.content[0].type == "text"
    assert json.loads(res.content[0].text) == res.structured_content
    return res.structured_content


async def test_initialize_and_list_tools(mcp_broker):
    async with streamable_http_client(mcp_broker.mcp_url) as (read, write):
        async with ClientSession(read, write) as s:
            init = await s.initialize()
            assert init.server_info.name == "mq9fast-mcp"
            assert init.capabilities.tools is not None
            tools = {t.name: t for t in (await s.list_tools()).tools}
    assert set(tools) == set(TOOLS)
    for name, (props, required) in TOOLS.items():
        schema = tools[name].input_schema
        assert schema["type"] == "object" and set(schema["properties"]) == props, name
        assert set(schema.get("required", [])) == required, name
        assert tools[name].description
    assert tools["mq9_send_message"].input_schema["properties"]["priority"]["enum"] == ["normal", "urgent", "critical"]


async def test_mailbox_tools_end_to_end(mcp_broker):
    async with mcp_session(mcp_broker.mcp_url) as session:
        await _mailbox_tools(session)


async def _mailbox_tools(session):
    created = await call(session, "mq9_create_mailbox", {"ttl": 600})
    addr = created["mail_address"]
    assert created["created"] is True and len(addr) == 32
    named = await call(session, "mq9_create_mailbox", {"name": f"mcp.box.{addr[:8]}", "ttl": 60, "desc": "d"})
    assert named == {"mail_address": f"mcp.box.{addr[:8]}", "created": True}

    sent = [await call(session, "mq9_send_message", {"mail_address": addr, "payload": "plain"}),
            await call(session, "mq9_send_message", {"mail_address": addr, "payload": '{"task":"é"}',
                                                     "priority": "critical", "key": "k", "tags": "a,b"}),
            await call(session, "mq9_send_message", {"mail_address": addr, "payload": "later", "delay": 60}),
            await call(session, "mq9_send_message", {"mail_address": addr, "payload": "short", "ttl": 600})]
    assert sent[0] == {"msg_id": 0, "mail_address": addr}
    assert [s["msg_id"] for s in sent] == [0, 1, -1, 2]

    fetched = await call(session, "mq9_fetch_messages", {"mail_address": addr, "group_name": "g",
                                                         "reset_to": "earliest", "max_messages": 10})
    msgs = fetched["messages"]
    assert [(m["msg_id"], m["priority"], m["payload"]) for m in msgs] == [
        (1, "critical", '{"task":"é"}'), (0, "normal", "plain"), (2, "normal", "short")]
    assert set(msgs[0]) == {"msg_id", "payload", "priority", "create_time"}

    assert await call(session, "mq9_ack_message", {"mail_address": addr, "group_name": "g", "msg_id": 2}) == \
        {"msg_id": 2, "acked": True}
    again = await call(session, "mq9_fetch_messages", {"mail_address": addr, "group_name": "g", "max_wait_ms": 0})
    assert again == {"messages": []}
    rewound = await call(session, "mq9_fetch_messages", {"mail_address": addr, "group_name": "g",
                                                         "reset_to": "id:2", "max_wait_ms": 0})
    assert [m["msg_id"] for m in rewound["messages"]] == [2]
    stateless = await call(session, "mq9_fetch_messages", {"mail_address": addr, "reset_to": "earliest"})
    assert len(stateless["messages"]) == 3

    q = await call(session, "mq9_query_mailbox", {"mail_address": addr})
    assert [m["msg_id"] for m in q["messages"]] == [0, 1, 2]
    assert [m["msg_id"] for m in (await call(session, "mq9_query_mailbox",
                                             {"mail_address": addr, "key": "k"}))["messages"]] == [1]
    assert [m["msg_id"] for m in (await call(session, "mq9_query_mailbox",
                                             {"mail_address": addr, "tags": ["b"]}))["messages"]] == [1]
    assert len((await call(session, "mq9_query_mailbox", {"mail_address": addr, "limit": 1}))["messages"]) == 1

    assert await call(session, "mq9_delete_message", {"mail_address": addr, "msg_id": 0}) == \
        {"msg_id": 0, "deleted": True}
    assert await call(session, "mq9_delete_message", {"mail_address": addr, "msg_id": 0}) == \
        {"msg_id": 0, "deleted": False}


async def test_registry_tools(mcp_broker):
    async with mcp_session(mcp_broker.mcp_url) as session:
        await _registry_tools(session)


async def _registry_tools(session):
    card = json.dumps({"name": "mcp.payments", "description": "Processes payments and generates invoices",
                       "skills": [{"name": "invoice", "description": "create an invoice"}]})
    assert await call(session, "mq9_register_agent", {"name": "mcp.payments", "payload": card}) == \
        {"name": "mcp.payments", "registered": True}
    found = await call(session, "mq9_discover_agents", {"text": "payment invoice"})
    assert [a["name"] for a in found["agents"]][:1] == ["mcp.payments"]
    sem = await call(session, "mq9_discover_agents", {"semantic": "process a payment and generate an invoice",
                                                      "limit": 3})
    assert "mcp.payments" in [a["name"] for a in sem["agents"]]
    listed = await call(session, "mq9_discover_agents", {})
    assert "mcp.payments" in [a["name"] for a in listed["agents"]]
    assert await call(session, "mq9_unregister_agent", {"name": "mcp.payments"}) == \
        {"name": "mcp.payments", "unregistered": True}
    after = await call(session, "mq9_discover_agents", {"text": "payment invoice"})
    assert "mcp.payments" not in [a["name"] for a in after["agents"]]


@pytest.mark.parametrize("name,args,needle", [
    ("mq9_send_message", {"mail_address": "no.such.box", "payload": "x"}, "mailbox no.such.box does not exist"),
    ("mq9_send_message", {"mail_address": "a.b"}, "missing required argument 'payload'"),
    ("mq9_send_message", {"mail_address": "a.b", "payload": "x", "priority": "asap"}, "priority"),
    ("mq9_create_mailbox", {"name": "Bad Name"}, "lowercase"),
    ("mq9_create_mailbox", {"ttl": -5}, "non-negative integer"),
    ("mq9_ack_message", {"mail_address": "a.b", "group_name": "g"}, "missing required argument 'msg_id'"),
    ("mq9_query_mailbox", {"mail_address": "a.b", "tags": [1, 2]}, "array of strings"),
    ("mq9_register_agent", {"name": "x", "payload": ""}, "agent_info must not be empty"),
])
async def test_tool_errors_are_is_error_results(mcp_broker, name, args, needle):
    async with mcp_session(mcp_broker.mcp_url) as session:
        res = await session.call_tool(name, args)
    assert res.is_error and needle in res.content[0].text


async def test_unknown_tool_is_protocol_error(mcp_broker):
    async with mcp_session(mcp_broker.mcp_url) as session:
        with pytest.raises(MCPError) as ei:
            await session.call_tool("mq9_no_such_tool", {})
    assert ei.value.code == -32602 and "Unknown tool: mq9_no_such_tool" in ei.value.message


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_plain_jsonrpc_clients_work(mcp_broker):
    """RobustMQ-style clients: one JSON-RPC object per POST, no Accept/Content-Type care."""
    status, body = _post(mcp_broker.mcp_url, json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
         "params": {"name": "mq9_create_mailbox", "arguments": {"ttl": 30}}}).encode())
    assert status == 200
    result = json.loads(body)["result"]
    assert result["isError"] is False and result["structuredContent"]["created"] is True
    status, body = _post(mcp_broker.mcp_url, b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    assert status == 202 and body == b""
    status, body = _post(mcp_broker.mcp_url, b'{"jsonrpc":"2.0","id":2,"method":"no/such"}')
    assert json.loads(body)["error"]["code"] == -32601
    status, body = _post(mcp_broker.mcp_url, b"this is not json")
    assert status == 400 and json.loads(body)["error"]["code"] == -32700
    req = urllib.request.Request(mcp_broker.mcp_url, method="GET")
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(req, timeout=10)
    assert ei.value.code == 405
    # the broker is still fine
    with urllib.request.urlopen(mcp_broker.mcp_url.replace("/mcp", "/healthz"), timeout=5) as r:
        assert r.status == 200


def test_broker_shuts_down_cleanly_after_mcp_use(broker_factory):
    b = broker_factory(http_port=free_port())
    url = f"http://127.0.0.1:{b.options['http_port']}/mcp"
    deadline = time.monotonic() + 20
    while True:
        status, body = _post(url, json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()) \
            if _up(url) else (0, b"")
        if status == 200:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert len(json.loads(body)["result"]["tools"]) == 9
    t0 = time.monotonic()
    assert b.stop() == 0
    assert time.monotonic() - t0 < 10


def _up(url: str) -> bool:
    try:
        urllib.request.urlopen(url.replace("/mcp", "/healthz"), timeout=2).close()
        return True
    except OSError:
        return False
