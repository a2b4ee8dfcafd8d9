"""The MCP endpoint ``/mcp`` (PROTOCOL.md §9): the nine ``mq9_*`` tools, on the official ``mcp`` SDK.

Streamable HTTP, stateless, JSON responses (no SSE, no session header), served inside the
broker's event loop by the side port's ASGI server.  Tools run the mq9 commands in-process
through ``Control.dispatch`` (``services.command``), so they behave exactly like the NATS
commands.  Tool names, argument names and result objects are RobustMQ's (§9.2); a result is MCP
``content`` (the compact JSON text) plus ``structuredContent`` (the object) (§9.3).  Bad arguments
and broker errors are tool errors (``isError: true``, the text verbatim); an unknown tool is the
JSON-RPC error -32602 ``Unknown tool: <name>``.  Message payloads are returned as UTF-8 text.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable

import mcp_types as types
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError

from .. import __version__
from . import services

log = logging.getLogger("mq9fast.mcp")

SERVER_NAME = "mq9fast-mcp"
PRIORITIES = ("normal", "urgent", "critical")


class ToolArgError(Exception):
    pass


def _schema(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required}


S = {"type": "string"}
I = {"type": "integer", "minimum": 0}

TOOLS: list[tuple[str, str, dict[str, Any]]] = [
    ("mq9_create_mailbox",
     "Create an mq9 mailbox (a persistent, addressable inbox). Omit name for an unguessable generated "
     "address. ttl is in seconds (0 = never expires; omitted = server default, 1 day). Returns mail_address.",
     _schema({"name": {**S, "description": "mailbox address: lower-case letters, digits and dots"},
              "ttl": {**I, "description": "lifetime in seconds; 0 = never expires"},
              "desc": {**S, "description": "free-text description"}}, [])),
    ("mq9_send_message",
     "Send a message to a mailbox. The recipient does not need to be online. priority: critical > urgent > "
     "normal. key: a newer message with the same key replaces the older one. tags: comma-separated. delay: "
     "seconds before it becomes visible. ttl: seconds until it expires. Returns msg_id (-1 when delayed).",
     _schema({"mail_address": S, "payload": {**S, "description": "message text (often JSON)"},
              "priority": {"type": "string", "enum": list(PRIORITIES)},
              "key": S, "tags": {**S, "description": "comma-separated tags, e.g. billing,vip"},
              "delay": I, "ttl": I}, ["mail_address", "payload"])),
    ("mq9_fetch_messages",
     "Pull messages from a mailbox, critical first, then urgent, then normal. With group_name the broker "
     "remembers the group's position: acknowledge with mq9_ack_message and the next fetch continues after it. "
     "reset_to: earliest | latest | time:<unix seconds> | id:<msg_id> restarts the group there.",
     _schema({"mail_address": S, "group_name": S,
              "reset_to": {**S, "description": "earliest, latest, time:<unix s> or id:<msg_id>"},
              "max_messages": {**I, "description": "at most this many messages (default 100)"},
              "max_wait_ms": {**I, "description": "wait this long for a message if none is there"}},
             ["mail_address", "group_name"])),
    ("mq9_ack_message",
     "Acknowledge msg_id (and everything before it in the same fetch) for a consumer group, so the next "
     "fetch of that group continues after it.",
     _schema({"mail_address": S, "group_name": S, "msg_id": I}, ["mail_address", "group_name", "msg_id"])),
    ("mq9_query_mailbox",
     "Inspect the messages stored in a mailbox (oldest first) without consuming them. One filter applies: "
     "key (the current message with that key), else tags (messages with ANY of the tags), else since "
     "(created at or after a unix time). limit defaults to 100.",
     _schema({"mail_address": S, "key": S, "tags": {"type": "array", "items": S}, "since": I, "limit": I},
             ["mail_address"])),
    ("mq9_delete_message",
     "Delete one message from a mailbox by msg_id.",
     _schema({"mail_address": S, "msg_id": I}, ["mail_address", "msg_id"])),
    ("mq9_register_agent",
     "Register an agent in the registry so others can discover it. payload is its capability description "
     "(plain text or an A2A AgentCard as a JSON string). Registering a name again replaces it.",
     _schema({"name": S, "payload": S}, ["name", "payload"])),
    ("mq9_discover_agents",
     "Find agents: semantic = search by meaning (a sentence describing the need), text = keyword search; "
     "neither = list all. Each result carries the agent's registered card, including its mailbox.",
     _schema({"text": S, "semantic": S, "limit": I, "page": {"type": "integer", "minimum": 1}}, [])),
    ("mq9_unregister_agent",
     "Remove an agent from the registry.",
     _schema({"name": S}, ["name"])),
]
TOOL_NAMES = {t[0] for t in TOOLS}


# -- argument helpers ------------------------------------------------------------------------------
def _str(args: dict[str, Any], name: str, required: bool = False) -> str | None:
    v = args.get(name)
    if v is None:
        if required:
            raise ToolArgError(f"missing required argument '{name}'")
        return None
    if not isinstance(v, str):
        raise ToolArgError(f"argument '{name}' must be a string")
    return v


def _int(args: dict[str, Any], name: str, required: bool = False) -> int | None:
    v = args.get(name)
    if v is None:
        if required:
            raise ToolArgError(f"missing required argument '{name}'")
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v.strip())
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ToolArgError(f"argument '{name}' must be a non-negative integer")
    return v


def _text(payload: Any) -> str:
    """A stored payload as UTF-8 text (we ask the broker for raw payloads)."""
    if isinstance(payload, str):
        return payload
    return json.dumps(payload, ensure_ascii=False)


def _messages(reply: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for m in reply.get("messages") or []:
        out.append({"msg_id": m.get("msg_id"), "payload": _text(m.get("payload", "")),
                    "priority": m.get("priority", "normal"), "create_time": m.get("create_time")})
    return out


def _reset_to(value: str | None) -> dict[str, Any]:
    if value is None:
        return {"deliver": "latest"}
    v = value.strip()
    if v in ("earliest", "latest"):
        return {"deliver": v, "force_deliver": True}
    for prefix, deliver, field in (("time:", "from_time", "from_time"), ("id:", "from_id", "from_id")):
        if v.startswith(prefix) and v[len(prefix):].strip().isdigit():
            return {"deliver": deliver, field: int(v[len(prefix):].strip()), "force_deliver": True}
    return {"deliver": "latest", "force_deliver": True}


class Mq9Tools:
    """The tool implementations: ``await tools.call(name, arguments) -> result object``."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    async def _cmd(self, subject: str, body: Any = b"", headers: bytes | None = None) -> dict[str, Any]:
        return await services.command(self.broker, subject, body, headers)

    async def call(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        fn: Callable[[dict[str, Any]], Any] = getattr(self, "_" + name)
        return await fn(args)

    async def _mq9_create_mailbox(self, a: dict[str, Any]) -> dict[str, Any]:
        body = {"name": _str(a, "name"), "ttl": _int(a, "ttl"), "desc": _str(a, "desc")}
        reply = await self._cmd("$mq9.AI.MAILBOX.CREATE", body)
        return {"mail_address": reply.get("mail_address"), "created": True}

    async def _mq9_send_message(self, a: dict[str, Any]) -> dict[str, Any]:
        addr = _str(a, "mail_address", True)
        payload = a.get("payload")
        if payload is None:
            raise ToolArgError("missing required argument 'payload'")
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False).encode()
        hdrs: dict[str, str] = {}
        prio = _str(a, "priority")
        if prio is not None:
            if prio.strip().lower() not in PRIORITIES:
                raise ToolArgError("argument 'priority' must be normal, urgent or critical")
            hdrs["mq9-priority"] = prio.strip().lower()
        key = _str(a, "key")
        if key:
            hdrs["mq9-key"] = key
        tags = a.get("tags")
        if isinstance(tags, list):
            tags = ",".join(str(t) for t in tags)
        if tags is not None and not isinstance(tags, str):
            raise ToolArgError("argument 'tags' must be a comma-separated string")
        if tags:
            hdrs["mq9-tags"] = tags
        for name in ("delay", "ttl"):
            v = _int(a, name)
            if v is not None:
                hdrs[f"mq9-{name}"] = str(v)
        reply = await self._cmd(f"$mq9.AI.MSG.SEND.{addr}", data, services.header_block(hdrs))
        return {"msg_id": reply.get("msg_id"), "mail_address": addr}

    async def _mq9_fetch_messages(self, a: dict[str, Any]) -> dict[str, Any]:
        addr = _str(a, "mail_address", True)
        body: dict[str, Any] = {"payload_encoding": "raw"}
        group = _str(a, "group_name")
        if group is not None:
            body["group_name"] = group
        body.update(_reset_to(_str(a, "reset_to")))
        config: dict[str, Any] = {}
        n = _int(a, "max_messages")
        if n is not None:
            config["num_msgs"] = n
        w = _int(a, "max_wait_ms")
        if w is not None:
            config["max_wait_ms"] = w
        if config:
            body["config"] = config
        reply = await self._cmd(f"$mq9.AI.MSG.FETCH.{addr}", body)
        return {"messages": _messages(reply)}

    async def _mq9_ack_message(self, a: dict[str, Any]) -> dict[str, Any]:
        addr = _str(a, "mail_address", True)
        group = _str(a, "group_name", True)
        msg_id = _int(a, "msg_id", True)
        await self._cmd(f"$mq9.AI.MSG.ACK.{addr}", {"group_name": group, "mail_address": addr, "msg_id": msg_id})
        return {"msg_id": msg_id, "acked": True}

    async def _mq9_query_mailbox(self, a: dict[str, Any]) -> dict[str, Any]:
        addr = _str(a, "mail_address", True)
        body: dict[str, Any] = {"payload_encoding": "raw"}
        key = _str(a, "key")
        if key is not None:
            body["key"] = key
        tags = a.get("tags")
        if isinstance(tags, str):
            tags = [t.strip() for t in tags.split(",") if t.strip()]
        if tags is not None:
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise ToolArgError("argument 'tags' must be an array of strings")
            body["tags"] = tags
        for name in ("since", "limit"):
            v = _int(a, name)
            if v is not None:
                body[name] = v
        reply = await self._cmd(f"$mq9.AI.MSG.QUERY.{addr}", body)
        return {"messages": _messages(reply)}

    async def _mq9_delete_message(self, a: dict[str, Any]) -> dict[str, Any]:
        addr = _str(a, "mail_address", True)
        msg_id = _int(a, "msg_id", True)
        reply = await self._cmd(f"$mq9.AI.MSG.DELETE.{addr}.{msg_id}", b"")
        return {"msg_id": msg_id, "deleted": bool(reply.get("deleted", True))}

    async def _mq9_register_agent(self, a: dict[str, Any]) -> dict[str, Any]:
        name = _str(a, "name", True)
        payload = a.get("payload")
        if payload is None:
            raise ToolArgError("missing required argument 'payload'")
        if not isinstance(payload, str):
            payload = json.dumps(payload, ensure_ascii=False)
        await self._cmd("$mq9.AI.AGENT.REGISTER", {"name": name, "payload": payload})
        return {"name": name, "registered": True}

    async def _mq9_discover_agents(self, a: dict[str, Any]) -> dict[str, Any]:
        body = {"text": _str(a, "text"), "semantic": _str(a, "semantic"),
                "limit": _int(a, "limit") if a.get("limit") is not None else 20,
                "page": _int(a, "page") if a.get("page") is not None else 1}
        reply = await self._cmd("$mq9.AI.AGENT.DISCOVER", body)
        return {"agents": reply.get("agents") or []}

    async def _mq9_unregister_agent(self, a: dict[str, Any]) -> dict[str, Any]:
        name = _str(a, "name", True)
        await self._cmd("$mq9.AI.AGENT.UNREGISTER", {"name": name})
        return {"name": name, "unregistered": True}


def build_server(broker: Any) -> Server:
    tools = Mq9Tools(broker)
    tool_list = [types.Tool(name=n, description=d, input_schema=s) for n, d, s in TOOLS]

    async def on_list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tool_list)

    async def on_call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        name = params.name
        if name not in TOOL_NAMES:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {name}")
        args = params.arguments or {}
        try:
            result = await tools.call(name, dict(args))
        except (ToolArgError, services.CommandError) as exc:
            return types.CallToolResult(content=[types.TextContent(text=str(exc))], is_error=True)
        except services.Unavailable as exc:
            return types.CallToolResult(content=[types.TextContent(text=str(exc))], is_error=True)
        except Exception as exc:  # noqa: BLE001 - a tool bug must not take the endpoint down
            log.exception("MCP tool %s failed", name)
            return types.CallToolResult(content=[types.TextContent(text=f"internal error: {exc}")], is_error=True)
        text = json.dumps(result, separators=(",", ":"), ensure_ascii=False)
        return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=result,
                                    is_error=False)

    return Server(SERVER_NAME, version=__version__,
                  instructions="mq9 mailboxes and agent registry: create mailboxes, send/fetch/ack messages, "
                               "register and discover agents.",
                  on_list_tools=on_list_tools, on_call_tool=on_call_tool)


class McpEndpoint:
    """The ASGI app for ``/mcp`` plus the session manager whose ``run()`` must wrap its lifetime."""

    def __init__(self, broker: Any, host: str) -> None:
        if logging.getLogger("mq9fast").getEffectiveLevel() > logging.DEBUG:
            logging.getLogger("mcp").setLevel(logging.WARNING)  # one INFO line per request otherwise
        self.server = build_server(broker)
        security = None
        if host in ("127.0.0.1", "localhost", "::1"):
            # DNS-rebinding protection for a loopback-only endpoint (a web page must not drive it).
            security = TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost"],
                allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
            )
        self.manager = StreamableHTTPSessionManager(app=self.server, json_response=True, stateless=True,
                                                    security_settings=security)
        self._inner = StreamableHTTPASGIApp(self.manager)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            if scope.get("method") == "GET":
                # stateless JSON mode has no server-to-client stream (PROTOCOL.md §9.3)
                await _send_json(send, 405, {"error": "method not allowed: POST JSON-RPC requests to /mcp"},
                                 [(b"allow", b"POST")])
                return
            if scope.get("method") == "POST":
                scope = _plain_jsonrpc_friendly(scope)
        await self._inner(scope, receive, send)


async def _send_json(send: Any, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())] + extra})
    await send({"type": "http.response.body", "body": data})


def _plain_jsonrpc_friendly(scope: dict[str, Any]) -> dict[str, Any]:
    """Plain JSON-RPC clients (curl, RobustMQ-style) often send no/``*/*`` Accept and a form or no
    Content-Type; the SDK wants ``Accept: application/json, text/event-stream`` and a JSON body
    type.  Fill those in when they are missing (the body is parsed as JSON either way)."""
    headers = list(scope.get("headers") or [])
    accept = b", ".join(v for k, v in headers if k == b"accept")
    ctype = b", ".join(v for k, v in headers if k == b"content-type")
    good_accept = b"application/json" in accept and b"text/event-stream" in accept
    good_ctype = b"json" in ctype
    if good_accept and good_ctype:
        return scope
    if not good_accept:
        headers = [(k, v) for k, v in headers if k != b"accept"]
        headers.append((b"accept", b"application/json, text/event-stream"))
    if not good_ctype:
        headers = [(k, v) for k, v in headers if k != b"content-type"]
        headers.append((b"content-type", b"application/json"))
    scope = dict(scope)
    scope["headers"] = headers
    return scope
