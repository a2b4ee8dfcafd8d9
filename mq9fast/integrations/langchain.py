"""LangChain tools for mq9: ``Mq9Toolkit(server=...).get_tools()`` (extra ``mq9fast[langchain]``).

Eight tools with the names, arguments and behaviour of the ``langchain-mq9`` toolkit (PROTOCOL.md
Appendix A): ``agent_register``, ``agent_discover``, ``create_mailbox``, ``send_message``,
``fetch_messages``, ``ack_messages``, ``query_messages``, ``delete_message``.  Each returns a
short text for the model.  Notes:

* ``fetch_messages`` reads with consumer group ``langchain`` (default) from ``earliest``,
  ``num_msgs`` 10, and does not acknowledge; ``ack_messages`` with the last ``msg_id`` of the batch
  confirms the whole batch (the broker's batch-aware ACK);
* ``agent_register`` creates the agent's mailbox (named after the agent, so the name must be a
  valid mailbox address) and registers ``{name, mailbox, payload: capabilities}``.  Unlike
  langchain-mq9 it also works on restart: an existing mailbox of that name is reused;
* ``agent_discover`` searches semantically when the query has more than three words, else by
  keyword; an empty query lists every agent;
* broker errors come back as ``error: <text>`` (the model can read and correct them) instead of
  exceptions.

Every call opens its own short connection (tools may run in threads or in any event loop).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
from typing import Any, Awaitable, Callable, Coroutine, Optional, Type

try:
    from langchain_core.tools import BaseTool, BaseToolkit
except ImportError as exc:  # pragma: no cover - depends on the optional extra
    raise ImportError("mq9fast.integrations.langchain needs langchain-core: pip install 'mq9fast[langchain]'") from exc
from pydantic import BaseModel, ConfigDict, Field

from ..client import Message, Mq9Client, Mq9Error, default_server

__all__ = [
    "Mq9Toolkit",
    "AgentRegisterTool",
    "AgentDiscoverTool",
    "CreateMailboxTool",
    "SendMessageTool",
    "FetchMessagesTool",
    "AckMessagesTool",
    "QueryMessagesTool",
    "DeleteMessageTool",
]

DEFAULT_GROUP = "langchain"


def _run_sync(factory: Callable[[], Coroutine[Any, Any, str]]) -> str:
    """Run a coroutine from synchronous code, also when an event loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def _content(msg: Message) -> Any:
    try:
        return msg.json()
    except ValueError:
        return msg.text()


def _lines(msgs: list[Message]) -> list[str]:
    return [f"  msg_id={m.msg_id}  priority={m.priority.value}  content="
            f"{json.dumps(_content(m), ensure_ascii=False)}" for m in msgs]


class _Mq9Tool(BaseTool):
    """Shared plumbing: server URL, one connection per call, errors as text."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    server: str = Field(default_factory=default_server)
    request_timeout: float = 10.0

    async def _with_client(self, fn: Callable[[Mq9Client], Awaitable[str]]) -> str:
        try:
            async with Mq9Client(self.server, request_timeout=self.request_timeout, reconnect_attempts=0) as client:
                return await fn(client)
        except Mq9Error as exc:
            return f"error: {exc}"

    def _run(self, *args: Any, **kwargs: Any) -> str:
        kwargs.pop("run_manager", None)
        return _run_sync(lambda: self._arun(*args, **kwargs))


# -- inputs -------------------------------------------------------------------------------------
class CreateMailboxInput(BaseModel):
    ttl: int = Field(default=3600, ge=0, description="Mailbox lifetime in seconds; 0 = never expires.")


class SendMessageInput(BaseModel):
    mail_address: str = Field(description="Destination mailbox address.")
    content: str = Field(description="Message content (sent as UTF-8; JSON text is fine).")
    priority: str = Field(default="normal", description="'critical', 'urgent' or 'normal' (default).")


class FetchMessagesInput(BaseModel):
    mail_address: str = Field(description="Mailbox address to fetch from.")
    group_name: str = Field(default=DEFAULT_GROUP, description="Consumer group; the broker remembers its "
                                                               "position, so the next fetch continues after the last ACK.")
    num_msgs: int = Field(default=10, ge=0, description="Maximum number of messages to return.")


class AckInput(BaseModel):
    mail_address: str = Field(description="Mailbox address.")
    group_name: str = Field(default=DEFAULT_GROUP, description="Consumer group name used to fetch.")
    msg_id: int = Field(ge=0, description="msg_id of the last processed message of the batch.")


class QueryMessagesInput(BaseModel):
    mail_address: str = Field(description="Mailbox address to inspect.")
    key: str = Field(default="", description="Only the current message with this key. Empty = no filter.")
    limit: int = Field(default=20, ge=0, description="Maximum number of messages to return.")


class DeleteMessageInput(BaseModel):
    mail_address: str = Field(description="Mailbox address holding the message.")
    msg_id: int = Field(ge=0, description="msg_id of the message to delete.")


class AgentRegisterInput(BaseModel):
    name: str = Field(description="Unique agent name, also used as its mailbox address "
                                  "(lower-case letters, digits and dots).")
    capabilities: str = Field(description="Natural-language description of what this agent can do; "
                                          "used for keyword and semantic search.")
    ttl: int = Field(default=3600, ge=0, description="Mailbox lifetime in seconds (0 = never expires).")


class AgentDiscoverInput(BaseModel):
    query: str = Field(default="", description="What you are looking for. A sentence is searched by meaning, "
                                               "a few keywords by text. Empty = list all agents.")
    limit: int = Field(default=10, ge=0, description="Maximum number of results.")


# -- tools --------------------------------------------------------------------------------------
class CreateMailboxTool(_Mq9Tool):
    name: str = "create_mailbox"
    description: str = (
        "Create a new private mq9 mailbox and return its mail_address. Other agents send messages to this "
        "address; you read them later with fetch_messages. Messages are kept until the TTL expires, so "
        "senders do not need you to be online.")
    args_schema: Type[BaseModel] = CreateMailboxInput

    async def _arun(self, ttl: int = 3600, **_: Any) -> str:
        async def go(c: Mq9Client) -> str:
            return await c.mailbox_create(ttl=ttl)
        return await self._with_client(go)


class SendMessageTool(_Mq9Tool):
    name: str = "send_message"
    description: str = (
        "Send a message to another agent's mq9 mail_address. The recipient does not need to be online. "
        "priority: 'critical' for abort signals, 'urgent' for time-sensitive work, 'normal' otherwise.")
    args_schema: Type[BaseModel] = SendMessageInput

    async def _arun(self, mail_address: str, content: str, priority: str = "normal", **_: Any) -> str:
        prio = (priority or "normal").strip().lower()
        if prio not in ("normal", "urgent", "critical"):
            prio = "normal"

        async def go(c: Mq9Client) -> str:
            msg_id = await c.send(mail_address, content.encode("utf-8"), priority=prio)
            return f"sent to '{mail_address}' priority='{prio}' msg_id={msg_id}"
        return await self._with_client(go)


class FetchMessagesTool(_Mq9Tool):
    name: str = "fetch_messages"
    description: str = (
        "Pull pending messages from an mq9 mailbox, critical first, then urgent, then normal. The consumer "
        "group remembers where you are: after processing, call ack_messages with the last msg_id so the next "
        "fetch_messages returns only newer messages.")
    args_schema: Type[BaseModel] = FetchMessagesInput

    async def _arun(self, mail_address: str, group_name: str = DEFAULT_GROUP, num_msgs: int = 10, **_: Any) -> str:
        async def go(c: Mq9Client) -> str:
            msgs = await c.fetch(mail_address, group_name=group_name, deliver="earliest", num_msgs=num_msgs,
                                 max_wait_ms=0)
            if not msgs:
                return f"No messages in '{mail_address}'."
            head = f"{len(msgs)} message(s) from '{mail_address}' (last msg_id={msgs[-1].msg_id}):"
            return "\n".join([head] + _lines(msgs))
        return await self._with_client(go)


class AckMessagesTool(_Mq9Tool):
    name: str = "ack_messages"
    description: str = (
        "Acknowledge processed messages: pass the msg_id of the last message of the batch returned by "
        "fetch_messages. The next fetch_messages of the group continues after it.")
    args_schema: Type[BaseModel] = AckInput

    async def _arun(self, mail_address: str, msg_id: int, group_name: str = DEFAULT_GROUP, **_: Any) -> str:
        async def go(c: Mq9Client) -> str:
            await c.ack(mail_address, group_name, msg_id)
            return f"ACKed msg_id={msg_id} for group='{group_name}' on '{mail_address}'"
        return await self._with_client(go)


class QueryMessagesTool(_Mq9Tool):
    name: str = "query_messages"
    description: str = (
        "Inspect the messages stored in an mq9 mailbox without consuming them (no group position changes). "
        "With key, returns the current message stored under that key (e.g. key='status').")
    args_schema: Type[BaseModel] = QueryMessagesInput

    async def _arun(self, mail_address: str, key: str = "", limit: int = 20, **_: Any) -> str:
        async def go(c: Mq9Client) -> str:
            msgs = await c.query(mail_address, key=key or None, limit=limit)
            if not msgs:
                return f"No messages in '{mail_address}'."
            head = f"{len(msgs)} message(s) in '{mail_address}' (read-only, offset unchanged):"
            return "\n".join([head] + _lines(msgs))
        return await self._with_client(go)


class DeleteMessageTool(_Mq9Tool):
    name: str = "delete_message"
    description: str = (
        "Permanently delete one message from an mq9 mailbox by msg_id (find it with query_messages first).")
    args_schema: Type[BaseModel] = DeleteMessageInput

    async def _arun(self, mail_address: str, msg_id: int, **_: Any) -> str:
        async def go(c: Mq9Client) -> str:
            deleted = await c.delete(mail_address, msg_id)
            if deleted:
                return f"Deleted msg_id={msg_id} from '{mail_address}'"
            return f"msg_id={msg_id} was not in '{mail_address}' (nothing deleted)"
        return await self._with_client(go)


class AgentRegisterTool(_Mq9Tool):
    name: str = "agent_register"
    description: str = (
        "Register this agent in the mq9 agent registry with a description of its capabilities, creating its "
        "mailbox. Other agents can then find it with agent_discover and send it tasks.")
    args_schema: Type[BaseModel] = AgentRegisterInput

    async def _arun(self, name: str, capabilities: str, ttl: int = 3600, **_: Any) -> str:
        async def go(c: Mq9Client) -> str:
            try:
                address = await c.mailbox_create(name=name, ttl=ttl)
                note = ""
            except Mq9Error as exc:
                if "already exists" not in str(exc):
                    raise
                address, note = name, " (existing mailbox reused)"
            await c.agent_register({"name": name, "mailbox": address, "payload": capabilities})
            return f"Registered agent '{name}' with mailbox '{address}'{note}"
        return await self._with_client(go)


class AgentDiscoverTool(_Mq9Tool):
    name: str = "agent_discover"
    description: str = (
        "Find agents in the mq9 registry. Phrase the query as a sentence to search by meaning ('an agent that "
        "translates Chinese to English') or give keywords ('translator'); leave it empty to list all. Returns "
        "each agent's name and mailbox: send tasks to the mailbox.")
    args_schema: Type[BaseModel] = AgentDiscoverInput

    async def _arun(self, query: str = "", limit: int = 10, **_: Any) -> str:
        q = (query or "").strip()
        semantic = len(q.split()) > 3

        async def go(c: Mq9Client) -> str:
            agents = await c.agent_discover(semantic=q if q and semantic else None,
                                            text=q if q and not semantic else None, limit=limit)
            if not agents:
                return "No agents found."
            lines = [f"Found {len(agents)} agent(s):"]
            for a in agents:
                lines.append(f"  name={a.get('name')}  mailbox={a.get('mailbox')}")
                desc = a.get("payload") if isinstance(a.get("payload"), str) else a.get("description")
                if isinstance(desc, str) and desc:
                    lines.append(f"    capabilities: {desc[:160]}")
            return "\n".join(lines)
        return await self._with_client(go)


TOOL_CLASSES: tuple[type[_Mq9Tool], ...] = (
    AgentRegisterTool, AgentDiscoverTool, CreateMailboxTool, SendMessageTool,
    FetchMessagesTool, AckMessagesTool, QueryMessagesTool, DeleteMessageTool,
)


class Mq9Toolkit(BaseToolkit):
    """The eight mq9 tools bound to one broker: ``Mq9Toolkit(server="nats://127.0.0.1:4222")``."""

    server: str = Field(default_factory=default_server)
    request_timeout: float = 10.0

    def get_tools(self) -> list[BaseTool]:
        return [cls(server=self.server, request_timeout=self.request_timeout)  # type: ignore[call-arg]
                for cls in TOOL_CLASSES]

    def get_tool(self, name: str) -> Optional[BaseTool]:
        for tool in self.get_tools():
            if tool.name == name:
                return tool
        return None
