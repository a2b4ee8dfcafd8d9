"""``Mq9Client``: an asyncio Python client for mq9 (mailboxes + agent registry) over NATS.

The API follows the mq9 Python SDK documentation, so code written for it runs with only the import
changed (``from mq9fast import Mq9Client, Priority``)::

    async with Mq9Client("nats://127.0.0.1:4222") as client:        # or: await Mq9Client.connect(url)
        inbox = await client.mailbox_create(name="agent.inbox", ttl=3600)
        await client.send(inbox, {"task": "analyze"}, priority=Priority.URGENT)
        for msg in await client.fetch(inbox, group_name="workers", deliver="earliest"):
            print(msg.msg_id, msg.priority, msg.json())
            await client.ack(inbox, "workers", msg.msg_id)

Every call is one NATS request to a ``$mq9.AI.*`` subject (PROTOCOL.md §2); a reply whose ``error``
field is non-empty raises :class:`Mq9Error` carrying the server's text verbatim.  Payloads are
sent as raw bytes (``str`` -> UTF-8, ``dict``/``list`` -> compact JSON) and options travel as
``mq9-*`` NATS headers only when set.  FETCH/QUERY ask the server for base64 payloads and decode
them, so payloads are binary-safe whatever the server's ``payload_encoding`` default is.

Built on nats-py; works against any mq9 broker (mq9fast or RobustMQ).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import logging
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Awaitable, Callable, Iterable, Mapping, Union, overload

import nats
import nats.errors
from nats.aio.client import Client as NatsConnection

__all__ = [
    "DEFAULT_SERVER",
    "Consumer",
    "Message",
    "Mq9Client",
    "Mq9ConnectionError",
    "Mq9Error",
    "Mq9TimeoutError",
    "Priority",
    "default_server",
]

log = logging.getLogger("mq9fast.client")

DEFAULT_SERVER = "nats://127.0.0.1:4222"
PREFIX = "$mq9.AI"

Payload = Union[bytes, bytearray, memoryview, str, "dict[str, Any]", "list[Any]"]
Handler = Callable[["Message"], Union[Awaitable[Any], Any]]
ErrorHandler = Callable[["Message", BaseException], Union[Awaitable[Any], Any]]


def default_server() -> str:
    """``$MQ9FAST_SERVER`` if set, else ``nats://127.0.0.1:4222``."""
    return os.environ.get("MQ9FAST_SERVER") or DEFAULT_SERVER


# ----------------------------------------------------------------------------------------------
# errors and data types
# ----------------------------------------------------------------------------------------------
class Mq9Error(Exception):
    """The broker answered with a non-empty ``error`` (``str(exc)`` is its text, verbatim), or the
    request could not be made (not connected, timeout, connection refused)."""

    def __init__(self, error: str, *, subject: str | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.subject = subject


class Mq9ConnectionError(Mq9Error):
    """Not connected, or the server could not be reached."""


class Mq9TimeoutError(Mq9Error):
    """No reply within the request timeout."""


class Priority(str, Enum):
    """Message priority lane; FETCH serves CRITICAL, then URGENT, then NORMAL (FIFO within one)."""

    NORMAL = "normal"
    URGENT = "urgent"
    CRITICAL = "critical"

    def __str__(self) -> str:  # "urgent", not "Priority.URGENT"
        return self.value

    @classmethod
    def parse(cls, value: "Priority | str | None") -> "Priority":
        """Lenient: trims and lower-cases; unknown values are NORMAL (as the broker does)."""
        if isinstance(value, Priority):
            return value
        try:
            return cls(str(value or "normal").strip().lower())
        except ValueError:
            return cls.NORMAL


def parse_header_block(block: bytes | None) -> dict[str, str]:
    """``NATS/1.0\\r\\nName: Value\\r\\n...\\r\\n\\r\\n`` -> dict (last occurrence wins)."""
    if not block:
        return {}
    try:
        text = bytes(block).decode("utf-8")
    except UnicodeDecodeError:
        return {}
    out: dict[str, str] = {}
    for line in text.split("\r\n")[1:]:
        if not line:
            break
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip()] = value.strip()
    return out


def build_header_block(headers: Mapping[str, str]) -> bytes:
    """The inverse of :func:`parse_header_block` (used where raw header bytes are needed)."""
    lines = ["NATS/1.0"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _decode_payload(value: Any) -> bytes:
    """Message ``payload`` as sent: base64 (what we ask for) with a raw-text fallback."""
    if value is None:
        return b""
    if not isinstance(value, str):
        return json.dumps(value).encode()
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value.encode("utf-8")


@dataclass
class Message:
    """One stored message as returned by FETCH/QUERY (PROTOCOL.md §4.7)."""

    msg_id: int
    payload: bytes
    priority: Priority
    create_time: int
    headers: dict[str, str] = field(default_factory=dict)
    key: str | None = None
    tags: list[str] = field(default_factory=list)
    expire_at: int | None = None
    redelivered: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Message":
        header = obj.get("header")
        headers = obj.get("headers")
        if not isinstance(headers, dict):
            headers = parse_header_block(bytes(header)) if isinstance(header, list) else {}
        tags = obj.get("tags")
        if not isinstance(tags, list):
            tags = [t.strip() for t in headers.get("mq9-tags", "").split(",") if t.strip()]
        key = obj.get("key")
        if key is None:
            key = headers.get("mq9-key") or None
        redelivered = obj.get("redelivered", 0)
        if isinstance(redelivered, bool):
            redelivered = int(redelivered)
        return cls(
            msg_id=int(obj.get("msg_id", -1)),
            payload=_decode_payload(obj.get("payload")),
            priority=Priority.parse(obj.get("priority")),
            create_time=int(obj.get("create_time") or 0),
            headers={str(k): str(v) for k, v in headers.items()},
            key=key,
            tags=[str(t) for t in tags],
            expire_at=obj.get("expire_at"),
            redelivered=int(redelivered or 0),
            raw=dict(obj),
        )

    def text(self, errors: str = "replace") -> str:
        """The payload as UTF-8 text."""
        return self.payload.decode("utf-8", errors)

    def json(self) -> Any:
        """The payload parsed as JSON (raises ``ValueError`` if it is not JSON)."""
        return json.loads(self.payload)

    @property
    def reply_to(self) -> str | None:
        """The ``mq9-reply-to`` header, if the sender set one."""
        return self.headers.get("mq9-reply-to")


def encode_payload(payload: Payload | None) -> bytes:
    """bytes as is, str as UTF-8, dict/list as compact JSON."""
    if payload is None:
        return b""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8")
    if isinstance(payload, (dict, list)):
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raise TypeError(f"payload must be bytes, str, dict or list, not {type(payload).__name__}")


def _u64(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------
# consumer
# ----------------------------------------------------------------------------------------------
class Consumer:
    """A background FETCH loop started by :meth:`Mq9Client.consume`.

    ``stop()`` lets the batch being processed finish (every message of it is handed to the
    handler and ACKed as usual), then ends the loop.
    """

    def __init__(self, client: "Mq9Client", mail_address: str, handler: Handler, *,
                 group_name: str | None, deliver: str, num_msgs: int, max_wait_ms: int,
                 auto_ack: bool, error_handler: ErrorHandler | None, from_time: int | None,
                 from_id: int | None, idle_sleep: float, error_sleep: float) -> None:
        self._client = client
        self.mail_address = mail_address
        self.group_name = group_name
        self._handler = handler
        self._error_handler = error_handler
        self._deliver = deliver
        self._from_time = from_time
        self._from_id = from_id
        self._num_msgs = num_msgs
        self._max_wait_ms = max_wait_ms
        self._auto_ack = auto_ack
        # an empty long-poll already waited; without one, pause a little instead of spinning
        self._idle_sleep = idle_sleep if idle_sleep > 0 else (0.05 if max_wait_ms < 50 else 0.0)
        self._error_sleep = error_sleep
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.processed_count = 0
        self.failed_count = 0
        self.last_error: BaseException | None = None

    @property
    def is_running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"mq9-consume-{self.mail_address}")

    async def stop(self) -> None:
        """Finish the current batch, then stop.  Safe to call more than once."""
        self._stopping.set()
        if self._task is not None:
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def wait(self) -> None:
        """Wait until the loop ends (after ``stop()`` or when the client closes)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def __aenter__(self) -> "Consumer":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _pause(self, seconds: float) -> None:
        if seconds <= 0:
            return
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _report(self, msg: Message | None, exc: BaseException) -> None:
        self.last_error = exc
        if self._error_handler is None or msg is None:
            log.warning("mq9 consumer on %s: %s%s", self.mail_address,
                        f"message {msg.msg_id}: " if msg is not None else "", exc)
            return
        try:
            res = self._error_handler(msg, exc)
            if inspect.isawaitable(res):
                await res
        except Exception:  # noqa: BLE001 - an error handler must not end the loop
            log.exception("mq9 consumer error handler failed")

    async def _run(self) -> None:
        client = self._client
        while not self._stopping.is_set():
            if client.is_closed:
                break
            try:
                batch = await client.fetch(
                    self.mail_address, group_name=self.group_name, deliver=self._deliver,
                    from_time=self._from_time, from_id=self._from_id,
                    num_msgs=self._num_msgs, max_wait_ms=self._max_wait_ms)
            except Mq9ConnectionError as exc:
                if client.is_closed:
                    break
                await self._report(None, exc)
                await self._pause(self._error_sleep)
                continue
            except Mq9Error as exc:
                await self._report(None, exc)
                await self._pause(self._error_sleep)
                continue
            if not batch:
                await self._pause(self._idle_sleep)
                continue
            for msg in batch:  # a started batch always completes (stop() drains it)
                try:
                    res = self._handler(msg)
                    if inspect.isawaitable(res):
                        await res
                except Exception as exc:  # noqa: BLE001 - reported, not ACKed, loop goes on
                    self.failed_count += 1
                    await self._report(msg, exc)
                    continue
                self.processed_count += 1
                if self._auto_ack and self.group_name is not None:
                    try:
                        await client.ack(self.mail_address, self.group_name, msg.msg_id)
                    except Mq9Error as exc:
                        await self._report(msg, exc)


# ----------------------------------------------------------------------------------------------
# client
# ----------------------------------------------------------------------------------------------
class _Connect:
    """``Mq9Client.connect(url)`` (class: returns a connected client) and ``client.connect()``."""

    @overload
    def __get__(self, obj: None, objtype: type["Mq9Client"]) -> Callable[..., Awaitable["Mq9Client"]]: ...

    @overload
    def __get__(self, obj: "Mq9Client", objtype: Any = None) -> Callable[[], Awaitable["Mq9Client"]]: ...

    def __get__(self, obj: "Mq9Client | None", objtype: Any = None) -> Callable[..., Awaitable["Mq9Client"]]:
        if obj is not None:
            return obj._connect
        cls = objtype

        async def connect(server: str | list[str] | None = None, **kwargs: Any) -> "Mq9Client":
            client: Mq9Client = cls(server, **kwargs)
            await client._connect()
            return client

        connect.__doc__ = "Create a client and connect it; ``await Mq9Client.connect(url)``."
        return connect


class Mq9Client:
    """An mq9 client on one NATS connection.

    ``server`` is a NATS URL (or a list of them); default ``$MQ9FAST_SERVER`` or
    ``nats://127.0.0.1:4222``.  ``reconnect_attempts=0`` fails fast when the server is down.
    Extra keyword arguments go to ``nats.connect`` (e.g. ``user``, ``password``, ``token``).
    """

    connect = _Connect()

    def __init__(self, server: str | list[str] | None = None, *, request_timeout: float = 5.0,
                 reconnect_attempts: int = 5, reconnect_delay: float = 2.0,
                 name: str | None = None, **nats_options: Any) -> None:
        self.server = server or default_server()
        self.request_timeout = request_timeout
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_delay = reconnect_delay
        self.name = name
        self._nats_options = nats_options
        self._nc: NatsConnection | None = None
        self._consumers: set[Consumer] = set()

    # -- connection -------------------------------------------------------------------------------
    @property
    def nc(self) -> NatsConnection:
        """The underlying nats-py connection (raises if not connected)."""
        if self._nc is None or self._nc.is_closed:
            raise Mq9ConnectionError("not connected")
        return self._nc

    @property
    def is_connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def is_closed(self) -> bool:
        return self._nc is None or self._nc.is_closed

    async def _connect(self) -> "Mq9Client":
        if self._nc is not None and not self._nc.is_closed:
            return self
        servers = self.server if isinstance(self.server, list) else [self.server]

        async def on_error(exc: Exception) -> None:
            log.debug("nats: %s", exc)

        opts: dict[str, Any] = {
            "servers": servers,
            "error_cb": on_error,
            "allow_reconnect": self.reconnect_attempts != 0,
            "max_reconnect_attempts": max(self.reconnect_attempts, 1),
            "reconnect_time_wait": self.reconnect_delay if self.reconnect_attempts else 0.05,
            "connect_timeout": max(1, int(self.request_timeout)),
        }
        if self.name:
            opts["name"] = self.name
        opts.update(self._nats_options)
        try:
            self._nc = await nats.connect(**opts)
        except (nats.errors.NoServersError, OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
            raise Mq9ConnectionError(_explain_connect_error(servers, exc)) from exc
        return self

    async def close(self) -> None:
        """Stop running consumers (draining their batch) and close the connection."""
        for consumer in list(self._consumers):
            await consumer.stop()
        self._consumers.clear()
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.drain()
            except Exception:  # noqa: BLE001 - closing anyway
                await nc.close()

    async def __aenter__(self) -> "Mq9Client":
        return await self._connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- raw requests ---------------------------------------------------------------------------
    async def request(self, subject: str, payload: bytes = b"", *, headers: Mapping[str, str] | None = None,
                      timeout: float | None = None) -> bytes:
        """One NATS request; returns the raw reply payload (no ``error`` check)."""
        nc = self.nc
        try:
            msg = await nc.request(subject, payload, timeout=timeout or self.request_timeout,
                                   headers=dict(headers) if headers else None)
        except nats.errors.NoRespondersError:
            raise Mq9Error(f"no responders for {subject}", subject=subject) from None
        except nats.errors.TimeoutError:
            raise Mq9TimeoutError(f"timed out waiting for a reply on {subject}", subject=subject) from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError,
                nats.errors.ConnectionReconnectingError) as exc:
            raise Mq9ConnectionError(f"connection lost: {exc}", subject=subject) from None
        return msg.data

    async def call(self, subject: str, body: Any = None, *, headers: Mapping[str, str] | None = None,
                   timeout: float | None = None) -> dict[str, Any]:
        """An mq9 command: JSON (or raw bytes) body in, reply object out; raises on ``error``."""
        if body is None:
            data = b""
        elif isinstance(body, (bytes, bytearray, memoryview)):
            data = bytes(body)
        else:
            data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        raw = await self.request(subject, data, headers=headers, timeout=timeout)
        try:
            reply = json.loads(raw)
        except ValueError:
            raise Mq9Error(f"invalid reply from server: {raw[:200]!r}", subject=subject) from None
        if not isinstance(reply, dict):
            raise Mq9Error(f"invalid reply from server: {raw[:200]!r}", subject=subject)
        error = reply.get("error")
        if error:
            raise Mq9Error(str(error), subject=subject)
        return reply

    # -- mailboxes ------------------------------------------------------------------------------
    async def mailbox_create(self, name: str | None = None, ttl: int | None = 0, *,
                             desc: str | None = None) -> str:
        """Create a mailbox; returns its address.  ``ttl`` seconds, 0 = never expires,
        ``None`` = the server default.  ``name`` omitted = an unguessable generated address."""
        body: dict[str, Any] = {}
        if ttl is not None:
            body["ttl"] = _u64("ttl", ttl)
        if name is not None:
            body["name"] = name
        if desc is not None:
            body["desc"] = desc
        reply = await self.call(f"{PREFIX}.MAILBOX.CREATE", body)
        return str(reply.get("mail_address", name or ""))

    async def send(self, mail_address: str, payload: Payload, *, priority: Priority | str = Priority.NORMAL,
                   key: str | None = None, delay: int | None = None, ttl: int | None = None,
                   tags: Iterable[str] | str | None = None,
                   headers: Mapping[str, str] | None = None) -> int:
        """Store a message; returns its ``msg_id`` (``-1`` for a delayed message).

        Options become ``mq9-*`` headers only when set (NORMAL priority is never sent).
        ``headers`` adds custom headers (e.g. ``{"mq9-reply-to": addr}``); they are stored and
        returned with the message.
        """
        hdrs: dict[str, str] = {}
        if isinstance(priority, Priority):
            prio = priority
        else:
            try:
                prio = Priority(str(priority).strip().lower())
            except ValueError:
                raise ValueError(f"priority must be normal, urgent or critical, got {priority!r}") from None
        if prio is not Priority.NORMAL:
            hdrs["mq9-priority"] = prio.value
        if key is not None and key != "":
            hdrs["mq9-key"] = str(key)
        if delay is not None:
            hdrs["mq9-delay"] = str(_u64("delay", delay))
        if ttl is not None:
            hdrs["mq9-ttl"] = str(_u64("ttl", ttl))
        if tags is not None:
            tag_list = tags.split(",") if isinstance(tags, str) else list(tags)
            joined = ",".join(t.strip() for t in tag_list if t and t.strip())
            if joined:
                hdrs["mq9-tags"] = joined
        if headers:
            hdrs.update({str(k): str(v) for k, v in headers.items()})
        reply = await self.call(f"{PREFIX}.MSG.SEND.{mail_address}", encode_payload(payload),
                                headers=hdrs or None)
        return int(reply.get("msg_id", -1))

    async def fetch(self, mail_address: str, *, group_name: str | None = None, deliver: str = "latest",
                    from_time: int | None = None, from_id: int | None = None, force_deliver: bool = False,
                    num_msgs: int = 100, max_wait_ms: int = 500,
                    ack_wait_ms: int | None = None) -> list[Message]:
        """Pull up to ``num_msgs`` messages (critical, then urgent, then normal).

        Without ``group_name`` the FETCH is stateless; with it the broker keeps the group's
        position (advance it with :meth:`ack`) and leases the returned messages to the group.
        ``max_wait_ms`` long-polls when nothing is available.
        """
        if deliver not in ("latest", "earliest", "from_time", "from_id"):
            raise ValueError(f"deliver must be latest, earliest, from_time or from_id, got {deliver!r}")
        body: dict[str, Any] = {
            "deliver": deliver,
            "force_deliver": bool(force_deliver),
            "config": {"num_msgs": _u64("num_msgs", num_msgs), "max_wait_ms": _u64("max_wait_ms", max_wait_ms)},
            "payload_encoding": "base64",
        }
        if ack_wait_ms is not None:
            body["config"]["ack_wait_ms"] = _u64("ack_wait_ms", ack_wait_ms)
        if group_name is not None:
            body["group_name"] = group_name
        if from_time is not None:
            body["from_time"] = _u64("from_time", from_time)
        if from_id is not None:
            body["from_id"] = _u64("from_id", from_id)
        timeout = self.request_timeout + max_wait_ms / 1000.0
        reply = await self.call(f"{PREFIX}.MSG.FETCH.{mail_address}", body, timeout=timeout)
        return [Message.from_json(m) for m in reply.get("messages") or []]

    async def ack(self, mail_address: str, group_name: str, msg_id: int) -> None:
        """Confirm ``msg_id`` (and the messages before it in the same FETCH batch) for the group."""
        body = {"group_name": group_name, "mail_address": mail_address, "msg_id": _u64("msg_id", msg_id)}
        await self.call(f"{PREFIX}.MSG.ACK.{mail_address}", body)

    async def consume(self, mail_address: str, handler: Handler, *, group_name: str | None = None,
                      deliver: str = "latest", num_msgs: int = 10, max_wait_ms: int = 500,
                      auto_ack: bool = True, error_handler: ErrorHandler | None = None,
                      from_time: int | None = None, from_id: int | None = None,
                      idle_sleep: float = 0.0, error_sleep: float = 1.0) -> Consumer:
        """Run a FETCH loop in the background; returns the running :class:`Consumer`.

        Each message goes to ``handler`` (sync or async).  On success it is ACKed when
        ``auto_ack`` and a ``group_name`` is set; if the handler raises, the message is not ACKed,
        ``error_handler(msg, exc)`` is called (default: a log line) and the loop goes on.  (The
        broker's batch-aware ACK means a later successful ACK of the same batch also confirms a
        failed message; use ``num_msgs=1`` to leave failed messages for redelivery.)  FETCH errors
        are logged and retried after ``error_sleep`` seconds.
        """
        if not callable(handler):
            raise TypeError("handler must be callable")
        self.nc  # raises Mq9ConnectionError when not connected
        consumer = Consumer(self, mail_address, handler, group_name=group_name, deliver=deliver,
                            num_msgs=num_msgs, max_wait_ms=max_wait_ms, auto_ack=auto_ack,
                            error_handler=error_handler, from_time=from_time, from_id=from_id,
                            idle_sleep=idle_sleep, error_sleep=error_sleep)
        consumer._start()
        self._consumers.add(consumer)
        consumer._task.add_done_callback(lambda _t: self._consumers.discard(consumer))  # type: ignore[union-attr]
        return consumer

    async def query(self, mail_address: str, *, key: str | None = None, limit: int | None = None,
                    since: int | None = None, tags: Iterable[str] | None = None) -> list[Message]:
        """Inspect stored messages (oldest first) without touching any group's position.
        One filter applies, by precedence key > tags > since."""
        body: dict[str, Any] = {"payload_encoding": "base64"}
        if key is not None:
            body["key"] = key
        if limit is not None:
            body["limit"] = _u64("limit", limit)
        if since is not None:
            body["since"] = _u64("since", since)
        if tags is not None:
            body["tags"] = [tags] if isinstance(tags, str) else list(tags)
        reply = await self.call(f"{PREFIX}.MSG.QUERY.{mail_address}", body)
        return [Message.from_json(m) for m in reply.get("messages") or []]

    async def delete(self, mail_address: str, msg_id: int) -> bool:
        """Delete one message; True if it existed (mq9fast), always True on RobustMQ."""
        reply = await self.call(f"{PREFIX}.MSG.DELETE.{mail_address}.{_u64('msg_id', msg_id)}", b"")
        return bool(reply.get("deleted", True))

    # -- agent registry -------------------------------------------------------------------------
    async def agent_register(self, agent_card: Mapping[str, Any]) -> None:
        """Register (or replace) an agent.  The card is any JSON object with ``name`` and/or
        ``mailbox``; every string in it becomes searchable."""
        if not isinstance(agent_card, Mapping):
            raise TypeError("agent_card must be a dict")
        await self.call(f"{PREFIX}.AGENT.REGISTER", dict(agent_card))

    async def agent_unregister(self, name_or_mailbox: str) -> None:
        """Remove the agent with that name and every agent registered with that mailbox."""
        await self.call(f"{PREFIX}.AGENT.UNREGISTER", {"name": name_or_mailbox, "mailbox": name_or_mailbox})

    async def agent_report(self, report: Mapping[str, Any]) -> None:
        """Store a status report (heartbeat) for the agent named by ``name`` or ``mailbox``."""
        if not isinstance(report, Mapping):
            raise TypeError("report must be a dict")
        await self.call(f"{PREFIX}.AGENT.REPORT", dict(report))

    async def agent_discover(self, *, text: str | None = None, semantic: str | None = None,
                             limit: int = 20, page: int = 1) -> list[dict[str, Any]]:
        """Find agents: ``semantic`` (by meaning) wins over ``text`` (keywords); neither = list all.
        Each entry is the registered card plus ``name``, ``agent_info`` and, when searching, ``score``."""
        body: dict[str, Any] = {"limit": _u64("limit", limit), "page": _u64("page", page)}
        if text:
            body["text"] = text
        if semantic:
            body["semantic"] = semantic
        reply = await self.call(f"{PREFIX}.AGENT.DISCOVER", body)
        agents = reply.get("agents") or []
        return [a for a in agents if isinstance(a, dict)]


def _explain_connect_error(servers: list[str], exc: BaseException) -> str:
    where = ", ".join(servers)
    inner = exc
    err = getattr(exc, "__context__", None) or getattr(exc, "__cause__", None)
    if isinstance(exc, nats.errors.NoServersError) and err is not None:
        inner = err
    text = str(inner) or type(inner).__name__
    if isinstance(inner, ConnectionRefusedError) or "refused" in text.lower() or isinstance(exc, nats.errors.NoServersError):
        return (f"cannot connect to {where}: connection refused - is the broker running? "
                f"(start one with 'mq9fast serve', or point --server / MQ9FAST_SERVER at it)")
    if isinstance(inner, (asyncio.TimeoutError, nats.errors.TimeoutError)):
        return f"cannot connect to {where}: timed out"
    if isinstance(inner, nats.errors.AuthorizationError) or "authorization" in text.lower():
        return f"cannot connect to {where}: authorization violation (check user/password/token)"
    return f"cannot connect to {where}: {text}"
