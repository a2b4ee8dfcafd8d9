"""The volatile LMDB environment: leases and FETCH batches of consumer groups.

It lives in ``<data-dir>/mailbox-volatile`` and is opened without fsync (``sync=False``,
``metasync=False``): its write transactions are plain memory copies into the page cache, cheap
enough to run on the event-loop thread inside a group FETCH.  Its contents need not survive a
restart (DESIGN.md §3.3: after a restart unacknowledged messages are simply available again), so
``clear()`` empties it at start-up.  Because it is an LMDB environment, every worker process that
opens the same data directory sees the same leases, and LMDB's writer lock serialises the
"collect + lease" step of group FETCHes across processes.

DBs:
* ``leases``  ``gid(8) | msg_id(8)`` -> ``expiry_ms u64, batch_id u64, deliveries u32, lane u8``
* ``batches`` ``gid(8) | batch_id(8)`` -> ``expiry_ms u64`` + ``(lane u8, msg_id u64be)`` per entry,
  in the order the FETCH returned them (for the batch-aware ACK)
* ``meta``    ``b"batch"`` -> next batch id (u64be); ``b"run"`` -> key of the broker run that last
  cleared it (``--workers N``: a restarted worker must not drop the other workers' leases)
"""
from __future__ import annotations

import os

import lmdb

from .hot import scan
from .layout import BATCH_HEAD, BE_U64, LEASE, u64


class Volatile:
    def __init__(self, path: str, map_size: int = 4 * 1024**3) -> None:
        os.makedirs(path, exist_ok=True)
        self.path = path
        self.env = lmdb.open(path, map_size=map_size, max_dbs=4, subdir=True, sync=False,
                             metasync=False, readahead=False, max_readers=1024)
        self.leases = self.env.open_db(b"leases")
        self.batches = self.env.open_db(b"batches")
        self.meta = self.env.open_db(b"meta")

    def clear(self) -> None:
        """Forget every lease and batch (start-up of the first worker)."""
        with self.env.begin(write=True) as txn:
            txn.drop(self.leases, delete=False)
            txn.drop(self.batches, delete=False)

    def clear_for_run(self, run_key: bytes) -> bool:
        """Clear unless this broker run (``run_key``) already did: one transaction, so of several
        workers starting together exactly one clears.  Returns True if it cleared."""
        with self.env.begin(write=True) as txn:
            if txn.get(b"run", db=self.meta) == run_key:
                return False
            txn.drop(self.leases, delete=False)
            txn.drop(self.batches, delete=False)
            txn.put(b"run", run_key, db=self.meta)
            return True

    def next_batch(self, txn) -> int:
        raw = txn.get(b"batch", db=self.meta)
        n = BE_U64.unpack(raw)[0] if raw is not None else 1
        txn.put(b"batch", u64(n + 1), db=self.meta)
        return n

    def clear_groups(self, gids) -> None:
        """Drop all leases and batches of the given group ids."""
        if not gids:
            return
        with self.env.begin(write=True) as txn:
            for gid in gids:
                prefix = u64(gid)
                for db in (self.leases, self.batches):
                    cur = txn.cursor(db=db)
                    if not cur.set_range(prefix):
                        continue
                    while cur.key()[:8] == prefix:
                        if not cur.delete():
                            break

    def release(self, gid: int, msg_ids, batch_key: bytes | None) -> None:
        """After an ACK is durable: forget the leases of the confirmed ids (and the batch)."""
        with self.env.begin(write=True) as txn:
            scan.release(txn.cursor(db=self.leases), u64(gid), msg_ids)
            if batch_key is not None:
                txn.delete(batch_key, db=self.batches)

    def sweep(self, now_ms: int, keep_ms: int, limit: int = 100000) -> int:
        """Delete leases and batches that expired more than ``keep_ms`` ago; returns the count.

        (A lease is kept a while after it expired so that its delivery count survives until the
        message is delivered again.)
        """
        cutoff = now_ms - keep_ms
        n = 0
        with self.env.begin(write=True) as txn:
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
        return n

    def close(self) -> None:
        self.env.close()
