"""mq9fast.integrations.langchain: every tool invoked directly (no LLM)."""
from __future__ import annotations

import asyncio
import re

import pytest

pytest.importorskip("langchain_core", reason="langchain-core not installed (pip install 'mq9fast[langchain]')")

from conftest import BrokerProcess  # noqa: E402
from mq9fast.integrations.langchain import Mq9Toolkit  # noqa: E402


@pytest.fixture(scope="module")
def one_broker(tmp_path_factory):
    """One single-worker broker for the module (this layer is thin: the client tests cover the
    worker variants)."""
    b = BrokerProcess(tmp_path_factory.mktemp("langchain") / "data", {})
    b.start()
    yield b
    b.stop()

NAMES = {"agent_register", "agent_discover", "create_mailbox", "send_message", "fetch_messages",
         "ack_messages", "query_messages", "delete_message"}


@pytest.fixture(scope="module")
def tools(one_broker):
    return {t.name: t for t in Mq9Toolkit(server=one_broker.url).get_tools()}


def test_toolkit_has_the_eight_tools(tools, one_broker):
    assert set(tools) == NAMES
    for t in tools.values():
        assert t.description and t.args_schema is not None
    assert Mq9Toolkit(server=one_broker.url).get_tool("send_message").server == one_broker.url
    schema = tools["fetch_messages"].args_schema.model_json_schema()
    assert schema["properties"]["group_name"]["default"] == "langchain"
    assert schema["properties"]["num_msgs"]["default"] == 10


def test_mailbox_flow(tools):
    addr = tools["create_mailbox"].invoke({"ttl": 600})
    assert re.fullmatch(r"[0-9a-f]{32}", addr)
    out = tools["send_message"].invoke({"mail_address": addr, "content": '{"task":"summarize"}', "priority": "urgent"})
    assert out == f"sent to '{addr}' priority='urgent' msg_id=0"
    tools["send_message"].invoke({"mail_address": addr, "content": "plain text"})
    out = tools["send_message"].invoke({"mail_address": addr, "content": "x", "priority": "whatever"})
    assert "priority='normal'" in out                      # unknown priority -> normal, like langchain-mq9

    fetched = tools["fetch_messages"].invoke({"mail_address": addr})
    assert fetched.startswith(f"3 message(s) from '{addr}' (last msg_id=2):")
    assert 'msg_id=0  priority=urgent  content={"task": "summarize"}' in fetched
    assert 'content="plain text"' in fetched
    assert tools["ack_messages"].invoke({"mail_address": addr, "msg_id": 2}) == \
        f"ACKed msg_id=2 for group='langchain' on '{addr}'"
    assert tools["fetch_messages"].invoke({"mail_address": addr}) == f"No messages in '{addr}'."

    queried = tools["query_messages"].invoke({"mail_address": addr})
    assert "3 message(s)" in queried and "offset unchanged" in queried
    assert tools["delete_message"].invoke({"mail_address": addr, "msg_id": 1}) == f"Deleted msg_id=1 from '{addr}'"
    assert "was not in" in tools["delete_message"].invoke({"mail_address": addr, "msg_id": 1})
    assert "2 message(s)" in tools["query_messages"].invoke({"mail_address": addr, "limit": 5})


def test_key_query(tools):
    addr = tools["create_mailbox"].invoke({})
    assert tools["query_messages"].invoke({"mail_address": addr, "key": "status"}) == f"No messages in '{addr}'."


def test_agent_register_and_discover(tools, one_broker):
    name = "lc.test.researcher"
    out = tools["agent_register"].invoke({"name": name, "capabilities":
                                          "Researches scientific papers and writes literature reviews"})
    assert out == f"Registered agent '{name}' with mailbox '{name}'"
    again = tools["agent_register"].invoke({"name": name, "capabilities": "Researches papers, writes reviews"})
    assert "existing mailbox reused" in again           # restart-safe, unlike langchain-mq9
    found = tools["agent_discover"].invoke({"query": "find someone who can write a literature review"})
    assert f"name={name}  mailbox={name}" in found and "capabilities: Researches papers" in found
    kw = tools["agent_discover"].invoke({"query": "papers reviews"})   # <= 3 words: keyword search
    assert name in kw
    assert name in tools["agent_discover"].invoke({})             # empty: list all
    assert tools["agent_discover"].invoke({"query": "zzqx"}) == "No agents found."


def test_errors_come_back_as_text(tools, one_broker):
    assert tools["send_message"].invoke({"mail_address": "no.such.box", "content": "x"}) == \
        "error: mailbox no.such.box does not exist"
    assert tools["agent_register"].invoke({"name": "Bad Name", "capabilities": "x"}).startswith("error: ")
    bad = Mq9Toolkit(server="nats://127.0.0.1:1").get_tool("create_mailbox")
    assert "connection refused" in bad.invoke({"ttl": 5})


async def test_async_invocation(tools):
    addr = await tools["create_mailbox"].ainvoke({"ttl": 60})
    await tools["send_message"].ainvoke({"mail_address": addr, "content": "hi"})
    out = await tools["fetch_messages"].ainvoke({"mail_address": addr, "group_name": "g", "num_msgs": 1})
    assert "1 message(s)" in out
    # sync invoke from inside a running loop (e.g. a notebook) also works
    assert "1 message(s)" in await asyncio.to_thread(tools["query_messages"].invoke, {"mail_address": addr})
    assert "1 message(s)" in tools["query_messages"].invoke({"mail_address": addr})
