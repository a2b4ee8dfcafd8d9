"""Byte layouts of every LMDB key and value the mailbox engine writes (see the package docstring).

Keys are big-endian so LMDB's lexicographic order is numeric order; values are little-endian.
Everything here is pure functions on bytes / memoryviews, usable from the event loop (reads) and
from the storage writer thread (writes) alike.
"""
from __future__ import annotations

import hashlib
import json
import struct

U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
#: ids and times are kept below this so that they stay exact in JavaScript numbers
SAFE_MAX = (1 << 53) - 1

# -- lanes -----------------------------------------------------------------------------------------
CRITICAL, URGENT, NORMAL = 0, 1, 2
LANES = (CRITICAL, URGENT, NORMAL)  # FETCH order
LANE_NAMES = ("critical", "urgent", "normal")
LANE_NAMES_B = (b"critical", b"urgent", b"normal")
LANE_BY_NAME = {"critical": CRITICAL, "urgent": URGENT, "normal": NORMAL}

# -- keys ------------------------------------------------------------------------------------------
BE_U64 = struct.Struct(">Q")
BE_U64x2 = struct.Struct(">QQ")
MSG_KEY = struct.Struct(">QBQ")          # mbid, lane, msg_id               (17 bytes)
LANE_PREFIX = struct.Struct(">QB")       # mbid, lane                       (9 bytes)
MSGEXP_KEY = struct.Struct(">QQBQ")      # expire_ms, mbid, lane, msg_id    (25 bytes)
LANE_ID = struct.Struct(">BQ")           # lane, msg_id (key index value, batch entries)

#: longest user string (mq9-key, tag, group name) stored verbatim inside a key; longer ones are
#: replaced by 0xff + sha256 (0xff never occurs in UTF-8, so the two forms cannot collide).
MAX_INLINE = 400


def u64(n: int) -> bytes:
    return BE_U64.pack(n)


def key_part(raw: bytes) -> bytes:
    if len(raw) <= MAX_INLINE:
        return raw
    return b"\xff" + hashlib.sha256(raw).digest()


def msg_key(mbid: int, lane: int, msg_id: int) -> bytes:
    return MSG_KEY.pack(mbid, lane, msg_id)


def lane_prefix(mbid: int, lane: int) -> bytes:
    return LANE_PREFIX.pack(mbid, lane)


def keyidx_key(mbid: int, key: bytes) -> bytes:
    return BE_U64.pack(mbid) + key_part(key)


def tag_prefix(mbid: int, tag: bytes) -> bytes:
    t = key_part(tag)
    return BE_U64.pack(mbid) + struct.pack(">H", len(t)) + t


def group_key(mbid: int, group: bytes) -> bytes:
    return BE_U64.pack(mbid) + key_part(group)


def enc_str(s: str) -> bytes:
    """UTF-8 that never fails (JSON strings may carry lone surrogates)."""
    return s.encode("utf-8", "surrogatepass")


# -- mailbox record (DB mb.boxes, key = name) ------------------------------------------------------
#   mbid, create_ms, expire_ms (0 = never), ttl_s, next_id, last_sec, then desc (UTF-8)
BOX = struct.Struct("<QQQQQQ")


class Box:
    __slots__ = ("name", "mbid", "create_ms", "expire_ms", "ttl", "next_id", "last_sec", "desc")

    def __init__(self, name: bytes, mbid: int, create_ms: int, expire_ms: int, ttl: int,
                 next_id: int, last_sec: int, desc: bytes) -> None:
        self.name = name
        self.mbid = mbid
        self.create_ms = create_ms
        self.expire_ms = expire_ms
        self.ttl = ttl
        self.next_id = next_id
        self.last_sec = last_sec
        self.desc = desc

    @classmethod
    def decode(cls, name: bytes, raw) -> "Box":
        mbid, create_ms, expire_ms, ttl, next_id, last_sec = BOX.unpack_from(raw, 0)
        return cls(name, mbid, create_ms, expire_ms, ttl, next_id, last_sec, bytes(raw[BOX.size:]))

    def encode(self) -> bytes:
        return BOX.pack(self.mbid, self.create_ms, self.expire_ms, self.ttl, self.next_id,
                        self.last_sec) + self.desc

    def live(self, now_ms: int) -> bool:
        return self.expire_ms == 0 or now_ms < self.expire_ms


# -- group record (DB mb.groups, key = mbid | group name) ------------------------------------------
#   gid, committed next position of the critical, urgent and normal lanes
GROUP = struct.Struct("<QQQQ")

# -- message value (DB mb.msgs) --------------------------------------------------------------------
#   byte 0      flags: 1 = expire_ms, 2 = header block, 4 = key, 8 = tags
#   bytes 1..4  create_time (u32 seconds)
#   [u64 expire_ms] [u32 len + header block] [u16 len + key] [u16 len + tags JSON array]
#   payload = the rest (so an optionless message costs 5 bytes over its payload)
F_EXPIRE, F_HDR, F_KEY, F_TAGS = 1, 2, 4, 8
_HEAD = struct.Struct("<BI")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")


def encode_value(create_s: int, expire_ms: int, hdr: bytes | None, key: bytes | None,
                 tags_json: bytes | None, payload: bytes) -> bytes:
    flags = 0
    parts = [b""]
    if expire_ms:
        flags |= F_EXPIRE
        parts.append(_U64.pack(expire_ms))
    if hdr is not None:
        flags |= F_HDR
        parts.append(_U32.pack(len(hdr)))
        parts.append(hdr)
    if key is not None:
        flags |= F_KEY
        parts.append(_U16.pack(len(key)))
        parts.append(key)
    if tags_json is not None:
        flags |= F_TAGS
        parts.append(_U16.pack(len(tags_json)))
        parts.append(tags_json)
    parts[0] = _HEAD.pack(flags, create_s)
    parts.append(payload)
    return b"".join(parts)


def plain_head(create_s: int) -> bytes:
    """The 5-byte head of a message value without options (flags 0): ``head + payload``."""
    return _HEAD.pack(0, create_s)


def set_create_time(value: bytes, create_s: int) -> bytes:
    return value[:1] + _U32.pack(create_s) + value[5:]


def value_expire(v) -> int:
    """expire_ms of a stored message value (0 = none); cheap, used while scanning."""
    if v[0] & F_EXPIRE:
        return _U64.unpack_from(v, 5)[0]
    return 0


def decode_value(v):
    """-> (create_s, expire_ms, header|None, key|None, tags_json|None, payload); slices of ``v``."""
    flags, create_s = _HEAD.unpack_from(v, 0)
    off = 5
    expire_ms = 0
    hdr = key = tags = None
    if flags:
        if flags & F_EXPIRE:
            expire_ms = _U64.unpack_from(v, off)[0]
            off += 8
        if flags & F_HDR:
            n = _U32.unpack_from(v, off)[0]
            hdr = v[off + 4:off + 4 + n]
            off += 4 + n
        if flags & F_KEY:
            n = _U16.unpack_from(v, off)[0]
            key = v[off + 2:off + 2 + n]
            off += 2 + n
        if flags & F_TAGS:
            n = _U16.unpack_from(v, off)[0]
            tags = v[off + 2:off + 2 + n]
            off += 2 + n
    return create_s, expire_ms, hdr, key, tags, v[off:]


def payload_len(v) -> int:
    """Payload size of a stored message value (the FETCH budget counts payload bytes only)."""
    if v[0] == 0:
        return len(v) - 5
    return len(decode_value(v)[5])


def tags_of(tags_json) -> list[str]:
    return json.loads(bytes(tags_json)) if tags_json is not None else []


# -- delayed message (DB mb.delayed, key = due_ms | seq) -------------------------------------------
#   mbid u64, lane u8, name length u16, name, then a message value with create_time 0
DELAYED_HEAD = struct.Struct("<QBH")

# -- volatile env: lease (key = gid | msg_id) and batch (key = gid | batch_id) ---------------------
LEASE = struct.Struct("<QQIB")    # lease expiry_ms, batch_id, deliveries so far, lane
BATCH_HEAD = struct.Struct("<Q")  # batch lease expiry_ms, then LANE_ID entries in FETCH order
