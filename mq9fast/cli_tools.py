"""Command-line tools for people: ``mq9fast mailbox|send|fetch|ack|query|delete|agents|request``.

Registered into the ``mq9fast`` parser by ``mq9fast.cli.build_parser`` (``register(subparsers)``).
Every command talks to a running broker over NATS with :class:`mq9fast.client.Mq9Client`:

* ``--server URL`` (default ``$MQ9FAST_SERVER`` or ``nats://127.0.0.1:4222``), ``--timeout S``;
* readable tables by default, ``--json`` for scripts (one JSON document on stdout);
* errors: one line ``mq9fast: error: <text>`` on stderr - the broker's ``error`` text verbatim -
  and a non-zero exit status: 1 = the broker refused the command, 2 = bad command-line input,
  3 = the broker could not be reached, 4 = no reply in time.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any, Awaitable, Callable, Sequence

from .client import (Message, Mq9Client, Mq9ConnectionError, Mq9Error, Mq9TimeoutError, default_server,
                     parse_header_block)

EXIT_OK, EXIT_SERVER, EXIT_USAGE, EXIT_CONNECT, EXIT_TIMEOUT = 0, 1, 2, 3, 4


class UsageError(Exception):
    """Bad command-line input detected after argparse (exit status 2)."""


# ----------------------------------------------------------------------------------------------
# output helpers
# ----------------------------------------------------------------------------------------------
def _fail(text: str, code: int) -> int:
    print(f"mq9fast: error: {text}", file=sys.stderr)
    return code


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


def _fmt_time(ts: Any) -> str:
    try:
        ts = float(ts)
    except (TypeError, ValueError):
        return "-"
    if ts <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _ago(ts: Any, now: float | None = None) -> str:
    try:
        ts = float(ts)
    except (TypeError, ValueError):
        return "never"
    if ts <= 0:
        return "never"
    d = max(0.0, (now or time.time()) - ts)
    if d < 90:
        return f"{int(d)}s ago"
    if d < 5400:
        return f"{int(d // 60)}m ago"
    if d < 172800:
        return f"{int(d // 3600)}h ago"
    return f"{int(d // 86400)}d ago"


def _short(text: str, width: int) -> str:
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def _payload_text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + payload[:64].hex() + ("…" if len(payload) > 64 else "")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, empty: str = "(none)") -> str:
    """A plain aligned text table."""
    if not rows:
        return empty
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())
    return "\n".join(lines)


def message_json(m: Message) -> dict[str, Any]:
    """A message for ``--json`` output: payload as text when it is UTF-8, else base64."""
    out: dict[str, Any] = {"msg_id": m.msg_id, "priority": m.priority.value, "create_time": m.create_time}
    try:
        out["payload"] = m.payload.decode("utf-8")
    except UnicodeDecodeError:
        import base64

        out["payload_base64"] = base64.b64encode(m.payload).decode()
    if m.headers:
        out["headers"] = m.headers
    if m.key is not None:
        out["key"] = m.key
    if m.tags:
        out["tags"] = m.tags
    if m.expire_at:
        out["expire_at"] = m.expire_at
    if m.redelivered:
        out["redelivered"] = m.redelivered
    return out


def messages_table(msgs: list[Message], width: int = 60) -> str:
    rows = []
    for m in msgs:
        extra = []
        if m.key:
            extra.append(f"key={m.key}")
        if m.tags:
            extra.append("tags=" + ",".join(m.tags))
        rows.append([m.msg_id, m.priority.value, _fmt_time(m.create_time), " ".join(extra) or "-",
                     _short(_payload_text(m.payload), width)])
    return table(["MSG_ID", "PRIORITY", "CREATED", "KEY/TAGS", "PAYLOAD"], rows, empty="(no messages)")


def agents_table(agents: list[dict[str, Any]]) -> str:
    now = time.time()
    rows = []
    for a in agents:
        desc = a.get("description") or a.get("payload") or a.get("agent_info") or ""
        if not isinstance(desc, str):
            desc = json.dumps(desc, ensure_ascii=False)
        score = a.get("score")
        rows.append([
            a.get("name", "-"),
            a.get("mailbox") or "-",
            f"{score:.3f}" if isinstance(score, (int, float)) else "-",
            _ago(a.get("last_report_time"), now),
            _short(desc, 56),
        ])
    return table(["NAME", "MAILBOX", "SCORE", "LAST REPORT", "DESCRIPTION"], rows, empty="(no agents)")


# ----------------------------------------------------------------------------------------------
# input helpers
# ----------------------------------------------------------------------------------------------
def _read_arg(value: str, what: str) -> bytes:
    """``-`` = stdin, ``@path`` = a file, anything else = the literal text."""
    if value == "-":
        return sys.stdin.buffer.read()
    if value.startswith("@") and len(value) > 1:
        try:
            with open(value[1:], "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise UsageError(f"cannot read {what} file {value[1:]}: {exc.strerror}") from None
    return value.encode("utf-8")


def _json_object(value: str, what: str, *, allow_file: bool = True) -> dict[str, Any]:
    """A JSON object from literal JSON, ``-`` (stdin), ``@path`` or (``allow_file``) a bare path."""
    text: str
    if value == "-" or value.startswith("@"):
        text = _read_arg(value, what).decode("utf-8", "replace")
    elif allow_file and not value.lstrip().startswith("{") and os.path.isfile(value):
        try:
            with open(value, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise UsageError(f"cannot read {what} file {value}: {exc.strerror}") from None
    else:
        text = value
    try:
        obj = json.loads(text)
    except ValueError as exc:
        hint = "" if text.lstrip().startswith("{") else " (neither a JSON object nor an existing file)"
        raise UsageError(f"{what} is not valid JSON: {exc}{hint}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{what} must be a JSON object")
    return obj


def _header_arg(value: str) -> tuple[str, str]:
    name, sep, val = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"header must look like 'Name:Value', got {value!r}")
    return name.strip(), val.strip()


def _nonneg(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value}")
    return n


def _positive(value: str) -> int:
    n = _nonneg(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {value}")
    return n


# ----------------------------------------------------------------------------------------------
# running a command
# ----------------------------------------------------------------------------------------------
def _run(args: argparse.Namespace, body: Callable[[Mq9Client, argparse.Namespace], Awaitable[int]]) -> int:
    async def main() -> int:
        client = Mq9Client(args.server, request_timeout=args.timeout, reconnect_attempts=0,
                           name="mq9fast-cli")
        await client.connect()
        try:
            return await body(client, args)
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except ValueError as exc:  # client-side argument validation
        return _fail(str(exc), EXIT_USAGE)
    except Mq9ConnectionError as exc:
        return _fail(str(exc), EXIT_CONNECT)
    except Mq9TimeoutError as exc:
        return _fail(f"{exc} (after {args.timeout:g}s; is this an mq9 broker?)", EXIT_TIMEOUT)
    except Mq9Error as exc:
        return _fail(str(exc), EXIT_SERVER)
    except KeyboardInterrupt:
        return 130


def _command(body: Callable[[Mq9Client, argparse.Namespace], Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    def func(args: argparse.Namespace) -> int:
        return _run(args, body)

    func.__name__ = body.__name__
    return func


# -- mailbox ------------------------------------------------------------------------------------
async def _mailbox_create(client: Mq9Client, args: argparse.Namespace) -> int:
    addr = await client.mailbox_create(name=args.name, ttl=args.ttl, desc=args.desc)
    if args.json:
        _print_json({"mail_address": addr, "ttl": args.ttl})
    else:
        ttl = "server default" if args.ttl is None else ("never expires" if args.ttl == 0 else f"{args.ttl} s")
        print(table(["MAIL_ADDRESS", "TTL"], [[addr, ttl]]))
    return EXIT_OK


# -- send ---------------------------------------------------------------------------------------
async def _send(client: Mq9Client, args: argparse.Namespace) -> int:
    payload = _read_arg(args.payload, "payload")
    headers = dict(args.header or [])
    msg_id = await client.send(args.address, payload, priority=args.priority, key=args.key,
                               delay=args.delay, ttl=args.ttl, tags=args.tags, headers=headers or None)
    if args.json:
        _print_json({"msg_id": msg_id, "mail_address": args.address})
    elif msg_id < 0:
        print(f"queued for delayed delivery to {args.address} in {args.delay} s (msg_id -1)")
    else:
        print(f"sent msg_id {msg_id} to {args.address} ({args.priority})")
    return EXIT_OK


# -- fetch / ack / query / delete ---------------------------------------------------------------
async def _fetch(client: Mq9Client, args: argparse.Namespace) -> int:
    if args.ack and args.group is None:
        raise UsageError("--ack needs --group (stateless fetches have nothing to acknowledge)")
    msgs = await client.fetch(args.address, group_name=args.group, deliver=args.deliver,
                              from_time=args.from_time, from_id=args.from_id, force_deliver=args.force,
                              num_msgs=args.num, max_wait_ms=args.wait_ms)
    acked = False
    if args.ack and msgs:
        for m in msgs:
            await client.ack(args.address, args.group, m.msg_id)
        acked = True
    if args.json:
        _print_json({"messages": [message_json(m) for m in msgs], "acked": acked})
    else:
        print(messages_table(msgs, width=args.width))
        if acked:
            print(f"acknowledged {len(msgs)} message(s) for group {args.group!r}")
    return EXIT_OK


async def _ack(client: Mq9Client, args: argparse.Namespace) -> int:
    await client.ack(args.address, args.group, args.msg_id)
    if args.json:
        _print_json({"acked": True, "msg_id": args.msg_id})
    else:
        print(f"acknowledged msg_id {args.msg_id} for group {args.group!r} on {args.address}")
    return EXIT_OK


async def _query(client: Mq9Client, args: argparse.Namespace) -> int:
    tags = [t.strip() for t in args.tags.split(",") if t.strip()] if args.tags is not None else None
    msgs = await client.query(args.address, key=args.key, limit=args.limit, since=args.since, tags=tags)
    if args.json:
        _print_json({"messages": [message_json(m) for m in msgs]})
    else:
        print(messages_table(msgs, width=args.width))
    return EXIT_OK


async def _delete(client: Mq9Client, args: argparse.Namespace) -> int:
    deleted = await client.delete(args.address, args.msg_id)
    if args.json:
        _print_json({"deleted": deleted, "msg_id": args.msg_id})
    else:
        print(f"deleted msg_id {args.msg_id}" if deleted else f"msg_id {args.msg_id} was not in {args.address}")
    return EXIT_OK


# -- agents -------------------------------------------------------------------------------------
async def _agents_register(client: Mq9Client, args: argparse.Namespace) -> int:
    card = _json_object(args.card, "agent card")
    await client.agent_register(card)
    name = card.get("name") or card.get("mailbox")
    if args.json:
        _print_json({"registered": True, "name": name})
    else:
        print(f"registered agent {name}")
    return EXIT_OK


async def _agents_discover(client: Mq9Client, args: argparse.Namespace) -> int:
    query = " ".join(args.query).strip()
    if not query:
        raise UsageError("give a search query (or use 'mq9fast agents list')")
    if args.text:
        agents = await client.agent_discover(text=query, limit=args.limit, page=args.page)
    else:
        agents = await client.agent_discover(semantic=query, limit=args.limit, page=args.page)
    if args.json:
        _print_json({"agents": agents})
    else:
        print(agents_table(agents))
    return EXIT_OK


async def _agents_list(client: Mq9Client, args: argparse.Namespace) -> int:
    agents = await client.agent_discover(limit=args.limit, page=args.page)
    if args.json:
        _print_json({"agents": agents})
    else:
        print(agents_table(agents))
    return EXIT_OK


async def _agents_unregister(client: Mq9Client, args: argparse.Namespace) -> int:
    await client.agent_unregister(args.name)
    if args.json:
        _print_json({"unregistered": True, "name": args.name})
    else:
        print(f"unregistered {args.name}")
    return EXIT_OK


async def _agents_report(client: Mq9Client, args: argparse.Namespace) -> int:
    report = _json_object(args.report, "report")
    await client.agent_report(report)
    if args.json:
        _print_json({"reported": True})
    else:
        print(f"reported status of {report.get('name') or report.get('mailbox')}")
    return EXIT_OK


# -- request ------------------------------------------------------------------------------------
async def _request(client: Mq9Client, args: argparse.Namespace) -> int:
    body = _read_arg(args.body, "body") if args.body is not None else b""
    headers = dict(args.header or [])
    nc = client.nc
    import nats.errors

    try:
        msg = await nc.request(args.subject, body, timeout=args.timeout, headers=headers or None)
    except nats.errors.NoRespondersError:
        raise Mq9Error(f"no responders available for request on {args.subject}") from None
    except nats.errors.TimeoutError:
        raise Mq9TimeoutError(f"timed out waiting for a reply on {args.subject}") from None
    if args.json:
        try:
            reply: Any = json.loads(msg.data)
        except ValueError:
            reply = msg.data.decode("utf-8", "replace")
        _print_json({"subject": msg.subject, "headers": dict(msg.headers or {}), "data": reply})
        return EXIT_OK
    if msg.headers:
        for k, v in msg.headers.items():
            print(f"{k}: {v}")
        print()
    sys.stdout.buffer.write(msg.data)
    if not msg.data.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------
def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection and output")
    g.add_argument("-s", "--server", default=default_server(), metavar="URL",
                   help="NATS URL of the broker (default: $MQ9FAST_SERVER or nats://127.0.0.1:4222)")
    g.add_argument("--timeout", type=float, default=5.0, metavar="S", help="request timeout, seconds (default 5)")
    g.add_argument("--json", action="store_true", help="print JSON instead of a table (for scripts)")
    return p


def register(sub: argparse._SubParsersAction) -> None:
    """Add the client subcommands to the ``mq9fast`` parser (called by ``mq9fast.cli``)."""
    common = _common()
    fmt = argparse.RawDescriptionHelpFormatter

    # mailbox ...
    mb = sub.add_parser("mailbox", help="manage mailboxes", description="Manage mailboxes.")
    mbs = mb.add_subparsers(dest="mailbox_command", metavar="ACTION")
    mb.set_defaults(func=lambda a: (mb.print_help(), EXIT_USAGE)[1])
    p = mbs.add_parser("create", parents=[common], help="create a mailbox", formatter_class=fmt,
                       description="Create a mailbox and print its address.\n\n"
                                   "  mq9fast mailbox create agent.inbox --ttl 3600\n"
                                   "  mq9fast mailbox create            # unguessable generated address")
    p.add_argument("name", nargs="?", default=None, help="address (lower-case letters, digits, dots); "
                                                        "omit for a generated one")
    p.add_argument("--ttl", type=_nonneg, default=0, metavar="S",
                   help="lifetime in seconds; 0 = never expires (default 0)")
    p.add_argument("--desc", default=None, help="free-text description (stored, shown by the admin API)")
    p.set_defaults(func=_command(_mailbox_create))

    # send
    p = sub.add_parser("send", parents=[common], help="send a message to a mailbox", formatter_class=fmt,
                       description="Send a message.  PAYLOAD is literal text, '-' for stdin or @FILE.\n\n"
                                   "  mq9fast send agent.inbox '{\"task\":\"summarize\"}' --priority urgent")
    p.add_argument("address", metavar="ADDR", help="mailbox address")
    p.add_argument("payload", metavar="PAYLOAD", help="message body: text, '-' (stdin) or @FILE")
    p.add_argument("-p", "--priority", choices=["normal", "urgent", "critical"], default="normal")
    p.add_argument("--key", default=None, help="compaction key: replaces the previous message with this key")
    p.add_argument("--delay", type=_nonneg, default=None, metavar="S", help="deliver after S seconds")
    p.add_argument("--ttl", type=_nonneg, default=None, metavar="S", help="message expires after S seconds")
    p.add_argument("--tags", default=None, metavar="A,B", help="comma-separated tags (for query --tags)")
    p.add_argument("-H", "--header", type=_header_arg, action="append", metavar="K:V",
                   help="extra NATS header (repeatable), e.g. -H mq9-reply-to:my.reply.box")
    p.set_defaults(func=_command(_send))

    # fetch
    p = sub.add_parser("fetch", parents=[common], help="pull messages from a mailbox", formatter_class=fmt,
                       description="Pull messages (critical first, then urgent, then normal).\n\n"
                                   "  mq9fast fetch agent.inbox --group workers --deliver earliest --ack")
    p.add_argument("address", metavar="ADDR")
    p.add_argument("-g", "--group", default=None, help="consumer group (stateful); omit for a stateless read")
    p.add_argument("--deliver", choices=["latest", "earliest", "from_time", "from_id"], default="latest",
                   help="start position of a new group or a stateless read (default latest)")
    p.add_argument("--from-time", type=_nonneg, default=None, metavar="TS", help="with --deliver from_time")
    p.add_argument("--from-id", type=_nonneg, default=None, metavar="ID", help="with --deliver from_id")
    p.add_argument("--force", action="store_true", help="force_deliver: reset the group to --deliver")
    p.add_argument("-n", "--num", type=_nonneg, default=10, metavar="N", help="at most N messages (default 10)")
    p.add_argument("--wait-ms", type=_nonneg, default=0, metavar="MS",
                   help="wait up to MS for a message when the mailbox is empty (default 0)")
    p.add_argument("--ack", action="store_true", help="acknowledge what was fetched (needs --group)")
    p.add_argument("--width", type=_positive, default=60, help="payload column width")
    p.set_defaults(func=_command(_fetch))

    # ack
    p = sub.add_parser("ack", parents=[common], help="acknowledge a message for a group")
    p.add_argument("address", metavar="ADDR")
    p.add_argument("group", metavar="GROUP")
    p.add_argument("msg_id", metavar="MSG_ID", type=_nonneg)
    p.set_defaults(func=_command(_ack))

    # query
    p = sub.add_parser("query", parents=[common], help="inspect stored messages (no consumption)",
                       formatter_class=fmt,
                       description="List stored messages, oldest first, without touching any group.\n"
                                   "One filter applies: --key, else --tags, else --since.")
    p.add_argument("address", metavar="ADDR")
    p.add_argument("--key", default=None)
    p.add_argument("--tags", default=None, metavar="A,B", help="messages with any of these tags")
    p.add_argument("--since", type=_nonneg, default=None, metavar="TS", help="created at or after TS (unix s)")
    p.add_argument("--limit", type=_nonneg, default=None, metavar="N", help="at most N (server max 100)")
    p.add_argument("--width", type=_positive, default=60, help="payload column width")
    p.set_defaults(func=_command(_query))

    # delete
    p = sub.add_parser("delete", parents=[common], help="delete one message")
    p.add_argument("address", metavar="ADDR")
    p.add_argument("msg_id", metavar="MSG_ID", type=_nonneg)
    p.set_defaults(func=_command(_delete))

    # agents ...
    ag = sub.add_parser("agents", help="agent registry", description="Register, find and list agents.")
    ags = ag.add_subparsers(dest="agents_command", metavar="ACTION")
    ag.set_defaults(func=lambda a: (ag.print_help(), EXIT_USAGE)[1])
    p = ags.add_parser("register", parents=[common], help="register (or replace) an agent", formatter_class=fmt,
                       description="Register an agent card: a JSON file, literal JSON, '-' (stdin) or @FILE.\n\n"
                                   "  mq9fast agents register '{\"name\":\"agent.translator\",\n"
                                   "      \"mailbox\":\"agent.translator.inbox\",\"payload\":\"EN/ZH translation\"}'")
    p.add_argument("card", metavar="FILE|JSON")
    p.set_defaults(func=_command(_agents_register))
    p = ags.add_parser("discover", parents=[common], help="find agents by intent (semantic) or keywords (--text)")
    p.add_argument("query", nargs="+", metavar="QUERY")
    p.add_argument("--text", action="store_true", help="keyword (full-text) search instead of semantic")
    p.add_argument("--limit", type=_nonneg, default=10)
    p.add_argument("--page", type=_positive, default=1)
    p.set_defaults(func=_command(_agents_discover))
    p = ags.add_parser("list", parents=[common], help="list registered agents")
    p.add_argument("--limit", type=_nonneg, default=100)
    p.add_argument("--page", type=_positive, default=1)
    p.set_defaults(func=_command(_agents_list))
    p = ags.add_parser("unregister", parents=[common], help="remove an agent (by name or mailbox)")
    p.add_argument("name", metavar="NAME_OR_MAILBOX")
    p.set_defaults(func=_command(_agents_unregister))
    p = ags.add_parser("report", parents=[common], help="send a status report (heartbeat) for an agent")
    p.add_argument("report", metavar="FILE|JSON", help="JSON object with name or mailbox")
    p.set_defaults(func=_command(_agents_report))

    # request
    p = sub.add_parser("request", parents=[common], help="send a raw NATS request and print the reply",
                       formatter_class=fmt,
                       description="Like 'nats request': publish BODY to SUBJECT and print the reply.\n\n"
                                   "  mq9fast request '$mq9.AI.MSG.SEND.agent.inbox' -H mq9-priority:urgent "
                                   "'{\"task\":\"a\"}'")
    p.add_argument("subject", metavar="SUBJECT")
    p.add_argument("body", metavar="BODY", nargs="?", default=None, help="text, '-' (stdin) or @FILE")
    p.add_argument("-H", "--header", type=_header_arg, action="append", metavar="K:V",
                   help="NATS header (repeatable)")
    p.set_defaults(func=_command(_request))


__all__ = ["register", "table", "parse_header_block"]
