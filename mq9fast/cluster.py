"""Worker processes: the links between them, interest propagation, and service events.

With ``--workers N`` (see ``supervisor.py``) N broker processes accept on the same port with
SO_REUSEPORT and share one LMDB environment.  Core NATS traffic between clients on different
workers, and service events (a SEND on worker A waking a long-polling FETCH on worker B), travel
over a full mesh of local links: worker i connects to every worker j < i over an abstract Unix
socket; each link is symmetric.

The link speaks the NATS wire format, parsed by the same compiled parser:

* ``CONNECT {"worker": i}`` - first line each way;
* ``SUB <subject> [queue] <sid>`` / ``UNSUB <sid>`` - the sender's *local interest*: one SUB when
  its first local subscription with that (subject, queue) appears, one UNSUB when the last goes;
* ``MSG``/``HMSG <subject> <sid> [reply] ...`` - a publish for the receiver's interest ``sid``:
  the receiver delivers it to its local plain subscriptions (plain interest) or to one local
  member of the queue group (queue interest).  The sender writes these with the same compiled
  delivery code as for clients: the peer's interest is an ordinary ``Sub`` in the router whose
  ``conn`` is the link (``conn.route`` set), de-duplicated to one plain copy per publish;
* ``MSG $mq9w.EVENT.<topic> E <n>`` - a service event (sid ``E``), handed to the callbacks
  registered with ``Cluster.on_event``.

Invariants: a message that arrived over a link is never forwarded over another link (the mesh
is complete, so the publisher's worker reaches every interested worker directly); a queue group
spread over workers gets each message exactly once, because the publisher's worker picks one
member among its local members and the links that advertised that group; a link that closes
takes all interest it advertised with it, and the connecting side reconnects and re-advertises.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections import defaultdict, deque
from typing import Callable

log = logging.getLogger("mq9fast.cluster")

EVENT_PREFIX = b"$mq9w.EVENT."
EVENT_SID = b"E"
LINK_MAX_PENDING = 256 * 1024 * 1024
DEBUG = log.isEnabledFor(logging.DEBUG)


def link_address(key: str, worker: int) -> str:
    """Abstract-namespace Unix socket name of worker ``worker`` (no file, no path-length issue)."""
    return f"\0mq9fast.{key}.{worker}"


class Link(asyncio.Protocol):
    """One connection to another worker (either direction)."""

    def __init__(self, cluster: "Cluster", outbound_peer: int | None = None) -> None:
        from .server import Conn, Parser

        self.cluster = cluster
        self.peer: int | None = outbound_peer
        self.core = Conn(self, cluster.server.dirty)
        self.core.route = True
        self.core.headers = True
        self.parser = Parser(max_control_line=64 * 1024, max_payload=1 << 30)
        self.transport: asyncio.Transport | None = None
        self.remote: dict[bytes, object] = {}   # peer's sid -> Sub in our router
        self.barriers: deque = deque()          # barrier callbacks waiting for this link's PONG
        self.closed = asyncio.get_running_loop().create_future()

    # -- asyncio --------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=LINK_MAX_PENDING)
        hello = json.dumps({"worker": self.cluster.worker_id}).encode()
        self.core.write(b"CONNECT " + hello + b"\r\n")
        self.cluster.attach(self)

    def connection_lost(self, exc) -> None:
        log.info("worker %d: link to worker %s closed (%s)", self.cluster.worker_id, self.peer, exc)
        self.core.closed = True
        self.cluster.detach(self)
        router = self.cluster.server.router
        for sub in self.remote.values():
            router.remove(sub)
        self.remote.clear()
        while self.barriers:  # a link that is gone holds no barrier back
            self.barriers.popleft()()
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        from .server import _parser, link_frames

        cluster = self.cluster
        server = cluster.server
        router = server.router
        frames = self.parser.feed(data)
        i, n = 0, len(frames)
        while i < n:
            # messages for our interest: a compiled loop, no Python per message
            i = link_frames(frames, i, cluster.local_by_sid, router, EVENT_SID)
            if i == n:
                break
            f = frames[i]
            i += 1
            op = f[0]
            if DEBUG:
                log.debug("worker %d <- %s: %r", cluster.worker_id, self.peer, f[:4])
            if op == _parser.OP_MSG:  # an event (link_frames stops at those)
                cluster.dispatch_event(f[1][len(EVENT_PREFIX):].decode(), f[4])
            elif op == _parser.OP_HMSG:
                cluster.dispatch_event(f[1][len(EVENT_PREFIX):].decode(), f[5])
            elif op == _parser.OP_SUB:
                self._remote_sub(f[1], f[2], f[3])
            elif op == _parser.OP_UNSUB:
                sub = self.remote.pop(f[1], None)
                if sub is not None:
                    router.remove(sub)
            elif op == _parser.OP_CONNECT:
                try:
                    self.peer = int(json.loads(f[1])["worker"])
                except (ValueError, KeyError, TypeError):
                    log.error("bad link handshake %r", f[1])
                    self.transport.close()
                    return
                cluster.check_linked()
            elif op == _parser.OP_PING:
                self.core.write(b"PONG\r\n")
            elif op == _parser.OP_PONG:
                if self.barriers:
                    self.barriers.popleft()()
            elif op == _parser.OP_PROTO_ERROR:
                log.error("link to worker %s: protocol error %s", self.peer, f[1])
                self.transport.close()
                return
        server.schedule_flush()

    def _remote_sub(self, subject: bytes, queue: bytes | None, sid: bytes) -> None:
        from .server import Sub

        router = self.cluster.server.router
        old = self.remote.pop(sid, None)
        if old is not None:
            router.remove(old)
        sub = Sub(self.core, sid, subject, queue)
        self.remote[sid] = sub
        router.insert(sub)

    # -- output (called by Server._flush) -------------------------------------------------------
    def flush(self) -> None:
        core = self.core
        if core.closed or not core.pending():
            core.dirty = False
            return
        self.transport.write(core.take())
        if self.transport.get_write_buffer_size() > LINK_MAX_PENDING:
            log.error("link to worker %s is too slow; dropping it", self.peer)
            core.closed = True
            self.transport.abort()


class Cluster:
    def __init__(self, server, worker_id: int, nworkers: int, key: str) -> None:
        self.server = server
        self.worker_id = worker_id
        self.nworkers = nworkers
        self.key = key
        self.links: dict[int, Link] = {}
        # local interest: (subject, queue) -> [sid, refcount]; sid -> (subject, queue)
        self.local: dict[tuple[bytes, bytes | None], list] = {}
        self.local_by_sid: dict[bytes, tuple[bytes, bytes | None]] = {}
        self._next_sid = 0
        self._handlers: dict[str, list[Callable[[bytes], None]]] = defaultdict(list)
        self._listener: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._all_linked: asyncio.Event | None = None
        self._requests: dict[int, tuple[asyncio.Future, dict[int, bytes]]] = {}
        self._next_request = 0
        self.on_event("gather.resp", self._gather_response)

    @property
    def is_leader(self) -> bool:
        """Worker 0 runs the once-per-broker jobs (timers, sweeps, index writes)."""
        return self.worker_id == 0

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(link_address(self.key, self.worker_id))
        self._listener = await loop.create_unix_server(lambda: Link(self), sock=sock)
        for peer in range(self.worker_id):
            self._tasks.append(loop.create_task(self._keep_connected(peer)))

    async def wait_linked(self, timeout: float) -> bool:
        """Wait until this worker is linked to every other one (start-up: before accepting
        clients, so that no early subscription misses a peer); False on timeout."""
        if self.peers_connected() >= self.nworkers - 1:
            return True
        self._all_linked = asyncio.Event()
        try:
            await asyncio.wait_for(self._all_linked.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            log.warning("worker %d: only %d of %d peers linked; serving anyway",
                        self.worker_id, self.peers_connected(), self.nworkers - 1)
            return False

    async def _keep_connected(self, peer: int) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.05
        while not self._stopping:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                # connect by hand: abstract socket names are not portable through create_unix_connection
                await loop.sock_connect(sock, link_address(self.key, peer))
                _t, link = await loop.create_unix_connection(lambda: Link(self, peer), sock=sock)
            except OSError:
                sock.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            await link.closed

    async def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        if self._listener is not None:
            self._listener.close()
        for link in list(self.links.values()):
            link.transport.close()

    # -- links ----------------------------------------------------------------------------------
    def attach(self, link: Link) -> None:
        """A new link: tell the peer our whole local interest."""
        for (subject, queue), (sid, _n) in self.local.items():
            link.core.write(_sub_line(subject, queue, sid))
        self.links[id(link)] = link
        self.server.schedule_flush()
        self.check_linked()
        log.info("worker %d: link up (%d links)", self.worker_id, len(self.links))

    def check_linked(self) -> None:
        if self._all_linked is not None and self.peers_connected() >= self.nworkers - 1:
            self._all_linked.set()

    def detach(self, link: Link) -> None:
        self.links.pop(id(link), None)

    def peers_connected(self) -> int:
        return len({link.peer for link in self.links.values() if link.peer is not None})

    def _broadcast(self, data: bytes) -> None:
        for link in self.links.values():
            link.core.write(data)
        self.server.schedule_flush()

    # -- interest (called by the server for local subscriptions) --------------------------------
    def sub_added(self, sub) -> None:
        key = (sub.subject, sub.queue)
        entry = self.local.get(key)
        if entry is not None:
            entry[1] += 1
            return
        self._next_sid += 1
        sid = b"%d" % self._next_sid
        self.local[key] = [sid, 1]
        self.local_by_sid[sid] = key
        self._broadcast(_sub_line(sub.subject, sub.queue, sid))

    def sub_removed(self, sub) -> None:
        key = (sub.subject, sub.queue)
        entry = self.local.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self.local[key]
            del self.local_by_sid[entry[0]]
            self._broadcast(b"UNSUB " + entry[0] + b"\r\n")

    def barrier(self, done: Callable[[], None]) -> None:
        """Call ``done`` once every linked worker has processed everything sent to it so far.

        A PING goes down every link; the PONGs come back in order after the peer has handled the
        interest updates queued before it.  The server uses this to answer a client's PING only
        when the client's new subscriptions are known to every worker, so ``flush()`` after
        ``subscribe()`` means the same with several workers as with one.
        """
        links = [link for link in self.links.values() if not link.core.closed]
        if DEBUG:
            log.debug("worker %d: barrier over %d links", self.worker_id, len(links))
        if not links:
            done()
            return
        remaining = [len(links)]

        def one() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                done()

        for link in links:
            link.barriers.append(one)
            link.core.write(b"PING\r\n")
        self.server.schedule_flush()

    # -- service events -------------------------------------------------------------------------
    def on_event(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Call ``handler(payload)`` for every event ``topic`` published by another worker."""
        self._handlers[topic].append(handler)

    def publish_event(self, topic: str, payload: bytes = b"") -> None:
        """Send an event to every other worker (not to this one)."""
        subject = EVENT_PREFIX + topic.encode()
        self._broadcast(b"MSG " + subject + b" " + EVENT_SID + b" %d\r\n" % len(payload) + payload + b"\r\n")

    # -- request / gather (e.g. per-worker statistics for /varz) ---------------------------------
    def serve(self, topic: str, fn: Callable[[bytes], bytes]) -> None:
        """Answer ``gather(topic, ...)`` requests from other workers with ``fn(payload)``."""
        def on_request(data: bytes) -> None:
            req = data[:12]                       # request id (8) + requesting worker (4)
            self.publish_event("gather.resp", req + self.worker_id.to_bytes(4, "big") + fn(data[12:]))
        self.on_event("gather.req." + topic, on_request)

    async def gather(self, topic: str, payload: bytes = b"", timeout: float = 1.0) -> dict[int, bytes]:
        """Ask every other worker; returns {worker_id: answer} of those that answered in time."""
        self._next_request += 1
        rid = self._next_request
        fut = asyncio.get_running_loop().create_future()
        answers: dict[int, bytes] = {}
        self._requests[rid] = (fut, answers)
        expected = self.peers_connected()
        if expected:
            self.publish_event("gather.req." + topic,
                               rid.to_bytes(8, "big") + self.worker_id.to_bytes(4, "big") + payload)
            try:
                await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                pass
        self._requests.pop(rid, None)
        return answers

    def _gather_response(self, data: bytes) -> None:
        rid = int.from_bytes(data[:8], "big")
        if int.from_bytes(data[8:12], "big") != self.worker_id:
            return  # an answer to another worker's request
        entry = self._requests.get(rid)
        if entry is None:
            return
        fut, answers = entry
        answers[int.from_bytes(data[12:16], "big")] = data[16:]
        if len(answers) >= self.peers_connected() and not fut.done():
            fut.set_result(None)

    def dispatch_event(self, topic: str, payload: bytes) -> None:
        for handler in self._handlers.get(topic, ()):
            try:
                handler(payload)
            except Exception:  # noqa: BLE001 - one bad handler must not break the link
                log.exception("event handler for %s failed", topic)


def _sub_line(subject: bytes, queue: bytes | None, sid: bytes) -> bytes:
    if queue is None:
        return b"SUB " + subject + b" " + sid + b"\r\n"
    return b"SUB " + subject + b" " + queue + b" " + sid + b"\r\n"
