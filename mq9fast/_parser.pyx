# cython: language_level=3
"""NATS client-protocol frame parser, compiled.  Same API and frames as ``mq9fast.parser_py``.

The parser slices the read buffer: a frame that lies wholly inside one ``feed`` is cut out of it
with one copy per item (subject, payload); only a control line or payload that straddles two
reads is carried over (``_line`` / ``_body``) and joined with the next read.

Invariants:
* ``_pending`` is not None exactly while a PUB/HPUB head has been parsed and its payload (plus
  CRLF, ``_need`` bytes in all) has not fully arrived; ``_body`` holds what has.
* ``_line`` is non-empty only when the previous read ended inside a control line; it is never
  longer than the applicable line limit (checked before it is kept).
* once ``dead`` is set (after a protocol error frame) ``feed`` returns ``[]``.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from libc.string cimport memchr

DEF CR = 13
DEF LF = 10

OP_PUB = 1
OP_HPUB = 2
OP_SUB = 3
OP_UNSUB = 4
OP_PING = 5
OP_PONG = 6
OP_CONNECT = 7
OP_INFO = 8
OP_OK = 9
OP_ERR = 10
OP_PROTO_ERROR = 11
OP_MSG = 12
OP_HMSG = 13

ERR_UNKNOWN_OP = "Unknown Protocol Operation"
ERR_PARSER = "Parser Error"
ERR_CONTROL_LINE = "Maximum Control Line Exceeded"
ERR_MAX_PAYLOAD = "Maximum Payload Violation"

MAX_CONNECT_LINE = 64 * 1024

cdef enum:
    V_NONE = 0
    V_PUB = 1
    V_HPUB = 2
    V_SUB = 3
    V_UNSUB = 4
    V_PING = 5
    V_PONG = 6
    V_CONNECT = 7
    V_INFO = 8
    V_OK = 9
    V_ERR = 10
    V_EMPTY = 11
    V_UNKNOWN = 12
    V_MSG = 13
    V_HMSG = 14

DEF MAX_ARGS = 5


cdef inline unsigned char _up(unsigned char c) noexcept nogil:
    if c >= 97 and c <= 122:
        return c - 32
    return c


cdef inline bint _is_ws(unsigned char c) noexcept nogil:
    return c == 32 or c == 9


cdef int _verb(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Classify the verb p[0:n] case-insensitively."""
    if n == 3:
        if _up(p[0]) == b'P' and _up(p[1]) == b'U' and _up(p[2]) == b'B':
            return V_PUB
        if _up(p[0]) == b'S' and _up(p[1]) == b'U' and _up(p[2]) == b'B':
            return V_SUB
        if p[0] == b'+' and _up(p[1]) == b'O' and _up(p[2]) == b'K':
            return V_OK
        if _up(p[0]) == b'M' and _up(p[1]) == b'S' and _up(p[2]) == b'G':
            return V_MSG
    elif n == 4:
        if _up(p[0]) == b'H' and _up(p[1]) == b'P' and _up(p[2]) == b'U' and _up(p[3]) == b'B':
            return V_HPUB
        if _up(p[0]) == b'P' and _up(p[2]) == b'N' and _up(p[3]) == b'G':
            if _up(p[1]) == b'I':
                return V_PING
            if _up(p[1]) == b'O':
                return V_PONG
        if _up(p[0]) == b'I' and _up(p[1]) == b'N' and _up(p[2]) == b'F' and _up(p[3]) == b'O':
            return V_INFO
        if p[0] == b'-' and _up(p[1]) == b'E' and _up(p[2]) == b'R' and _up(p[3]) == b'R':
            return V_ERR
        if _up(p[0]) == b'H' and _up(p[1]) == b'M' and _up(p[2]) == b'S' and _up(p[3]) == b'G':
            return V_HMSG
    elif n == 5:
        if (_up(p[0]) == b'U' and _up(p[1]) == b'N' and _up(p[2]) == b'S' and _up(p[3]) == b'U'
                and _up(p[4]) == b'B'):
            return V_UNSUB
    elif n == 7:
        if (_up(p[0]) == b'C' and _up(p[1]) == b'O' and _up(p[2]) == b'N' and _up(p[3]) == b'N'
                and _up(p[4]) == b'E' and _up(p[5]) == b'C' and _up(p[6]) == b'T'):
            return V_CONNECT
    elif n == 0:
        return V_EMPTY
    return V_UNKNOWN


cdef long long _size(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Decimal byte count p[0:n] (at most 10 digits), or -1."""
    cdef long long v = 0
    cdef Py_ssize_t i
    if n <= 0 or n > 10:
        return -1
    for i in range(n):
        if p[i] < 48 or p[i] > 57:
            return -1
        v = v * 10 + (p[i] - 48)
    return v


cdef class Parser:
    cdef public Py_ssize_t max_control_line
    cdef public Py_ssize_t max_payload
    cdef public Py_ssize_t max_connect_line
    cdef public bint dead
    cdef bytes _line
    cdef object _pending          # (op, subject, reply, hdr_len, sid) or None
    cdef Py_ssize_t _need
    cdef bytearray _body

    def __init__(self, Py_ssize_t max_control_line=4096, Py_ssize_t max_payload=1048576,
                 Py_ssize_t max_connect_line=MAX_CONNECT_LINE):
        self.max_control_line = max_control_line
        self.max_payload = max_payload
        self.max_connect_line = max_connect_line
        self._line = b""
        self._pending = None
        self._need = 0
        self._body = bytearray()
        self.dead = False

    cdef list _fail(self, list frames, str text):
        self.dead = True
        self._line = b""
        self._pending = None
        del self._body[:]
        frames.append((OP_PROTO_ERROR, text))
        return frames

    def feed(self, bytes data not None):
        cdef list frames = []
        cdef const unsigned char* buf
        cdef const unsigned char* nlp
        cdef Py_ssize_t n, pos, take, have, end, nl, limit
        cdef object body, err
        cdef tuple head
        if self.dead:
            return frames
        if PyBytes_GET_SIZE(self._line):
            data = self._line + data
            self._line = b""
        buf = <const unsigned char*>PyBytes_AS_STRING(data)
        n = PyBytes_GET_SIZE(data)
        pos = 0
        while pos < n:
            if self._pending is not None:
                have = len(self._body)
                if have == 0 and n - pos >= self._need:
                    # the whole payload is in this read: one copy, straight out of the buffer
                    if buf[pos + self._need - 2] != CR or buf[pos + self._need - 1] != LF:
                        return self._fail(frames, ERR_PARSER)
                    body = PyBytes_FromStringAndSize(<const char*>buf + pos, self._need - 2)
                    pos += self._need
                else:
                    # the payload straddles reads: accumulate, copy once more when complete
                    take = self._need - have
                    if take > n - pos:
                        take = n - pos
                    self._body += data[pos:pos + take]
                    pos += take
                    if len(self._body) < self._need:
                        break
                    if self._body[self._need - 2] != CR or self._body[self._need - 1] != LF:
                        return self._fail(frames, ERR_PARSER)
                    body = bytes(self._body[:self._need - 2])
                    del self._body[:]
                head = <tuple>self._pending
                self._pending = None
                if head[0] == OP_PUB:
                    frames.append((OP_PUB, head[1], head[2], body))
                elif head[0] == OP_HPUB:
                    frames.append((OP_HPUB, head[1], head[2], head[3], body))
                elif head[0] == OP_MSG:
                    frames.append((OP_MSG, head[1], head[4], head[2], body))
                else:
                    frames.append((OP_HMSG, head[1], head[4], head[2], head[3], body))
                continue
            nlp = <const unsigned char*>memchr(buf + pos, LF, n - pos)
            if nlp == NULL:
                limit = self.max_connect_line if _starts_long(buf + pos, n - pos) else self.max_control_line
                if n - pos > limit + 1:  # +1: the CR of a line exactly at the limit
                    return self._fail(frames, ERR_CONTROL_LINE)
                self._line = data[pos:]
                break
            nl = nlp - buf
            end = nl - 1 if (nl > pos and buf[nl - 1] == CR) else nl
            err = self._control(data, buf, pos, end, frames)
            pos = nl + 1
            if err is not None:
                return self._fail(frames, err)
        return frames

    cdef object _control(self, bytes data, const unsigned char* buf, Py_ssize_t start,
                         Py_ssize_t end, list frames):
        """Parse the control line buf[start:end]; return an error text or None."""
        cdef Py_ssize_t s = start, e, i, nargs = 0
        cdef Py_ssize_t a_start[MAX_ARGS]
        cdef Py_ssize_t a_end[MAX_ARGS]
        cdef int verb, base, nsizes
        cdef long long size, hdr
        cdef Py_ssize_t length = end - start
        while s < end and _is_ws(buf[s]):
            s += 1
        e = s
        while e < end and not _is_ws(buf[e]):
            e += 1
        verb = _verb(buf + s, e - s)
        if verb == V_CONNECT or verb == V_INFO:
            if length > self.max_connect_line:
                return ERR_CONTROL_LINE
            i = e
            while i < end and _is_ws(buf[i]):
                i += 1
            while end > i and _is_ws(buf[end - 1]):
                end -= 1
            frames.append((OP_CONNECT if verb == V_CONNECT else OP_INFO, data[i:end]))
            return None
        if length > self.max_control_line:
            return ERR_CONTROL_LINE
        # split the arguments (at most MAX_ARGS; one more means a malformed line)
        i = e
        while True:
            while i < end and _is_ws(buf[i]):
                i += 1
            if i >= end:
                break
            if nargs == MAX_ARGS:
                nargs += 1
                break
            a_start[nargs] = i
            while i < end and not _is_ws(buf[i]):
                i += 1
            a_end[nargs] = i
            nargs += 1
        if verb == V_PUB or verb == V_HPUB or verb == V_MSG or verb == V_HMSG:
            # <subject> [<sid>] [<reply>] [<header size>] <total size>: MSG/HMSG carry a sid
            # after the subject, the H-forms a header size before the total
            base = 2 if verb == V_MSG or verb == V_HMSG else 1
            nsizes = 2 if verb == V_HPUB or verb == V_HMSG else 1
            if nargs == base + nsizes:
                reply = None
            elif nargs == base + nsizes + 1:
                reply = data[a_start[base]:a_end[base]]
            else:
                return ERR_PARSER
            size = _size(buf + a_start[nargs - 1], a_end[nargs - 1] - a_start[nargs - 1])
            hdr = _size(buf + a_start[nargs - 2], a_end[nargs - 2] - a_start[nargs - 2]) \
                if nsizes == 2 else 0
            if hdr < 0 or size < 0 or hdr > size:
                return ERR_PARSER
            if size > self.max_payload:
                return ERR_MAX_PAYLOAD
            op = (OP_PUB if verb == V_PUB else OP_HPUB if verb == V_HPUB
                  else OP_MSG if verb == V_MSG else OP_HMSG)
            self._pending = (op, data[a_start[0]:a_end[0]], reply, hdr,
                             data[a_start[1]:a_end[1]] if base == 2 else None)
            self._need = size + 2
            return None
        if verb == V_SUB:
            if nargs == 2:
                frames.append((OP_SUB, data[a_start[0]:a_end[0]], None, data[a_start[1]:a_end[1]]))
            elif nargs == 3:
                frames.append((OP_SUB, data[a_start[0]:a_end[0]], data[a_start[1]:a_end[1]],
                               data[a_start[2]:a_end[2]]))
            else:
                return ERR_PARSER
            return None
        if verb == V_UNSUB:
            if nargs == 1:
                frames.append((OP_UNSUB, data[a_start[0]:a_end[0]], None))
            elif nargs == 2:
                size = _size(buf + a_start[1], a_end[1] - a_start[1])
                if size < 0:
                    return ERR_PARSER
                frames.append((OP_UNSUB, data[a_start[0]:a_end[0]], size))
            else:
                return ERR_PARSER
            return None
        if verb == V_PING:
            frames.append((OP_PING,))
            return None
        if verb == V_PONG:
            frames.append((OP_PONG,))
            return None
        if verb == V_OK:
            frames.append((OP_OK,))
            return None
        if verb == V_ERR:
            i = e
            while i < end and _is_ws(buf[i]):
                i += 1
            while end > i and _is_ws(buf[end - 1]):
                end -= 1
            frames.append((OP_ERR, data[i:end]))
            return None
        if verb == V_EMPTY:
            return None
        return ERR_UNKNOWN_OP


cdef bint _starts_long(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """True if a partial line starts with CONNECT or INFO (which get the longer limit)."""
    cdef Py_ssize_t i = 0
    while i < n and _is_ws(p[i]):
        i += 1
    if n - i >= 4 and _up(p[i]) == b'I' and _up(p[i+1]) == b'N' and _up(p[i+2]) == b'F' and _up(p[i+3]) == b'O':
        return True
    if n - i >= 7 and _up(p[i]) == b'C' and _up(p[i+1]) == b'O' and _up(p[i+2]) == b'N' \
            and _up(p[i+3]) == b'N' and _up(p[i+4]) == b'E' and _up(p[i+5]) == b'C' and _up(p[i+6]) == b'T':
        return True
    return False
