"""The NATS client-protocol server (PROTOCOL.md §1).

One ``Client`` (an asyncio Protocol) per TCP connection; one ``Server`` owns the subscription
``Router``, the connections and the output flusher.

Data flow: ``data_received`` -> compiled frame parser -> per frame: PUB/HPUB are routed (or, for
``$mq9.AI*`` subjects, handed to the control layer and never routed), SUB/UNSUB update the router,
CONNECT/PING/PONG drive the session.

Output is coalesced: delivering a message only appends to the receiving client's ``out``
bytearray and marks it dirty; once per event-loop tick ``Server._flush`` writes each dirty
client's buffer with one ``transport.write``.  A client whose unsent bytes (our buffer plus the
transport's) exceed ``max_pending`` gets ``-ERR 'Slow Consumer'`` and is closed; the others are
not held back, since nothing ever waits on a slow client.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import string
import time

from . import __version__
from .control import Control, is_command

try:  # the compiled hot paths; the pure-Python twins are the fallback (and the reference)
    from ._parser import OP_CONNECT, OP_HPUB, OP_PING, OP_PONG, OP_PROTO_ERROR, OP_PUB, OP_SUB, OP_UNSUB
    from ._parser import Parser
    from ._router import Router, valid_subject
    COMPILED = True
except ImportError:  # pragma: no cover - only when the extensions were not built
    from .parser_py import OP_CONNECT, OP_HPUB, OP_PING, OP_PONG, OP_PROTO_ERROR, OP_PUB, OP_SUB, OP_UNSUB
    from .parser_py import Parser
    from .router_py import Router, valid_subject
    COMPILED = False

log = logging.getLogger("mq9fast.server")

NATS_VERSION = "2.10.0"   # what INFO advertises: clients gate features on a NATS-like semver
CRLF = b"\r\n"
PING = b"PING\r\n"
PONG = b"PONG\r\n"
OK = b"+OK\r\n"
NO_RESPONDERS_HDR = b"NATS/1.0 503\r\n\r\n"
AUTH_TIMEOUT = 2.0


def _err(text: str) -> bytes:
    return b"-ERR '" + text.encode() + b"'\r\n"


# -ERR texts that end the connection (PROTOCOL.md §1.9)
FATAL = {"Unknown Protocol Operation", "Parser Error", "Authorization Violation",
         "Maximum Control Line Exceeded", "Maximum Payload Violation", "Stale Connection",
         "Slow Consumer", "Authentication Timeout"}


class Subscription:
    __slots__ = ("client", "sid", "subject", "queue", "max", "delivered")

    def __init__(self, client: "Client", sid: bytes, subject: bytes, queue: bytes | None) -> None:
        self.client = client
        self.sid = sid
        self.subject = subject
        self.queue = queue
        self.max = 0          # UNSUB <sid> <max>: remove after this many deliveries (0 = no limit)
        self.delivered = 0


class Client(asyncio.Protocol):
    __slots__ = ("server", "cid", "transport", "parser", "subs", "out", "dirty", "verbose",
                 "echo", "headers", "no_responders", "connected", "authed", "pings_out",
                 "last_in", "closed", "peer", "name", "lang", "version", "auth_timer",
                 "msgs_in", "msgs_out", "bytes_in", "bytes_out", "start")

    def __init__(self, server: "Server") -> None:
        self.server = server
        cfg = server.config
        self.cid = server.next_cid()
        self.transport: asyncio.Transport | None = None
        self.parser = Parser(max_control_line=cfg.max_control_line, max_payload=cfg.max_payload)
        self.subs: dict[bytes, Subscription] = {}
        self.out = bytearray()
        self.dirty = False
        self.verbose = False
        self.echo = True
        self.headers = False
        self.no_responders = False
        self.connected = False     # CONNECT seen
        self.authed = not cfg.auth_required
        self.pings_out = 0
        self.last_in = time.monotonic()
        self.closed = False
        self.peer = ("", 0)
        self.name = self.lang = self.version = ""
        self.auth_timer: asyncio.TimerHandle | None = None
        self.msgs_in = self.msgs_out = self.bytes_in = self.bytes_out = 0
        self.start = time.time()

    # -- asyncio callbacks ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = (peer[0], peer[1])
        # never let asyncio pause us: the slow-consumer rule bounds buffering instead
        transport.set_write_buffer_limits(high=self.server.config.max_pending * 2)
        self.server.clients[self.cid] = self
        transport.write(self.server.info_line(self))
        if not self.authed:
            self.auth_timer = self.server.loop.call_later(AUTH_TIMEOUT, self._auth_timeout)

    def _auth_timeout(self) -> None:
        if not self.connected and not self.closed:
            self.fatal("Authentication Timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.auth_timer is not None:
            self.auth_timer.cancel()
        self.server.drop_client(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_in = time.monotonic()
        self.pings_out = 0
        self.bytes_in += len(data)
        server = self.server
        for frame in self.parser.feed(data):
            op = frame[0]
            if op == OP_PUB:
                if not self.authed:
                    return self.fatal("Authorization Violation")
                self.msgs_in += 1
                if self.verbose:  # as nats-server: +OK before the deliveries
                    self.send(OK)
                server.publish(self, frame[1], frame[2], 0, frame[3])
            elif op == OP_HPUB:
                if not self.authed:
                    return self.fatal("Authorization Violation")
                self.msgs_in += 1
                if self.verbose:
                    self.send(OK)
                server.publish(self, frame[1], frame[2], frame[3], frame[4])
            elif op == OP_SUB:
                if not self.authed:
                    return self.fatal("Authorization Violation")
                self._sub(frame[1], frame[2], frame[3])
            elif op == OP_UNSUB:
                if not self.authed:
                    return self.fatal("Authorization Violation")
                self._unsub(frame[1], frame[2])
            elif op == OP_PING:
                self.send(PONG)
            elif op == OP_PONG:
                pass
            elif op == OP_CONNECT:
                if not self._connect(frame[1]):
                    return
            elif op == OP_PROTO_ERROR:
                return self.fatal(frame[1])
            # +OK, -ERR and INFO from a client are ignored
            if self.closed:
                return

    # -- protocol operations --------------------------------------------------------------------
    def _connect(self, raw: bytes) -> bool:
        try:
            opts = json.loads(raw) if raw else {}
            if not isinstance(opts, dict):
                raise ValueError
        except ValueError:
            self.fatal("Parser Error")
            return False
        cfg = self.server.config
        if cfg.auth_required:
            ok = False
            if cfg.auth_token is not None and opts.get("auth_token") == cfg.auth_token:
                ok = True
            if cfg.user is not None and opts.get("user") == cfg.user and opts.get("pass") == cfg.password:
                ok = True
            if not ok:
                self.fatal("Authorization Violation")
                return False
            self.authed = True
        self.connected = True
        if self.auth_timer is not None:
            self.auth_timer.cancel()
            self.auth_timer = None
        self.verbose = bool(opts.get("verbose", False))
        self.echo = bool(opts.get("echo", True))
        self.headers = bool(opts.get("headers", False))
        self.no_responders = bool(opts.get("no_responders", False)) and self.headers
        self.name = str(opts.get("name") or "")
        self.lang = str(opts.get("lang") or "")
        self.version = str(opts.get("version") or "")
        if self.verbose:
            self.send(OK)
        return True

    def _sub(self, subject: bytes, queue: bytes | None, sid: bytes) -> None:
        if not valid_subject(subject) or (queue is not None and not valid_subject(queue, False)):
            self.send(_err("Invalid Subject"))
            return
        old = self.subs.get(sid)
        if old is not None:  # a re-used sid replaces the old subscription
            self.server.router.remove(old)
        sub = Subscription(self, sid, subject, queue)
        self.subs[sid] = sub
        self.server.router.insert(sub)
        if self.verbose:
            self.send(OK)

    def _unsub(self, sid: bytes, max_msgs: int | None) -> None:
        sub = self.subs.get(sid)
        if sub is not None:
            if max_msgs and max_msgs > sub.delivered:
                sub.max = max_msgs
            else:
                self.remove_sub(sub)
        if self.verbose:
            self.send(OK)

    def remove_sub(self, sub: Subscription) -> None:
        if self.subs.get(sub.sid) is sub:
            del self.subs[sub.sid]
        self.server.router.remove(sub)

    # -- output ---------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Queue bytes for this tick's coalesced write."""
        if self.closed:
            return
        self.out += data
        if not self.dirty:
            self.dirty = True
            self.server.mark_dirty(self)

    def deliver(self, sub: Subscription, subject: bytes, reply: bytes | None, hdr_len: int,
                data: bytes) -> None:
        """Queue one MSG/HMSG for ``sub`` (data = header block + payload when hdr_len > 0)."""
        if self.closed:
            return
        out = self.out
        if hdr_len and self.headers:
            out += b"HMSG " + subject + b" " + sub.sid + b" "
            if reply:
                out += reply + b" "
            out += b"%d %d\r\n" % (hdr_len, len(data))
            out += data
        else:
            if hdr_len:  # the receiver did not ask for headers: strip them
                data = data[hdr_len:]
            out += b"MSG " + subject + b" " + sub.sid + b" "
            if reply:
                out += reply + b" "
            out += b"%d\r\n" % len(data)
            out += data
        out += CRLF
        self.msgs_out += 1
        if not self.dirty:
            self.dirty = True
            self.server.mark_dirty(self)
        sub.delivered += 1
        if sub.max and sub.delivered >= sub.max:
            self.remove_sub(sub)

    def flush(self) -> None:
        self.dirty = False
        if self.closed or not self.out:
            return
        data = bytes(self.out)
        self.out.clear()
        self.bytes_out += len(data)
        t = self.transport
        t.write(data)
        if t.get_write_buffer_size() > self.server.config.max_pending:
            self.server.slow_consumers += 1
            log.warning("slow consumer: client %d (%s:%s) closed", self.cid, *self.peer)
            self.fatal("Slow Consumer")

    def fatal(self, text: str) -> None:
        """Send -ERR and close (after flushing what is already queued)."""
        if self.closed:
            return
        log.debug("client %d: -ERR %s", self.cid, text)
        self.closed = True
        t = self.transport
        if text == "Slow Consumer":
            try:
                t.write(_err(text))
            finally:
                t.abort()
            return
        if self.out:
            t.write(bytes(self.out))
            self.out.clear()
        t.write(_err(text))
        t.close()


class Server:
    def __init__(self, config, control: Control | None = None) -> None:
        self.config = config
        self.control = control or Control()
        self.router = Router()
        self.clients: dict[int, Client] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server_id = "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(22))
        self._cid = 0
        self._dirty: list[Client] = []
        self._flush_scheduled = False
        self._servers: list[asyncio.AbstractServer] = []
        self._ping_task: asyncio.Task | None = None
        self.slow_consumers = 0
        self.started = time.time()
        self.port = config.port
        self._info_base: dict = {}

    def next_cid(self) -> int:
        self._cid += 1
        return self._cid

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        cfg = self.config
        srv = await self.loop.create_server(lambda: Client(self), cfg.host, cfg.port,
                                            reuse_address=True, backlog=4096)
        self._servers.append(srv)
        self.port = srv.sockets[0].getsockname()[1]
        self._info_base = {
            "server_id": self.server_id,
            "server_name": cfg.server_name,
            "version": NATS_VERSION,
            "mq9fast": __version__,
            "proto": 1,
            "host": cfg.host,
            "port": self.port,
            "headers": True,
            "max_payload": cfg.max_payload,
            "tls_required": False,
            "jetstream": False,
        }
        if cfg.auth_required:
            self._info_base["auth_required"] = True
        self._ping_task = self.loop.create_task(self._pinger())
        log.info("listening for NATS clients on %s:%d", cfg.host, self.port)

    def info_line(self, client: Client) -> bytes:
        info = dict(self._info_base)
        info["client_id"] = client.cid
        info["client_ip"] = client.peer[0]
        return b"INFO " + json.dumps(info, separators=(",", ":")).encode() + b"\r\n"

    async def stop_accepting(self) -> None:
        # (not wait_closed(): since 3.12 it also waits for every client connection to end)
        for srv in self._servers:
            srv.close()
        self._servers.clear()
        await asyncio.sleep(0)

    async def close_clients(self) -> None:
        """Flush pending output and close every client."""
        if self._ping_task is not None:
            self._ping_task.cancel()
        self._flush()
        for client in list(self.clients.values()):
            if not client.closed:
                client.closed = True
                client.transport.close()
        deadline = time.monotonic() + 5
        while self.clients and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def drop_client(self, client: Client) -> None:
        self.clients.pop(client.cid, None)
        for sub in list(client.subs.values()):
            self.router.remove(sub)
        client.subs.clear()

    # -- output coalescing ----------------------------------------------------------------------
    def mark_dirty(self, client: Client) -> None:
        self._dirty.append(client)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for client in dirty:
            client.flush()

    # -- routing --------------------------------------------------------------------------------
    def publish(self, client: Client, subject: bytes, reply: bytes | None, hdr_len: int,
                data: bytes) -> None:
        """Route one PUB/HPUB (data = header block + payload when hdr_len > 0)."""
        if subject.startswith(b"$mq9.AI") and is_command(subject):
            self.command(client, subject, reply, hdr_len, data)
            return
        m = self.router.match(subject)
        delivered = False
        for sub in m.psubs:
            c = sub.client
            if c is client and not client.echo:
                continue
            c.deliver(sub, subject, reply, hdr_len, data)
            delivered = True
        for group in m.qgroups:
            sub = self.router.pick(group)
            if sub.client is client and not client.echo:
                others = [s for s in group if s.client is not client]
                if not others:
                    continue
                sub = others[0]
            sub.client.deliver(sub, subject, reply, hdr_len, data)
            delivered = True
        if not delivered and reply and client.no_responders:
            self.deliver_to_subject(reply, NO_RESPONDERS_HDR, len(NO_RESPONDERS_HDR))

    def deliver_to_subject(self, subject: bytes, data: bytes, hdr_len: int = 0,
                           only: Client | None = None) -> None:
        """Server-originated message to every match of ``subject`` (or only ``only``'s subs)."""
        m = self.router.match(subject)
        for sub in m.psubs:
            if only is None or sub.client is only:
                sub.client.deliver(sub, subject, None, hdr_len, data)
        for group in m.qgroups:
            if only is not None:
                group = [s for s in group if s.client is only]
                if not group:
                    continue
            sub = self.router.pick(group)
            sub.client.deliver(sub, subject, None, hdr_len, data)

    def command(self, client: Client, subject: bytes, reply: bytes | None, hdr_len: int,
                data: bytes) -> None:
        """An mq9 command: run it; its reply goes only to the requester's own subscriptions."""
        if hdr_len:
            headers, payload = data[:hdr_len], data[hdr_len:]
        else:
            headers, payload = None, data

        def respond(body: bytes) -> None:
            if reply and not client.closed:
                self.deliver_to_subject(reply, body, 0, only=client)

        self.control.dispatch(subject, headers, payload, respond)

    # -- keep-alive -----------------------------------------------------------------------------
    async def _pinger(self) -> None:
        cfg = self.config
        while True:
            await asyncio.sleep(cfg.ping_interval)
            now = time.monotonic()
            for client in list(self.clients.values()):
                if client.closed or not client.connected:
                    continue
                if now - client.last_in < cfg.ping_interval and client.pings_out == 0:
                    continue  # recent traffic counts as liveness
                if client.pings_out >= cfg.ping_max:
                    client.fatal("Stale Connection")
                    continue
                client.pings_out += 1
                client.send(PING)

    # -- statistics -----------------------------------------------------------------------------
    def varz(self) -> dict:
        clients = list(self.clients.values())
        return {
            "server_id": self.server_id,
            "server_name": self.config.server_name,
            "version": __version__,
            "now": time.time(),
            "uptime_s": time.time() - self.started,
            "connections": len(clients),
            "subscriptions": self.router.count,
            "in_msgs": sum(c.msgs_in for c in clients),
            "out_msgs": sum(c.msgs_out for c in clients),
            "in_bytes": sum(c.bytes_in for c in clients),
            "out_bytes": sum(c.bytes_out for c in clients),
            "slow_consumers": self.slow_consumers,
            "compiled": COMPILED,
        }
