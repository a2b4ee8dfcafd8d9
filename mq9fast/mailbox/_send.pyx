# cython: language_level=3
"""The three per-message loops of the bulk ``MSG.SEND`` path, compiled.  Same API, same LMDB
writes and same reply bytes as ``mq9fast.mailbox.send_py`` (read its docstring for the contract
and the item layout).

What compiling buys: no Python frame per SEND between the parser and the writer's queue (the
item is built here straight from the frame, with a ``Responder`` filled in without ``__init__``),
the 17-byte key and the 5-byte value head written into the bytes objects directly, the mailbox's
``next_id``/``last_sec`` kept in C variables while a run of SENDs to one mailbox lasts, and the
replies formatted in C and queued without one ``on_output`` call each.

Invariants:
* ``write_sends`` writes a mailbox's counters back to its ``Box`` before it switches to another
  mailbox, before ``_put_message`` (which reads and advances them) and at the end, so the boxes
  it saves are exactly the Python twin's;
* ``answer_sends`` calls ``on_output`` once, after the last reply it queued through a
  ``Responder`` (the server's ``schedule_flush``, the same function for every connection).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy

from .._deliver cimport Conn, Responder
from .._router cimport Router

import time

from ..control import Mq9Error, error_reply
from .layout import BE_U64x2, NORMAL, u64
from .send_py import _observe, log
from .stats import DepthDelta

COMPILED = True

DEF OP_PUB = 1
cdef bytes _OK = b"+OK\r\n"
cdef object _MISSING = object()
cdef object _clock = time.perf_counter
cdef object _wall = time.time


cdef const char* _ID_HEAD = b'{"error":"","msg_id":'
DEF ID_HEAD_LEN = 21


cdef bytes _id_reply(uint64_t mid):
    """``b'{"error":"","msg_id":%d}' % mid`` (digits written backwards into a stack buffer)."""
    cdef char digits[20]
    cdef int nd = 0
    cdef bytes out
    cdef char* p
    while True:
        digits[nd] = <char>(48 + mid % 10)
        nd += 1
        mid //= 10
        if mid == 0:
            break
    out = PyBytes_FromStringAndSize(NULL, ID_HEAD_LEN + nd + 1)
    p = PyBytes_AS_STRING(out)
    memcpy(p, _ID_HEAD, ID_HEAD_LEN)
    p += ID_HEAD_LEN
    while nd:
        nd -= 1
        p[0] = digits[nd]
        p += 1
    p[0] = 125  # "}"
    return out


cpdef Py_ssize_t take_sends(list frames, Py_ssize_t start, Conn conn, Router router, dict names,
                            list items, object on_output, bint timed, object responder=None) except -1:
    """See ``send_py.take_sends``; ``responder`` is ignored (always the compiled ``Responder``)."""
    cdef Py_ssize_t i = start, n = len(frames)
    cdef tuple f
    cdef object name, reply
    cdef Responder r
    if not conn.authed or conn.closed:
        return i
    while i < n:
        f = <tuple>frames[i]
        if <long>f[0] != OP_PUB:
            break
        name = names.get(f[1])
        if name is None:
            break
        conn.msgs_in += 1
        if conn.verbose:
            conn.write(_OK)
        r = Responder.__new__(Responder)
        r.router = router
        r.conn = conn
        reply = f[2]
        r.subject = reply if reply else None
        r.on_output = on_output
        items.append((name, f[3], r, _clock() if timed else None))
        i += 1
    return i


cdef inline void _be64(char* p, uint64_t v) noexcept nogil:
    cdef int k
    for k in range(8):
        p[7 - k] = <char>(v & 0xff)
        v >>= 8


cdef bytes _msg_key(uint64_t mbid, uint8_t lane, uint64_t mid):
    """``layout.MSG_KEY.pack(mbid, lane, mid)``: 17 bytes, big-endian."""
    cdef bytes k = PyBytes_FromStringAndSize(NULL, 17)
    cdef char* p = PyBytes_AS_STRING(k)
    _be64(p, mbid)
    p[8] = <char>lane
    _be64(p + 9, mid)
    return k


cdef bytes _plain_value(uint64_t create_s, bytes payload):
    """``layout.plain_head(create_s) + payload``: flags 0, create time u32 little-endian."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    cdef bytes v = PyBytes_FromStringAndSize(NULL, 5 + n)
    cdef char* p = PyBytes_AS_STRING(v)
    cdef uint64_t s = create_s & 0xffffffff
    p[0] = 0
    p[1] = <char>(s & 0xff)
    p[2] = <char>((s >> 8) & 0xff)
    p[3] = <char>((s >> 16) & 0xff)
    p[4] = <char>((s >> 24) & 0xff)
    memcpy(p + 5, PyBytes_AS_STRING(payload), n)
    return v


def write_sends(svc, txn, list items):
    """See ``send_py.write_sends``."""
    cdef uint64_t now = <uint64_t>(_wall() * 1000)
    cdef uint64_t sec = now // 1000
    cdef dict boxes = {}
    cdef dict first_id = {}
    cdef list out = []
    cdef tuple it
    cdef object nameb, box = None, cur_name = None, mbid_obj = None, payload, ttl
    cdef uint64_t mbid = 0, next_id = 0, last_sec = 0, mid
    dep = DepthDelta()
    mput = txn.cursor(db=svc.d_msgs).put
    d_time = svc.d_time
    for it in items:
        nameb = it[0]
        if cur_name is None or nameb != cur_name:
            if box is not None:
                box.next_id = next_id
                box.last_sec = last_sec
            cur_name = nameb
            box = boxes.get(nameb, _MISSING)
            if box is _MISSING:
                box = boxes[nameb] = svc._box_or_none(txn, nameb, now)
                if box is not None:
                    first_id[box.mbid] = box.next_id
            if box is not None:
                mbid_obj = box.mbid
                mbid = mbid_obj
                next_id = box.next_id
                last_sec = box.last_sec
        if box is None:
            out.append(None)
            continue
        if len(it) == 4:  # no options: normal lane, plain value
            mid = next_id
            next_id += 1
            if sec > last_sec:
                txn.put(BE_U64x2.pack(mbid, sec), u64(mid), db=d_time)
                last_sec = sec
            payload = it[1]
            if type(payload) is not bytes:
                payload = bytes(payload)
            mput(_msg_key(mbid, NORMAL, mid), _plain_value(last_sec, <bytes>payload))
            out.append((mbid_obj, mid))
        else:
            box.next_id = next_id
            box.last_sec = last_sec
            ttl = it[2]
            mid_obj = svc._put_message(txn, box, it[1], now, now + ttl * 1000 if ttl else 0,
                                       it[3], it[4], it[5], it[6], it[7], dep)
            next_id = box.next_id
            last_sec = box.last_sec
            dep.add(mbid_obj, NORMAL, -1)  # (the plain count below includes this id)
            out.append((mbid_obj, mid_obj))
    if box is not None:
        box.next_id = next_id
        box.last_sec = last_sec
    d_boxes = svc.d_boxes
    for nameb, box in boxes.items():
        if box is not None:
            txn.put(nameb, box.encode(), db=d_boxes)
            # every id taken in this segment is one stored message
            dep.add(box.mbid, NORMAL, box.next_id - first_id[box.mbid])
    dep.apply(txn, svc.d_depth)
    return out


def answer_sends(list items, results, visible, dict counts, list observers):
    """See ``send_py.answer_sends``."""
    cdef bint whole = isinstance(results, BaseException)
    cdef Py_ssize_t ok = 0, bad = 0, internal = 0, k, n = len(items)
    cdef object last = None, r, respond
    cdef tuple it, rt
    cdef Responder owed = None
    cdef bytes body
    if whole:
        if not isinstance(results, Mq9Error):  # (e.g. StorageFull: an answer, not a fault)
            log.error("mq9 command MSG.SEND failed", exc_info=results)
        results = [results] * n
    for k in range(n):
        it = <tuple>items[k]
        r = results[k]
        try:
            respond = it[len(it) - 2]  # (no negative indices: wraparound is off)
            if type(r) is tuple:
                rt = <tuple>r
                if last is None or rt[0] != last:
                    last = rt[0]
                    visible(last)
                ok += 1
                body = _id_reply(<uint64_t>rt[1])
            elif r is None:
                bad += 1
                body = error_reply(f"mailbox {it[0].decode('utf-8', 'replace')} does not exist")
            elif isinstance(r, Mq9Error):
                bad += 1
                body = error_reply((<object>r).text)
            else:
                internal += 1
                if not whole:
                    log.error("mq9 command MSG.SEND failed", exc_info=r)
                body = error_reply(f"internal error: {r}")
            if type(respond) is Responder:
                if (<Responder>respond).queue(body):
                    owed = <Responder>respond
            else:
                respond(body)
        except Exception:  # noqa: BLE001 - one failed reply must not cost the others theirs
            log.exception("MSG.SEND reply failed")
    if owed is not None:
        owed.on_output()
    if observers:
        _observe(items, results, observers)
    if ok:
        counts[("MSG.SEND", "ok")] = counts.get(("MSG.SEND", "ok"), 0) + ok
    if bad:
        counts[("MSG.SEND", "error")] = counts.get(("MSG.SEND", "error"), 0) + bad
    if internal:
        counts[("MSG.SEND", "internal")] = counts.get(("MSG.SEND", "internal"), 0) + internal
