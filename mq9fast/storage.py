"""The LMDB environment and the group-commit writer every service shares.

One LMDB environment lives under ``--data-dir``; each service opens its own named databases in it
(``Store.db(name)``).  Reads happen on the event-loop thread in short read transactions
(``Store.read()``, ``buffers=True`` so values come back as zero-copy memoryviews valid only inside
the transaction).

Writes go through ``Store.write(fn)``: ``fn(txn)`` is queued, and everything queued while the
writer is busy (or within the current event-loop tick) runs in *one* write transaction on one
dedicated writer thread, committed with one fsync ("group commit").  The returned future resolves
with ``fn``'s return value only after the commit is durable under the configured policy:

* ``always``   - the commit itself is synced (LMDB's own data-then-meta ordering); replies wait.
* ``interval`` - commits are not synced; a timer syncs every ``fsync_interval_ms``.  A crash of the
  process loses nothing (the pages are in the OS cache); a power cut may lose the last interval.
* ``never``    - never synced by us (the OS writes back eventually).

Invariants:
* exactly one thread writes (the writer thread) in this process; LMDB serialises writers across
  processes, so another worker process may interleave whole transactions, never parts;
* each ``fn`` runs in a nested child transaction, so an exception in one request rolls back only
  that request's changes and fails only its future; the rest of the batch commits;
* futures are resolved on the event loop, in submission order, after the commit returned.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import lmdb

log = logging.getLogger("mq9fast.storage")

WriteFn = Callable[[lmdb.Transaction], Any]


class Store:
    def __init__(self, path: str, *, map_size: int = 32 * 1024**3, fsync: str = "always",
                 fsync_interval_ms: int = 200, max_dbs: int = 64) -> None:
        os.makedirs(path, exist_ok=True)
        self.path = path
        self.fsync = fsync
        self.fsync_interval = fsync_interval_ms / 1000.0
        self.env = lmdb.open(
            path,
            map_size=map_size,
            max_dbs=max_dbs,
            subdir=True,
            sync=(fsync == "always"),
            metasync=(fsync == "always"),
            readahead=False,
            max_readers=1024,
        )
        self._dbs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mq9fast-writer")
        self._pending: list[tuple[WriteFn, asyncio.Future]] = []
        self._busy = False
        self._kick_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sync_task: asyncio.Task | None = None
        self._closed = False
        # statistics (read by metrics)
        self.batches = 0
        self.batched_writes = 0
        self.last_batch_size = 0
        self.max_batch_size = 0

    # -- set-up ---------------------------------------------------------------------------------
    def db(self, name: str, **flags: Any):
        """Open (creating if needed) the named database ``name``; cached."""
        with self._lock:
            handle = self._dbs.get(name)
            if handle is None:
                handle = self.env.open_db(name.encode(), create=True, **flags)
                self._dbs[name] = handle
            return handle

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        if self.fsync == "interval" and self._sync_task is None:
            self._sync_task = self._loop.create_task(self._interval_sync())

    async def _interval_sync(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.fsync_interval)
            await self._loop.run_in_executor(self._pool, self.env.sync, True)

    # -- reads ----------------------------------------------------------------------------------
    def read(self) -> lmdb.Transaction:
        """A read-only transaction with zero-copy buffers; use as a context manager."""
        return self.env.begin(buffers=True)

    # -- writes ---------------------------------------------------------------------------------
    def write(self, fn: WriteFn) -> asyncio.Future:
        """Run ``fn(txn)`` in the next group-commit batch; the future gets its result when durable."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("Store.start() was not called")
        fut = loop.create_future()
        if self._closed:
            fut.set_exception(RuntimeError("store is closed"))
            return fut
        self._pending.append((fn, fut))
        if not self._busy and not self._kick_scheduled:
            # Let the rest of this tick's requests join the batch.
            self._kick_scheduled = True
            loop.call_soon(self._kick)
        return fut

    def write_now(self, fn: WriteFn) -> Any:
        """Run ``fn`` in its own synchronous transaction on the calling thread (start-up, tests).

        Must not be used while the writer thread may be writing (it would wait for its lock).
        """
        with self.env.begin(write=True) as txn:
            return fn(txn)

    def _kick(self) -> None:
        self._kick_scheduled = False
        if self._busy or not self._pending:
            return
        batch, self._pending = self._pending, []
        self._busy = True
        cf = self._pool.submit(self._run_batch, batch)
        cf.add_done_callback(lambda f: self._loop.call_soon_threadsafe(self._done, batch, f))

    def _run_batch(self, batch: list[tuple[WriteFn, asyncio.Future]]) -> list[tuple[bool, Any]]:
        """Writer thread: one transaction, one nested child per request, one commit."""
        results: list[tuple[bool, Any]] = []
        txn = self.env.begin(write=True)
        try:
            for fn, _fut in batch:
                child = self.env.begin(write=True, parent=txn)
                try:
                    value = fn(child)
                except BaseException as exc:  # noqa: BLE001 - handed to the requester
                    child.abort()
                    results.append((False, exc))
                else:
                    child.commit()
                    results.append((True, value))
            txn.commit()  # fsyncs when the policy is "always"
        except BaseException as exc:
            txn.abort()
            log.exception("group commit failed")
            return [(False, exc)] * len(batch)
        return results

    def _done(self, batch, cf) -> None:
        self._busy = False
        try:
            results = cf.result()
        except BaseException as exc:  # the thread itself failed
            results = [(False, exc)] * len(batch)
        n = len(batch)
        self.batches += 1
        self.batched_writes += n
        self.last_batch_size = n
        if n > self.max_batch_size:
            self.max_batch_size = n
        for (fn, fut), (ok, value) in zip(batch, results):
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        if self._pending:
            self._kick()

    # -- shutdown -------------------------------------------------------------------------------
    async def drain(self) -> None:
        """Wait until every queued write has committed."""
        while self._pending or self._busy:
            await asyncio.sleep(0.001)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sync_task is not None:
            self._sync_task.cancel()
        self._pool.shutdown(wait=True)
        try:
            if self.fsync != "never":
                self.env.sync(True)
        finally:
            self.env.close()
