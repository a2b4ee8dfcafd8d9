"""Statistics and listings of the mailbox engine (what ``/metrics``, ``/varz`` and the admin API read).

Everything here is cheap enough for a Prometheus scrape every few seconds whatever the number of
stored messages: nothing walks ``mb.msgs``.

Stored-message counts: DB ``mb.depth``
======================================
``mbid(8)`` -> ``critical, urgent, normal`` (i64le each): the messages stored in that mailbox
incarnation, by lane; key ``u64(0)`` (mbids start at 1) holds the totals of all mailboxes.  Every
writer function that stores or deletes messages collects its changes in a ``DepthDelta`` and
applies them at its end, in the same (child) transaction, so the counts commit or roll back with
the messages (one read and one write per touched mailbox, plus the totals, per transaction; the
bulk SEND path counts a segment's plain SENDs from the mailbox's id counter, with no work per
message).  A message whose TTL passed counts until the sweeper removes it (it is scheduled at
that expiry); an expired mailbox's messages count until it is purged.  A data directory written
before the counters existed has no totals record: ``init_depth`` counts it once at start-up (a
key-only walk), and until then deltas are not applied (the count includes them).

Outstanding leases and redeliveries come from the volatile environment (``volatile.py``:
``Volatile.outstanding`` walks only unexpired batches; ``Volatile.redeliveries`` is a counter
shared by every worker).  Mailboxes, groups and delayed messages are LMDB entry counts
(``txn.stat``); mailboxes exclude the expired ones that the sweeper has not removed yet, found by
a walk of ``mb.mbexp`` up to now (they are gone within about a second of their expiry).
"""
from __future__ import annotations

import struct
import time
from typing import Any

from .layout import BE_U64, BE_U64x2, BOX, GROUP, LANE_NAMES, Box, enc_str, u64

DEPTH = struct.Struct("<qqq")
TOTAL_KEY = u64(0)
_ZERO = (0, 0, 0)


def _now_ms() -> int:
    return int(time.time() * 1000)


# ----------------------------------------------------------------------------- counters (writer)
class DepthDelta:
    """Changes of the stored-message counts made by one writer function."""

    __slots__ = ("rows", "purged")

    def __init__(self) -> None:
        self.rows: dict[int, list[int]] = {}
        self.purged: list[int] = []

    def add(self, mbid: int, lane: int, n: int = 1) -> None:
        row = self.rows.get(mbid)
        if row is None:
            row = self.rows[mbid] = [0, 0, 0]
        row[lane] += n

    def gone(self, mbid: int) -> None:
        """Mailbox incarnation ``mbid`` has been purged completely: drop its record."""
        self.purged.append(mbid)

    def apply(self, txn, db) -> None:
        """Write the changes (writer thread, in the transaction that made them)."""
        if not self.rows and not self.purged:
            return
        raw = txn.get(TOTAL_KEY, db=db)
        if raw is None:
            return  # not counted yet: init_depth will count these messages
        total = list(DEPTH.unpack(raw))
        for mbid, row in self.rows.items():
            if row == [0, 0, 0]:
                continue
            key = u64(mbid)
            old = txn.get(key, db=db)
            cur = list(DEPTH.unpack(old)) if old is not None else [0, 0, 0]
            for i in (0, 1, 2):
                cur[i] += row[i]
                total[i] += row[i]
            txn.put(key, DEPTH.pack(*cur), db=db)
        for mbid in self.purged:
            key = u64(mbid)
            old = txn.get(key, db=db)
            if old is not None:
                for i, n in enumerate(DEPTH.unpack(old)):
                    total[i] -= n
                txn.delete(key, db=db)
        txn.put(TOTAL_KEY, DEPTH.pack(*total), db=db)


def init_depth(txn, d_msgs, d_depth) -> bool:
    """Writer thread: count every stored message unless the totals exist; True if it counted."""
    if txn.get(TOTAL_KEY, db=d_depth) is not None:
        return False
    txn.drop(d_depth, delete=False)
    rows: dict[int, list[int]] = {}
    total = [0, 0, 0]
    unpack = BE_U64.unpack_from
    for key in txn.cursor(db=d_msgs).iternext(keys=True, values=False):
        mbid = unpack(key, 0)[0]
        lane = key[8]
        row = rows.get(mbid)
        if row is None:
            row = rows[mbid] = [0, 0, 0]
        row[lane] += 1
        total[lane] += 1
    for mbid, row in rows.items():
        txn.put(u64(mbid), DEPTH.pack(*row), db=d_depth)
    txn.put(TOTAL_KEY, DEPTH.pack(*total), db=d_depth)
    return True


def _depth(txn, db, mbid: int) -> tuple[int, int, int]:
    raw = txn.get(u64(mbid), db=db)
    if raw is None:
        return _ZERO
    c, u, n = DEPTH.unpack(raw)
    return max(c, 0), max(u, 0), max(n, 0)


# ----------------------------------------------------------------------------- readers (event loop)
def expired_unswept(txn, svc, now_ms: int) -> int:
    """Mailboxes still in ``mb.boxes`` although expired (the sweeper has not purged them yet)."""
    n = 0
    cur = txn.cursor(db=svc.d_mbexp)
    if not cur.first():
        return 0
    for key, name in cur:
        expire, mbid = BE_U64x2.unpack(key)
        if expire > now_ms:
            break
        rec = txn.get(bytes(name), db=svc.d_boxes)
        if rec is not None and BOX.unpack_from(rec, 0)[0] == mbid:
            n += 1
    return n


def live_mailboxes(txn, svc, now_ms: int) -> int:
    return int(txn.stat(svc.d_boxes)["entries"]) - expired_unswept(txn, svc, now_ms)


def stats(svc) -> dict[str, Any]:
    """``MailboxService.stats()`` (see its docstring)."""
    now = _now_ms()
    with svc.store.read() as txn:
        mailboxes = live_mailboxes(txn, svc, now)
        groups = int(txn.stat(svc.d_groups)["entries"])
        delayed = int(txn.stat(svc.d_delayed)["entries"])
        lanes = _depth(txn, svc.d_depth, 0)
    leases = redeliveries = 0
    vol = svc.vol
    if vol is not None:
        leases = vol.outstanding(now)[0]
        redeliveries = vol.redeliveries()
    return {
        "mailboxes": mailboxes,
        "messages_by_priority": dict(zip(LANE_NAMES, lanes)),
        "messages_stored": sum(lanes),
        "delayed": delayed,
        "groups": groups,
        "leases": leases,
        "redeliveries": redeliveries,
        "waiting_fetches": svc.parked,
    }


def _group_name(raw: bytes) -> str:
    if len(raw) == 33 and raw[0] == 0xFF:  # a name longer than 400 bytes is kept as its sha256
        return "sha256:" + raw[1:].hex()
    return raw.decode("utf-8", "replace")


def _groups(txn, svc, mbid: int, leased: dict[int, int]) -> list[dict[str, Any]]:
    prefix = u64(mbid)
    out = []
    cur = txn.cursor(db=svc.d_groups)
    if not cur.set_range(prefix):
        return out
    for key, value in cur:
        key = bytes(key)
        if key[:8] != prefix:
            break
        gid, c, u, n = GROUP.unpack_from(value, 0)
        out.append({"name": _group_name(key[8:]),
                    "committed": {"critical": c, "urgent": u, "normal": n},
                    "leased": leased.get(gid, 0)})
    return out


def _item(txn, svc, box: Box, leased: dict[int, int]) -> dict[str, Any]:
    depth = dict(zip(LANE_NAMES, _depth(txn, svc.d_depth, box.mbid)))
    return {
        "address": box.name.decode("utf-8", "replace"),
        "ttl": box.ttl,
        "create_time": box.create_ms // 1000,
        "expire_at": box.expire_ms // 1000 if box.expire_ms else None,
        "desc": box.desc.decode("utf-8", "replace"),
        "next_id": box.next_id,
        "depth": depth,
        "total": sum(depth.values()),
        "groups": _groups(txn, svc, box.mbid, leased),
    }


def list_mailboxes(svc, offset: int, limit: int, prefix: str | None = None
                   ) -> tuple[int, list[dict[str, Any]]]:
    """``MailboxService.list_mailboxes()``: live mailboxes in name order.

    Without a prefix the total is ``live_mailboxes`` and the walk stops after the page; with one,
    the walk covers the names with that prefix (the total counts them).
    """
    now = _now_ms()
    pfx = enc_str(prefix) if prefix else b""
    leased = svc.vol.outstanding(now)[1] if svc.vol is not None else {}
    items: list[dict[str, Any]] = []
    seen = 0
    with svc.store.read() as txn:
        total = None if pfx else live_mailboxes(txn, svc, now)
        cur = txn.cursor(db=svc.d_boxes)
        found = cur.set_range(pfx) if pfx else cur.first()
        while found:
            name = bytes(cur.key())
            if not name.startswith(pfx):
                break
            value = cur.value()
            expire = BOX.unpack_from(value, 0)[2]
            if expire == 0 or now < expire:
                if seen >= offset and len(items) < limit:
                    items.append(_item(txn, svc, Box.decode(name, value), leased))
                seen += 1
                if total is not None and len(items) >= limit:
                    break
            found = cur.next()
    return (seen if total is None else total), items
