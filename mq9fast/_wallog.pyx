# cython: language_level=3
"""The operation log of one write transaction (compiled; twin: ``wallog_py.py``).

A write transaction of a ``--fsync always`` store records every put and delete here as it makes
them; the bytes become the body of its write-ahead log record (``mq9fast/wal.py``).  One operation
is ``kind u8, name length u8, key length u32le, value length u32le`` followed by the database name,
the key and the value.

Invariants:
* ``buf[0:n]`` holds whole operations only; ``cap >= n``; ``buf`` is NULL iff ``cap == 0``;
* ``ops`` counts the operations in ``buf``;
* nothing here touches LMDB except ``LoggedCursor``, which logs a put only after LMDB accepted it.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy

DEF HEAD = 10

PUT = 1
DELETE = 2


cdef class OpLog:
    cdef char* buf
    cdef Py_ssize_t n
    cdef Py_ssize_t cap
    cdef public Py_ssize_t ops

    def __dealloc__(self):
        if self.buf != NULL:
            PyMem_Free(self.buf)

    cdef int _grow(self, Py_ssize_t need) except -1:
        cdef Py_ssize_t cap = self.cap * 2 if self.cap else 4096
        while cap < self.n + need:
            cap *= 2
        cdef char* p = <char*>PyMem_Realloc(self.buf, cap)
        if p == NULL:
            raise MemoryError()
        self.buf = p
        self.cap = cap
        return 0

    cdef int _add(self, int kind, const char* name, Py_ssize_t nl, const char* key, Py_ssize_t kl,
                  const char* val, Py_ssize_t vl) except -1:
        if nl > 255 or kl > 0xFFFFFFFF or vl > 0xFFFFFFFF:
            raise ValueError("log operation too large")
        cdef Py_ssize_t need = HEAD + nl + kl + vl
        if self.n + need > self.cap:
            self._grow(need)
        cdef uint8_t* p = <uint8_t*>(self.buf + self.n)
        cdef uint32_t k32 = <uint32_t>kl
        cdef uint32_t v32 = <uint32_t>vl
        p[0] = <uint8_t>kind
        p[1] = <uint8_t>nl
        p[2] = k32 & 0xFF
        p[3] = (k32 >> 8) & 0xFF
        p[4] = (k32 >> 16) & 0xFF
        p[5] = (k32 >> 24) & 0xFF
        p[6] = v32 & 0xFF
        p[7] = (v32 >> 8) & 0xFF
        p[8] = (v32 >> 16) & 0xFF
        p[9] = (v32 >> 24) & 0xFF
        p += HEAD
        if nl:
            memcpy(p, name, nl)
            p += nl
        if kl:
            memcpy(p, key, kl)
            p += kl
        if vl:
            memcpy(p, val, vl)
        self.n += need
        self.ops += 1
        return 0

    def add(self, int kind, bytes name, key, value):
        """Log one operation (key and value: bytes or any contiguous buffer)."""
        if type(key) is not bytes:
            key = bytes(key)
        if type(value) is not bytes:
            value = bytes(value)
        self._add(kind, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name),
                  PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                  PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))

    def extend(self, OpLog other):
        """Append ``other``'s operations (a child transaction that committed)."""
        if other.n:
            if self.n + other.n > self.cap:
                self._grow(other.n)
            memcpy(self.buf + self.n, other.buf, other.n)
            self.n += other.n
            self.ops += other.ops

    def getvalue(self):
        return PyBytes_FromStringAndSize(self.buf, self.n)

    def __len__(self):
        return self.n


cdef class LoggedCursor:
    """A write transaction's cursor that logs what it writes; reads pass straight through.

    ``put`` is the hot path of MSG.SEND (one per stored message), so it is compiled; the rarer
    writing methods log through ``OpLog.add``."""
    cdef object _c
    cdef OpLog _log
    cdef bytes _name

    def __init__(self, cursor, OpLog log, bytes name):
        self._c = cursor
        self._log = log
        self._name = name

    def put(self, key, value, dupdata=True, overwrite=True, append=False):
        done = self._c.put(key, value, dupdata, overwrite, append)
        if done:
            if type(key) is not bytes:
                key = bytes(key)
            if type(value) is not bytes:
                value = bytes(value)
            self._log._add(PUT, PyBytes_AS_STRING(self._name), PyBytes_GET_SIZE(self._name),
                           PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                           PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
        return done

    def putmulti(self, items, dupdata=True, overwrite=True, append=False):
        if not overwrite:
            raise ValueError("LoggedCursor.putmulti supports overwrite=True only")
        items = [(bytes(k), bytes(v)) for k, v in items]
        out = self._c.putmulti(items, dupdata=dupdata, overwrite=True, append=append)
        for k, v in items:
            self._log.add(PUT, self._name, k, v)
        return out

    def replace(self, key, value):
        old = self._c.replace(key, value)
        self._log.add(PUT, self._name, key, value)
        return old

    def delete(self, dupdata=False):
        key = self._c.key()
        done = self._c.delete(dupdata=dupdata)
        if done:
            self._log.add(DELETE, self._name, key, b"")
        return done

    def pop(self, key):
        old = self._c.pop(key)
        if old is not None:
            self._log.add(DELETE, self._name, key, b"")
        return old

    def __getattr__(self, attr):  # reads and positioning
        return getattr(self._c, attr)

    def __iter__(self):
        return iter(self._c)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._c.close()
