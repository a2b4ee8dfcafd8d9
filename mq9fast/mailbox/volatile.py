"""The volatile LMDB environment: leases and FETCH batches of consumer groups.

It lives in ``<data-dir>/mailbox-volatile`` and is opened without fsync (``sync=False``,
``metasync=False``) and with ``writemap=True``: its write transactions are plain memory writes into
the shared map (no ``pwrite`` of the dirty pages at commit), cheap enough to run on the event-loop
thread inside a group FETCH (in-process FETCH(100)+ACK rounds: 204 → 189 µs per FETCH, 170 → 155 µs
per ACK; the file is sparse, sized to the map).  Its contents need not survive a
restart (DESIGN.md §3.3: after a restart unacknowledged messages are simply available again), so
the first process of a broker run starts it from empty files (``open_for_run``) rather than by
clearing it: never fsynced, the old files may be damaged after a power cut, and LMDB cannot be
trusted to even open them then.  Because it is an LMDB environment, every worker process that
opens the same data directory sees the same leases, and LMDB's writer lock serialises the
"collect + lease" step of group FETCHes across processes.

DBs:
* ``leases``  ``gid(8) | msg_id(8)`` -> ``expiry_ms u64, batch_id u64, deliveries u32, lane u8``
* ``batches`` ``gid(8) | batch_id(8)`` -> ``expiry_ms u64`` + ``(lane u8, msg_id u64be)`` per entry,
  in the order the FETCH returned them (for the batch-aware ACK)
* ``lexp``    ``expiry_ms(8) | gid(8) | batch_id(8)`` -> empty: the batches by lease expiry, so that
  counting outstanding leases (``outstanding``) reads only the batches whose leases have not
  expired, never the expired leases kept for their delivery counts
* ``meta``    ``b"batch"`` -> next batch id (u64be);
  ``b"redelivered"`` -> messages handed out again after their lease expired, since the broker run
  started (u64be; shared by all workers, reset with the leases)

Disk.  With ``writemap`` LMDB makes its file a sparse file as large as the map and writes pages
by storing into the mapping: a page that has no disk block yet gets one when it is first
touched, and if the disk is full then, the kernel kills the process with SIGBUS (seen: a group
FETCH after another program filled the disk).  So every write transaction begins with
``write``: holding LMDB's writer lock (no process allocates pages meanwhile), it makes sure the
file has disk blocks (``posix_fallocate``) for ``margin`` bytes beyond the pages LMDB uses, which
no transaction outgrows (a FETCH leases at most 10 000 messages: a few MiB).  When the
disk cannot give them, transactions that add leases (group FETCH) are refused with
``StorageFull`` and the others (ACK's release, sweeps) go on within what is left of the margin,
retrying the allocation at most every ``FULL_RETRY_S``.
"""
from __future__ import annotations

import fcntl
import logging
import os
import struct
import time

import lmdb

from ..files import replace_from_spare
from ..storage import StorageFull, is_full_error
from .hot import scan
from .layout import BATCH_HEAD, BE_U64, BE_U64x2, LANE_ID, LEASE, u64

#: key of the ``lexp`` index: lease expiry, gid, batch id
LEXP_KEY = struct.Struct(">QQQ")
REDELIVERED = b"redelivered"
#: file beside the environment naming the broker run that created it (``open_for_run``)
RUN_FILE = "run"
#: disk blocks kept allocated beyond LMDB's pages (the file then takes up to 1.5 of it beyond)
MARGIN = 4 << 20
#: while the disk has no room for the margin, try to allocate it again at most this often
FULL_RETRY_S = 0.5

log = logging.getLogger("mq9fast.mailbox")


class Volatile:
    def __init__(self, path: str, map_size: int = 4 * 1024**3) -> None:
        os.makedirs(path, exist_ok=True)
        self.path = path
        self.env = lmdb.open(path, map_size=map_size, max_dbs=8, subdir=True, sync=False,
                             metasync=False, readahead=False, max_readers=1024, writemap=True)
        self.leases = self.env.open_db(b"leases")
        self.batches = self.env.open_db(b"batches")
        self.meta = self.env.open_db(b"meta")
        self.lexp = self.env.open_db(b"lexp")
        self.map_size = map_size
        self._psize = self.env.stat()["psize"]
        self._fd = os.open(os.path.join(path, "data.mdb"), os.O_RDWR | os.O_CLOEXEC)
        self.margin = MARGIN
        self.backed = 0   # bytes at the start of the file known to have disk blocks
        self.full = False  # the last allocation failed for lack of room
        self._retry_at = 0.0
        txn = self.env.begin(write=True)  # the first stretch (or ``full`` from the start)
        try:
            self._allocate((self.env.info()["last_pgno"] + 1) * self._psize)
        finally:
            txn.abort()

    def write(self, leasing: bool = False) -> lmdb.Transaction:
        """Begin a write transaction once the file has disk blocks for ``margin`` bytes beyond
        the pages LMDB uses (see "Disk" above).  ``leasing``: it adds leases, and is refused with
        ``StorageFull`` while that room cannot be had; the others need a quarter of it."""
        txn = self.env.begin(write=True)
        try:
            used = (self.env.info()["last_pgno"] + 1) * self._psize
            if used + self.margin > self.backed:
                self._allocate(used)
            need = self.margin if leasing else self.margin // 4
            if used + need > min(self.backed, self.map_size):
                if self.backed >= self.map_size:
                    raise StorageFull(f"storage full: too many leases outstanding ({used} bytes "
                                      "of them); ACK messages or let their leases expire")
                raise StorageFull("storage full: the disk is full (no room for more leases)")
        except BaseException:
            txn.abort()
            raise
        return txn

    def _allocate(self, used: int) -> None:
        """Give the file disk blocks up to ``used + 1.5 * margin`` - or, on a disk too full for
        that, ``used + margin`` (what a FETCH needs), or at least ``used + margin / 4``.  The
        caller holds the writer lock, so nobody uses the pages past ``used``; on a filesystem
        without ``fallocate`` glibc writes zeros there, which is as good."""
        now = time.monotonic()
        if self.full and now < self._retry_at:
            return
        step = self.margin // 2
        targets = (-(-(used + self.margin + step) // step) * step, used + self.margin,
                   used + self.margin // 4)
        for want in targets:
            want = min(self.map_size, want)
            if want <= self.backed:
                break
            try:
                os.posix_fallocate(self._fd, used, want - used)
            except OSError as exc:
                if not is_full_error(exc):
                    raise
                continue
            self.backed = want
            break
        full = self.backed < min(self.map_size, targets[1])
        if full != self.full:
            log.warning("no disk room for the lease store: group FETCH refused until there is"
                        if full else "disk room for the lease store again: group FETCH resumes")
        self.full = full
        if full:
            self._retry_at = now + FULL_RETRY_S

    @classmethod
    def open_for_run(cls, path: str, run_key: bytes) -> tuple["Volatile", bool]:
        """Open the environment of broker run ``run_key``: the first process of a run (any
        other key in ``path/run``) deletes the old files and starts empty; a worker restarted
        within the run (same key) opens the live environment the other workers share.  A file
        lock makes concurrent starts of several workers pick exactly one creator.  Returns the
        environment and whether this call created it."""
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "open.lock"), "ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            run_file = os.path.join(path, RUN_FILE)
            try:
                with open(run_file, "rb") as f:
                    fresh = f.read() != run_key
            except FileNotFoundError:
                fresh = True
            if fresh:
                for name in ("data.mdb", "lock.mdb"):
                    try:
                        os.unlink(os.path.join(path, name))
                    except FileNotFoundError:
                        pass
            vol = cls(path)
            if fresh:  # (through a spare file: no new disk blocks, so it works on a full disk)
                replace_from_spare(run_file, run_key)
            return vol, fresh

    def next_batch(self, txn) -> int:
        raw = txn.get(b"batch", db=self.meta)
        n = BE_U64.unpack(raw)[0] if raw is not None else 1
        txn.put(b"batch", u64(n + 1), db=self.meta)
        return n

    def add_batch(self, txn, gid: int, batch_id: int, lease_until: int, redelivered: int) -> None:
        """After a group FETCH wrote a batch: index it by expiry and count its redeliveries
        (``redelivered``: how many of its messages had been delivered before)."""
        txn.put(LEXP_KEY.pack(lease_until, gid, batch_id), b"", db=self.lexp)
        if redelivered:
            raw = txn.get(REDELIVERED, db=self.meta)
            txn.put(REDELIVERED, u64((BE_U64.unpack(raw)[0] if raw is not None else 0) + redelivered),
                    db=self.meta)

    def _unindex(self, txn, batch_key: bytes, bv) -> None:
        gid, batch_id = BE_U64x2.unpack(batch_key)
        txn.delete(LEXP_KEY.pack(BATCH_HEAD.unpack_from(bv, 0)[0], gid, batch_id), db=self.lexp)

    def clear_groups(self, gids) -> None:
        """Drop all leases and batches of the given group ids."""
        if not gids:
            return
        with self.write() as txn:
            for gid in gids:
                prefix = u64(gid)
                for db in (self.leases, self.batches):
                    cur = txn.cursor(db=db)
                    if not cur.set_range(prefix):
                        continue
                    while cur.key()[:8] == prefix:
                        if db is self.batches:
                            self._unindex(txn, cur.key(), cur.value())
                        if not cur.delete():
                            break

    def release(self, gid: int, msg_ids, batch_key: bytes | None) -> None:
        """After an ACK is durable: forget the leases of the confirmed ids (and the batch)."""
        with self.write() as txn:
            scan.release(txn.cursor(db=self.leases), u64(gid), msg_ids)
            if batch_key is not None:
                bv = txn.get(batch_key, db=self.batches)
                if bv is not None:
                    self._unindex(txn, batch_key, bv)
                    txn.delete(batch_key, db=self.batches)

    def sweep(self, now_ms: int, keep_ms: int, limit: int = 100000) -> int:
        """Delete leases and batches that expired more than ``keep_ms`` ago; returns the count.

        (A lease is kept a while after it expired so that its delivery count survives until the
        message is delivered again.)
        """
        cutoff = now_ms - keep_ms
        n = 0
        with self.write() as txn:
            for db, head in ((self.leases, LEASE), (self.batches, BATCH_HEAD)):
                cur = txn.cursor(db=db)
                if not cur.first():
                    continue
                while n < limit:
                    v = cur.value()
                    if not v:
                        break
                    if head.unpack_from(v, 0)[0] < cutoff:
                        n += 1
                        if not cur.delete():
                            break
                    elif not cur.next():
                        break
            cur = txn.cursor(db=self.lexp)  # ordered by expiry: the old entries come first
            while cur.first() and BE_U64.unpack_from(cur.key(), 0)[0] < cutoff:
                cur.delete()
        return n

    # -- statistics (read-only, any thread) -------------------------------------------------------
    def redeliveries(self) -> int:
        """Messages handed out again after their lease expired, since this broker run started."""
        with self.env.begin() as txn:
            raw = txn.get(REDELIVERED, db=self.meta)
        return BE_U64.unpack(raw)[0] if raw is not None else 0

    def outstanding(self, now_ms: int) -> tuple[int, dict[int, int]]:
        """Unexpired leases: (total, {gid: count}).

        Walks only the batches whose lease expiry is in the future (``lexp``) and counts their
        entries whose lease still belongs to that batch (not yet ACKed and released): the cost is
        the number of messages in flight, whatever the number of stored messages or of expired
        leases kept for their delivery counts.
        """
        total = 0
        by_gid: dict[int, int] = {}
        unpack_lease = LEASE.unpack_from
        with self.env.begin(buffers=True) as txn:
            idx = txn.cursor(db=self.lexp)
            leases = txn.cursor(db=self.leases)
            if not idx.set_range(u64(now_ms + 1)):
                return 0, by_gid
            for k in idx.iternext(keys=True, values=False):
                _exp, gid, batch_id = LEXP_KEY.unpack(k)
                gp = u64(gid)
                bv = txn.get(gp + u64(batch_id), db=self.batches)
                if bv is None:
                    continue
                n = 0
                for off in range(BATCH_HEAD.size, len(bv) - 8, LANE_ID.size):
                    mid = BE_U64.unpack_from(bv, off + 1)[0]
                    if leases.set_key(gp + u64(mid)):
                        exp, owner, _d, _l = unpack_lease(leases.value(), 0)
                        if owner == batch_id and exp > now_ms:
                            n += 1
                if n:
                    total += n
                    by_gid[gid] = by_gid.get(gid, 0) + n
        return total, by_gid

    def close(self) -> None:
        self.env.close()
        os.close(self._fd)
