"""LMDB layout of the registry (all keys carry the tenant, always ``default`` for now).

=============== =============================================== ==========================================
database        key                                             value
=============== =============================================== ==========================================
``reg.agents``  ``default\\0<name>``                             record (below)
``reg.reports`` ``default\\0<name>``                             f64 report time + report JSON
``reg.mailbox`` ``default\\0<mailbox>\\0<name>``                  empty (agents by mailbox)
``reg.vec``     u64 BE vector id                                ``<tag>\\0`` u16 rows + float32[rows][dim]
``reg.log``     u64 BE sequence number                          ``default\\0<name>`` changed by that step
``reg.meta``    ``seq`` / ``next_vec``                          u64 LE counters
                ``index``                                       JSON about the published usearch file
=============== =============================================== ==========================================

A record is ``HDR`` (format version - its high bit ``OWN_SEARCH_KEYS`` set when the card has its
own top-level ``agent_id``, ``score`` or a non-string ``description``, which list-all returns in
place of the prefix's -, registration time, vector id or 0 while the card waits for its
embedding, and the lengths of the four parts) followed by: the body as registered (compact
JSON), the DISCOVER entry prefix (the body's members with ``name``/``agent_info``/``agent_id``/
``description`` set, without the braces, so replies are spliced without re-encoding), the
searchable text, and the mailbox.

Every change to ``reg.agents`` bumps ``seq`` and appends ``seq -> name`` to ``reg.log`` in the same
transaction; a process applies the log entries after the sequence number it last applied to
its in-memory indexes (or reloads everything when the log was trimmed past it).
"""
from __future__ import annotations

import struct
from typing import NamedTuple

TENANT = b"default\x00"
TENANT_ID = "default"

HDR = struct.Struct("<BdQIIII")
RECORD_VERSION = 1
OWN_SEARCH_KEYS = 0x80  # flag in the version byte (see the module docstring)
VEC_ID_OFFSET = 9  # offset of the u64 vector id inside HDR
U64BE = struct.Struct(">Q")
U64LE = struct.Struct("<Q")
F64 = struct.Struct("<d")

DB_AGENTS = "reg.agents"
DB_REPORTS = "reg.reports"
DB_MAILBOX = "reg.mailbox"
DB_VEC = "reg.vec"
DB_LOG = "reg.log"
DB_META = "reg.meta"

META_SEQ = b"seq"
META_NEXT_VEC = b"next_vec"
META_INDEX = b"index"

MAX_NAME_BYTES = 240  # LMDB keys are at most 511 bytes: tenant + mailbox + NUL + name must fit


def agent_key(name: str) -> bytes:
    return TENANT + name.encode()


def name_of_key(key) -> str:
    return bytes(key[len(TENANT):]).decode()


def mailbox_key(mailbox: str, name: str) -> bytes:
    return TENANT + mailbox.encode() + b"\x00" + name.encode()


def mailbox_prefix(mailbox: str) -> bytes:
    return TENANT + mailbox.encode() + b"\x00"


def pack_record(reg_time: float, vec_id: int, body: bytes, prefix: bytes, text: str,
                mailbox: str, own_search_keys: bool = False) -> bytes:
    t = text.encode()
    m = mailbox.encode()
    v = RECORD_VERSION | (OWN_SEARCH_KEYS if own_search_keys else 0)
    return b"".join((HDR.pack(v, reg_time, vec_id, len(body), len(prefix), len(t), len(m)),
                     body, prefix, t, m))


class Record(NamedTuple):
    reg_time: float
    vec_id: int
    body: bytes
    prefix: bytes
    text: str
    mailbox: str


def header(raw) -> tuple[float, int]:
    """(registration time, vector id) without copying the record."""
    _v, t, vid, _b, _p, _t, _m = HDR.unpack_from(raw, 0)
    return t, vid


def prefix_of(raw) -> bytes:
    _v, _t, _vid, lb, lp, _lt, _lm = HDR.unpack_from(raw, 0)
    start = HDR.size + lb
    return bytes(raw[start:start + lp])


def unpack_record(raw) -> Record:
    _v, t, vid, lb, lp, lt, lm = HDR.unpack_from(raw, 0)
    o = HDR.size
    body = bytes(raw[o:o + lb])
    o += lb
    prefix = bytes(raw[o:o + lp])
    o += lp
    text = bytes(raw[o:o + lt]).decode()
    o += lt
    mailbox = bytes(raw[o:o + lm]).decode()
    return Record(t, vid, body, prefix, text, mailbox)


def with_vec_id(raw, vec_id: int) -> bytes:
    buf = bytearray(raw)
    U64LE.pack_into(buf, VEC_ID_OFFSET, vec_id)
    return bytes(buf)


VEC_ROWS = struct.Struct("<H")


def pack_vec(tag: str, vecs) -> bytes:
    """``vecs``: (rows, dim) float32 - row 0 is the whole card, the rest its parts."""
    return tag.encode() + b"\x00" + VEC_ROWS.pack(len(vecs)) + vecs.astype("<f4").tobytes()


def unpack_vec(raw, tag: str, dim: int):
    """The (rows, dim) float32 vectors if they were made by embedder ``tag``, else None."""
    import numpy as np  # noqa: PLC0415

    t = tag.encode() + b"\x00"
    if bytes(raw[:len(t)]) != t:
        return None
    rows = VEC_ROWS.unpack_from(raw, len(t))[0]
    data = bytes(raw[len(t) + VEC_ROWS.size:])
    if rows < 1 or len(data) != rows * dim * 4:
        return None
    return np.frombuffer(data, dtype="<f4").reshape(rows, dim)


def get_u64(txn, db, key: bytes) -> int:
    raw = txn.get(key, db=db)
    return U64LE.unpack(bytes(raw))[0] if raw is not None else 0
