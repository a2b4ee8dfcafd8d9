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
import os
import secrets
import socket
import string
import time
from typing import Callable

from . import __version__
from .control import AGENT_PREFIX, DISCOVER, READ_PREFIXES, Control

if os.environ.get("MQ9FAST_PURE_PYTHON"):  # run on the pure-Python twins (tests, debugging)
    from . import deliver_py as _deliver
    from . import parser_py as _parser
    from . import router_py as _router
    COMPILED = False
else:
    from . import _deliver, _parser, _router
    COMPILED = True

Parser = _parser.Parser
Router = _router.Router
valid_subject = _router.valid_subject
Conn, Sub = _deliver.Conn, _deliver.Sub
route_frames = _deliver.route_frames
deliver_to_subject = _deliver.deliver_to_subject
deliver_local = _deliver.deliver_local
link_frames = _deliver.link_frames
Responder = _deliver.Responder
remove_sub = _deliver.remove_sub
OP_PUB, OP_HPUB, OP_SUB, OP_UNSUB = _parser.OP_PUB, _parser.OP_HPUB, _parser.OP_SUB, _parser.OP_UNSUB
OP_PING, OP_PONG, OP_CONNECT, OP_PROTO_ERROR = (_parser.OP_PING, _parser.OP_PONG, _parser.OP_CONNECT,
                                                _parser.OP_PROTO_ERROR)
OP_MSG, OP_HMSG = _parser.OP_MSG, _parser.OP_HMSG

log = logging.getLogger("mq9fast.server")

NATS_VERSION = "2.10.0"   # what INFO advertises: clients gate features on a NATS-like semver
CRLF = b"\r\n"
PING = b"PING\r\n"
PONG = b"PONG\r\n"
OK = b"+OK\r\n"
AUTH_TIMEOUT = 2.0
PING_SETTLE = 0.002  # workers: least delay of a PONG, for the SUB that trails a PING (nats-py)


def _err(text: str) -> bytes:
    return b"-ERR '" + text.encode() + b"'\r\n"


# -ERR texts that end the connection (PROTOCOL.md §1.9)
FATAL = {"Unknown Protocol Operation", "Parser Error", "Authorization Violation",
         "Maximum Control Line Exceeded", "Maximum Payload Violation", "Stale Connection",
         "Slow Consumer", "Authentication Timeout"}


class Client(asyncio.Protocol):
    """One NATS connection: the session layer (handshake, auth, SUB/UNSUB, keep-alive).

    Per-connection delivery state (output buffer, flags, subscriptions) lives in ``self.core``,
    a ``Conn`` of the compiled delivery module, so the publish hot path never touches Python
    attributes.
    """

    __slots__ = ("server", "cid", "core", "transport", "parser", "connected", "pings_out",
                 "last_in", "peer", "name", "lang", "version", "auth_timer", "bytes_in", "start",
                 "interest_changed", "pongs_due", "write_seq", "backlog", "agent_writes")

    def __init__(self, server: "Server") -> None:
        self.server = server
        cfg = server.config
        self.cid = server.next_cid()
        self.core = Conn(self, server.dirty)
        self.core.authed = not cfg.auth_required
        self.transport: asyncio.Transport | None = None
        self.parser = Parser(max_control_line=cfg.max_control_line, max_payload=cfg.max_payload)
        self.connected = False     # CONNECT seen
        self.pings_out = 0
        self.last_in = time.monotonic()
        self.peer = ("", 0)
        self.name = self.lang = self.version = ""
        self.auth_timer: asyncio.TimerHandle | None = None
        self.bytes_in = 0
        self.start = time.time()
        self.interest_changed = False  # SUB/UNSUB since the last PONG (workers: _answer_pings)
        self.pongs_due = 0
        #: ``Store.submitted`` after this connection's last write command (see ``_process``)
        self.write_seq = 0
        #: frames held back while a read waits for this connection's earlier writes, else None
        self.backlog: list | None = None
        #: REGISTER/UNREGISTER/REPORT of this connection not answered yet (DISCOVER waits for them)
        self.agent_writes = 0

    @property
    def closed(self) -> bool:
        return self.core.closed

    @property
    def subs(self) -> dict:
        return self.core.subs

    # -- asyncio callbacks ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        if not self.server.loop_sets_nodelay:
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
        if not self.core.authed:
            self.auth_timer = self.server.loop.call_later(AUTH_TIMEOUT, self._auth_timeout)

    def _auth_timeout(self) -> None:
        if not self.connected and not self.core.closed:
            self.fatal("Authentication Timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self.core.closed = True
        if self.auth_timer is not None:
            self.auth_timer.cancel()
        self.server.drop_client(self)

    def data_received(self, data: bytes) -> None:
        core = self.core
        if core.closed:
            return
        self.last_in = time.monotonic()
        self.pings_out = 0
        self.bytes_in += len(data)
        frames = self.parser.feed(data)
        if self.backlog is not None:  # a read is waiting for our writes: keep the order
            self.backlog.extend(frames)
            return
        self._process(frames, 0)

    def _process(self, frames: list, i: int) -> None:
        """Handle ``frames[i:]`` in order.  Per connection, a read sees every write this
        connection sent before it, as a pipelining client expects: a mailbox read (FETCH, QUERY)
        waits until the connection's mailbox writes are committed (``Store.when_done``), a
        DISCOVER until its REGISTER/UNREGISTER/REPORTs are answered (a REGISTER reaches the store
        only after its embedding).  The read and everything after it wait in ``backlog`` (reading
        paused) and resume in ``_resume``."""
        core = self.core
        server = self.server
        router = server.router
        take_sends = server.control.take_sends
        store = server.control.store
        n = len(frames)
        while i < n:
            i = route_frames(frames, i, core, router)  # plain publishes, compiled
            if i >= n:
                break
            f = frames[i]
            op = f[0]
            if (op == OP_PUB or op == OP_HPUB) and core.authed and not core.closed:  # mq9 command
                if op == OP_PUB and take_sends is not None:  # a run of plain SENDs: straight in
                    j = take_sends(frames, i, core, router, server.schedule_flush, Responder)
                    if j > i:
                        i = j
                        if store is not None:
                            self.write_seq = store.submitted
                        continue
                subject = f[1]
                answered = None
                if subject.startswith(AGENT_PREFIX):
                    if subject == DISCOVER:
                        if self.agent_writes:
                            self._hold(frames[i:], None)
                            break
                    else:
                        self.agent_writes += 1
                        answered = self._agent_write_answered
                if store is None:
                    before = 0
                else:
                    if self.write_seq > store.completed and subject.startswith(READ_PREFIXES):
                        self._hold(frames[i:], store)
                        break
                    before = store.submitted
                core.msgs_in += 1
                if core.verbose:
                    core.write(OK)
                if op == OP_PUB:
                    server.command(self, subject, f[2], 0, f[3], answered)
                else:
                    server.command(self, subject, f[2], f[3], f[4], answered)
                if store is not None and store.submitted != before:
                    self.write_seq = store.submitted
            else:
                self._frame(f)
                if core.closed:
                    break
            i += 1
        if self.pongs_due:
            self._answer_pings()
        server.schedule_flush()

    def _hold(self, frames: list, store) -> None:
        """Hold ``frames`` until the store has committed ``write_seq`` (``store``) or, with
        ``store`` None, until every agent write of this connection is answered."""
        self.backlog = frames
        if self.transport is not None:
            self.transport.pause_reading()  # the peer's further bytes wait in the kernel
        if store is not None:
            store.when_done(self.write_seq, self._resume)

    def _agent_write_answered(self) -> None:
        self.agent_writes -= 1
        if self.agent_writes == 0 and self.backlog is not None and self.backlog[0][1] == DISCOVER:
            self._resume()

    def _resume(self) -> None:
        frames, self.backlog = self.backlog, None
        if self.core.closed or frames is None:
            return
        if self.transport is not None:
            self.transport.resume_reading()
        self._process(frames, 0)

    def _answer_pings(self) -> None:
        """Workers: PONG only once every worker knows this client's subscriptions.

        Clients send SUB and PING to learn that a subscription is in place, but nats-py writes
        the PING first, on its own, and the queued SUB a moment later.  So with several workers
        a PING is answered no sooner than PING_SETTLE after it arrived and after a barrier over
        every link (``Cluster.barrier``) that started after the client's last interest change:
        ``flush()`` after ``subscribe()`` then means the same as with one worker.
        """
        n, self.pongs_due = self.pongs_due, 0
        loop = self.server.loop
        not_before = loop.time() + PING_SETTLE

        def answer() -> None:
            if self.core.closed:
                return
            if self.interest_changed:       # a SUB/UNSUB arrived meanwhile: one more barrier
                self.interest_changed = False
                self.server.cluster.barrier(answer)
                return
            wait = not_before - loop.time()
            if wait > 0:
                loop.call_later(wait, answer)
                return
            self.core.write(PONG * n)
            self.server.schedule_flush()

        self.interest_changed = False
        self.server.cluster.barrier(answer)

    def _frame(self, frame: tuple) -> None:
        """Everything the delivery fast path does not handle."""
        op = frame[0]
        core = self.core
        if op == OP_PING:
            if self.server.cluster is None:
                core.write(PONG)
            else:
                self.pongs_due += 1  # answered after this read (see _answer_pings)
        elif op == OP_PONG:
            pass
        elif op == OP_CONNECT:
            self._connect(frame[1])
        elif op == OP_PROTO_ERROR:
            self.fatal(frame[1])
        elif op in (OP_PUB, OP_HPUB, OP_SUB, OP_UNSUB) and not core.authed:
            self.fatal("Authorization Violation")
        elif op == OP_PUB:  # an mq9 command
            core.msgs_in += 1
            if core.verbose:
                core.write(OK)
            self.server.command(self, frame[1], frame[2], 0, frame[3])
        elif op == OP_HPUB:
            core.msgs_in += 1
            if core.verbose:
                core.write(OK)
            self.server.command(self, frame[1], frame[2], frame[3], frame[4])
        elif op == OP_SUB:
            self._sub(frame[1], frame[2], frame[3])
        elif op == OP_UNSUB:
            self._unsub(frame[1], frame[2])
        elif op == OP_MSG or op == OP_HMSG:  # server-to-server only, never from a client
            self.fatal("Unknown Protocol Operation")
        # +OK, -ERR and INFO from a client are ignored

    # -- protocol operations --------------------------------------------------------------------
    def _connect(self, raw: bytes) -> None:
        try:
            opts = json.loads(raw) if raw else {}
            if not isinstance(opts, dict):
                raise ValueError
        except ValueError:
            self.fatal("Parser Error")
            return
        cfg = self.server.config
        core = self.core
        if cfg.auth_required:
            ok = False
            if cfg.auth_token is not None and opts.get("auth_token") == cfg.auth_token:
                ok = True
            if cfg.user is not None and opts.get("user") == cfg.user and opts.get("pass") == cfg.password:
                ok = True
            if not ok:
                self.fatal("Authorization Violation")
                return
            core.authed = True
        self.connected = True
        if self.auth_timer is not None:
            self.auth_timer.cancel()
            self.auth_timer = None
        core.verbose = bool(opts.get("verbose", False))
        core.echo = bool(opts.get("echo", True))
        core.headers = bool(opts.get("headers", False))
        core.no_responders = bool(opts.get("no_responders", False)) and core.headers
        self.name = str(opts.get("name") or "")
        self.lang = str(opts.get("lang") or "")
        self.version = str(opts.get("version") or "")
        if core.verbose:
            core.write(OK)

    def _sub(self, subject: bytes, queue: bytes | None, sid: bytes) -> None:
        core = self.core
        if not valid_subject(subject) or (queue is not None and not valid_subject(queue, False)):
            core.write(_err("Invalid Subject"))
            return
        server = self.server
        router = server.router
        old = core.subs.get(sid)
        if old is not None:  # a re-used sid replaces the old subscription
            router.remove(old)
            if server.cluster is not None:
                server.cluster.sub_removed(old)
        sub = Sub(core, sid, subject, queue)
        core.subs[sid] = sub
        router.insert(sub)
        if server.cluster is not None:
            server.cluster.sub_added(sub)
            self.interest_changed = True
        if core.verbose:
            core.write(OK)

    def _unsub(self, sid: bytes, max_msgs: int | None) -> None:
        core = self.core
        sub = core.subs.get(sid)
        if sub is not None:
            if max_msgs and max_msgs > sub.delivered:
                sub.max = max_msgs
            else:
                remove_sub(self.server.router, sub)
                self.interest_changed = True
        if core.verbose:
            core.write(OK)

    # -- output ---------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Queue bytes for this tick's coalesced write."""
        self.core.write(data)
        self.server.schedule_flush()

    def flush(self) -> None:
        core = self.core
        if core.closed or not core.pending():
            core.dirty = False
            return
        t = self.transport
        t.write(core.take())
        if t.get_write_buffer_size() > self.server.config.max_pending:
            self.server.slow_consumers += 1
            log.warning("slow consumer: client %d (%s:%s) closed", self.cid, *self.peer)
            self.fatal("Slow Consumer")

    def fatal(self, text: str) -> None:
        """Send -ERR and close (after what is already queued, unless it is the slow consumer)."""
        core = self.core
        if core.closed:
            return
        log.debug("client %d: -ERR %s", self.cid, text)
        t = self.transport
        if text == "Slow Consumer":
            core.closed = True
            t.write(_err(text))
            t.abort()
            return
        pending = core.take() if core.pending() else b""
        core.closed = True
        t.write(pending + _err(text))
        t.close()


class Server:
    def __init__(self, config, control: Control | None = None) -> None:
        """Construct inside the running event loop."""
        self.config = config
        self.control = control or Control()
        self.router = Router()
        self.clients: dict[int, Client] = {}
        self.loop = asyncio.get_running_loop()
        # uvloop sets TCP_NODELAY on every accepted connection itself; asking for the socket
        # object would allocate a socket wrapper per connection for nothing
        self.loop_sets_nodelay = type(self.loop).__module__.startswith("uvloop")
        self.server_id = "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(22))
        self._cid = 0
        self.dirty: list = []       # Conn objects with queued output (see deliver_py)
        self._flush_scheduled = False
        self._servers: list[asyncio.AbstractServer] = []
        self._ping_task: asyncio.Task | None = None
        self.slow_consumers = 0
        # msgs_in, msgs_out, bytes_in, bytes_out of connections that have closed (for metrics)
        self.closed_totals = [0, 0, 0, 0]
        self.started = time.time()
        self.port = config.port
        self._info_base: dict = {}
        self.cluster = None          # cluster.Cluster when running as one of several workers
        self.worker_id: int | None = None

    def next_cid(self) -> int:
        """Client ids are unique across the broker: with N workers, worker w hands out
        w+1, w+1+N, w+1+2N, ... (the id names a connection in logs, /connz-style listings and
        the INFO ``client_id``)."""
        cluster = self.cluster
        if cluster is None:
            self._cid += 1
            return self._cid
        self._cid += 1
        return (self._cid - 1) * cluster.nworkers + cluster.worker_id + 1

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        srv = await self.loop.create_server(lambda: Client(self), cfg.host, cfg.port,
                                            reuse_address=True, backlog=4096,
                                            reuse_port=self.cluster is not None)
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
        if self.worker_id is not None:
            self._info_base["worker_id"] = self.worker_id
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
                client.core.closed = True
                client.transport.close()
        deadline = time.monotonic() + 5
        while self.clients and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def drop_client(self, client: Client) -> None:
        if self.clients.pop(client.cid, None) is not None:
            totals, core = self.closed_totals, client.core
            totals[0] += core.msgs_in
            totals[1] += core.msgs_out
            totals[2] += client.bytes_in
            totals[3] += core.bytes_out
        for sub in list(client.subs.values()):
            self.router.remove(sub)
            if self.cluster is not None:
                self.cluster.sub_removed(sub)
        client.subs.clear()

    def attach_cluster(self, cluster) -> None:
        self.cluster = cluster
        self.worker_id = cluster.worker_id
        _deliver.set_remove_hook(cluster.sub_removed)

    # -- output coalescing ----------------------------------------------------------------------
    def schedule_flush(self) -> None:
        """Write every dirty connection's output once, at the end of this loop tick."""
        if self.dirty and not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self.dirty[:] = list(self.dirty), []
        for core in dirty:
            core.owner.flush()

    # -- routing --------------------------------------------------------------------------------
    def deliver_to_subject(self, subject: bytes, data: bytes, hdr_len: int = 0,
                           only: Client | None = None) -> None:
        """Server-originated message to every match of ``subject`` (or only ``only``'s subs)."""
        deliver_to_subject(self.router, subject, data, hdr_len, None if only is None else only.core)
        self.schedule_flush()

    def command(self, client: Client, subject: bytes, reply: bytes | None, hdr_len: int,
                data: bytes, answered: Callable[[], None] | None = None) -> None:
        """An mq9 command: run it; its reply goes only to the requester's own subscriptions.
        ``answered()`` (if given) runs after the reply, with or without a reply subject."""
        if hdr_len:
            headers, payload = data[:hdr_len], data[hdr_len:]
        else:
            headers, payload = None, data
        respond = Responder(self.router, client.core, reply, self.schedule_flush)
        if answered is not None:
            inner = respond

            def respond(body: bytes) -> None:
                try:
                    inner(body)
                finally:
                    answered()
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
                client.core.write(PING)
            self.schedule_flush()

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
            "in_msgs": self.closed_totals[0] + sum(c.core.msgs_in for c in clients),
            "out_msgs": self.closed_totals[1] + sum(c.core.msgs_out for c in clients),
            "in_bytes": self.closed_totals[2] + sum(c.bytes_in for c in clients),
            "out_bytes": self.closed_totals[3] + sum(c.core.bytes_out for c in clients),
            "slow_consumers": self.slow_consumers,
            "compiled": COMPILED,
            "worker_id": self.worker_id,
            "workers_linked": None if self.cluster is None else self.cluster.peers_connected(),
        }
