"""``MailboxService``: the mq9 mailbox commands on top of LMDB (layout: see the package docstring).

Threading: command methods run on the event loop.  Reads use short read transactions there
(zero-copy).  Every durable change is a function handed to ``Store.write``/``write_cb`` (or, for
SENDs, items handed to ``Store.submit`` and applied by ``_w_send_many``) and runs on the storage
writer thread inside the group-commit transaction; such functions (the ``_w_*`` methods and the
closures named ``fn``) touch only LMDB and their own arguments, never loop state.  Leases live in
the volatile environment (``volatile.py``) and are written on the loop thread.  The FETCH/ACK
inner loops are ``scan.*`` (``hot.py``: compiled ``_scan`` or the twin ``scan_py``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from operator import itemgetter

from ..control import Mq9Error, error_reply
from ..storage import StorageFull
from .encode import EMPTY_MESSAGES, encode_message, messages_reply
from .hot import scan, send
from .layout import (
    BE_U64, BE_U64x2, DELAYED_HEAD, GROUP, LANE_ID, LANES, LEASE, MSGEXP_KEY,
    NORMAL, U64_MAX, Box, decode_value, enc_str, encode_value, group_key, keyidx_key,
    lane_prefix, msg_key, tag_prefix, tags_of, u64, value_expire,
)
from .requests import AckRequest, CreateRequest, FetchRequest, QueryRequest, SendOptions, parse_msg_id_token
from .stats import DepthDelta, init_depth, list_mailboxes, stats
from .volatile import Volatile

log = logging.getLogger("mq9fast.mailbox")

#: FETCH payload budget per reply (PROTOCOL.md §5.4: 30 MiB, pre-encoding, at least one message)
FETCH_BUDGET = 30 * 1024 * 1024
#: the delayed-message timer re-reads LMDB at least this often (another process may have added one)
DELAY_POLL_S = 1.0
#: background sweep of expired mailboxes / messages at least this often (PROTOCOL.md §3.4: ≤ 60 s)
SWEEP_MAX_S = 30.0
#: keys deleted per sweep transaction (a huge expired mailbox is removed in several commits)
SWEEP_BUDGET = 20000
#: an expired lease is kept this long so that its delivery count survives until redelivery
LEASE_KEEP_MS = 3600 * 1000

_MISSING = object()
MAX_NAME = 128
#: cluster event announcing that messages became visible in some mailboxes
EVENT_VISIBLE = "mailbox.visible"
#: deliveries-so-far of a picked FETCH entry (lane, msg_id, deliveries)
_DELIVERIES = itemgetter(2)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _not_exist(name: str) -> Mq9Error:
    return Mq9Error(f"mailbox {name} does not exist")


class _SendBulk:
    """``Store.submit`` target of the bulk SEND path (see ``MailboxService.send_nowait``)."""

    __slots__ = ("apply", "done")
    grows = True  # SENDs add data: refused while the store is full (``Store.full``)

    def __init__(self, svc: "MailboxService") -> None:
        self.apply = svc._w_send_many
        self.done = svc._sent


class MailboxService:
    def __init__(self, store, config) -> None:
        self.store = store
        self.config = config
        self.raw_default = config.payload_encoding == "raw"
        self.default_ttl = int(config.mailbox_default_ttl)
        self.ack_wait_ms = max(1, int(float(config.ack_wait) * 1000))
        self.max_wait_cap_ms = int(config.max_wait_cap_ms)
        db = store.db
        self.d_meta = db("mb.meta")
        self.d_boxes = db("mb.boxes")
        self.d_msgs = db("mb.msgs")
        self.d_keys = db("mb.keys")
        self.d_tags = db("mb.tags")
        self.d_time = db("mb.time")
        self.d_groups = db("mb.groups")
        self.d_gacks = db("mb.gacks")
        self.d_delayed = db("mb.delayed")
        self.d_mbexp = db("mb.mbexp")
        self.d_msgexp = db("mb.msgexp")
        self.d_depth = db("mb.depth")
        self.vol: Volatile | None = None
        self.cluster = None  # set by attach_cluster() with --workers N
        self._events: set[int] = set()  # mailboxes to announce to the other workers this tick
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[int, set[asyncio.Future]] = {}
        self._tasks: list[asyncio.Task] = []
        self._delay_event: asyncio.Event | None = None
        self._closed = False
        self._send_bulk = _SendBulk(self)
        #: command counters shared with ``Control`` (``bind_counts``); the bulk SEND path counts here
        self.counts: dict = {}
        self.observers: list = []
        self.send_names: dict = {}
        # statistics
        self.delayed_moved = 0
        self.swept_mailboxes = 0
        self.swept_messages = 0
        self.parked = 0  # long-polling FETCHes waiting in this process

    # ================================================================ life cycle
    def attach_cluster(self, cluster) -> None:
        """``--workers N``: share long-poll wake-ups with the other workers (called before start).

        Stored messages are announced as event ``mailbox.visible`` (payload: mbids, u64be each);
        only the leader runs the delayed-message timer and the sweeper; leases are cleared only
        by the first worker of a new broker run (a restarted worker keeps the others' leases).
        """
        self.cluster = cluster
        cluster.on_event(EVENT_VISIBLE, self._on_visible_event)

    def _on_visible_event(self, payload: bytes) -> None:
        for off in range(0, len(payload) - 7, 8):
            self._notify(BE_U64.unpack_from(payload, off)[0])

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # a new broker run starts with no leases (fresh files); a worker restarted within the
        # run (same cluster key) keeps the other workers' leases
        run_key = (self.cluster.key if self.cluster is not None else secrets.token_hex(16)).encode()
        self.vol, _fresh = Volatile.open_for_run(os.path.join(self.store.path, "mailbox-volatile"),
                                                 run_key)
        self._delay_event = asyncio.Event()
        await self.store.write(self._w_init_depth)
        if self.cluster is None or self.cluster.is_leader:
            self._tasks = [self._loop.create_task(self._delay_loop(), name="mq9-delay"),
                           self._loop.create_task(self._sweep_loop(), name="mq9-sweep")]

    async def close(self) -> None:
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except BaseException:  # noqa: BLE001 - cancelled or already failed
                pass
        self._tasks = []
        for ws in self._waiters.values():
            for f in ws:
                _resolve(f)
        self._waiters.clear()
        if self.vol is not None:
            self.vol.close()
            self.vol = None

    # ================================================================ statistics (HTTP side port)
    def stats(self) -> dict:
        """Figures for ``/metrics`` and the dashboard; synchronous and cheap (no message scans).

        ``mailboxes``, ``messages_by_priority`` {critical, urgent, normal} (stored messages; one
        whose TTL passed counts until the sweeper removes it), ``messages_stored``, ``delayed``,
        ``groups``, ``leases`` (outstanding: leased to a group, not ACKed, not expired) and
        ``redeliveries`` (messages a group FETCH handed out again after their lease expired, a
        counter since the broker run started) describe the whole broker: they come from the
        shared LMDB environments, so every worker reports the same.  ``waiting_fetches``
        (long-polls parked now) is this process's only.  See ``stats.py``.
        """
        return stats(self)

    def list_mailboxes(self, offset: int, limit: int, prefix: str | None = None) -> tuple[int, list]:
        """Live mailboxes in name order from ``offset`` (``prefix``: names starting with it):
        ``(total, items)``, each item with address, ttl, create_time, expire_at, desc, next_id,
        depth {critical, urgent, normal} and groups [{name, committed, leased}].  See ``stats.py``."""
        return list_mailboxes(self, offset, limit, prefix)

    def _w_init_depth(self, txn) -> bool:
        """Writer thread: count the stored messages once when ``mb.depth`` has no totals yet
        (a data directory written before the counters existed)."""
        return init_depth(txn, self.d_msgs, self.d_depth)

    # ================================================================ helpers
    def _raw(self, encoding: str | None) -> bool:
        return self.raw_default if encoding is None else encoding == "raw"

    def _box(self, txn, nameb: bytes, now_ms: int, name: str) -> Box:
        if not 0 < len(nameb) <= MAX_NAME:  # cannot exist (and LMDB rejects such keys)
            raise _not_exist(name)
        rec = txn.get(nameb, db=self.d_boxes)
        if rec is None:
            raise _not_exist(name)
        box = Box.decode(nameb, rec)
        if box.expire_ms and now_ms >= box.expire_ms:
            raise _not_exist(name)
        return box

    def _box_or_none(self, txn, nameb: bytes, now_ms: int) -> Box | None:
        if not 0 < len(nameb) <= MAX_NAME:
            return None
        rec = txn.get(nameb, db=self.d_boxes)
        if rec is None:
            return None
        box = Box.decode(nameb, rec)
        if box.expire_ms and now_ms >= box.expire_ms:
            return None
        return box

    def _counter(self, txn, name: bytes) -> int:
        raw = txn.get(name, db=self.d_meta)
        n = BE_U64.unpack(raw)[0] if raw is not None else 1
        txn.put(name, u64(n + 1), db=self.d_meta)
        return n

    def _start(self, txn, box: Box, req: FetchRequest) -> int:
        """Start position S of PROTOCOL.md §5.3 (mq9fast column)."""
        d = req.deliver
        if d == "earliest":
            return 0
        if d == "latest":
            return box.next_id - 1 if box.next_id else 0
        if d == "from_id":
            return req.from_id
        cur = txn.cursor(db=self.d_time)
        if cur.set_range(BE_U64x2.pack(box.mbid, min(req.from_time, U64_MAX))):
            k = cur.key()
            if BE_U64.unpack_from(k, 0)[0] == box.mbid:
                return BE_U64.unpack(cur.value())[0]
        return box.next_id

    def _notify(self, mbid: int) -> None:
        """A message became visible in mailbox ``mbid``: wake its long-polling FETCHes.

        (The hook a future inter-worker channel calls when another process stored a message.)
        """
        ws = self._waiters.pop(mbid, None)
        if ws:
            for f in ws:
                _resolve(f)

    def _visible(self, mbid: int) -> None:
        """A message was stored in ``mbid`` by this process: wake local and remote FETCHes."""
        self._notify(mbid)
        if self.cluster is not None:
            if not self._events:
                self._loop.call_soon(self._flush_events)
            self._events.add(mbid)

    def _flush_events(self) -> None:
        events, self._events = self._events, set()
        if events and self.cluster is not None:
            self.cluster.publish_event(EVENT_VISIBLE, b"".join(u64(m) for m in events))

    def _notify_after(self, cell: list, fut: asyncio.Future) -> None:
        if cell and not fut.cancelled() and fut.exception() is None:
            for mbid in cell:
                self._visible(mbid)

    # ================================================================ writer-thread primitives
    def _put_message(self, txn, box: Box, lane: int, now_ms: int, expire_ms: int, hdr, key,
                     tags_json, tags, payload, dep: DepthDelta) -> int:
        """Store one message (compaction, indexes); advances ``box`` (the caller saves it) and
        records the change of the stored-message counts in ``dep`` (the caller applies it)."""
        mbid = box.mbid
        mid = box.next_id
        box.next_id = mid + 1
        sec = now_ms // 1000
        if sec > box.last_sec:
            txn.put(BE_U64x2.pack(mbid, sec), u64(mid), db=self.d_time)
            box.last_sec = sec
        if key is not None:
            kk = keyidx_key(mbid, key)
            old = txn.get(kk, db=self.d_keys)
            if old is not None:
                olane, oid = LANE_ID.unpack(old)
                self._drop(txn, mbid, olane, oid, dep)
            txn.put(kk, LANE_ID.pack(lane, mid), db=self.d_keys)
        txn.put(msg_key(mbid, lane, mid),
                encode_value(box.last_sec, expire_ms, hdr, key, tags_json, payload), db=self.d_msgs)
        if tags:
            idv = u64(mid)
            lb = bytes((lane,))
            for t in tags:
                txn.put(tag_prefix(mbid, enc_str(t)) + idv, lb, db=self.d_tags)
        if expire_ms:
            txn.put(MSGEXP_KEY.pack(expire_ms, mbid, lane, mid), b"", db=self.d_msgexp)
        dep.add(mbid, lane)
        return mid

    def _drop(self, txn, mbid: int, lane: int, mid: int, dep: DepthDelta) -> bool:
        """Delete one message and every index entry pointing at it (counted in ``dep``)."""
        k = msg_key(mbid, lane, mid)
        v = txn.get(k, db=self.d_msgs)
        if v is None:
            return False
        _c, expire_ms, _h, key, tags, _p = decode_value(v)
        txn.delete(k, db=self.d_msgs)
        dep.add(mbid, lane, -1)
        if key is not None:
            kk = keyidx_key(mbid, bytes(key))
            cur = txn.get(kk, db=self.d_keys)
            if cur is not None and LANE_ID.unpack(cur) == (lane, mid):
                txn.delete(kk, db=self.d_keys)
        if tags is not None:
            idv = u64(mid)
            for t in tags_of(tags):
                txn.delete(tag_prefix(mbid, enc_str(t)) + idv, db=self.d_tags)
        if expire_ms:
            txn.delete(MSGEXP_KEY.pack(expire_ms, mbid, lane, mid), db=self.d_msgexp)
        # acknowledgements of this id above a group's watermark would never be reached again
        prefix = u64(mbid)
        cur = txn.cursor(db=self.d_groups)
        if cur.set_range(prefix):
            idv = u64(mid)
            for gk, gv in cur:
                if gk[:8] != prefix:
                    break
                txn.delete(u64(GROUP.unpack_from(gv, 0)[0]) + idv, db=self.d_gacks)
        return True

    @staticmethod
    def _delete_prefix(txn, db, prefix: bytes, budget: list) -> bool:
        cur = txn.cursor(db=db)
        if not cur.set_range(prefix):
            return True
        n = len(prefix)
        while cur.key()[:n] == prefix:
            if budget[0] <= 0:
                return False
            budget[0] -= 1
            if not cur.delete():
                break
        return True

    def _purge_mailbox(self, txn, mbid: int, budget: list, dep: DepthDelta) -> tuple[bool, list[int]]:
        """Delete everything of mailbox incarnation ``mbid`` (bounded by ``budget``); the deleted
        messages are counted in ``dep``, which forgets the mailbox's counts once it is all gone."""
        prefix = u64(mbid)
        gids = []
        cur = txn.cursor(db=self.d_groups)
        if cur.set_range(prefix):
            for gk, gv in cur:
                if gk[:8] != prefix:
                    break
                gids.append(GROUP.unpack(gv)[0])
        for gid in gids:
            if not self._delete_prefix(txn, self.d_gacks, u64(gid), budget):
                return False, gids
        for db in (self.d_groups, self.d_keys, self.d_tags, self.d_time):
            if not self._delete_prefix(txn, db, prefix, budget):
                return False, gids
        cur = txn.cursor(db=self.d_msgs)
        if cur.set_range(prefix):
            while cur.key()[:8] == prefix:
                if budget[0] <= 0:
                    return False, gids
                budget[0] -= 1
                v = cur.value()
                k = cur.key()
                if v[0] & 1:  # its TTL index entry goes too
                    txn.delete(MSGEXP_KEY.pack(value_expire(v), mbid, k[8], BE_U64.unpack_from(k, 9)[0]),
                               db=self.d_msgexp)
                dep.add(mbid, k[8], -1)
                if not cur.delete():
                    break
        dep.gone(mbid)
        return True, gids

    # ================================================================ MAILBOX.CREATE
    def create(self, payload):
        req = CreateRequest(payload)
        name = req.name if req.name is not None else secrets.token_hex(16)
        nameb = name.encode()
        ttl = self.default_ttl if req.ttl is None else req.ttl
        desc = enc_str(req.desc)
        reply = json.dumps({"error": "", "mail_address": name}, separators=(",", ":")).encode()

        def fn(txn):
            now = _now_ms()
            rec = txn.get(nameb, db=self.d_boxes)
            if rec is not None and Box.decode(nameb, rec).live(now):
                raise Mq9Error(f"mailbox {name} already exists")
            mbid = self._counter(txn, b"mbid")
            expire = min(now + ttl * 1000, U64_MAX) if ttl else 0
            txn.put(nameb, Box(nameb, mbid, now, expire, min(ttl, U64_MAX), 0, 0, desc).encode(),
                    db=self.d_boxes)
            if expire:
                txn.put(BE_U64x2.pack(expire, mbid), nameb, db=self.d_mbexp)
            return reply

        return self.store.write(fn, grows=True)

    # ================================================================ MSG.SEND
    def send(self, addr: str, headers, payload):
        opts = SendOptions(headers)
        if type(payload) is not bytes:
            payload = bytes(payload)
        hdr = bytes(headers) if headers else None
        nameb = enc_str(addr)
        key = enc_str(opts.key) if opts.key is not None else None
        tags = opts.tags
        tags_json = json.dumps(tags, ensure_ascii=False, separators=(",", ":")).encode() if tags else None
        lane, delay, ttl = opts.lane, opts.delay, opts.ttl
        cell: list[int] = []

        if not delay:
            def fn(txn):
                now = _now_ms()
                box = self._box(txn, nameb, now, addr)
                dep = DepthDelta()
                mid = self._put_message(txn, box, lane, now, now + ttl * 1000 if ttl else 0,
                                        hdr, key, tags_json, tags, payload, dep)
                dep.apply(txn, self.d_depth)
                txn.put(nameb, box.encode(), db=self.d_boxes)
                cell.append(box.mbid)
                return b'{"error":"","msg_id":%d}' % mid

            fut = self.store.write(fn, grows=True)
            fut.add_done_callback(lambda f: self._notify_after(cell, f))
            return fut

        def fn_delayed(txn):
            now = _now_ms()
            box = self._box(txn, nameb, now, addr)
            if ttl and delay >= ttl:
                return b'{"error":"","msg_id":-1}'  # would never become visible (§4.5)
            expire = now + ttl * 1000 if ttl else 0
            seq = self._counter(txn, b"delay_seq")
            value = (DELAYED_HEAD.pack(box.mbid, lane, len(nameb)) + nameb
                     + encode_value(0, expire, hdr, key, tags_json, payload))
            txn.put(BE_U64x2.pack(now + delay * 1000, seq), value, db=self.d_delayed)
            return b'{"error":"","msg_id":-1}'

        fut = self.store.write(fn_delayed, grows=True)
        fut.add_done_callback(lambda f: self._delay_event.set())
        return fut

    # ================================================================ MSG.SEND, bulk path
    def bind_counts(self, counts: dict, observers: list, send_names: dict) -> None:
        """Count bulk-path SENDs in ``Control.counts`` (keys ``("MSG.SEND", outcome)``), time them
        for ``Control.observers``, and take SEND frames whose subject ``Control`` has put in
        ``send_names`` (subject -> address bytes)."""
        self.counts = counts
        self.observers = observers
        self.send_names = send_names

    def send_nowait(self, nameb: bytes, headers, payload, respond):
        """``MSG.SEND`` without futures (``Control``'s fast path).

        ``nameb`` is the address exactly as it came in the subject.  The message is queued with
        ``Store.submit``; after the group commit ``respond(reply_json)`` is called (and the command
        counted).  Returns None, or - for a delayed SEND, which is rare - the awaitable of ``send``
        for the caller to finish like any other command.
        """
        if type(payload) is not bytes:
            payload = bytes(payload)
        item: tuple
        if headers:
            opts = SendOptions(headers)
            if opts.delay:
                return self.send(nameb.decode("utf-8", "replace"), headers, payload)
            tags = opts.tags
            item = (nameb, opts.lane, opts.ttl, bytes(headers),
                    enc_str(opts.key) if opts.key is not None else None,
                    json.dumps(tags, ensure_ascii=False, separators=(",", ":")).encode() if tags else None,
                    tags, payload, respond, None)
        else:
            item = (nameb, payload, respond, None)  # the common case: no options at all
        self.store.submit(self._send_bulk, item)
        return None

    def _w_send_many(self, txn, items) -> list:
        """Writer thread: store a segment of SENDs (``send.write_sends``)."""
        return send.write_sends(self, txn, items)

    def _sent(self, items, results) -> None:
        """Event loop, after the commit: answer a segment of SENDs and wake long-polls."""
        send.answer_sends(items, results, self._visible, self.counts, self.observers)

    def take_sends(self, frames: list, start: int, conn, router, on_output, responder) -> int:
        """Queue the option-less SENDs among ``frames`` from ``start`` on (``send.take_sends``;
        ``Server`` calls this for the frames of one read); return the index of the first frame
        left for ordinary dispatch."""
        items: list = []
        i = send.take_sends(frames, start, conn, router, self.send_names, items, on_output,
                            bool(self.observers), responder)
        if items:
            self.store.submit_many(self._send_bulk, items)
        return i

    # ================================================================ MSG.FETCH
    def fetch(self, addr: str, payload):
        req = FetchRequest(payload, self.max_wait_cap_ms)
        raw = self._raw(req.encoding)
        nameb = enc_str(addr)
        if req.group is not None:
            gname = enc_str(req.group)
            if not req.force:
                r = self._group_collect(nameb, addr, gname, req, raw)
                if r is not _MISSING:
                    body, box, wake = r
                    if body is not None:
                        return body
                    if req.max_wait_ms <= 0 or req.num_msgs == 0:
                        return EMPTY_MESSAGES
                    return self._wait(nameb, addr, req, raw, box, None, gname, wake)
            return self._group_fetch_slow(nameb, addr, gname, req, raw)
        now = _now_ms()
        with self.store.read() as rtxn:
            box = self._box(rtxn, nameb, now, addr)
            if req.num_msgs == 0:
                return EMPTY_MESSAGES
            s = self._start(rtxn, box, req)
            pos = (s, s, s)
            body, _ = self._collect(rtxn, None, box.mbid, pos, None, req.num_msgs, raw, now, 0)
        if body is not None:
            return body
        if req.max_wait_ms <= 0:
            return EMPTY_MESSAGES
        return self._wait(nameb, addr, req, raw, box, pos, None, 0)

    def _collect(self, rtxn, vtxn, mbid: int, pos, gid, limit: int, raw: bool, now_ms: int,
                 lease_until: int):
        """Collect up to ``limit`` deliverable messages, lanes critical -> urgent -> normal.

        Group mode (``gid``): skips acknowledged and leased messages and leases what it returns
        (writes into ``vtxn``).  Returns (the FETCH reply or None when nothing was found, earliest
        lease expiry seen).  The loop itself is ``scan.collect`` (compiled).
        """
        cur = rtxn.cursor(db=self.d_msgs)
        if gid is None:
            body, _n, wake, _p = scan.collect(cur, mbid, pos, limit, raw, now_ms, FETCH_BUDGET,
                                              None, None, None)
            return body, wake
        gp = u64(gid)
        gc = rtxn.cursor(db=self.d_gacks)
        if not (gc.set_range(gp) and gc.key()[:8] == gp):
            gc = None  # the group has no ACK records above its watermarks: skip the lookups
        lc = vtxn.cursor(db=self.vol.leases)
        check = lc if lc.set_range(gp) and lc.key()[:8] == gp else None
        body, _n, wake, picked = scan.collect(cur, mbid, pos, limit, raw, now_ms, FETCH_BUDGET,
                                              gp, gc, check)
        if picked:
            batch_id = self.vol.next_batch(vtxn)
            bv = scan.lease_batch(lc.put, gp, picked, lease_until, batch_id)
            vtxn.put(gp + u64(batch_id), bv, db=self.vol.batches)
            self.vol.add_batch(vtxn, gid, batch_id, lease_until,
                               len(picked) - list(map(_DELIVERIES, picked)).count(0))
        return body, wake

    def _group_collect(self, nameb: bytes, addr: str, gname: bytes, req: FetchRequest, raw: bool):
        """Collect + lease for a group in one volatile write txn (serialised across processes)."""
        now = _now_ms()
        lease_until = now + (req.ack_wait_ms or self.ack_wait_ms)
        vtxn = self.vol.write(leasing=True)
        try:
            with self.store.read() as rtxn:
                box = self._box(rtxn, nameb, now, addr)
                g = rtxn.get(group_key(box.mbid, gname), db=self.d_groups)
                if g is None:
                    vtxn.abort()
                    return _MISSING
                gid, c0, c1, c2 = GROUP.unpack(g)
                body, wake = self._collect(rtxn, vtxn, box.mbid, (c0, c1, c2), gid, req.num_msgs,
                                           raw, now, lease_until)
            if body is not None:
                vtxn.commit()
            else:
                vtxn.abort()
        except BaseException:
            vtxn.abort()
            raise
        return body, box, wake

    async def _group_fetch_slow(self, nameb: bytes, addr: str, gname: bytes, req: FetchRequest,
                                raw: bool):
        """First FETCH of a group (persist its start) or ``force_deliver`` (reset it)."""
        force = req.force

        def fn(txn):
            now = _now_ms()
            box = self._box(txn, nameb, now, addr)
            gk = group_key(box.mbid, gname)
            g = txn.get(gk, db=self.d_groups)
            if g is not None and not force:
                return None  # created meanwhile by a concurrent FETCH
            s = self._start(txn, box, req)
            if g is not None:
                gid = GROUP.unpack(g)[0]
                self._delete_prefix(txn, self.d_gacks, u64(gid), [U64_MAX])
            else:
                gid = self._counter(txn, b"gid")
            txn.put(gk, GROUP.pack(gid, s, s, s), db=self.d_groups)
            return gid if g is not None else None

        reset_gid = await self.store.write(fn)
        if reset_gid is not None:
            self.vol.clear_groups([reset_gid])
        r = self._group_collect(nameb, addr, gname, req, raw)
        if r is _MISSING:
            raise _not_exist(addr)
        body, box, wake = r
        if body is not None:
            return body
        if req.max_wait_ms <= 0 or req.num_msgs == 0:
            return EMPTY_MESSAGES
        return await self._wait(nameb, addr, req, raw, box, None, gname, wake)

    async def _wait(self, nameb: bytes, addr: str, req: FetchRequest, raw: bool, box: Box, pos,
                    gname: bytes | None, wake_ms: int):
        """Long-poll: sleep until a message may be visible (notify, lease expiry) or the deadline."""
        loop = self._loop
        deadline = loop.time() + req.max_wait_ms / 1000.0
        mbid = box.mbid
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0 or self._closed:
                return EMPTY_MESSAGES
            timeout = remaining
            now = _now_ms()
            if wake_ms:
                timeout = min(timeout, max(0.0, (wake_ms - now) / 1000.0) + 0.001)
            if box.expire_ms:
                timeout = min(timeout, max(0.0, (box.expire_ms - now) / 1000.0) + 0.001)
            fut = loop.create_future()
            ws = self._waiters.get(mbid)
            if ws is None:
                ws = self._waiters[mbid] = set()
            ws.add(fut)
            handle = loop.call_later(timeout, _resolve, fut)
            self.parked += 1
            try:
                await fut
            finally:
                self.parked -= 1
                handle.cancel()
                ws = self._waiters.get(mbid)
                if ws is not None:
                    ws.discard(fut)
                    if not ws:
                        del self._waiters[mbid]
            if self._closed:
                return EMPTY_MESSAGES
            if gname is None:
                now = _now_ms()
                with self.store.read() as rtxn:
                    box = self._box(rtxn, nameb, now, addr)
                    if box.mbid != mbid:
                        raise _not_exist(addr)
                    body, _ = self._collect(rtxn, None, mbid, pos, None, req.num_msgs, raw, now, 0)
            else:
                r = self._group_collect(nameb, addr, gname, req, raw)
                if r is _MISSING:
                    raise _not_exist(addr)
                body, box, wake_ms = r
                if box.mbid != mbid:
                    raise _not_exist(addr)
            if body is not None:
                return body

    # ================================================================ MSG.ACK
    def ack(self, addr: str, payload):
        fn, release = self._ack_prepare(addr, payload)
        fut = self.store.write(fn)
        if release is not None:
            def after(f: asyncio.Future) -> None:
                if not f.cancelled() and f.exception() is None:
                    self._release(release)

            fut.add_done_callback(after)
        return fut

    def ack_nowait(self, addr: str, payload, done) -> None:
        """``MSG.ACK`` for ``Control``'s fast path: ``done(ok, value)`` answers the requester right
        after the commit; the leases are released afterwards (``call_soon``: behind the reply's
        flush, while the reply travels), not before the reply as with ``ack``."""
        fn, release = self._ack_prepare(addr, payload)
        if release is None:
            self.store.write_cb(fn, done)
            return

        def cb(ok, value):
            done(ok, value)
            if ok:
                self._loop.call_soon(self._release, release)

        self.store.write_cb(fn, cb)

    def _release(self, release) -> None:
        cell, batch_key = release
        if cell and self.vol is not None:
            gid, mids = cell[0]
            try:
                self.vol.release(gid, mids, batch_key)
            except StorageFull:
                pass  # no disk room: the leases stay until they expire (the ACK itself is durable)

    def _ack_prepare(self, addr: str, payload):
        """Validate an ACK and read what it needs; -> (writer fn, lease release info or None)."""
        req = AckRequest(payload)
        name = req.mail_address or addr
        nameb = enc_str(name)
        gname = enc_str(req.group)
        msg_id = req.msg_id
        now = _now_ms()
        with self.store.read() as rtxn:
            box = self._box(rtxn, nameb, now, name)
            g = rtxn.get(group_key(box.mbid, gname), db=self.d_groups)
            gid = GROUP.unpack(g)[0] if g is not None else None
        entries = None
        batch_key = None
        if gid is not None:
            gp = u64(gid)
            with self.vol.env.begin() as vt:
                lv = vt.get(gp + u64(msg_id), db=self.vol.leases)
                if lv is not None:
                    _exp, batch_id, _n, lane = LEASE.unpack(lv)
                    entries = [(lane, msg_id)]
                    bk = gp + u64(batch_id)
                    bv = vt.get(bk, db=self.vol.batches)
                    if bv is not None:
                        ents, last = scan.batch_upto(bv, msg_id)
                        if ents:
                            entries = ents
                            if last:
                                batch_key = bk
        mbid = box.mbid
        cell: list = []

        def fn(txn):
            now = _now_ms()
            b = self._box(txn, nameb, now, name)
            gk = group_key(b.mbid, gname)
            g = txn.get(gk, db=self.d_groups)
            if g is None:
                # never fetched: RobustMQ's rule, every lane continues after msg_id
                nxt = min(msg_id + 1, U64_MAX)
                txn.put(gk, GROUP.pack(self._counter(txn, b"gid"), nxt, nxt, nxt), db=self.d_groups)
                return b'{"error":""}'
            gid, c0, c1, c2 = GROUP.unpack(g)
            c = [c0, c1, c2]
            if entries is not None and b.mbid == mbid:
                ents = entries
            else:  # not leased: confirm this id alone
                ents = [(lane, msg_id) for lane in LANES
                        if txn.get(msg_key(b.mbid, lane, msg_id), db=self.d_msgs) is not None][:1]
            gp = u64(gid)
            acked: dict[int, set] = {}  # lane -> ids confirmed now, at or above its watermark
            for lane, mid in ents:
                if mid >= c[lane]:
                    ids_ = acked.get(lane)
                    if ids_ is None:
                        ids_ = acked[lane] = set()
                    ids_.add(mid)
            if acked:
                # Advance each watermark over this ACK's ids and older ACK records; only ids left
                # above the new watermark get an ACK record (none are written to be deleted at once).
                mcur = txn.cursor(db=self.d_msgs)
                gc = txn.cursor(db=self.d_gacks)
                old = gc if gc.set_range(gp) and gc.key()[:8] == gp else None
                for lane, ids_ in acked.items():
                    c[lane] = scan.advance(mcur, lane_prefix(b.mbid, lane), c[lane], ids_, old, gp)
                    for mid in ids_:
                        gc.put(gp + u64(mid), b"")
                txn.put(gk, GROUP.pack(gid, c[0], c[1], c[2]), db=self.d_groups)
            cell.append((gid, [m for _l, m in ents]))
            return b'{"error":""}'

        return fn, (None if entries is None else (cell, batch_key))

    # ================================================================ MSG.QUERY
    def query(self, addr: str, payload):
        req = QueryRequest(payload)
        raw = self._raw(req.encoding)
        nameb = enc_str(addr)
        now = _now_ms()
        limit = req.limit
        with self.store.read() as rtxn:
            box = self._box(rtxn, nameb, now, addr)
            if limit == 0:
                return EMPTY_MESSAGES
            mbid = box.mbid
            d_msgs = self.d_msgs
            items: list = []
            if req.key:
                kv = rtxn.get(keyidx_key(mbid, enc_str(req.key)), db=self.d_keys)
                if kv is not None:
                    lane, mid = LANE_ID.unpack(kv)
                    v = rtxn.get(msg_key(mbid, lane, mid), db=d_msgs)
                    if v is not None and not (v[0] & 1 and value_expire(v) <= now):
                        items.append((mid, lane, v))
            elif req.tags:
                found: dict[int, tuple] = {}
                cur = rtxn.cursor(db=self.d_tags)
                for t in req.tags:
                    prefix = tag_prefix(mbid, enc_str(t))
                    n = len(prefix)
                    if not cur.set_range(prefix):
                        continue
                    got = 0
                    while True:
                        k = cur.key()
                        if k[:n] != prefix:
                            break
                        mid = BE_U64.unpack_from(k, n)[0]
                        if mid not in found:
                            lane = cur.value()[0]
                            v = rtxn.get(msg_key(mbid, lane, mid), db=d_msgs)
                            if v is not None and not (v[0] & 1 and value_expire(v) <= now):
                                found[mid] = (mid, lane, v)
                                got += 1
                                if got >= limit:
                                    break
                        if not cur.next():
                            break
                items = [found[m] for m in sorted(found)[:limit]]
            else:
                start = 0
                if req.tags is None and req.since is not None:
                    cur = rtxn.cursor(db=self.d_time)
                    start = box.next_id
                    if cur.set_range(BE_U64x2.pack(mbid, req.since)):
                        if BE_U64.unpack_from(cur.key(), 0)[0] == mbid:
                            start = BE_U64.unpack(cur.value())[0]
                cur = rtxn.cursor(db=d_msgs)
                for lane in LANES:
                    prefix = lane_prefix(mbid, lane)
                    if not cur.set_range(prefix + u64(start)):
                        break
                    got = 0
                    while True:
                        k = cur.key()
                        if k[:9] != prefix:
                            break
                        v = cur.value()
                        if not (v[0] & 1 and value_expire(v) <= now):
                            items.append((BE_U64.unpack_from(k, 9)[0], lane, v))
                            got += 1
                            if got >= limit:
                                break
                        if not cur.next():
                            break
                items.sort(key=lambda it: it[0])
                del items[limit:]
            parts = [encode_message(mid, lane, v, raw) for mid, lane, v in items]
            return messages_reply(parts)

    # ================================================================ MSG.DELETE
    def delete(self, addr: str, token: str):
        mid = parse_msg_id_token(token)
        nameb = enc_str(addr)

        def fn(txn):
            now = _now_ms()
            box = self._box(txn, nameb, now, addr)
            for lane in LANES:
                v = txn.get(msg_key(box.mbid, lane, mid), db=self.d_msgs)
                if v is not None:
                    live = not (v[0] & 1 and value_expire(v) <= now)
                    dep = DepthDelta()
                    self._drop(txn, box.mbid, lane, mid, dep)
                    dep.apply(txn, self.d_depth)
                    return b'{"error":"","deleted":true}' if live else b'{"error":"","deleted":false}'
            return b'{"error":"","deleted":false}'

        return self.store.write(fn)

    # ================================================================ delayed messages
    def _next_due(self) -> int | None:
        with self.store.read() as rtxn:
            cur = rtxn.cursor(db=self.d_delayed)
            if cur.first():
                return BE_U64.unpack_from(cur.key(), 0)[0]
        return None

    def _w_move_due(self, txn) -> list[int]:
        """Writer thread: move every due delayed message into its mailbox."""
        now = _now_ms()
        cur = txn.cursor(db=self.d_delayed)
        boxes: dict[bytes, Box | None] = {}
        touched: list[int] = []
        dep = DepthDelta()
        n = 0
        hsize = DELAYED_HEAD.size
        while n < 5000 and cur.first():
            k = cur.key()
            due = BE_U64.unpack_from(k, 0)[0]
            if due > now:
                break
            v = cur.value()
            cur.delete()
            n += 1
            mbid, lane, nlen = DELAYED_HEAD.unpack_from(v, 0)
            nameb = bytes(v[hsize:hsize + nlen])
            if nameb in boxes:
                box = boxes[nameb]
            else:
                rec = txn.get(nameb, db=self.d_boxes)
                box = Box.decode(nameb, rec) if rec is not None else None
                boxes[nameb] = box
            if box is None or box.mbid != mbid or not box.live(now):
                continue  # mailbox gone (or re-created): the message dies with it
            _c, expire_ms, hdr, key, tags, payload = decode_value(v[hsize + nlen:])
            if expire_ms and now >= expire_ms:
                continue
            self._put_message(txn, box, lane, now, expire_ms, hdr, key, tags, tags_of(tags), payload, dep)
            if mbid not in touched:
                touched.append(mbid)
        for nameb, box in boxes.items():
            if box is not None and box.mbid in touched:
                txn.put(nameb, box.encode(), db=self.d_boxes)
        dep.apply(txn, self.d_depth)
        self.delayed_moved += n
        return touched

    async def _delay_loop(self) -> None:
        ev = self._delay_event
        while not self._closed:
            try:
                ev.clear()
                due = self._next_due()
                now = _now_ms()
                if due is not None and due <= now:
                    touched = await self.store.write(self._w_move_due)
                    for mbid in touched:
                        self._visible(mbid)
                    continue
                timeout = DELAY_POLL_S if due is None else min(DELAY_POLL_S, (due - now) / 1000.0)
                try:
                    await asyncio.wait_for(ev.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep the timer alive
                log.exception("delayed-message timer failed")
                await asyncio.sleep(1.0)

    # ================================================================ expiry sweep
    def _w_sweep(self, txn):
        """Writer thread: purge expired mailboxes and messages (bounded work per call)."""
        now = _now_ms()
        budget = [SWEEP_BUDGET]
        purged_gids: list[int] = []
        dep = DepthDelta()
        result = self._w_sweep_into(txn, now, budget, purged_gids, dep)
        dep.apply(txn, self.d_depth)
        return result

    def _w_sweep_into(self, txn, now: int, budget: list, purged_gids: list, dep: DepthDelta):
        """The work of ``_w_sweep``; -> (purged group ids, True if budget ran out)."""
        cur = txn.cursor(db=self.d_mbexp)
        while budget[0] > 0 and cur.first():
            k = cur.key()
            exp, mbid = BE_U64x2.unpack(k)
            if exp > now:
                break
            nameb = cur.value()
            finished, gids = self._purge_mailbox(txn, mbid, budget, dep)
            if not finished:
                return purged_gids, True
            purged_gids.extend(gids)
            rec = txn.get(nameb, db=self.d_boxes)
            if rec is not None and Box.decode(nameb, rec).mbid == mbid:
                txn.delete(nameb, db=self.d_boxes)
            txn.delete(k, db=self.d_mbexp)
            self.swept_mailboxes += 1
            cur = txn.cursor(db=self.d_mbexp)
        cur = txn.cursor(db=self.d_msgexp)
        while budget[0] > 0 and cur.first():
            k = cur.key()
            exp, mbid, lane, mid = MSGEXP_KEY.unpack(k)
            if exp > now:
                break
            cur.delete()
            budget[0] -= 1
            if self._drop(txn, mbid, lane, mid, dep):
                self.swept_messages += 1
            cur = txn.cursor(db=self.d_msgexp)
        return purged_gids, budget[0] <= 0

    def _next_expiry(self) -> int | None:
        best = None
        with self.store.read() as rtxn:
            for db in (self.d_mbexp, self.d_msgexp):
                cur = rtxn.cursor(db=db)
                if cur.first():
                    exp = BE_U64.unpack_from(cur.key(), 0)[0]
                    best = exp if best is None else min(best, exp)
        return best

    async def sweep_once(self) -> bool:
        """One sweep transaction; True if more work is left."""
        gids, more = await self.store.write(self._w_sweep)
        if self.vol is not None:
            try:
                self.vol.clear_groups(gids)
                if not more:
                    self.vol.sweep(_now_ms(), LEASE_KEEP_MS)
            except StorageFull:
                pass  # no disk room: expired leases are swept later (they block nothing)
        return more

    async def _sweep_loop(self) -> None:
        while not self._closed:
            try:
                if await self.sweep_once():
                    await asyncio.sleep(0)
                    continue
                nxt = self._next_expiry()
                delay = SWEEP_MAX_S
                if nxt is not None:
                    delay = min(delay, max(1.0, (nxt - _now_ms()) / 1000.0 + 0.05))
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep the sweeper alive
                log.exception("mailbox sweep failed")
                await asyncio.sleep(5.0)
