"""The FETCH/ACK hot loops in pure Python: the twin of the compiled ``_scan`` module.

Both modules have the same API and produce the same bytes and the same LMDB writes; ``service.py``
uses the compiled one unless ``MQ9FAST_PURE_PYTHON`` is set (or it is not built), and the tests run
on both.  The functions work on py-lmdb cursors handed in by the caller, which owns the
transactions:

``collect(cur, mbid, pos, limit, raw, now_ms, budget, gp, gc, lc)``
    Walk the lanes of mailbox ``mbid`` (critical, urgent, normal; lane ``i`` from id ``pos[i]``)
    with ``cur`` (a cursor of ``mb.msgs``) and encode up to ``limit`` visible messages (unexpired;
    at least one, then while their payloads fit ``budget`` bytes).  Group mode (``gp`` = the
    group's 8-byte id prefix): ids with an ACK record (looked up with ``gc``, a cursor of
    ``mb.gacks``, or never when it is None) or an unexpired lease (``lc``, a cursor of the
    volatile ``leases`` DB, or None) are skipped, and each message carries ``redelivered``.
    Returns ``(reply, n, wake, picked)``: the whole FETCH reply (None when ``n`` is 0), the number
    of messages, the earliest unexpired lease expiry that was skipped (0 = none) and, in group
    mode, ``[(lane, msg_id, deliveries so far), ...]`` in FETCH order (None otherwise).
``lease_batch(put, gp, picked, lease_until, batch_id)``
    Write the lease of every picked message with ``put(key, value)`` (a cursor's ``put``) and
    return the batch record value (``BATCH_HEAD`` + ``LANE_ID`` per entry).
``batch_upto(bv, msg_id)``
    ``([(lane, msg_id), ...], is_last)``: the entries of batch record ``bv`` up to and including
    ``msg_id`` (``([], False)`` when it is not in the batch).
``advance(cur, prefix, pos, acked, gc, gp)``
    Move a lane watermark from ``pos`` over acknowledged messages: ``cur`` is a cursor of
    ``mb.msgs`` in the write transaction, ``prefix`` the lane's 9-byte key prefix, ``acked`` a
    set of ids confirmed by this ACK (ids passed over are removed from it); an id passed over
    that is not in ``acked`` must have an ACK record, found and deleted with ``gc`` (None: none
    exist).  Returns the new watermark: the first existing id that is not acknowledged, else
    one past the last id passed over (``pos`` if none).  When ``acked`` is exactly ``pos, pos +
    1, ..., pos + n - 1`` (an ACK of a whole batch from the watermark on) the messages are not
    read: the watermark jumps to ``pos + n`` (ids among them that do not exist in this lane are
    passed over too) and the walk goes on from there only if ``gc`` is given.
``release(cur, gp, msg_ids)``
    Delete the leases of ``msg_ids`` with ``cur`` (a cursor of ``leases``).
"""
from __future__ import annotations

from .encode import encode_message, messages_reply
from .layout import BATCH_HEAD, BE_U64, LANE_ID, LANES, LEASE, lane_prefix, payload_len, u64, value_expire

COMPILED = False


def collect(cur, mbid: int, pos, limit: int, raw: bool, now_ms: int, budget: int, gp, gc, lc):
    parts: list[bytes] = []
    wake = 0
    group = gp is not None
    picked: list = []
    if limit <= 0:
        return None, 0, wake, picked if group else None
    unpack_k = BE_U64.unpack_from
    done = False
    for lane in LANES:
        prefix = lane_prefix(mbid, lane)
        if not cur.set_range(prefix + u64(pos[lane])):
            break
        for k, v in cur:
            if k[:9] != prefix:
                break
            if v[0] & 1 and value_expire(v) <= now_ms:
                continue  # expired message: invisible
            mid = unpack_k(k, 9)[0]
            count = None
            if group:
                ik = gp + u64(mid)
                count = 0
                if gc is not None and gc.set_key(ik):
                    continue
                if lc is not None and lc.set_key(ik):
                    exp, _b, count, _l = LEASE.unpack(lc.value())
                    if exp > now_ms:
                        if not wake or exp < wake:
                            wake = exp
                        continue
            size = payload_len(v)
            if parts and size > budget:
                done = True
                break
            budget -= size
            parts.append(encode_message(mid, lane, v, raw, count))
            if group:
                picked.append((lane, mid, count))
            if len(parts) >= limit:
                done = True
                break
        if done:
            break
    out = picked if group else None
    if not parts:
        return None, 0, wake, out
    return messages_reply(parts), len(parts), wake, out


def lease_batch(put, gp: bytes, picked, lease_until: int, batch_id: int) -> bytes:
    pack = LEASE.pack
    for lane, mid, count in picked:
        put(gp + u64(mid), pack(lease_until, batch_id, count + 1, lane))
    return BATCH_HEAD.pack(lease_until) + b"".join([LANE_ID.pack(lane, mid) for lane, mid, _ in picked])


def batch_upto(bv, msg_id: int):
    ents = [LANE_ID.unpack_from(bv, off) for off in range(BATCH_HEAD.size, len(bv) - 8, 9)]
    for i, (_lane, mid) in enumerate(ents):
        if mid == msg_id:
            return ents[:i + 1], i == len(ents) - 1
    return [], False


def advance(cur, prefix: bytes, pos: int, acked: set, gc, gp: bytes) -> int:
    if acked and min(acked) == pos and max(acked) - pos + 1 == len(acked):
        # pos, pos + 1, ... all confirmed now (a whole FETCH batch): no need to read them
        pos += len(acked)
        acked.clear()
        if gc is None:
            return pos
    if not cur.set_range(prefix + u64(pos)):
        return pos
    last = None
    for k in cur.iternext(keys=True, values=False):
        if k[:9] != prefix:
            break
        mid = BE_U64.unpack_from(k, 9)[0]
        if mid in acked:
            acked.discard(mid)
        elif gc is not None and gc.set_key(gp + u64(mid)):
            gc.delete()
        else:
            return mid
        last = mid
    return pos if last is None else max(pos, last + 1)


def release(cur, gp: bytes, msg_ids) -> None:
    for mid in msg_ids:
        if cur.set_key(gp + u64(mid)):
            cur.delete()
