"""The mq9 control layer: turns an intercepted ``$mq9.AI.*`` publish into a service call.

The NATS core hands every publish whose subject is ``$mq9.AI`` or starts with ``$mq9.AI.`` to
``Control.dispatch`` and never routes it to subscribers (PROTOCOL.md §2.1, DESIGN.md §3.2).

A service method returns the reply - a ``dict`` (encoded here as compact JSON) or ``bytes`` (an
already encoded JSON object) - or an awaitable of one.  Raising ``Mq9Error(text)`` produces
``{"error": text}``; any other exception is logged and answered with ``internal error``.  The
caller (the server) delivers the reply only to the requesting connection.

Services (constructed by ``broker.Broker``):

* ``mailbox``  - ``create(payload)``, ``send(addr, headers, payload)``, ``fetch(addr, payload)``,
  ``ack(addr, payload)``, ``query(addr, payload)``, ``delete(addr, msg_id_token)``
* ``registry`` - ``register(payload)``, ``unregister(payload)``, ``report(payload)``,
  ``discover(payload)``

``headers`` is the raw NATS header block (bytes, ``NATS/1.0...\\r\\n\\r\\n``) or ``None``.

Fast path: ``$mq9.AI.MSG.SEND.<addr>`` (the hottest command) is recognised on the raw subject bytes
and handed to ``mailbox.send_nowait(addr_bytes, headers, payload, respond)``, which answers through
``respond`` itself after the group commit (no future, no thunk, no JSON encoding here) and counts
into ``Control.counts`` (bound with ``mailbox.bind_counts``).  It may return an awaitable/reply
instead (delayed SENDs), which is then finished like any other command.  Addresses the generic
router would reject (empty tokens) take the generic path and get the same error.  ``MSG.FETCH`` and
``MSG.ACK`` use the same memo of subjects (no decode/split/closure per command); an ACK answers
through ``mailbox.ack_nowait`` (reply first, lease release afterwards).  Once a SEND subject is
in the memo, ``send_names`` lets the server hand such frames (PUB, no headers) straight to
``mailbox.take_sends`` without coming here at all (``mailbox/send_py.py``).

Observers: ``Control.observers`` is a list of ``fn(command, outcome, seconds)`` called with every
command's dispatch-to-reply latency (the HTTP side port's histogram appends itself here instead of
wrapping ``dispatch``); with the list empty, nothing is timed.  An observer with a ``many(command,
outcome, seconds_list)`` method gets the SENDs of one commit in one call.
"""
from __future__ import annotations

import inspect
import json
import logging
import time
from typing import Any, Awaitable, Callable, Union

log = logging.getLogger("mq9fast.control")

PREFIX = "$mq9.AI"
MSG_PREFIX = b"$mq9.AI.MSG."
#: mailbox reads: each sees every earlier mailbox write of its connection (``Server._process``)
READ_PREFIXES = (b"$mq9.AI.MSG.FETCH.", b"$mq9.AI.MSG.QUERY.")
#: registry commands; a DISCOVER waits until its connection's other ones are answered
AGENT_PREFIX = b"$mq9.AI.AGENT."
DISCOVER = b"$mq9.AI.AGENT.DISCOVER"
#: at most this many subjects are remembered by the fast path
FAST_MEMO = 4096
Reply = Union[dict, bytes]


class Mq9Error(Exception):
    """An application error: travels to the client as ``{"error": "<text>"}``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def is_command(subject: bytes) -> bool:
    """True for ``$mq9.AI`` and ``$mq9.AI.<anything>``."""
    return subject.startswith(b"$mq9.AI") and (len(subject) == 7 or subject[7:8] == b".")


def command_name(subject: bytes) -> str:
    """``$mq9.AI.MSG.SEND.a.b`` -> ``MSG.SEND`` (for observers; ``unknown`` if not a command)."""
    parts = subject[:40].decode("ascii", "replace").split(".", 4)
    if len(parts) >= 4 and parts[0] == "$mq9" and parts[1] == "AI":
        return parts[2] + "." + parts[3]
    return "unknown"


def encode_reply(reply: Reply) -> bytes:
    if isinstance(reply, (bytes, bytearray, memoryview)):
        return bytes(reply)
    return json.dumps(reply, separators=(",", ":"), ensure_ascii=False).encode()


def error_reply(text: str) -> bytes:
    return encode_reply({"error": text})


class Control:
    """Parses the command subject and calls the matching service method."""

    def __init__(self, mailbox: Any = None, registry: Any = None) -> None:
        self.mailbox = mailbox
        self.registry = registry
        # command counters by (command, outcome) - read by metrics
        self.counts: dict[tuple[str, str], int] = {}
        #: fn(command, outcome, seconds) per answered command (the /metrics latency histogram)
        self.observers: list[Callable[[str, str, float], None]] = []
        # fast path: subject -> (command name, handler(arg, headers, payload, respond), arg)
        self._fast: dict[bytes, tuple] = {}
        self._fast_ops: dict[bytes, tuple] = {}
        #: SEND subjects among them -> address bytes (the frames the mailbox takes itself)
        self.send_names: dict[bytes, bytes] = {}
        #: ``mailbox.take_sends`` (see ``Server``'s read loop), or None
        self.take_sends: Callable | None = None
        #: the services' group-commit ``Store`` (``Server`` orders a connection's reads after its
        #: writes with it), or None
        self.store = getattr(mailbox, "store", None) or getattr(registry, "store", None)
        if mailbox is not None and hasattr(mailbox, "send_nowait"):
            mailbox.bind_counts(self.counts, self.observers, self.send_names)
            self.take_sends = mailbox.take_sends
            self._fast_ops = {
                b"SEND": ("MSG.SEND", mailbox.send_nowait, True),
                b"FETCH": ("MSG.FETCH", self._fetch_fast, False),
                b"ACK": ("MSG.ACK", self._ack_fast, False),
            }

    def _route(self, subject: str, headers: bytes | None, payload: bytes
               ) -> tuple[str, Callable[[], Reply | Awaitable[Reply]]]:
        """Return (command name, thunk) for ``subject`` or raise Mq9Error for unknown subjects."""
        tokens = subject.split(".")
        # tokens[0:2] == ["$mq9", "AI"]
        rest = tokens[2:]
        mb, reg = self.mailbox, self.registry
        if len(rest) == 2 and rest[0] == "MAILBOX" and rest[1] == "CREATE" and mb is not None:
            return "MAILBOX.CREATE", lambda: mb.create(payload)
        if len(rest) >= 3 and rest[0] == "MSG" and mb is not None and all(rest[2:]):
            op = rest[1]
            addr = ".".join(rest[2:])
            if op == "SEND":
                return "MSG.SEND", lambda: mb.send(addr, headers, payload)
            if op == "FETCH":
                return "MSG.FETCH", lambda: mb.fetch(addr, payload)
            if op == "ACK":
                return "MSG.ACK", lambda: mb.ack(addr, payload)
            if op == "QUERY":
                return "MSG.QUERY", lambda: mb.query(addr, payload)
            if op == "DELETE" and len(rest) >= 4:
                addr = ".".join(rest[2:-1])
                token = rest[-1]
                return "MSG.DELETE", lambda: mb.delete(addr, token)
        if len(rest) == 2 and rest[0] == "AGENT" and reg is not None:
            op = rest[1]
            if op == "REGISTER":
                return "AGENT.REGISTER", lambda: reg.register(payload)
            if op == "UNREGISTER":
                return "AGENT.UNREGISTER", lambda: reg.unregister(payload)
            if op == "REPORT":
                return "AGENT.REPORT", lambda: reg.report(payload)
            if op == "DISCOVER":
                return "AGENT.DISCOVER", lambda: reg.discover(payload)
        raise Mq9Error(f"unrecognized mq9 subject: {subject}")

    def dispatch(self, subject: bytes, headers: bytes | None, payload: bytes,
                 respond: Callable[[bytes], None]) -> None:
        """Run the command; call ``respond(json_bytes)`` exactly once with the reply."""
        if self.observers:
            respond = self._timed(subject, respond)
        name = "unknown"
        try:
            fast = self._fast.get(subject)
            if fast is None and self._fast_ops and subject.startswith(MSG_PREFIX):
                fast = self._classify(subject)
            if fast is not None:
                name = fast[0]
                result = fast[1](fast[2], headers, payload, respond)
                if result is None:
                    return
            else:
                name, thunk = self._route(subject.decode("utf-8", "replace"), headers, payload)
                result = thunk()
        except Mq9Error as exc:
            self._count(name, "error")
            respond(error_reply(exc.text))
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the connection
            log.exception("mq9 command %s failed", name)
            self._count(name, "internal")
            respond(error_reply(f"internal error: {exc}"))
            return
        if inspect.isawaitable(result):
            import asyncio

            fut = asyncio.ensure_future(result)
            fut.add_done_callback(lambda f: self._finish(name, f, respond))
        else:
            self._respond(name, result, respond)

    def _classify(self, subject: bytes) -> tuple | None:
        """Fast-path entry for ``$mq9.AI.MSG.<SEND|FETCH|ACK>.<addr>`` when the generic router
        would accept the address (no empty token); memoised per subject (clients reuse a few)."""
        op, dot, addr = subject[len(MSG_PREFIX):].partition(b".")
        spec = self._fast_ops.get(op)
        if spec is None or not dot or not addr or addr[-1] == 46 or b".." in addr:  # 46 = "."
            return None
        if addr[0] == 46:
            return None
        name, handler, raw_addr = spec
        try:
            arg = addr if raw_addr else addr.decode("utf-8")
        except UnicodeDecodeError:
            return None  # the generic path decodes with replacement characters
        if len(self._fast) >= FAST_MEMO:
            self._fast.clear()
            self.send_names.clear()
        subject = bytes(subject)
        entry = self._fast[subject] = (name, handler, arg)
        if name == "MSG.SEND":
            self.send_names[subject] = arg
        return entry

    def _timed(self, subject: bytes, respond: Callable[[bytes], None]) -> Callable[[bytes], None]:
        fast = self._fast.get(subject)
        name = fast[0] if fast is not None else command_name(subject)
        observers = self.observers
        clock = time.perf_counter
        t0 = clock()

        def timed(body: bytes) -> None:
            dt = clock() - t0
            for ob in observers:
                try:
                    ob(name, "", dt)
                except Exception:  # noqa: BLE001 - metrics never break a reply
                    pass
            respond(body)

        return timed

    def _fetch_fast(self, addr: str, headers, payload, respond):
        return self.mailbox.fetch(addr, payload)

    def _ack_fast(self, addr: str, headers, payload, respond):
        self.mailbox.ack_nowait(addr, payload, lambda ok, value: self._complete("MSG.ACK", ok, value, respond))
        return None

    def _finish(self, name: str, fut, respond: Callable[[bytes], None]) -> None:
        if fut.cancelled():
            self._count(name, "cancelled")
            return
        exc = fut.exception()
        if exc is None:
            self._respond(name, fut.result(), respond)
        else:
            self._complete(name, False, exc, respond)

    def _complete(self, name: str, ok: bool, value, respond: Callable[[bytes], None]) -> None:
        """Answer from a result (``ok``) or an exception (``Store.write_cb`` completions)."""
        if ok:
            self._respond(name, value, respond)
            return
        exc = value
        if isinstance(exc, Mq9Error):
            self._count(name, "error")
            respond(error_reply(exc.text))
        else:
            log.error("mq9 command %s failed", name, exc_info=exc)
            self._count(name, "internal")
            respond(error_reply(f"internal error: {exc}"))

    def _respond(self, name: str, result: Reply, respond: Callable[[bytes], None]) -> None:
        data = encode_reply(result)
        ok = not (isinstance(result, dict) and result.get("error"))
        self._count(name, "ok" if ok else "error")
        respond(data)

    def _count(self, name: str, outcome: str) -> None:
        key = (name, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1
