"""The LMDB environment and the group-commit writer every service shares.

One LMDB environment lives under ``--data-dir``; each service opens its own named databases in it
(``Store.db(name)``).  Reads happen on the event-loop thread in short read transactions
(``Store.read()``, ``buffers=True`` so values come back as zero-copy memoryviews valid only inside
the transaction).

Writes
======
Two ways in, both batched into the same group-commit transaction:

* ``Store.write(fn)``: ``fn(txn)`` is queued; the returned future resolves with ``fn``'s return
  value (or exception) after the commit.  Each ``fn`` runs in a nested child transaction, so an
  exception rolls back only that request's changes and fails only its future.
  ``Store.write_cb(fn, cb)`` is the same without a future: ``cb(ok, value)`` is called on the
  event loop right after the commit (one loop iteration earlier than a future's callbacks).
* ``Store.submit(bulk, item)``: the low-overhead path of the hottest commands (``MSG.SEND``).
  Consecutive submissions for the same ``bulk`` form one *segment*; the writer calls
  ``bulk.apply(txn, items)`` once per segment (one Python call and one child transaction for the
  whole segment instead of one per request) and, after the commit, ``bulk.done(items, results)``
  once on the event loop.  There are no futures and no per-request callbacks.  ``apply`` returns
  one result per item and reports per-item failures in its results; should it raise anyway, the
  segment's child transaction is rolled back and every item is re-applied alone in its own child
  transaction, so the failure stays confined to the item that caused it (the result slot of that
  item then holds the exception).  ``done`` receives the exception instead of the list when the
  commit itself failed.

Everything queued while the writer is busy (or within the current event-loop tick) runs in *one*
write transaction on one dedicated writer thread, committed with one fsync ("group commit"); the
next batch is handed to the writer as soon as the loop learns that the previous commit finished
(before the replies of the finished batch are sent), so requests that arrive during a commit form
the next batch.  Requests are applied in submission order (a segment stands at the position of its
first item; a ``write`` between two submissions starts a new segment), so one connection's
pipelined CREATE + SEND still see each other in order.

Durability policy (``--fsync``)
===============================
* ``always``   - the group commit's transaction is first written to the write-ahead log and that
  log is made durable (``mq9fast/wal.py``: one device flush, ≈ 110-150 µs, through
  ``O_DIRECT | O_DSYNC`` where the filesystem allows it); then the LMDB
  transaction commits *unsynced* and the replies go out.  LMDB is synced at checkpoints (every
  ``checkpoint_interval``, default 1 s, while this process writes), whose snapshot stays pinned by
  an open reader.  kill -9 loses nothing answered (the page cache holds every commit); after a
  power cut the next start rolls LMDB back to the checkpoint and replays the log, so nothing
  answered is lost there either, and LMDB is never opened in a torn state.

  Before the log, ``always`` was LMDB's own durable commit (``sync=True, metasync=True``): data
  pages fdatasynced, then the meta page written through an ``O_DSYNC`` descriptor - two device
  flushes, ≈ 650 µs for a 200-message commit that grows the file (strace: fdatasync p50 ≈ 170-340
  µs, the O_DSYNC meta write ≈ 110-190 µs), against ≈ 120 µs for a 64 KiB log record.  Measured in
  one ``benchmarks/run.py --quick --repeat 3`` run each: durable SEND at 256 in flight 0.50-0.62× →
  0.71× JetStream's default, fetch_ack 0.39-0.41× → 0.67×.  Alternatives measured before the log
  and not adopted:

  - ``metasync=False`` makes a commit one flush cheaper (p50 ≈ 260 µs instead of ≈ 400 µs) but the
    meta page then reaches the disk only with the *next* flush, so a power cut may undo the last
    answered transaction; deferring replies to the next flush costs a closed-loop client the same
    two flushes per round trip.
  - ``writemap=True`` still needs msync of the data, then of the meta page (same two flushes).
  - Splitting a large pending batch in two so that one half's flush overlaps the loop's work on
    the other half: the flush does not shrink with the batch, so it measured slower (re-measured
    this session with a 0.1-0.5 ms GIL switch interval too: 94-108 k vs 108-132 k SEND/s).
  - With the log: committing a batch right after writing its record and leaving the fdatasync to
    a third thread (replies after it), so that the writer applies the next half-batch during the
    flush.  The broker got busier (0.90 instead of 0.78 of a core) but not faster (124-162 k vs
    131-179 k SEND/s at 256 in flight, 6 paired runs): two more thread hand-offs per batch on one
    core cost what the overlap saved - and it would have let readers see a batch before it was
    durable.
  - Re-measured after the compiled SEND path (``mailbox/_send.pyx``) cut a SEND's CPU from ≈ 4.4
    to ≈ 3.1 µs: splitting a big pending segment in two at an idle writer (2 flushes per 256
    SENDs instead of 1) fell from 220-278 k to 139-167 k SEND/s, CPU per SEND up from 2.5-3.2 to
    4.7-5.8 µs (3 paired runs): each flush costs ≈ 60 µs of kernel CPU (≈ 30 µs with direct I/O),
    so fewer, larger batches win on one core.
* ``interval`` - commits are not synced; a timer syncs every ``fsync_interval_ms``.  A crash of the
  process loses nothing (the pages are in the OS cache); a power cut may lose the last interval.
* ``never``    - never synced by us (the OS writes back eventually).

  (Unsynced LMDB commits give the OS no order between data and meta pages, so after a power cut
  ``interval``/``never`` may leave a meta page pointing at unwritten pages; only ``always``, with
  its log and checkpoints, is power-cut safe.)

Room (``StorageFull``)
=====================
LMDB's map (``--map-size``, default 1 TiB of address space; the file grows with the data) and the
disk bound what the store holds.  After every commit the writer checks the room left
(``_check_room``): once less than ``reserve`` (1 % of the map or of the filesystem, whichever is
smaller, at least 64 MiB, at most an eighth of it) is left to grow into, writes that add data -
SEND (bulk and single), CREATE, REGISTER - are answered ``storage full: ...`` without running,
while reads and the writes that free room (ACK, DELETE, sweeps; they need a few pages of the
reserve) go on.  New data is let in again when
LMDB's free list holds twice the reserve (deletes free pages, not disk space: LMDB's file does
not shrink, it reuses them).  A write that still finds the map full (the reserve is
an estimate) fails with the same error - except that a batch is first run again after a
checkpoint, up to ``NO_ROOM_RETRIES`` times: the pages freed since the last checkpoint are pinned
by its reader, and the checkpoint releases them.  While full, checkpoints come every
``FULL_CHECKPOINT_INTERVAL``.  The disk counts the same way: its free space (``statvfs``, every
``DISK_CHECK_INTERVAL``, every commit near its end) less the log's next chunk, which the log
writes ahead; a log that cannot grow by a chunk grows by what its record needs
(``wal.Wal.append``); ENOSPC/EDQUOT - and EIO while the disk is nearly full, LMDB's report of a
short write - answer ``storage full`` too.

Another program may take the rest of the disk, reserve included.  The writes that make room
then still find blocks of the store's own: ``AHEAD_BYTES`` kept allocated past the end of
LMDB's pages once the disk's free space is within 8 reserves + 1 GiB (``_reserve_ahead``,
``fallocate`` without changing the file's size; they count as room), a checkpoint written into
a spare file that is swapped into place (``files.replace_from_spare``), and the log's two
files taking turns (``wal.Wal.append``).  A commit that finds no blocks anyway is retried after
a checkpoint, as for a full map: the pages freed since the last checkpoint are then reused
instead of new ones.

Each worker pins the snapshot of its own last checkpoint.  A worker whose snapshot is older than
the checkpoint file's (another worker checkpointed since) lets it go (``_unpin_if_superseded``):
the newest checkpoint is the one a restart rolls back to, and an idle worker's old snapshot, as
LMDB's oldest reader, kept every page freed after it from reuse - the file grew without bound
while one worker idled (``tests/test_storage_full.py``).

Several worker processes (``--workers N``): per-worker group commit
===================================================================
Each worker commits its own batches; LMDB's writer lock makes the workers take turns (one fsync per
batch per worker).  The alternative, forwarding every write to one writer process that commits
what all workers sent in one transaction, was measured with ``benchmarks/writer_mode.py`` (the
storage pattern of MSG.SEND, 2 workers, closed loop, durable commits; shared 2-core VM):

  ============  ==============  ==============  ========================
  in flight     per-worker      single writer   one process (no IPC)
  per worker    records/s       records/s       records/s, upper bound
  ============  ==============  ==============  ========================
  16            27.7 k          23.8 k          58.7 k
  64            111.8 k         118.9 k         159.5 k
  256           255.4 k         220.7 k         289.5 k
  ============  ==============  ==============  ========================

The single writer is no faster (its batches are barely larger: the producers do not arrive
together), its producer side is not even charged here for what the broker would pay - the
payload crossing a worker link and the reply coming back - and it would make one process the
bottleneck and single point of failure of every durable write.  So each worker writes itself.

Invariants:
* exactly one thread writes (the writer thread) in this process; LMDB serialises writers across
  processes, so another worker process may interleave whole transactions, never parts;
* a ``write`` fn runs in its own nested child transaction; a segment of ``submit`` items runs in
  one child transaction (items re-run one by one on failure, see above);
* results are delivered on the event loop, in submission order, after the commit returned
  (futures' own callbacks then run one loop iteration later, as asyncio schedules them).
"""
from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import queue
import threading
import time
from typing import Any, Callable

import lmdb

from . import files, wal
from .control import Mq9Error

log = logging.getLogger("mq9fast.storage")

#: Room kept for the writes that make room: once less than this is left (LMDB's map or the disk),
#: writes that add data (SEND, CREATE, REGISTER) are refused with ``storage full``, while ACK,
#: DELETE, UNREGISTER, FETCH and the expiry sweeps - which free pages or need only a few - go on.
#: ``max(RESERVE_BYTES, RESERVE_FRACTION of the map or the filesystem, whichever is smaller)``,
#: at most an eighth of that.
RESERVE_BYTES = 64 * 1024**2
RESERVE_FRACTION = 0.01
#: seconds between two looks at the disk's free space (while the store is not full)
DISK_CHECK_INTERVAL = 0.1
#: seconds between checkpoints while the store is full or near it (see ``Store._checkpoints``)
FULL_CHECKPOINT_INTERVAL = 0.1
#: seconds between two looks, by an idle worker, for a newer checkpoint (``_unpin_if_superseded``)
IDLE_CHECK_INTERVAL = 0.1
#: a batch that finds LMDB's map full is run again after a checkpoint, this many times at most,
#: waiting 0.1 s more each time (other workers' checkpoints may be what frees the pages)
NO_ROOM_RETRIES = 3
#: at most this much disk is kept allocated past the end of LMDB's file (``_reserve_ahead``)
AHEAD_BYTES = 16 << 20


class _NoRoom(Exception):
    """Inside ``Store._run_batch``: a write found LMDB's map full (see its ``retry``)."""


_NO_ROOM = object()  # _run_batch's result then


class StorageFull(Mq9Error):
    """A write refused, or failed, for lack of room: LMDB's map (``--map-size``) or the disk.

    Travels to the client as ``{"error": "storage full: ..."}``; the connection stays up and the
    broker goes on serving reads and the writes that make room."""


def _fit_address_space(map_size: int) -> int:
    """LMDB maps the whole ``map_size`` at once; under a limit on the address space (``ulimit
    -v``) that would fail, so the map gets at most a quarter of it (with a warning)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - not Unix
        return map_size
    if soft == resource.RLIM_INFINITY or map_size <= soft // 4:
        return map_size
    log.warning("address space limited to %d bytes (ulimit -v): LMDB map size %d -> %d",
                soft, map_size, soft // 4)
    return soft // 4


def is_full_error(exc: BaseException) -> bool:
    """Whether ``exc`` means "no room": LMDB's map is full, or the disk is (ENOSPC/EDQUOT)."""
    if isinstance(exc, (lmdb.MapFullError, lmdb.DiskError)):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


#: seconds between checkpoints of a writing process (``--fsync always``)
CHECKPOINT_INTERVAL = 1.0

WriteFn = Callable[[lmdb.Transaction], Any]



class Segment:
    """Consecutive ``Store.submit`` items of one bulk kind, applied with one call."""

    __slots__ = ("bulk", "items")

    def __init__(self, bulk: Any, items: list) -> None:
        self.bulk = bulk
        self.items = items


class Store:
    def __init__(self, path: str, *, map_size: int = 1 << 40, fsync: str = "always",
                 fsync_interval_ms: int = 200, max_dbs: int = 64, worker: int = 0,
                 checkpoint_interval: float = CHECKPOINT_INTERVAL) -> None:
        os.makedirs(path, exist_ok=True)
        self.path = path
        self.fsync = fsync
        self.fsync_interval = fsync_interval_ms / 1000.0
        self.worker = worker
        self.checkpoint_interval = checkpoint_interval
        #: --fsync always: LMDB commits unsynced behind the write-ahead log (mq9fast/wal.py)
        self.logged = fsync == "always"
        # whatever the policy now: a previous run under --fsync always may have left a log to replay
        map_size = _fit_address_space(map_size)
        self.recovery = wal.recover(path, map_size, max_dbs)
        if not self.logged:
            wal.forget(path)  # unsynced from here on: a checkpoint would no longer describe LMDB
        self.env = lmdb.open(
            path,
            map_size=map_size,
            max_dbs=max_dbs,
            subdir=True,
            sync=False,
            metasync=False,
            readahead=False,
            max_readers=1024,
        )
        #: bytes kept free for the writes that make room (see ``RESERVE_BYTES``)
        fs = os.statvfs(path)
        capacity = min(map_size, fs.f_blocks * fs.f_frsize)  # (a disk smaller than the map)
        self.reserve = min(max(RESERVE_BYTES, int(capacity * RESERVE_FRACTION)), capacity // 8)
        #: the writer's verdict after its last commit: less than ``reserve`` is left, so writes
        #: that add data fail with ``StorageFull`` (``write(..., grows=True)``, bulks with ``grows``)
        self.full = False
        self.near = False         # less than 4 reserves left to grow into: checkpoint more often
        self.room = map_size      # bytes left at the last check (LMDB's free pages included)
        self._end_seen = 0        # end of LMDB's file at the last check, bytes
        self._no_room = False     # the last failed segment failed on LMDB's map (not the disk)
        self._disk_short = False  # at the last check the disk had less room than LMDB's map
        #: statvfs free bytes, and then the end of what LMDB's file has blocks for (its pages and
        #: the blocks reserved ahead of them)
        self._disk_free = self._disk_end = 0
        self._data_fd = os.open(os.path.join(path, "data.mdb"), os.O_RDWR | os.O_CLOEXEC)
        #: disk blocks kept allocated past LMDB's pages once the disk is near full
        #: (``_reserve_ahead``): enough for the writes that make room between two checkpoints,
        #: not the whole reserve (1 % of the disk)
        self.ahead = min(self.reserve, AHEAD_BYTES)
        self._ahead_end = 0       # LMDB's file has disk blocks up to here
        self._ahead_ok = True     # the filesystem can reserve blocks past a file's end
        self._disk_next = 0.0                  # monotonic time of the next statvfs
        self._disk_near = False   # the disk's free space is within 8 reserves + 1 GiB
        self._psize = self.env.stat()["psize"]
        self._main_db = self.env.open_db(None)
        self.wal: wal.Wal | None = None
        self.checkpointer: wal.Checkpointer | None = None
        self._ckpt_task: asyncio.Task | None = None
        self._names: dict[int, bytes] = {}   # id(db handle) -> name, for the log
        self._dbs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        #: (fn, future, grows) of ``write``, (fn, cb, False, None) of ``write_cb``, Segments
        self._pending: list = []
        self._seg: Segment | None = None  # the trailing segment of _pending, if any
        #: requests queued so far / answered so far (counts in submission order; see ``when_done``)
        self.submitted = 0
        self.completed = 0
        self._batch_ends: collections.deque = collections.deque()  # ``submitted`` at each kick
        self._done_waiters: list = []  # (seq, fn) of when_done, in registration order
        self._busy = False
        self._kick_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sync_task: asyncio.Task | None = None
        self._closed = False
        #: fn(batch size) after every group commit (the /metrics batch-size histogram)
        self.batch_observers: list[Callable[[int], None]] = []
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
                self._names[id(handle)] = name.encode()
            return handle

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        if self.logged and self.wal is None:
            # before the first write: pin a checkpoint, then log from there on
            self.checkpointer = wal.Checkpointer(self.env, self.path)
            self.checkpointer.take()
            ck = wal.read_checkpoint(self.checkpointer.path)
            self.wal = wal.Wal(self.path, ck["gen"], self.worker)
            self._ckpt_task = self._loop.create_task(self._checkpoints())
        if self._thread is None:
            self._thread = threading.Thread(target=self._writer_main, name="mq9fast-writer",
                                            daemon=True)
            self._thread.start()
        if self.fsync == "interval" and self._sync_task is None:
            self._sync_task = self._loop.create_task(self._interval_sync())

    async def _checkpoints(self) -> None:
        """--fsync always: a checkpoint every ``checkpoint_interval`` while this process writes, so
        that the log to replay after a power cut stays short and LMDB may reuse old pages - every
        ``FULL_CHECKPOINT_INTERVAL`` while the store is ``full``, where the pages that deletes
        free are what the refused writes wait for, and each checkpoint lets LMDB reuse them."""
        seen = self.batches
        loop = self._loop
        last = loop.time()
        while not self._closed:
            await asyncio.sleep(min(self.checkpoint_interval, IDLE_CHECK_INTERVAL))
            if self._closed:
                continue
            interval = (min(self.checkpoint_interval, FULL_CHECKPOINT_INTERVAL)
                        if self.full or self.near else self.checkpoint_interval)
            if self.batches == seen or loop.time() - last < interval:
                self._unpin_if_superseded()
                continue
            last = loop.time()
            seen = self.batches
            try:
                await self._loop.run_in_executor(None, self.checkpointer.take)
                # readers of processes that died no longer pin pages (ours is newer than theirs)
                self.env.reader_check()
            except Exception:  # noqa: BLE001 - retried next interval; the log keeps growing
                log.exception("checkpoint failed")

    def _unpin_if_superseded(self) -> None:
        """Once another worker has taken a newer checkpoint (the one a restart after a power cut
        would roll back to, pinned by that worker; our log records after it are replayed from
        our log), our own older snapshot protects nothing - but as the oldest reader it keeps
        LMDB from reusing every page freed since, and while this worker is idle (no checkpoints
        of its own) the file would grow without bound.  Let it go."""
        ck = self.checkpointer
        if ck.reader is None:
            return
        try:
            current = wal.read_checkpoint(ck.path)
        except RuntimeError:
            return
        if current is not None and current["txnid"] > ck.txnid and current["boot"] == wal.boot_id():
            ck.release(blocking=False)

    async def _interval_sync(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.fsync_interval)
            # mdb_env_sync is a plain fdatasync: safe beside a running write transaction
            await self._loop.run_in_executor(None, self.env.sync, True)

    # -- reads ----------------------------------------------------------------------------------
    def read(self) -> lmdb.Transaction:
        """A read-only transaction with zero-copy buffers; use as a context manager."""
        return self.env.begin(buffers=True)

    # -- writes ---------------------------------------------------------------------------------
    def write(self, fn: WriteFn, grows: bool = False) -> asyncio.Future:
        """Run ``fn(txn)`` in the next group-commit batch; the future gets its result when durable.

        ``grows``: the write adds data (a message, a mailbox, an agent), so it fails with
        ``StorageFull`` instead of running while the store is ``full``.
        """
        loop = self._loop
        if loop is None:
            raise RuntimeError("Store.start() was not called")
        fut = loop.create_future()
        if self._closed:
            fut.set_exception(RuntimeError("store is closed"))
            return fut
        self._pending.append((fn, fut, grows))
        self._seg = None
        self.submitted += 1
        if not self._busy and not self._kick_scheduled:
            # Let the rest of this tick's requests join the batch.
            self._kick_scheduled = True
            loop.call_soon(self._kick)
        return fut

    def write_cb(self, fn: WriteFn, cb: Callable[[bool, Any], None]) -> None:
        """Like ``write``, but ``cb(True, result)`` / ``cb(False, exception)`` is called directly."""
        if self._loop is None:
            raise RuntimeError("Store.start() was not called")
        if self._closed:
            cb(False, RuntimeError("store is closed"))
            return
        self._pending.append((fn, cb, False, None))
        self._seg = None
        self.submitted += 1
        if not self._busy and not self._kick_scheduled:
            self._kick_scheduled = True
            self._loop.call_soon(self._kick)

    def submit(self, bulk: Any, item: Any) -> None:
        """Queue ``item`` for ``bulk.apply``; ``bulk.done`` gets its result after the commit."""
        seg = self._seg
        if seg is not None and seg.bulk is bulk:  # (the common case, without a list per item)
            seg.items.append(item)
            self.submitted += 1
            return
        self.submit_many(bulk, [item])

    def submit_many(self, bulk: Any, items: list) -> None:
        """``submit`` every one of ``items`` (a list the store may keep) in order."""
        seg = self._seg
        if seg is not None and seg.bulk is bulk:
            # a trailing segment means requests are pending, so a kick is scheduled or the writer
            # is busy (and _done kicks); close() clears _seg
            seg.items.extend(items)
            self.submitted += len(items)
            return
        if self._closed or self._loop is None:
            bulk.done(items, RuntimeError("store is closed"))
            return
        self.submitted += len(items)
        self._seg = Segment(bulk, items)
        self._pending.append(self._seg)
        if not self._busy and not self._kick_scheduled:
            self._kick_scheduled = True
            self._loop.call_soon(self._kick)

    def write_now(self, fn: WriteFn) -> Any:
        """Run ``fn`` in its own synchronous transaction on the calling thread (start-up, tests).

        Must not be used while the writer thread may be writing (it would wait for its lock).
        """
        if not self.logged:
            with self.env.begin(write=True) as txn:
                return fn(txn)
        if self.wal is None:
            raise RuntimeError("Store.start() was not called")
        txn = self.env.begin(write=True)
        ops = wal.OpLog()
        try:
            value = fn(wal.LoggedTxn(txn, ops, self._names))
        except BaseException:
            txn.abort()
            raise
        self._log_and_commit(txn, ops)
        return value

    def _kick(self) -> None:
        self._kick_scheduled = False
        if self._busy or not self._pending:
            return
        batch, self._pending = self._pending, []
        self._seg = None
        self._busy = True
        self._batch_ends.append(self.submitted)  # this batch holds everything queued so far
        self._jobs.put(batch)

    # -- writer thread --------------------------------------------------------------------------
    def _writer_main(self) -> None:
        jobs = self._jobs
        while True:
            batch = jobs.get()
            if batch is None:
                return
            try:
                results = self._run_batch(batch, self.checkpointer is not None)
                tries = 0
                while results is _NO_ROOM:
                    # LMDB's map (or the disk) is full, but the pages freed since the last
                    # checkpoint are pinned by its reader (and other workers' by theirs):
                    # checkpoint now - LMDB may then reuse them - and run the batch again; the
                    # last try fails with StorageFull
                    tries += 1
                    time.sleep(0.1 * (tries - 1))
                    try:
                        self.checkpointer.take()
                    except Exception:  # noqa: BLE001 - the batch then fails with StorageFull
                        log.exception("checkpoint for room failed")
                    results = self._run_batch(batch, tries < NO_ROOM_RETRIES)
            except BaseException as exc:  # noqa: BLE001 - a bug must fail this batch, not the thread
                log.exception("group commit failed")
                results = exc
            try:
                self._loop.call_soon_threadsafe(self._done, batch, results)
            except RuntimeError:  # the loop is gone (shutdown without drain): nobody to tell
                return

    def _run_batch(self, batch: list, retry: bool = False) -> Any:
        """Writer thread: one transaction, child transactions per request/segment, one commit.

        Returns one result per entry (``(ok, value)`` for a ``write``, a list or an exception for a
        segment), or the exception that failed the whole transaction.  ``retry``: if a write finds
        LMDB's map full, abort everything and return ``_NO_ROOM`` (the caller checkpoints and runs
        the batch again) instead of failing that write with ``StorageFull``.
        """
        env = self.env
        results: list = []
        ops = wal.OpLog() if self.logged else None
        if self.full:  # look again first: room may have come back (files deleted) since
            try:
                self._check_room()
            except Exception:  # noqa: BLE001
                log.exception("room check failed")
        full = self.full
        try:
            txn = env.begin(write=True)
        except BaseException as exc:  # noqa: BLE001 - e.g. an environment that became unusable
            log.exception("group commit failed: no write transaction")
            return exc
        try:
            for entry in batch:
                if entry.__class__ is Segment:
                    if full and getattr(entry.bulk, "grows", False):
                        results.append(self._full_error())
                        continue
                    out = self._run_segment(txn, entry, ops)
                    if retry and out.__class__ is StorageFull and self._no_room:
                        raise _NoRoom
                    results.append(out)
                    continue
                if full and entry[2]:
                    results.append((False, self._full_error()))
                    continue
                child = env.begin(write=True, parent=txn)
                cops = None if ops is None else wal.OpLog()
                try:
                    value = entry[0](child if ops is None else wal.LoggedTxn(child, cops, self._names))
                except BaseException as exc:  # noqa: BLE001 - handed to the requester
                    child.abort()
                    if self._is_full(exc):
                        if retry and isinstance(exc, lmdb.MapFullError):
                            raise _NoRoom from None
                        exc = self._full_error(exc)
                    results.append((False, exc))
                else:
                    child.commit()
                    if cops:
                        ops.extend(cops)
                    results.append((True, value))
        except _NoRoom:
            txn.abort()
            return _NO_ROOM
        except BaseException as exc:  # noqa: BLE001
            txn.abort()
            log.exception("group commit failed")
            return exc
        try:
            if ops is None:
                txn.commit()
            else:
                self._log_and_commit(txn, ops)
        except BaseException as exc:  # noqa: BLE001
            if retry and (isinstance(exc, lmdb.MapFullError) or self._is_full(exc)):
                # (the commit allocates pages too: the free list, the meta; and on a disk that
                # another program filled, its new pages may find no blocks: the same remedy)
                return _NO_ROOM
            if self._is_full(exc):
                log.warning("group commit failed: %s", exc)
                return self._full_error(exc)
            log.exception("group commit failed")
            return exc
        try:
            self._check_room()
        except Exception:  # noqa: BLE001 - statistics must not fail a commit that happened
            log.exception("room check failed")
        return results

    # -- room (writer thread) -------------------------------------------------------------------
    def _is_full(self, exc: BaseException) -> bool:
        """``is_full_error``, or an I/O error while the disk is nearly full: a write that finds
        the disk full part-way is a short write, which LMDB reports as EIO."""
        if is_full_error(exc):
            return True
        eio = (isinstance(exc, OSError) and exc.errno == errno.EIO) or (
            isinstance(exc, lmdb.Error) and "Input/output error" in str(exc))
        if not eio:
            return False
        st = os.statvfs(self.path)
        if st.f_bavail * st.f_frsize >= self.reserve:
            return False
        self._disk_short = True
        return True

    def _full_error(self, cause: BaseException | None = None) -> StorageFull:
        """The ``StorageFull`` of a refused or failed write; a failure makes the store ``full``
        until the next commit's room check says otherwise."""
        if cause is not None:
            self.full = True
        if isinstance(cause, (OSError, lmdb.DiskError)) or self._disk_short:
            why = "the disk is full"
        else:
            why = f"the store reached its size limit (--map-size {self.env.info()['map_size']} bytes)"
        if cause is None:  # a refused write that adds data
            why += "; delete messages or let them expire to make room"
        return StorageFull(f"storage full: {why}")

    def _reserve_ahead(self, end: int) -> None:
        """Keep ``ahead`` bytes of disk blocks allocated past the end of LMDB's pages (without
        changing the file's size), so that the commits that make room (ACK, DELETE, sweeps) find
        blocks when another program has taken the rest of the disk.  The blocks count as used in
        ``statvfs`` and as room here (``_disk_end``)."""
        for length in (self.ahead, self.ahead // 8):
            try:
                if not files.reserve_blocks(self._data_fd, end, length):
                    self._ahead_ok = False  # (this filesystem cannot; LMDB's file grows as before)
                    return
            except OSError as exc:
                if is_full_error(exc):
                    continue
                raise
            self._ahead_end = max(self._ahead_end, end + length)
            return

    def _check_room(self) -> None:
        """After a commit: is there room for new data?  Far from the end of LMDB's map (and of
        the disk, asked at most every ``DISK_CHECK_INTERVAL``) yes.  Within ``reserve`` of it:
        new data is refused (``full``) as soon as the file grows into the reserve, and let in
        again once LMDB's free list (pages that deletes and expiry gave back, which LMDB reuses
        before growing the file) holds twice the reserve (so that the pages each commit copies,
        which the next checkpoint frees, cannot by themselves keep letting new data in).  Other
        workers' readers may pin some of those pages for a while, so that figure can be
        optimistic: a batch let in too early grows the file again, which turns ``full`` back on
        at once.  Also called before a batch while ``full`` (room may have come back)."""
        info = self.env.info()
        end = (info["last_pgno"] + 1) * self._psize
        now = time.monotonic()
        if now >= self._disk_next:
            st = os.statvfs(self.path)
            self._disk_free = st.f_bavail * st.f_frsize
            self._disk_end = max(end, self._ahead_end)
            # near the disk's end, look every commit (the log grows too, not only LMDB's file)
            near = self._disk_free < 8 * self.reserve + (1 << 30)
            self._disk_next = now + (0.0 if near else DISK_CHECK_INTERVAL)
            self._disk_near = near
        if self._disk_near and self._ahead_ok and self._ahead_end - end < self.ahead // 2:
            self._reserve_ahead(end)
        disk = self._disk_free + self._disk_end - end  # (what is left of the blocks ahead counts)
        if self.wal is not None:  # room for the log's next chunk, which it writes ahead
            disk -= self.wal.next_extension()
        grow = min(info["map_size"] - end, disk)
        self._disk_short = disk < info["map_size"] - end
        self.near = grow < 4 * self.reserve
        if grow >= self.reserve:
            full, room = False, grow
        else:
            free = None if end > self._end_seen else self._free_pages(info["last_pgno"])
            if free is None:  # the file grew into the reserve (or the free list is unknown now)
                full, room = end > self._end_seen or self.full, grow
            else:
                room = grow + free * self._psize
                full = self.full and free * self._psize < 2 * self.reserve
        self._end_seen = end
        self.room = room
        if full != self.full:
            if full:
                log.warning("storage full: %d bytes left to grow into, below the reserve of %d: "
                            "SEND, CREATE and REGISTER are refused until messages are deleted or "
                            "expire", grow, self.reserve)
            else:
                log.warning("storage has room again: %d bytes", room)
        self.full = full

    def _free_pages(self, last_pgno: int) -> int | None:
        """Pages below the end of LMDB's file that no database uses and that LMDB may hand out
        again: those free now, and while our checkpoint's reader is pinned no more than were free
        in its snapshot.  None when that cannot be told now (the checkpoint is being replaced, or
        predates one of the databases): the caller keeps its verdict until a later commit."""
        with self._lock:
            handles = [self._main_db] + list(self._dbs.values())
        with self.env.begin() as txn:
            free = max(0, last_pgno + 1 - 2 - self._used_pages(txn, handles))
        ck = self.checkpointer
        if ck is None or ck.reader is None:
            return free
        # pages freed after the checkpoint are pinned by its reader, and pages free then may have
        # been handed out since: at most the smaller of the two counts is free to reuse now
        if not ck._mutex.acquire(blocking=False):
            return None
        try:
            if ck.reader is None:
                return free
            try:
                used = self._used_pages(ck.reader, handles)
            except lmdb.InvalidParameterError:  # a database opened after that snapshot
                return None
            return min(free, max(0, ck.last_pgno + 1 - 2 - used))
        finally:
            ck._mutex.release()

    @staticmethod
    def _used_pages(txn, handles: list) -> int:
        used = 0
        for h in handles:
            st = txn.stat(h)
            used += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return used

    def _log_and_commit(self, txn, ops) -> None:
        """--fsync always: the transaction's record is durable in the log before it commits
        (unsynced); a commit that fails after that gets an abort record (if the log has no room
        for it, the next append writes it first: only a power cut before then replays the
        failed transaction)."""
        if not ops:
            txn.commit()
            return
        txnid = txn.id()
        try:
            self.wal.append(txnid, ops.getvalue())
        except BaseException:
            txn.abort()
            raise
        try:
            txn.commit()
        except BaseException:
            try:
                self.wal.append(txnid, b"", wal.FLAG_ABORT)
            except OSError:  # no room for it either: it goes first into the next append
                self.wal.abort_pending = txnid
            raise

    def _run_segment(self, txn, seg: Segment, ops) -> list:
        env = self.env
        apply = seg.bulk.apply
        names = self._names
        child = env.begin(write=True, parent=txn)
        cops = None if ops is None else wal.OpLog()
        try:
            out = apply(child if ops is None else wal.LoggedTxn(child, cops, names), seg.items)
        except BaseException as exc:  # noqa: BLE001 - isolate the culprit below
            child.abort()
            if self._is_full(exc):  # no culprit: there is no room for any of them
                self._no_room = isinstance(exc, lmdb.MapFullError)
                return self._full_error(exc)
            log.warning("bulk apply failed; re-applying %d items one by one", len(seg.items),
                        exc_info=True)
        else:
            child.commit()
            if cops:
                ops.extend(cops)
            return out
        out = []
        for item in seg.items:
            child = env.begin(write=True, parent=txn)
            cops = None if ops is None else wal.OpLog()
            try:
                r = apply(child if ops is None else wal.LoggedTxn(child, cops, names), [item])[0]
            except BaseException as exc:  # noqa: BLE001 - handed to the requester
                child.abort()
                out.append(exc)
            else:
                child.commit()
                if cops:
                    ops.extend(cops)
                out.append(r)
        return out

    # -- completion (event loop) ----------------------------------------------------------------
    def when_done(self, seq: int, fn: Callable[[], None]) -> None:
        """Call ``fn()`` once the first ``seq`` requests ever queued (``submitted`` then) have all
        been answered - at once if they have.  Lets a connection's read wait for its own writes."""
        if seq <= self.completed:
            fn()
        else:
            self._done_waiters.append((seq, fn))

    def _done(self, batch: list, results: Any) -> None:
        end = self._batch_ends.popleft()
        self._busy = False
        if self._pending:  # start the next commit before answering this one
            self._kick()
        n = 0
        for entry in batch:
            n += len(entry.items) if entry.__class__ is Segment else 1
        self.batches += 1
        self.batched_writes += n
        self.last_batch_size = n
        if n > self.max_batch_size:
            self.max_batch_size = n
        for ob in self.batch_observers:
            try:
                ob(n)
            except Exception:  # noqa: BLE001 - metrics never break a commit
                pass
        failed = isinstance(results, BaseException)
        for i, entry in enumerate(batch):
            r = results if failed else results[i]
            if entry.__class__ is Segment:
                try:
                    entry.bulk.done(entry.items, r)
                except Exception:  # noqa: BLE001 - must not stop the other replies
                    log.exception("bulk completion failed")
                continue
            if len(entry) == 4:  # write_cb
                try:
                    if failed:
                        entry[1](False, r)
                    else:
                        entry[1](r[0], r[1])
                except Exception:  # noqa: BLE001 - must not stop the other replies
                    log.exception("write completion failed")
                continue
            fut = entry[1]
            if fut.done():
                continue
            if failed:
                fut.set_exception(r)
            elif r[0]:
                fut.set_result(r[1])
            else:
                fut.set_exception(r[1])
        self.completed = end
        if self._done_waiters:
            ready = [w for w in self._done_waiters if w[0] <= end]
            if ready:
                self._done_waiters = [w for w in self._done_waiters if w[0] > end]
                for _seq, fn in ready:
                    try:
                        fn()
                    except Exception:  # noqa: BLE001 - one waiter must not stop the others
                        log.exception("completion waiter failed")

    # -- shutdown -------------------------------------------------------------------------------
    async def drain(self) -> None:
        """Wait until every queued write has committed."""
        while self._pending or self._busy:
            await asyncio.sleep(0.001)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._seg = None
        if self._sync_task is not None:
            self._sync_task.cancel()
        if self._ckpt_task is not None:
            self._ckpt_task.cancel()
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
        try:
            if self.checkpointer is not None:
                self.checkpointer.take()  # a clean stop leaves nothing to replay
                self.checkpointer.close()
            elif self.fsync != "never":
                self.env.sync(True)
        except Exception:  # noqa: BLE001 - the log still holds every commit; stop anyway
            log.exception("final checkpoint/sync failed")
        finally:
            if self.wal is not None:
                self.wal.close()
            self.env.close()
            os.close(self._data_fd)
