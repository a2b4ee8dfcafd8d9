# cython: language_level=3
"""The FETCH/ACK hot loops, compiled.  Same API, same bytes and same LMDB writes as
``mq9fast.mailbox.scan_py`` (read its docstring for the contract).

What is compiled: the lane walk of a FETCH and the encoding of every option-less message
(``{"msg_id":..,"payload":"<base64>",...}``) straight from LMDB's buffer into one output buffer
(base64 included), the lease/batch records, the batch-record parse of an ACK, the watermark walk
and the lease release.  Messages with options (TTL, headers, key, tags) and ``raw`` payloads are
encoded by the Python ``encode_message``; they are not the hot path.

Invariants:
* a buffer pointer taken from a key/value object is used only while that object is referenced
  (and, for LMDB's zero-copy memoryviews, inside the caller's transaction);
* the output buffer is freed on every exit (``try/finally``).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, strlen

from .encode import encode_message
from .layout import payload_len

COMPILED = True


cdef extern from "Python.h":
    bint PyMemoryView_Check(object o)
    Py_buffer* PyMemoryView_GET_BUFFER(object o)
    bint PyByteArray_Check(object o)
    char* PyByteArray_AS_STRING(object o)
    Py_ssize_t PyByteArray_GET_SIZE(object o)


cdef const char* _B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
cdef const char* _PRIO[3]
_PRIO[0] = b',"priority":"critical","header":null,"create_time":'
_PRIO[1] = b',"priority":"urgent","header":null,"create_time":'
_PRIO[2] = b',"priority":"normal","header":null,"create_time":'
cdef Py_ssize_t _PRIO_LEN[3]
_PRIO_LEN[0] = strlen(_PRIO[0])
_PRIO_LEN[1] = strlen(_PRIO[1])
_PRIO_LEN[2] = strlen(_PRIO[2])
cdef bytes _HEAD = b'{"error":"","messages":['


cdef inline const uint8_t* _ptr(object o, Py_ssize_t* n) except NULL:
    """Start and length of a bytes / memoryview / bytearray without copying."""
    cdef Py_buffer* b
    if PyMemoryView_Check(o):
        b = PyMemoryView_GET_BUFFER(o)
        n[0] = b.len
        return <const uint8_t*>b.buf
    if PyBytes_Check(o):
        n[0] = PyBytes_GET_SIZE(o)
        return <const uint8_t*>PyBytes_AS_STRING(o)
    if PyByteArray_Check(o):
        n[0] = PyByteArray_GET_SIZE(o)
        return <const uint8_t*>PyByteArray_AS_STRING(o)
    raise TypeError(f"expected a bytes-like LMDB key or value, got {type(o).__name__}")


cdef inline uint64_t _be64(const uint8_t* p) noexcept nogil:
    return ((<uint64_t>p[0] << 56) | (<uint64_t>p[1] << 48) | (<uint64_t>p[2] << 40)
            | (<uint64_t>p[3] << 32) | (<uint64_t>p[4] << 24) | (<uint64_t>p[5] << 16)
            | (<uint64_t>p[6] << 8) | <uint64_t>p[7])


cdef inline uint64_t _le64(const uint8_t* p) noexcept nogil:
    return ((<uint64_t>p[7] << 56) | (<uint64_t>p[6] << 48) | (<uint64_t>p[5] << 40)
            | (<uint64_t>p[4] << 32) | (<uint64_t>p[3] << 24) | (<uint64_t>p[2] << 16)
            | (<uint64_t>p[1] << 8) | <uint64_t>p[0])


cdef inline void _put_be64(uint8_t* p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[7 - i] = <uint8_t>(v & 0xff)
        v >>= 8


cdef inline void _put_le64(uint8_t* p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(v & 0xff)
        v >>= 8


cdef inline bytes _key16(const uint8_t* gp, uint64_t mid):
    cdef uint8_t k[16]
    memcpy(k, gp, 8)
    _put_be64(k + 8, mid)
    return PyBytes_FromStringAndSize(<char*>k, 16)


# -- growable output buffer ------------------------------------------------------------------------
cdef struct Out:
    char* p
    Py_ssize_t n
    Py_ssize_t cap


cdef int _reserve(Out* o, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap
    cdef char* p
    if o.n + extra <= o.cap:
        return 0
    cap = o.cap * 2 if o.cap else 4096
    while cap < o.n + extra:
        cap *= 2
    p = <char*>realloc(o.p, cap)
    if p == NULL:
        raise MemoryError()
    o.p = p
    o.cap = cap
    return 0


cdef inline int _put(Out* o, const char* s, Py_ssize_t n) except -1:
    _reserve(o, n)
    memcpy(o.p + o.n, s, n)
    o.n += n
    return 0


cdef inline void _lit(Out* o, const char* s, Py_ssize_t n) noexcept:
    """Append with room already reserved."""
    memcpy(o.p + o.n, s, n)
    o.n += n


cdef inline int _uint(Out* o, uint64_t v) except -1:
    cdef char tmp[24]
    cdef int i = 24
    if v == 0:
        return _put(o, b"0", 1)
    while v:
        i -= 1
        tmp[i] = <char>(48 + v % 10)
        v //= 10
    return _put(o, tmp + i, 24 - i)


cdef int _b64(Out* o, const uint8_t* s, Py_ssize_t n) except -1:
    cdef Py_ssize_t i = 0
    cdef char* d
    cdef uint32_t t
    _reserve(o, ((n + 2) // 3) * 4)
    d = o.p + o.n
    while i + 3 <= n:
        t = (<uint32_t>s[i] << 16) | (<uint32_t>s[i + 1] << 8) | s[i + 2]
        d[0] = _B64[(t >> 18) & 63]
        d[1] = _B64[(t >> 12) & 63]
        d[2] = _B64[(t >> 6) & 63]
        d[3] = _B64[t & 63]
        d += 4
        i += 3
    if n - i == 1:
        t = <uint32_t>s[i] << 16
        d[0] = _B64[(t >> 18) & 63]
        d[1] = _B64[(t >> 12) & 63]
        d[2] = b'='
        d[3] = b'='
        d += 4
    elif n - i == 2:
        t = (<uint32_t>s[i] << 16) | (<uint32_t>s[i + 1] << 8)
        d[0] = _B64[(t >> 18) & 63]
        d[1] = _B64[(t >> 12) & 63]
        d[2] = _B64[(t >> 6) & 63]
        d[3] = b'='
        d += 4
    o.n = d - o.p
    return 0


cdef int _put_obj(Out* o, bytes b) except -1:
    return _put(o, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


# -- API -------------------------------------------------------------------------------------------
def collect(cur, mbid, pos, Py_ssize_t limit, bint raw, long long now_ms, long long budget, gp, gc, lc):
    cdef Out o
    cdef Py_ssize_t n = 0, kn, vn, ln
    cdef const uint8_t* kp
    cdef const uint8_t* vp
    cdef const uint8_t* lp
    cdef const uint8_t* gpp = NULL
    cdef uint8_t prefix[9]
    cdef uint8_t start[17]
    cdef uint64_t mid, exp
    cdef unsigned long long wake = 0
    cdef long long size
    cdef uint32_t count, create_s
    cdef int lane
    cdef bint group = gp is not None
    cdef bint done = False
    cdef uint64_t c_mbid = mbid
    cdef list picked = [] if group else None
    cdef object k, v, kv, ik, lv
    cdef Py_ssize_t gpn
    if limit <= 0:
        return None, 0, 0, picked
    if group:
        gpp = _ptr(gp, &gpn)
        if gpn != 8:
            raise ValueError("group prefix must be 8 bytes")
    o.p = NULL
    o.n = 0
    o.cap = 0
    try:
        _put_obj(&o, _HEAD)
        for lane in range(3):
            _put_be64(prefix, c_mbid)
            prefix[8] = <uint8_t>lane
            memcpy(start, prefix, 9)
            _put_be64(start + 9, <uint64_t>pos[lane])
            if not cur.set_range(PyBytes_FromStringAndSize(<char*>start, 17)):
                break
            for kv in cur:
                k = (<tuple>kv)[0]
                v = (<tuple>kv)[1]
                kp = _ptr(k, &kn)
                if kn < 17 or memcmp(kp, prefix, 9) != 0:
                    break
                vp = _ptr(v, &vn)
                if vn < 5:
                    continue  # not a message value (cannot happen)
                if vp[0] & 1:
                    if vn < 13 or <long long>_le64(vp + 5) <= now_ms:
                        continue  # expired message: invisible
                mid = _be64(kp + 9)
                count = 0
                if group:
                    ik = _key16(gpp, mid)
                    if gc is not None and gc.set_key(ik):
                        continue
                    if lc is not None and lc.set_key(ik):
                        lv = lc.value()
                        lp = _ptr(lv, &ln)
                        if ln >= 21:
                            exp = _le64(lp)
                            count = lp[16] | (lp[17] << 8) | (lp[18] << 16) | (<uint32_t>lp[19] << 24)
                            if <long long>exp > now_ms:
                                if not wake or exp < wake:
                                    wake = exp
                                continue
                if vp[0] == 0:
                    size = vn - 5
                else:
                    size = payload_len(v)
                if n and size > budget:
                    done = True
                    break
                budget -= size
                if n:
                    _put(&o, b",", 1)
                if vp[0] == 0 and not raw:
                    create_s = vp[1] | (vp[2] << 8) | (vp[3] << 16) | (<uint32_t>vp[4] << 24)
                    # one reservation for the whole object: fixed parts + 3 numbers + base64
                    _reserve(&o, 160 + ((vn - 5 + 2) // 3) * 4)
                    _lit(&o, b'{"msg_id":', 10)
                    _uint(&o, mid)
                    _lit(&o, b',"payload":"', 12)
                    _b64(&o, vp + 5, vn - 5)
                    _lit(&o, b'"', 1)
                    _lit(&o, _PRIO[lane], _PRIO_LEN[lane])
                    _uint(&o, create_s)
                    if group:
                        _lit(&o, b',"redelivered":', 15)
                        _uint(&o, count)
                    _lit(&o, b"}", 1)
                else:
                    _put_obj(&o, encode_message(mid, lane, v, raw, count if group else None))
                n += 1
                if group:
                    picked.append((lane, mid, count))
                if n >= limit:
                    done = True
                    break
            if done:
                break
        if not n:
            return None, 0, wake, picked
        _put(&o, b"]}", 2)
        return PyBytes_FromStringAndSize(o.p, o.n), n, wake, picked
    finally:
        free(o.p)


def lease_batch(put, gp, list picked, unsigned long long lease_until, unsigned long long batch_id):
    cdef Py_ssize_t gpn, i = 0, m = len(picked)
    cdef const uint8_t* gpp = _ptr(gp, &gpn)
    cdef uint8_t val[21]
    cdef uint64_t mid
    cdef uint32_t count
    cdef int lane
    cdef object t
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 8 + 9 * m)
    cdef uint8_t* b = <uint8_t*>PyBytes_AS_STRING(out)
    if gpn != 8:
        raise ValueError("group prefix must be 8 bytes")
    _put_le64(b, lease_until)
    _put_le64(val, lease_until)
    _put_le64(val + 8, batch_id)
    for t in picked:
        lane = (<tuple>t)[0]
        mid = (<tuple>t)[1]
        count = (<tuple>t)[2] + 1
        val[16] = count & 0xff
        val[17] = (count >> 8) & 0xff
        val[18] = (count >> 16) & 0xff
        val[19] = (count >> 24) & 0xff
        val[20] = <uint8_t>lane
        put(_key16(gpp, mid), PyBytes_FromStringAndSize(<char*>val, 21))
        b[8 + 9 * i] = <uint8_t>lane
        _put_be64(b + 9 + 9 * i, mid)
        i += 1
    return out


def batch_upto(bv, unsigned long long msg_id):
    cdef Py_ssize_t n, off, i, count, found = -1
    cdef const uint8_t* p = _ptr(bv, &n)
    cdef list out
    count = (n - 8) // 9 if n >= 8 else 0
    for i in range(count):
        if _be64(p + 8 + 9 * i + 1) == msg_id:
            found = i
            break
    if found < 0:
        return [], False
    out = []
    for i in range(found + 1):
        off = 8 + 9 * i
        out.append((p[off], _be64(p + off + 1)))
    return out, found == count - 1


def advance(cur, prefix, unsigned long long pos, set acked, gc, gp):
    cdef Py_ssize_t pn, kn, gpn = 0
    cdef const uint8_t* pp = _ptr(prefix, &pn)
    cdef const uint8_t* gpp = NULL
    cdef const uint8_t* kp
    cdef uint8_t start[17]
    cdef uint64_t mid, last = 0
    cdef bint seen = False
    cdef object k, m
    cdef Py_ssize_t na = len(acked)
    if pn != 9:
        raise ValueError("lane prefix must be 9 bytes")
    if na and min(acked) == pos and max(acked) - pos + 1 == na:
        # pos, pos + 1, ... all confirmed now (a whole FETCH batch): no need to read them
        pos += na
        acked.clear()
        if gc is None:
            return pos
    if gc is not None:
        gpp = _ptr(gp, &gpn)
        if gpn != 8:
            raise ValueError("group prefix must be 8 bytes")
    memcpy(start, pp, 9)
    _put_be64(start + 9, pos)
    if not cur.set_range(PyBytes_FromStringAndSize(<char*>start, 17)):
        return pos
    for k in cur.iternext(True, False):
        kp = _ptr(k, &kn)
        if kn < 17 or memcmp(kp, pp, 9) != 0:
            break
        mid = _be64(kp + 9)
        m = mid
        if m in acked:
            acked.discard(m)
        elif gc is not None and gc.set_key(_key16(gpp, mid)):
            gc.delete()
        else:
            return m
        last = mid
        seen = True
    if not seen:
        return pos
    return pos if pos > last + 1 else last + 1


def release(cur, gp, msg_ids):
    cdef Py_ssize_t gpn
    cdef const uint8_t* gpp = _ptr(gp, &gpn)
    cdef object mid
    if gpn != 8:
        raise ValueError("group prefix must be 8 bytes")
    for mid in msg_ids:
        if cur.set_key(_key16(gpp, <uint64_t>mid)):
            cur.delete()
