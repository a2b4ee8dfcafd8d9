"""JSON encoding of message objects (PROTOCOL.md §4.7), straight from LMDB's zero-copy buffers.

The payload memoryview is base64-encoded by ``binascii`` without an intermediate copy; the reply is
assembled as a list of byte strings joined once.  Standard fields come first (``msg_id``,
``payload``, ``priority``, ``header``, ``create_time``), then the extensions that apply
(``headers``, ``key``, ``tags``, ``expire_at``, ``redelivered``).
"""
from __future__ import annotations

import json
from binascii import b2a_base64

from .layout import LANE_NAMES_B, decode_value
from .requests import header_pairs

_DEC = [str(i).encode() for i in range(256)]
_PRIO = [b',"priority":"' + n + b'","header":' for n in LANE_NAMES_B]


def _json_str(raw) -> bytes:
    return json.dumps(bytes(raw).decode("utf-8", "replace"), ensure_ascii=False).encode()


def encode_payload(payload, raw: bool) -> bytes:
    if raw:
        return _json_str(payload)
    return b'"' + b2a_base64(payload, newline=False) + b'"'


_HDR_CACHE: dict[bytes, tuple[bytes, bytes]] = {}
_HDR_CACHE_MAX = 4096
_HDR_CACHE_ITEM_MAX = 1024


def header_json(hdr) -> tuple[bytes, bytes]:
    """(``header`` byte-array JSON, ``headers`` object JSON) of a stored header block.

    Memoised: most messages carry one of a few header blocks (``mq9-priority: urgent``...).
    """
    block = bytes(hdr)
    hit = _HDR_CACHE.get(block)
    if hit is not None:
        return hit
    array = b"[" + b",".join([_DEC[c] for c in block]) + b"]"
    pairs = header_pairs(block)
    if pairs is None:  # not UTF-8: show it lossily
        pairs = header_pairs(block.decode("utf-8", "replace").encode())
    obj = json.dumps(dict(pairs or ()), ensure_ascii=False, separators=(",", ":")).encode()
    hit = (array, obj)
    if len(block) <= _HDR_CACHE_ITEM_MAX:
        if len(_HDR_CACHE) >= _HDR_CACHE_MAX:
            _HDR_CACHE.clear()
        _HDR_CACHE[block] = hit
    return hit


def encode_message(msg_id: int, lane: int, v, raw: bool, redelivered: int | None = None) -> bytes:
    """One message object from its stored value ``v`` (a buffer valid for this call)."""
    if v[0] == 0:  # fast path: no TTL, headers, key or tags
        payload = v[5:]
        create_s = v[1] | (v[2] << 8) | (v[3] << 16) | (v[4] << 24)
        parts = [b'{"msg_id":', _DEC[msg_id] if msg_id < 256 else b"%d" % msg_id,
                 b',"payload":', encode_payload(payload, raw), _PRIO[lane], b'null,"create_time":',
                 b"%d" % create_s]
    else:
        create_s, expire_ms, hdr, key, tags, payload = decode_value(v)
        parts = [b'{"msg_id":', b"%d" % msg_id, b',"payload":', encode_payload(payload, raw),
                 _PRIO[lane]]
        if hdr is not None:
            hdr_array, hdr_object = header_json(hdr)
            parts.append(hdr_array)
        else:
            parts.append(b"null")
        parts.append(b',"create_time":')
        parts.append(b"%d" % create_s)
        if hdr is not None:
            parts.append(b',"headers":')
            parts.append(hdr_object)
        if key is not None:
            parts.append(b',"key":')
            parts.append(_json_str(key))
        if tags is not None:
            parts.append(b',"tags":')
            parts.append(bytes(tags))
        if expire_ms:
            parts.append(b',"expire_at":%d' % (expire_ms // 1000))
    if redelivered is not None:
        parts.append(b',"redelivered":%d' % redelivered)
    parts.append(b"}")
    return b"".join(parts)


def messages_reply(parts: list[bytes]) -> bytes:
    return b'{"error":"","messages":[' + b",".join(parts) + b"]}"


EMPTY_MESSAGES = b'{"error":"","messages":[]}'
