"""The three per-message loops of the bulk ``MSG.SEND`` path, in pure Python.  ``_send`` is the
compiled twin (same API, same LMDB writes, same reply bytes); ``hot.send`` picks one.

A SEND crosses them in order:

1. ``take_sends`` (event loop, straight from the parsed frames of one read): consecutive PUB
   frames whose subject is a known SEND address (``names``: subject -> address bytes, filled by
   ``Control`` when it first classifies a subject) become items ``(name, payload, respond, t0)``.
   Anything else - an HPUB (options in headers), an unknown subject - stops the run; the caller
   dispatches that frame the ordinary way.
2. ``write_sends`` (storage writer thread, inside the group-commit transaction): store a segment
   of items; per item ``(mbid, msg_id)`` or None (no such mailbox).  Each mailbox record is read
   once and written once per segment.
3. ``answer_sends`` (event loop, after the commit is durable): reply to every item, wake the
   long-polls of the mailboxes written, count the outcomes, feed the latency observers.

Items: ``(name, payload, respond, t0)`` for a SEND without options (normal lane, stored as
``plain_head + payload``), or ``(name, lane, ttl, header block, key, tags JSON, tags, payload,
respond, t0)``.  ``t0`` is the ``perf_counter()`` of arrival when latency observers are set (else
None); ``respond(body)`` answers the requester.
"""
from __future__ import annotations

import logging
import time

from ..control import Mq9Error, error_reply
from .layout import BE_U64x2, MSG_KEY, NORMAL, plain_head, u64
from .stats import DepthDelta

COMPILED = False
OP_PUB = 1
_OK = b"+OK\r\n"
_MISSING = object()
log = logging.getLogger("mq9fast.mailbox")


def take_sends(frames: list, start: int, conn, router, names: dict, items: list, on_output,
               timed: bool, responder) -> int:
    """Append an item per SEND frame from ``start`` on; return the index of the first frame that
    is not one (``start`` when none is).  ``responder(router, conn, reply, on_output)`` builds
    each item's ``respond``."""
    i, n = start, len(frames)
    if not conn.authed or conn.closed:
        return i
    clock = time.perf_counter
    while i < n:
        f = frames[i]
        if f[0] != OP_PUB:
            break
        name = names.get(f[1])
        if name is None:
            break
        conn.msgs_in += 1
        if conn.verbose:
            conn.write(_OK)
        items.append((name, f[3], responder(router, conn, f[2], on_output), clock() if timed else None))
        i += 1
    return i


def write_sends(svc, txn, items: list) -> list:
    """Writer thread: store ``items`` (see the module docstring); ``svc`` is the
    ``MailboxService`` (its DB handles, ``_box_or_none`` and ``_put_message``)."""
    now = int(time.time() * 1000)
    sec = now // 1000
    boxes: dict = {}
    first_id: dict = {}  # mbid -> next_id when the segment began (to count the plain SENDs)
    dep = DepthDelta()
    out: list = []
    append = out.append
    mput = txn.cursor(db=svc.d_msgs).put
    pack_key = MSG_KEY.pack
    cur_name = None
    box = None
    head = b""
    for it in items:
        nameb = it[0]
        if nameb != cur_name:
            cur_name = nameb
            box = boxes.get(nameb, _MISSING)
            if box is _MISSING:
                box = boxes[nameb] = svc._box_or_none(txn, nameb, now)
                if box is not None:
                    first_id[box.mbid] = box.next_id
            head = b""
        if box is None:
            append(None)
            continue
        if len(it) == 4:  # no header block, key, tags, TTL: normal lane, plain value
            mid = box.next_id
            box.next_id = mid + 1
            if sec > box.last_sec:
                txn.put(BE_U64x2.pack(box.mbid, sec), u64(mid), db=svc.d_time)
                box.last_sec = sec
                head = b""
            if not head:
                head = plain_head(box.last_sec)
            mput(pack_key(box.mbid, NORMAL, mid), head + it[1])
        else:
            ttl = it[2]
            mid = svc._put_message(txn, box, it[1], now, now + ttl * 1000 if ttl else 0,
                                   it[3], it[4], it[5], it[6], it[7], dep)
            dep.add(box.mbid, NORMAL, -1)  # (the plain count below includes this id)
            head = b""
        append((box.mbid, mid))
    d_boxes = svc.d_boxes
    for nameb, box in boxes.items():
        if box is not None:
            txn.put(nameb, box.encode(), db=d_boxes)
            # every id taken in this segment is one stored message
            dep.add(box.mbid, NORMAL, box.next_id - first_id[box.mbid])
    dep.apply(txn, svc.d_depth)
    return out


def answer_sends(items: list, results, visible, counts: dict, observers: list) -> None:
    """Event loop, after the commit: answer ``items`` from ``results`` (``write_sends``' list,
    or the exception that failed the whole commit); ``visible(mbid)`` once per run of a
    mailbox."""
    whole = isinstance(results, BaseException)
    if whole:
        if not isinstance(results, Mq9Error):  # (e.g. StorageFull: an answer, not a fault)
            log.error("mq9 command MSG.SEND failed", exc_info=results)
        results = [results] * len(items)
    ok = bad = internal = 0
    last = -1
    for it, r in zip(items, results):
        try:
            if r.__class__ is tuple:
                if r[0] != last:
                    last = r[0]
                    visible(last)
                ok += 1
                it[-2](b'{"error":"","msg_id":%d}' % r[1])
            elif r is None:
                bad += 1
                it[-2](error_reply(f"mailbox {it[0].decode('utf-8', 'replace')} does not exist"))
            elif isinstance(r, Mq9Error):
                bad += 1
                it[-2](error_reply(r.text))
            else:
                internal += 1
                if not whole:
                    log.error("mq9 command MSG.SEND failed", exc_info=r)
                it[-2](error_reply(f"internal error: {r}"))
        except Exception:  # noqa: BLE001 - one failed reply must not cost the others theirs
            log.exception("MSG.SEND reply failed")
    if observers:
        _observe(items, results, observers)
    if ok:
        counts[("MSG.SEND", "ok")] = counts.get(("MSG.SEND", "ok"), 0) + ok
    if bad:
        counts[("MSG.SEND", "error")] = counts.get(("MSG.SEND", "error"), 0) + bad
    if internal:
        counts[("MSG.SEND", "internal")] = counts.get(("MSG.SEND", "internal"), 0) + internal


def _observe(items: list, results: list, observers: list) -> None:
    """Arrival-to-reply latency of every timed item (as ``Control``'s ``_timed`` wrapper), in one
    ``ob.many(command, outcome, seconds)`` call per observer that has it."""
    now = time.perf_counter()
    dts = [now - it[-1] for it in items if it[-1] is not None]
    if not dts:
        return
    for ob in observers:
        try:
            many = getattr(ob, "many", None)
            if many is not None:
                many("MSG.SEND", "", dts)
            else:
                for dt in dts:
                    ob("MSG.SEND", "", dt)
        except Exception:  # noqa: BLE001 - metrics never break a reply
            pass
