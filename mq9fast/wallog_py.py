"""The operation log of one write transaction: pure-Python twin of ``_wallog.pyx`` (same API, same
bytes).  One operation is ``kind u8, name length u8, key length u32le, value length u32le``, then
the database name, the key and the value."""
from __future__ import annotations

import struct

PUT = 1
DELETE = 2
_HEAD = struct.Struct("<BBII").pack


class OpLog:
    __slots__ = ("_buf", "ops")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.ops = 0

    def add(self, kind: int, name: bytes, key, value) -> None:
        """Log one operation (key and value: bytes or any contiguous buffer)."""
        key = bytes(key)
        value = bytes(value)
        if len(name) > 255:
            raise ValueError("log operation too large")
        self._buf += _HEAD(kind, len(name), len(key), len(value))
        self._buf += name
        self._buf += key
        self._buf += value
        self.ops += 1

    def extend(self, other: "OpLog") -> None:
        """Append ``other``'s operations (a child transaction that committed)."""
        self._buf += other._buf
        self.ops += other.ops

    def getvalue(self) -> bytes:
        return bytes(self._buf)

    def __len__(self) -> int:
        return len(self._buf)


class LoggedCursor:
    """A write transaction's cursor that logs what it writes; reads pass straight through."""

    __slots__ = ("_c", "_log", "_name")

    def __init__(self, cursor, log: OpLog, name: bytes) -> None:
        self._c = cursor
        self._log = log
        self._name = name

    def put(self, key, value, dupdata=True, overwrite=True, append=False):
        done = self._c.put(key, value, dupdata, overwrite, append)
        if done:
            self._log.add(PUT, self._name, key, value)
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
