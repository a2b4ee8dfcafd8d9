"""Message delivery - the pure-Python twin of ``mq9fast._deliver`` (same API, same bytes out).

This is the publish hot path: for each PUB/HPUB frame, look up the matching subscriptions and
append a MSG/HMSG to each receiving connection's output buffer.  It never writes to a socket: a
connection whose buffer goes from empty to non-empty is appended to the shared ``dirty`` list,
which the server drains once per event-loop tick (one ``transport.write`` per connection).

    conn = Conn(owner, dirty_list)      # per connection: output buffer and delivery flags
    sub = Sub(conn, sid, subject, queue)
    n = publish(router, conn, subject, reply, hdr_len, data)
    i = route_frames(frames, i, conn, router) # PUBs from index i routed here

``route_frames`` routes consecutive PUB/HPUB frames that are not mq9 commands and stops at the
first frame that needs the session layer (any other op, an mq9 command, or a publish while
``conn.authed`` is false or the connection is closed), returning its index; the caller handles
that frame and calls again, so frame order is preserved.
"""
from __future__ import annotations

OP_PUB = 1
OP_HPUB = 2
OP_MSG = 12
OP_HMSG = 13
NO_RESPONDERS = b"NATS/1.0 503\r\n\r\n"
OK = b"+OK\r\n"
_seq = 0             # publish sequence, for route de-duplication
_remove_hook = None  # called with each local Sub removed by UNSUB max


def set_remove_hook(hook) -> None:
    """Register ``hook(sub)``, called when a local subscription is removed by delivery (UNSUB max)."""
    global _remove_hook
    _remove_hook = hook


def is_mq9(subject: bytes) -> bool:
    return subject.startswith(b"$mq9.AI") and (len(subject) == 7 or subject[7] == 46)


class Conn:
    __slots__ = ("owner", "dirty_list", "out", "dirty", "closed", "echo", "headers",
                 "no_responders", "verbose", "authed", "subs", "msgs_in", "msgs_out",
                 "bytes_out", "route", "last_pub")

    def __init__(self, owner, dirty_list: list) -> None:
        self.owner = owner
        self.dirty_list = dirty_list
        self.out = bytearray()
        self.dirty = False
        self.closed = False
        self.echo = True
        self.headers = False
        self.no_responders = False
        self.verbose = False
        self.authed = True
        self.subs: dict = {}
        self.msgs_in = 0
        self.msgs_out = 0
        self.bytes_out = 0
        self.route = False   # a link to another worker process (see cluster.py)
        self.last_pub = 0    # route de-duplication: last publish sequence sent

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.out += data
        if not self.dirty:
            self.dirty = True
            self.dirty_list.append(self)

    def take(self) -> bytes:
        """The queued bytes (and forget them); clears the dirty flag."""
        self.dirty = False
        data = bytes(self.out)
        self.out.clear()
        self.bytes_out += len(data)
        return data

    def pending(self) -> int:
        return len(self.out)


class Sub:
    __slots__ = ("conn", "sid", "subject", "queue", "max", "delivered")

    def __init__(self, conn: Conn, sid: bytes, subject: bytes, queue: bytes | None) -> None:
        self.conn = conn
        self.sid = sid
        self.subject = subject
        self.queue = queue
        self.max = 0
        self.delivered = 0


def deliver(router, sub: Sub, subject: bytes, reply: bytes | None, hdr_len: int, data: bytes) -> None:
    """Queue one MSG/HMSG for ``sub`` (data = header block + payload when hdr_len > 0)."""
    conn = sub.conn
    if conn.closed:
        return
    out = conn.out
    if hdr_len and conn.headers:
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
    out += b"\r\n"
    conn.msgs_out += 1
    if not conn.dirty:
        conn.dirty = True
        conn.dirty_list.append(conn)
    sub.delivered += 1
    if sub.max and sub.delivered >= sub.max:
        remove_sub(router, sub)


def remove_sub(router, sub: Sub) -> None:
    subs = sub.conn.subs
    if subs.get(sub.sid) is sub:
        del subs[sub.sid]
    router.remove(sub)
    if _remove_hook is not None and not sub.conn.route:
        _remove_hook(sub)


def deliver_to_subject(router, subject: bytes, data: bytes, hdr_len: int = 0, only: Conn | None = None) -> int:
    """A server-originated message to every match of ``subject`` (or only ``only``'s subs)."""
    m = router.match(subject)
    n = 0
    for sub in list(m.psubs):
        if only is None or sub.conn is only:
            deliver(router, sub, subject, None, hdr_len, data)
            n += 1
    for group in m.qgroups:
        if only is not None:
            group = [s for s in group if s.conn is only]
            if not group:
                continue
        deliver(router, router.pick(group), subject, None, hdr_len, data)
        n += 1
    return n


def _pick_member(router, group: list, conn: Conn, echo: bool) -> Sub | None:
    """The member of a queue group that gets a client's publish, or None: round-robin from a
    rotating start, a member on this worker preferred over a route, the publisher skipped unless
    echo (twin of the compiled ``_pick_member``)."""
    n = len(group)
    router._rr += 1
    start = router._rr % n
    remote = None
    for i in range(n):
        sub = group[(start + i) % n]
        if sub.conn is conn and not echo:
            continue
        if not sub.conn.route:
            return sub
        if remote is None:
            remote = sub
    return remote


def publish(router, conn: Conn, subject: bytes, reply: bytes | None, hdr_len: int, data: bytes) -> int:
    """Route one client publish; returns the number of deliveries (503 reply when none)."""
    global _seq
    m = router.match(subject)
    n = 0
    echo = conn.echo
    _seq += 1
    for sub in list(m.psubs) if m.psubs else ():
        c = sub.conn
        if c is conn and not echo:
            continue
        if c.route:  # one plain copy per worker link, however many of its patterns match
            if c.last_pub == _seq:
                continue
            c.last_pub = _seq
        deliver(router, sub, subject, reply, hdr_len, data)
        n += 1
    for group in m.qgroups:
        sub = _pick_member(router, group, conn, echo)
        if sub is None:
            continue
        deliver(router, sub, subject, reply, hdr_len, data)
        n += 1
    if n == 0 and reply and conn.no_responders:
        deliver_to_subject(router, reply, NO_RESPONDERS, len(NO_RESPONDERS))
    return n


def deliver_local(router, subject: bytes, reply: bytes | None, hdr_len: int, data: bytes,
                  queue: bytes | None = None) -> int:
    """A message that arrived from another worker: to every local plain subscription (queue None)
    or to one local member of queue group ``queue``; never back out over a route."""
    m = router.match(subject)
    n = 0
    if queue is None:
        for sub in list(m.psubs):
            if not sub.conn.route:
                deliver(router, sub, subject, reply, hdr_len, data)
                n += 1
        return n
    for group in m.qgroups:
        if group[0].queue == queue:
            group = [s for s in group if not s.conn.route]
            if group:
                deliver(router, router.pick(group), subject, reply, hdr_len, data)
                n += 1
            break
    return n


def route_frames(frames: list, start: int, conn: Conn, router) -> int:
    """Route the plain publishes in ``frames`` from ``start`` on; return the index of the first
    frame the session layer must handle (``len(frames)`` when none)."""
    i = start
    nframes = len(frames)
    while i < nframes:
        f = frames[i]
        op = f[0]
        if op == OP_PUB:
            hdr_len, data = 0, f[3]
        elif op == OP_HPUB:
            hdr_len, data = f[3], f[4]
        else:
            break
        subject = f[1]
        if not conn.authed or conn.closed or is_mq9(subject):
            break
        conn.msgs_in += 1
        if conn.verbose:  # as nats-server: +OK before the deliveries
            conn.write(OK)
        publish(router, conn, subject, f[2], hdr_len, data)
        i += 1
    return i


def link_frames(frames: list, start: int, local_by_sid: dict, router, event_sid: bytes) -> int:
    """Deliver the MSG/HMSG frames that arrived over a worker link, from ``start`` on, to local
    subscribers; return the index of the first frame the link layer handles itself (twin of the
    compiled ``link_frames``)."""
    i, n = start, len(frames)
    while i < n:
        f = frames[i]
        op = f[0]
        if (op != OP_MSG and op != OP_HMSG) or f[2] == event_sid:
            break
        interest = local_by_sid.get(f[2])
        if interest is not None:
            if op == OP_MSG:
                deliver_local(router, f[1], f[3], 0, f[4], interest[1])
            else:
                deliver_local(router, f[1], f[3], f[4], f[5], interest[1])
        i += 1
    return i


class Responder:
    """``respond(body)`` for one mq9 command: the reply goes to the requester's own subscriptions
    matching the request's reply subject (twin of the compiled ``Responder``)."""

    __slots__ = ("router", "conn", "subject", "on_output")

    def __init__(self, router, conn: Conn, subject: bytes | None, on_output) -> None:
        self.router = router
        self.conn = conn
        self.subject = subject or None
        self.on_output = on_output

    def __call__(self, body: bytes) -> None:
        if self.subject is None or self.conn.closed:
            return
        deliver_to_subject(self.router, self.subject, body, 0, self.conn)
        self.on_output()
