# cython: language_level=3
"""Message delivery, compiled.  Same API and output bytes as ``mq9fast.deliver_py`` (read its
docstring for the contract).

Invariants:
* ``Conn.dirty`` is true exactly while the connection sits in ``dirty_list`` waiting for the
  server's per-tick flush; a MSG is appended to ``out`` only while ``closed`` is false;
* a Sub is in ``conn.subs`` and in the router together, or in neither (``remove_sub``);
* a Sub with ``max`` > 0 never receives more than ``max`` messages: it is removed from both the
  router and ``conn.subs`` as its last allowed message is queued;
* match results are copied (``list(...)``) before iterating when a delivery can remove a sub;
* a route connection (a link to another worker) receives at most one plain copy of a publish,
  however many of that worker's patterns match (``last_pub`` against the publish sequence), and
  messages that arrived over a route are only delivered to local (non-route) subscriptions.
"""
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcpy

from ._router cimport Match, Router

DEF OP_PUB = 1
DEF OP_HPUB = 2
DEF OP_MSG = 12
DEF OP_HMSG = 13

NO_RESPONDERS = b"NATS/1.0 503\r\n\r\n"
cdef bytes _NO_RESPONDERS = NO_RESPONDERS
cdef bytes _OK = b"+OK\r\n"
cdef unsigned long long _seq = 0     # publish sequence, for route de-duplication
cdef object _remove_hook = None      # called with each local Sub removed by UNSUB max


def set_remove_hook(hook):
    """Register ``hook(sub)``, called when a local subscription is removed by delivery (UNSUB max)."""
    global _remove_hook
    _remove_hook = hook


cdef inline bint _is_mq9(bytes subject):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(subject)
    cdef const char* p = PyBytes_AS_STRING(subject)
    if n < 7 or p[0] != b'$' or p[1] != b'm' or p[2] != b'q' or p[3] != b'9' or p[4] != b'.' \
            or p[5] != b'A' or p[6] != b'I':
        return False
    return n == 7 or p[7] == b'.'


def is_mq9(bytes subject):
    return _is_mq9(subject)


cdef class Conn:
    def __init__(self, owner, list dirty_list):
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
        self.subs = {}
        self.msgs_in = 0
        self.msgs_out = 0
        self.bytes_out = 0
        self.route = False
        self.last_pub = 0

    cpdef write(self, bytes data):
        if self.closed:
            return
        self.out += data
        if not self.dirty:
            self.dirty = True
            self.dirty_list.append(self)

    cpdef bytes take(self):
        """The queued bytes (and forget them); clears the dirty flag."""
        cdef bytes data = bytes(self.out)
        self.dirty = False
        del self.out[:]
        self.bytes_out += len(data)
        return data

    cpdef Py_ssize_t pending(self):
        return PyByteArray_GET_SIZE(self.out)


cdef class Sub:
    def __init__(self, Conn conn, bytes sid, bytes subject, queue):
        self.conn = conn
        self.sid = sid
        self.subject = subject
        self.queue = queue
        self.max = 0
        self.delivered = 0


cdef inline char* _put(char* p, bytes b):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    memcpy(p, PyBytes_AS_STRING(b), n)
    return p + n


cdef inline int _ndigits(Py_ssize_t v) noexcept nogil:
    cdef int d = 1
    while v >= 10:
        v //= 10
        d += 1
    return d


cdef inline char* _putnum(char* p, Py_ssize_t v, int nd) noexcept nogil:
    cdef int i
    for i in range(nd - 1, -1, -1):
        p[i] = <char>(48 + v % 10)
        v //= 10
    return p + nd


cdef int _deliver(Router router, Sub sub, bytes subject, object reply, Py_ssize_t hdr_len,
                  bytes data) except -1:
    """Queue one MSG/HMSG for ``sub`` (data = header block + payload when hdr_len > 0)."""
    cdef Conn conn = sub.conn
    cdef bytearray out = conn.out
    cdef bint hmsg = hdr_len > 0 and conn.headers
    cdef Py_ssize_t total = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t skip = 0, body, size, old, nreply = 0
    cdef int nd_total, nd_hdr = 0
    cdef char* p
    if conn.closed:
        return 0
    if hdr_len > 0 and not hmsg:
        skip = hdr_len          # the receiver did not ask for headers: strip them
    body = total - skip
    if reply is not None and PyBytes_GET_SIZE(<bytes>reply) > 0:
        nreply = PyBytes_GET_SIZE(<bytes>reply) + 1
    nd_total = _ndigits(body)
    # "MSG " / "HMSG " + subject + " " + sid + " " [+ reply + " "] [+ hdr + " "] + len + CRLF + data + CRLF
    size = (5 if hmsg else 4) + PyBytes_GET_SIZE(subject) + 1 + PyBytes_GET_SIZE(sub.sid) + 1 \
        + nreply + nd_total + 2 + body + 2
    if hmsg:
        nd_hdr = _ndigits(hdr_len)
        size += nd_hdr + 1
    old = PyByteArray_GET_SIZE(out)
    PyByteArray_Resize(out, old + size)
    p = PyByteArray_AS_STRING(out) + old
    if hmsg:
        memcpy(p, b"HMSG ", 5)
        p += 5
    else:
        memcpy(p, b"MSG ", 4)
        p += 4
    p = _put(p, subject)
    p[0] = b' '
    p = _put(p + 1, sub.sid)
    p[0] = b' '
    p += 1
    if nreply:
        p = _put(p, <bytes>reply)
        p[0] = b' '
        p += 1
    if hmsg:
        p = _putnum(p, hdr_len, nd_hdr)
        p[0] = b' '
        p += 1
    p = _putnum(p, body, nd_total)
    p[0] = b'\r'
    p[1] = b'\n'
    p += 2
    memcpy(p, PyBytes_AS_STRING(data) + skip, body)
    p += body
    p[0] = b'\r'
    p[1] = b'\n'
    conn.msgs_out += 1
    if not conn.dirty:
        conn.dirty = True
        conn.dirty_list.append(conn)
    sub.delivered += 1
    if sub.max and sub.delivered >= sub.max:
        _remove_sub(router, sub)
    return 0


cdef int _remove_sub(Router router, Sub sub) except -1:
    cdef dict subs = sub.conn.subs
    if subs.get(sub.sid) is sub:
        del subs[sub.sid]
    router.remove(sub)
    if _remove_hook is not None and not sub.conn.route:
        _remove_hook(sub)
    return 0


def deliver(Router router, Sub sub, bytes subject, reply, Py_ssize_t hdr_len, bytes data):
    _deliver(router, sub, subject, reply, hdr_len, data)


def remove_sub(Router router, Sub sub):
    _remove_sub(router, sub)


cpdef Py_ssize_t deliver_to_subject(Router router, bytes subject, bytes data, Py_ssize_t hdr_len=0,
                                    Conn only=None) except -1:
    """A server-originated message to every match of ``subject`` (or only ``only``'s subs)."""
    cdef Match m = router.match(subject)
    cdef Sub sub
    cdef list group
    cdef Py_ssize_t n = 0
    for sub in list(m.psubs):
        if only is None or sub.conn is only:
            _deliver(router, sub, subject, None, hdr_len, data)
            n += 1
    for group in m.qgroups:
        if only is not None:
            group = [s for s in group if (<Sub>s).conn is only]
            if not group:
                continue
        _deliver(router, <Sub>router.pick(group), subject, None, hdr_len, data)
        n += 1
    return n


cdef Sub _pick_member(Router router, list group, Conn conn, bint echo):
    """The member of a queue group that gets a client's publish, or None.

    Round-robin from a rotating start; a member on this worker is preferred over a route to another
    worker (as nats-server prefers local queue subscribers over routes), and the publisher itself is
    skipped unless it asked for echo. Allocation-free: one scan of the group at most.
    """
    cdef Py_ssize_t n = len(group), start, i
    cdef Sub sub, remote = None
    router._rr += 1
    start = router._rr % n
    for i in range(n):
        sub = <Sub>group[(start + i) % n]
        if sub.conn is conn and not echo:
            continue
        if not sub.conn.route:
            return sub
        if remote is None:
            remote = sub
    return remote


cpdef Py_ssize_t publish(Router router, Conn conn, bytes subject, reply, Py_ssize_t hdr_len,
                         bytes data) except -1:
    """Route one client publish; returns the number of deliveries (503 reply when none)."""
    global _seq
    cdef Match m = router.match(subject)
    cdef list psubs = m.psubs
    cdef list group
    cdef Sub sub
    cdef Conn c
    cdef Py_ssize_t n = 0, i
    cdef bint echo = conn.echo
    _seq += 1
    if psubs:
        if len(psubs) > 1:
            psubs = list(psubs)  # a delivery may remove a sub (UNSUB max) and mutate the list
        for i in range(len(psubs)):
            sub = <Sub>psubs[i]
            c = sub.conn
            if c is conn and not echo:
                continue
            if c.route:
                if c.last_pub == _seq:
                    continue
                c.last_pub = _seq
            _deliver(router, sub, subject, reply, hdr_len, data)
            n += 1
    for group in m.qgroups:
        sub = _pick_member(router, group, conn, echo)
        if sub is None:
            continue
        _deliver(router, sub, subject, reply, hdr_len, data)
        n += 1
    if n == 0 and conn.no_responders and reply is not None and PyBytes_GET_SIZE(<bytes>reply) > 0:
        deliver_to_subject(router, <bytes>reply, _NO_RESPONDERS, PyBytes_GET_SIZE(_NO_RESPONDERS))
    return n


cpdef Py_ssize_t deliver_local(Router router, bytes subject, reply, Py_ssize_t hdr_len, bytes data,
                                queue=None) except -1:
    """A message that arrived from another worker: to every local plain subscription (queue None)
    or to one local member of queue group ``queue``; never back out over a route."""
    cdef Match m = router.match(subject)
    cdef list group
    cdef Sub sub
    cdef Py_ssize_t n = 0
    if queue is None:
        for sub in list(m.psubs):
            if not sub.conn.route:
                _deliver(router, sub, subject, reply, hdr_len, data)
                n += 1
        return n
    for group in m.qgroups:
        if (<Sub>group[0]).queue == queue:
            group = [s for s in group if not (<Sub>s).conn.route]
            if group:
                _deliver(router, <Sub>router.pick(group), subject, reply, hdr_len, data)
                n += 1
            break
    return n


cpdef Py_ssize_t route_frames(list frames, Py_ssize_t start, Conn conn, Router router) except -1:
    """Route the plain publishes in ``frames`` from ``start`` on; return the index of the first
    frame the session layer must handle (``len(frames)`` when none)."""
    cdef Py_ssize_t i = start, n = len(frames), hdr_len
    cdef tuple f
    cdef long op
    cdef bytes subject, data
    while i < n:
        f = <tuple>frames[i]
        op = f[0]
        if op == OP_PUB:
            hdr_len = 0
            data = <bytes>f[3]
        elif op == OP_HPUB:
            hdr_len = f[3]
            data = <bytes>f[4]
        else:
            break
        subject = <bytes>f[1]
        if not conn.authed or conn.closed or _is_mq9(subject):
            break
        conn.msgs_in += 1
        if conn.verbose:  # as nats-server: +OK before the deliveries
            conn.write(_OK)
        publish(router, conn, subject, f[2], hdr_len, data)
        i += 1
    return i


cpdef Py_ssize_t link_frames(list frames, Py_ssize_t start, dict local_by_sid, Router router,
                             bytes event_sid) except -1:
    """Deliver the MSG/HMSG frames that arrived over a worker link, from ``start`` on, to local
    subscribers; return the index of the first frame the link layer must handle itself (any other
    op, or an event on ``event_sid``). ``local_by_sid`` maps the sid we gave our interest to
    ``(subject, queue)``; a sid no longer there is interest withdrawn meanwhile (at-most-once)."""
    cdef Py_ssize_t i = start, n = len(frames)
    cdef tuple f
    cdef long op
    cdef object interest
    while i < n:
        f = <tuple>frames[i]
        op = f[0]
        if op != OP_MSG and op != OP_HMSG:
            break
        if f[2] == event_sid:
            break
        interest = local_by_sid.get(f[2])
        if interest is not None:
            if op == OP_MSG:
                deliver_local(router, <bytes>f[1], f[3], 0, <bytes>f[4], (<tuple>interest)[1])
            else:
                deliver_local(router, <bytes>f[1], f[3], f[4], <bytes>f[5], (<tuple>interest)[1])
        i += 1
    return i


cdef class Responder:
    """``respond(body)`` for one mq9 command: the reply goes to the requester's own subscriptions
    matching the request's reply subject, and nowhere else (PROTOCOL.md §2.1).  No reply subject,
    or a requester gone meanwhile: nothing is sent.  One compiled call per reply instead of a
    Python closure per command."""

    def __init__(self, Router router, Conn conn, subject, on_output):
        self.router = router
        self.conn = conn
        self.subject = subject if subject else None
        self.on_output = on_output

    def __call__(self, bytes body):
        if self.queue(body):
            self.on_output()

    cdef int queue(self, bytes body) except -1:
        """Queue the reply; 1 if something was queued (the caller then owes ``on_output()``)."""
        if self.subject is None or self.conn.closed:
            return 0
        deliver_to_subject(self.router, <bytes>self.subject, body, 0, self.conn)
        return 1
