"""The write-ahead log that makes a durable commit cost one device flush instead of LMDB's two.

Why
===
LMDB's own durable commit (``sync=True, metasync=True``) fdatasyncs the data file - scattered
pages, usually growing the file, so the filesystem journal commits too - and then writes the meta
page through an ``O_DSYNC`` descriptor: two device flushes, ≈ 650 µs for a 200-message commit on
this VM (``storage.py``'s docstring).  Overwriting a region of an already allocated, zero-filled
file and fdatasyncing it costs ≈ 120-140 µs whatever the size up to 64 KiB: nothing but the data
goes to the device.  So with ``--fsync always`` LMDB commits are *not* synced; every write
transaction is first described in this log (its puts and deletes, as bytes) and the log is
fdatasynced; only then does the transaction commit and its requests get their replies.

What has to be true after a power cut
=====================================
Unsynced LMDB commits give the OS no order between pages, so after a power cut the data file may
hold a meta page whose tree was never written.  Recovery therefore never trusts the newest LMDB
state; it rebuilds it from the last *checkpoint* plus the log:

* **Checkpoint** (``Checkpointer.take``): while holding LMDB's writer lock (no commit can
  interleave), ``env.sync`` flushes the data file, the two meta pages (the first two pages of
  ``data.mdb``) are read back and saved with the last transaction id ``C`` in the file
  ``checkpoint`` (written into ``checkpoint.spare``, fsynced, swapped with ``checkpoint``
  atomically, directory fsynced: ``files.replace_from_spare``), and a read transaction is
  opened on snapshot ``C`` and *kept open* until the next checkpoint is durable.  LMDB never
  reuses a page that an open reader's snapshot can see, so every page of snapshot ``C`` stays
  exactly as it was flushed, whatever is written after it.
* **Log**: each worker process appends to its own pair of files ``wal/<generation>/<worker>.a|b``
  (the generation is named in the checkpoint file and changes only when a recovery has replayed
  the log).  A record is ``magic, length, txnid, flags, crc32`` and the operations (built by an
  ``OpLog``: ``_wallog.pyx``, twin ``wallog_py.py``); the crc covers the file's *epoch*
  too, so records left over from an earlier use of the file never validate.  A record is written
  and fdatasynced while the transaction still holds LMDB's writer lock, so record order by
  ``txnid`` is the global commit order over all workers.  Where the filesystem allows it the
  record goes through an ``O_DIRECT | O_DSYNC`` descriptor (durable when ``pwrite`` returns: no
  page-cache copy, no separate fdatasync), rewriting its first block's earlier bytes unchanged and
  padding with zeros to the block end; elsewhere it is ``pwritev`` + ``fdatasync``.
* **Recovery** (``recover``, before LMDB is opened): the checkpoint file names the boot it was
  taken in (``/proc/sys/kernel/random/boot_id``).  In the same boot the page cache survived (a
  process crash, kill -9, a clean stop): LMDB is current and nothing is replayed.  After a reboot
  the saved meta pages are written back (LMDB opens snapshot ``C``, intact), then every valid log
  record with ``txnid > C`` is re-applied in ``txnid`` order, and a checkpoint of the result
  starts the next generation of log files (the replayed ones are deleted after it).

A transaction whose record is durable but whose commit then failed gets an *abort* record with the
same txnid (the next transaction reuses the id); replay skips aborted records.

Invariants:
* every write transaction of a ``--fsync always`` store goes through ``LoggedTxn`` (nothing writes
  the LMDB environment except through it) and its record is durable before it commits;
* a checkpoint's snapshot is protected by an open reader until a newer checkpoint file is durable;
* a log file is reused only when its records are all older than the durable checkpoint.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import mmap
import os
import shutil
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Iterable

import lmdb

from .files import replace_from_spare

log = logging.getLogger("mq9fast.wal")

REC_MAGIC = 0x4C41573D          # "=WAL"
REC = struct.Struct("<IIQII")   # magic, body length, txnid, flags, crc32(epoch, txnid, flags, body)
FLAG_ABORT = 1
OP = struct.Struct("<BBII")     # kind, db-name length, key length, value length
PUT, DELETE, DROP_EMPTY, DROP_DELETE = 1, 2, 3, 4
FILE_MAGIC = b"MQ9WAL1\0"
FILE_HEAD = struct.Struct("<8sQI")  # magic, epoch, crc32 of the two
HEAD_BYTES = 4096
# Log files are zero-filled ahead of the writer, so that an append never grows the file (an
# fdatasync that must also commit a new size costs a journal commit): by half the file's size,
# between these bounds (a broker that writes little keeps a small log).
CHUNK_MIN = 1 << 20
CHUNK_MAX = 16 << 20
SWITCH_BYTES = 64 << 20         # move to the other file past this (once it is checkpointed)
SWITCH_RETRY_BYTES = 1 << 20    # ... and while it is not, look again after this much more
#: direct I/O unit: appends rewrite the record's blocks from this boundary, padded to it
ALIGN = 4096
#: append through ``O_DIRECT | O_DSYNC`` where the filesystem allows it (``MQ9FAST_WAL_DIRECT=0``:
#: always write + fdatasync; a test and A/B switch)
DIRECT = os.environ.get("MQ9FAST_WAL_DIRECT", "1") != "0" and hasattr(os, "O_DIRECT")
CHECKPOINT_FILE = "checkpoint"
WAL_DIR = "wal"


def boot_id() -> str:
    """This boot of the machine (tests may pretend a reboot with MQ9FAST_BOOT_ID)."""
    forced = os.environ.get("MQ9FAST_BOOT_ID")
    if forced:
        return forced
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: treat every start as a reboot (replay is always safe)
        return ""


# ------------------------------------------------------------------------------ operations
# A record's body is its operations back to back: OP header, db name, key, value, built by an
# ``OpLog`` (compiled ``_wallog``, or its twin ``wallog_py``) as the transaction writes.
if os.environ.get("MQ9FAST_PURE_PYTHON"):
    from .wallog_py import LoggedCursor, OpLog
else:
    try:
        from ._wallog import LoggedCursor, OpLog  # type: ignore[attr-defined]
    except ImportError:  # not built (a plain source checkout)
        from .wallog_py import LoggedCursor, OpLog  # type: ignore[assignment]


def decode_ops(body: bytes) -> Iterable[tuple[int, bytes, bytes, bytes]]:
    view = memoryview(body)
    pos = 0
    end = len(body)
    while pos < end:
        kind, nl, kl, vl = OP.unpack_from(view, pos)
        pos += OP.size
        name = bytes(view[pos:pos + nl])
        pos += nl
        key = bytes(view[pos:pos + kl])
        pos += kl
        value = bytes(view[pos:pos + vl])
        pos += vl
        yield kind, name, key, value


class LoggedTxn:
    """A write transaction that logs its puts and deletes in ``log`` (an ``OpLog``)."""

    __slots__ = ("txn", "log", "_names")

    def __init__(self, txn, log, names: dict) -> None:
        self.txn = txn
        self.log = log
        self._names = names   # id(db handle) -> name bytes (the main db: b"")

    def _name(self, db) -> bytes:
        return b"" if db is None else self._names[id(db)]

    def put(self, key, value, dupdata=True, overwrite=True, append=False, db=None):
        done = self.txn.put(key, value, dupdata, overwrite, append, db)
        if done:
            self.log.add(PUT, self._name(db), key, value)
        return done

    def replace(self, key, value, db=None):
        old = self.txn.replace(key, value, db=db)
        self.log.add(PUT, self._name(db), key, value)
        return old

    def delete(self, key, value=b"", db=None):
        if value:
            raise ValueError("LoggedTxn.delete(key, value): no dupsort databases here")
        done = self.txn.delete(key, db=db)
        if done:
            self.log.add(DELETE, self._name(db), key, b"")
        return done

    def pop(self, key, db=None):
        old = self.txn.pop(key, db=db)
        if old is not None:
            self.log.add(DELETE, self._name(db), key, b"")
        return old

    def drop(self, db, delete=True):
        self.txn.drop(db, delete=delete)
        self.log.add(DROP_DELETE if delete else DROP_EMPTY, self._name(db), b"", b"")

    def cursor(self, db=None):
        return LoggedCursor(self.txn.cursor(db=db), self.log, self._name(db))

    def __getattr__(self, attr):  # get, stat, id, ...
        return getattr(self.txn, attr)


def apply_ops(env, txn, body: bytes, dbs: dict) -> None:
    """Re-apply one record's operations in ``txn`` (recovery)."""
    for kind, name, key, value in decode_ops(body):
        db = dbs.get(name)
        if db is None:
            db = dbs[name] = env.open_db(name or None, txn=txn, create=True) if name else None
        if kind == PUT:
            txn.put(key, value, db=db)
        elif kind == DELETE:
            txn.delete(key, db=db)
        elif kind in (DROP_EMPTY, DROP_DELETE):
            txn.drop(db, delete=(kind == DROP_DELETE))
            if kind == DROP_DELETE:
                dbs.pop(name, None)
        else:
            raise ValueError(f"unknown log operation {kind}")


# ------------------------------------------------------------------------------ log files
def _file_epoch(fd: int) -> int | None:
    head = os.pread(fd, FILE_HEAD.size, 0)
    if len(head) < FILE_HEAD.size:
        return None
    magic, epoch, crc = FILE_HEAD.unpack(head)
    if magic != FILE_MAGIC or crc != zlib.crc32(head[:16]):
        return None
    return epoch


def _records(fd: int, epoch: int, size: int):
    """Valid records of a log file of ``epoch``: (offset after it, txnid, flags, body)."""
    off = HEAD_BYTES
    seed = struct.pack("<Q", epoch)
    while off + REC.size <= size:
        hdr = os.pread(fd, REC.size, off)
        magic, length, txnid, flags, crc = REC.unpack(hdr)
        if magic != REC_MAGIC or off + REC.size + length > size:
            return
        body = os.pread(fd, length, off + REC.size)
        if len(body) != length or zlib.crc32(body, zlib.crc32(hdr[8:20], zlib.crc32(seed))) != crc:
            return
        off += REC.size + length
        yield off, txnid, flags, body


def _open_direct(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDWR | os.O_DIRECT | os.O_DSYNC)
    except OSError:  # e.g. a filesystem without direct I/O
        return None


def wal_dir(path: str, gen: int) -> str:
    return os.path.join(path, WAL_DIR, str(gen))


def _zero_fill(fd: int, pos: int, to: int) -> int:
    """Write zeros from ``pos`` up to ``to`` (files grow in chunks of zeros written ahead);
    returns the end reached (``OSError`` part-way, e.g. ENOSPC)."""
    zeros = bytes(min(1 << 20, max(0, to - pos)))
    while pos < to:
        pos += os.pwrite(fd, zeros[: to - pos], pos)
    return pos


class Wal:
    """One worker's log: two files used in turn, appended to and fdatasynced by the writer thread."""

    def __init__(self, path: str, gen: int, worker: int) -> None:
        self.dir = wal_dir(path, gen)
        os.makedirs(self.dir, exist_ok=True)
        self.paths = [os.path.join(self.dir, f"{worker}.{s}") for s in "ab"]
        self.ckpt_path = os.path.join(path, CHECKPOINT_FILE)
        self.fds = [os.open(p, os.O_RDWR | os.O_CREAT, 0o644) for p in self.paths]
        #: the same files opened O_DIRECT | O_DSYNC (None: not supported here, see ``append``)
        self.dfds: list = [_open_direct(p) for p in self.paths] if DIRECT else [None, None]
        self._buf: mmap.mmap | None = None   # page-aligned staging buffer of direct appends
        self.appends = 0
        self.bytes = 0
        self.seconds = 0.0     # in write + fdatasync
        #: fn(seconds) after every append (the /metrics histogram)
        self.observers: list = []
        #: txnid whose abort record could not be written (no room): written before the next record
        self.abort_pending: int | None = None
        # one pass over each file: its epoch, newest txnid and the end of its valid records; the
        # newest file is continued after its last record (its records may still be needed)
        self.max_txnid = [0, 0]   # newest txnid written to each file (0: none / not needed)
        ends = [HEAD_BYTES, HEAD_BYTES]
        best = None
        for i, fd in enumerate(self.fds):
            epoch = _file_epoch(fd)
            if epoch is None:
                continue
            for end, txnid, _f, _b in _records(fd, epoch, os.fstat(fd).st_size):
                ends[i] = end
                self.max_txnid[i] = max(self.max_txnid[i], txnid)
            if best is None or epoch > best[1]:
                best = (i, epoch)
        if best is None:
            self.cur, self.epoch = 0, 1
            self._start_file(0, 1)
        else:
            self.cur, self.epoch = best
            self.off = ends[self.cur]
            self.size = os.fstat(self.fds[self.cur]).st_size
            self._switch_at = SWITCH_BYTES
        self._seed = zlib.crc32(struct.pack("<Q", self.epoch))
        self._load_tail()
        self._presize(1 - self.cur)

    def _presize(self, i: int) -> None:
        """Give file ``i`` (not the current one) its first chunk of zeros now, while there is
        room: when the disk fills up, ``append`` can go on in it (see there)."""
        fd = self.fds[i]
        try:  # (past its records, if it has any: they are left alone)
            _zero_fill(fd, os.fstat(fd).st_size, HEAD_BYTES + CHUNK_MIN)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise

    def _load_tail(self) -> None:
        """Keep the bytes of the current block before ``off``: a direct append rewrites them."""
        start = self.off - self.off % ALIGN
        self._tail = os.pread(self.fds[self.cur], self.off - start, start)

    def _start_file(self, i: int, epoch: int) -> None:
        fd = self.fds[i]
        head = FILE_MAGIC + struct.pack("<Q", epoch)
        block = FILE_HEAD.pack(FILE_MAGIC, epoch, zlib.crc32(head)).ljust(HEAD_BYTES, b"\0")
        os.pwrite(fd, block, 0)
        self.size = os.fstat(fd).st_size
        if self.size < HEAD_BYTES + CHUNK_MIN:
            self._extend(fd, HEAD_BYTES + CHUNK_MIN)
        os.fdatasync(fd)
        self.cur, self.epoch, self.off = i, epoch, HEAD_BYTES
        self._switch_at = SWITCH_BYTES
        self.max_txnid[i] = 0
        self._seed = zlib.crc32(struct.pack("<Q", epoch))
        self._load_tail()

    def next_extension(self) -> int:
        """Bytes the next growth of the current file adds beyond the record that needs it (the
        files grow in chunks of zeros, written ahead: ``Store`` counts them as used disk)."""
        return max(CHUNK_MIN, min(CHUNK_MAX, self.size // 2))

    def _extend(self, fd: int, to: int) -> None:
        self.size = _zero_fill(fd, self.size, to)

    def _header(self, txnid: int, body: bytes, flags: int) -> bytes:
        """A record's header for the current file (its CRC is seeded with the file's epoch)."""
        crc = zlib.crc32(body, zlib.crc32(struct.pack("<QI", txnid, flags), self._seed))
        return REC.pack(REC_MAGIC, len(body), txnid, flags, crc)

    def append(self, txnid: int, body: bytes, flags: int = 0) -> None:
        """Write one record and fdatasync it (writer thread, LMDB writer lock held)."""
        if self.abort_pending is not None:
            pending, self.abort_pending = self.abort_pending, None
            try:
                self.append(pending, b"", FLAG_ABORT)
            except BaseException:
                self.abort_pending = pending
                raise
        if self.off > self._switch_at:
            self._maybe_switch()
        rec = self._header(txnid, body, flags)
        fd = self.fds[self.cur]
        end = self.off + len(rec) + len(body)
        # a record leaves room for an abort record after it, so that the abort of a commit that
        # fails never needs the disk to have room
        need = len(rec) + len(body) + (0 if flags & FLAG_ABORT else REC.size)
        if self.off + need > self.size:
            try:
                self._extend(fd, self.off + need + self.next_extension())
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                # the disk is (nearly) full: go on in the other file if it is long enough and all
                # its records are checkpointed (its blocks are ours: the two files take turns
                # with no new room), else grow by just what this record needs, if there is that
                if (os.fstat(self.fds[1 - self.cur]).st_size >= HEAD_BYTES + need
                        and self._maybe_switch()):
                    rec = self._header(txnid, body, flags)  # (the new epoch seeds the CRC)
                    fd, end = self.fds[self.cur], self.off + len(rec) + len(body)
                else:
                    self._extend(fd, -(-(self.off + need) // ALIGN) * ALIGN)
        t0 = time.perf_counter()
        dfd = self.dfds[self.cur]
        if dfd is None or not self._write_direct(dfd, rec, body, end):
            os.pwritev(fd, [rec, body], self.off)
            os.fdatasync(fd)
        dt = time.perf_counter() - t0
        self.seconds += dt
        for ob in self.observers:
            ob(dt)
        self.off = end
        if txnid > self.max_txnid[self.cur]:
            self.max_txnid[self.cur] = txnid
        self.appends += 1
        self.bytes += len(rec) + len(body)

    def _write_direct(self, dfd: int, rec: bytes, body: bytes, end: int) -> bool:
        """Write the record through the O_DIRECT | O_DSYNC descriptor: the blocks from the one
        holding ``off`` on, that block's earlier bytes (``_tail``) rewritten unchanged, zeros after
        the record.  Durable on return: no fdatasync, no page-cache copy (≈ 30 µs less CPU and
        15-40 µs less latency than write + fdatasync on this VM).  False if the filesystem refuses
        direct I/O (the descriptors are dropped; the caller writes the ordinary way)."""
        start = self.off - len(self._tail)
        n = len(self._tail) + len(rec) + len(body)
        padded = -(-n // ALIGN) * ALIGN
        buf = self._buf
        if buf is None or len(buf) < padded:
            buf = self._buf = mmap.mmap(-1, max(padded, 1 << 20))
        buf[:len(self._tail)] = self._tail
        buf[len(self._tail):len(self._tail) + len(rec)] = rec
        buf[len(self._tail) + len(rec):n] = body
        buf[n:padded] = bytes(padded - n)
        try:
            os.pwrite(dfd, memoryview(buf)[:padded], start)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            log.warning("log %s: direct I/O refused (%s); using write + fdatasync", self.dir, exc)
            for i, d in enumerate(self.dfds):
                if d is not None:
                    os.close(d)
                self.dfds[i] = None
            return False
        keep = end % ALIGN
        self._tail = bytes(buf[n - keep:n]) if keep else b""
        return True

    def _maybe_switch(self) -> bool:
        """Move on to the other file if every record in it is checkpointed; -> whether it did."""
        other = 1 - self.cur
        ck = read_checkpoint(self.ckpt_path)
        if ck is not None and ck["txnid"] >= self.max_txnid[other]:
            self._start_file(other, self.epoch + 1)
            return True
        # the other file still holds records newer than the checkpoint: look again later
        self._switch_at = self.off + SWITCH_RETRY_BYTES
        return False

    def close(self) -> None:
        for fd in self.fds + [d for d in self.dfds if d is not None]:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


# ------------------------------------------------------------------------------ checkpoints
def read_checkpoint(path: str) -> dict | None:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return None
    head, _, metas = raw.partition(b"\n")
    info = json.loads(head)
    psize = info["psize"]
    if len(metas) != 2 * psize or zlib.crc32(metas) != info["crc"]:
        raise RuntimeError(f"{path}: damaged checkpoint file")
    info["metas"] = metas
    return info


def _write_checkpoint(path: str, txnid: int, psize: int, metas: bytes, gen: int) -> None:
    head = json.dumps({"txnid": txnid, "psize": psize, "boot": boot_id(), "crc": zlib.crc32(metas),
                       "gen": gen,
                       "time": time.time(), "pid": os.getpid()}).encode()
    replace_from_spare(path, head + b"\n" + metas)  # (works on a full disk: no new blocks)


class Checkpointer:
    """Takes checkpoints of one environment and keeps the newest one's snapshot pinned."""

    def __init__(self, env, path: str) -> None:
        self.env = env
        self.path = os.path.join(path, CHECKPOINT_FILE)
        self.data = os.path.join(path, "data.mdb")
        self.lock_path = os.path.join(path, "checkpoint.lock")
        self.reader = None      # read txn on our last checkpoint's snapshot
        self.txnid = -1
        self.last_pgno = 0      # LMDB's last page number in that snapshot
        self.taken = 0
        self.last_seconds = 0.0
        self.locked_seconds = 0.0   # of the last checkpoint, with LMDB's writer lock held
        self._mutex = threading.Lock()

    def take(self) -> int:
        """Checkpoint now (blocking; call off the event loop).  Returns its txnid."""
        with self._mutex:
            t0 = time.perf_counter()
            env = self.env
            env.sync(True)  # the bulk of the dirty pages, without blocking writers
            lockfd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(lockfd, fcntl.LOCK_EX)
                wtxn = env.begin(write=True)  # LMDB's writer lock: no commit interleaves
                t1 = time.perf_counter()
                try:
                    txnid = wtxn.id() - 1
                    last_pgno = env.info()["last_pgno"]  # of the snapshot ``reader`` pins
                    env.sync(True)
                    psize = env.stat()["psize"]
                    fd = os.open(self.data, os.O_RDONLY)
                    try:
                        metas = os.pread(fd, 2 * psize, 0)
                    finally:
                        os.close(fd)
                    reader = env.begin()
                finally:
                    wtxn.abort()
                    self.locked_seconds = time.perf_counter() - t1
                try:
                    current = read_checkpoint(self.path)
                except RuntimeError:
                    current = None
                if current is None or current["txnid"] <= txnid or current["boot"] != boot_id():
                    gen = current["gen"] if current is not None else 1
                    _write_checkpoint(self.path, txnid, psize, metas, gen)
            finally:
                os.close(lockfd)
            old, self.reader, self.txnid = self.reader, reader, txnid
            self.last_pgno = last_pgno
            if old is not None:
                old.abort()
            self.taken += 1
            self.last_seconds = time.perf_counter() - t0
            return txnid

    def release(self, blocking: bool = True) -> None:
        """Stop pinning our last checkpoint's snapshot (a newer checkpoint superseded it).
        ``blocking=False`` (the event loop): do nothing while a checkpoint is being taken - it
        replaces the snapshot anyway, and may take a while (``env.sync``)."""
        if not self._mutex.acquire(blocking):
            return
        try:
            if self.reader is not None:
                self.reader.abort()
                self.reader = None
        finally:
            self._mutex.release()

    close = release


def forget(path: str) -> None:
    """The store runs without the log (``--fsync interval|never``) from now on: drop the checkpoint
    and the logs, which would otherwise roll a later start back to a snapshot whose pages LMDB
    has since reused."""
    for name in (CHECKPOINT_FILE, CHECKPOINT_FILE + ".spare"):
        try:
            os.unlink(os.path.join(path, name))
        except FileNotFoundError:
            pass
    shutil.rmtree(os.path.join(path, WAL_DIR), ignore_errors=True)


# ------------------------------------------------------------------------------ recovery
def recover(path: str, map_size: int, max_dbs: int) -> dict:
    """Before the environment is opened by anyone: after a reboot, roll LMDB back to the last
    checkpoint and replay the logs.  Returns what was done (for the log and the tests)."""
    out = {"replayed": 0, "rolled_back": False}
    os.makedirs(path, exist_ok=True)
    lockfd = os.open(os.path.join(path, "checkpoint.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lockfd, fcntl.LOCK_EX)
        ck = read_checkpoint(os.path.join(path, CHECKPOINT_FILE))
        if ck is None or ck["boot"] == boot_id():
            return out
        data = os.path.join(path, "data.mdb")
        fd = os.open(data, os.O_RDWR)
        try:
            os.pwrite(fd, ck["metas"], 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        out["rolled_back"] = True
        records = []
        wdir = wal_dir(path, ck["gen"])
        # one worker's two files ("<worker>.a", "<worker>.b") in the order it wrote them (epoch):
        # a record's abort, or the record of the same txnid committed after it, may be in the
        # other file (the log moved on in between), and the later one wins
        by_worker: dict[str, list[tuple[int, str]]] = {}
        for name in sorted(os.listdir(wdir)) if os.path.isdir(wdir) else []:
            fd = os.open(os.path.join(wdir, name), os.O_RDONLY)
            try:
                epoch = _file_epoch(fd)
            finally:
                os.close(fd)
            if epoch is not None:
                by_worker.setdefault(name.rpartition(".")[0], []).append((epoch, name))
        for files in by_worker.values():
            mine: dict[int, bytes | None] = {}
            for epoch, name in sorted(files):
                fd = os.open(os.path.join(wdir, name), os.O_RDONLY)
                try:
                    for _off, txnid, flags, body in _records(fd, epoch, os.fstat(fd).st_size):
                        if txnid > ck["txnid"]:
                            mine[txnid] = None if flags & FLAG_ABORT else body
                finally:
                    os.close(fd)
            records.extend((t, b) for t, b in mine.items() if b is not None)
        records.sort(key=lambda r: r[0])
        env = lmdb.open(path, map_size=map_size, max_dbs=max_dbs, subdir=True, sync=False,
                        metasync=False, readahead=False)
        try:
            dbs: dict = {}
            with env.begin(write=True) as txn:
                for _txnid, body in records:
                    apply_ops(env, txn, body, dbs)
            env.sync(True)
            txnid = env.info()["last_txnid"]
            psize = env.stat()["psize"]
        finally:
            env.close()
        fd = os.open(data, os.O_RDONLY)
        try:
            metas = os.pread(fd, 2 * psize, 0)
        finally:
            os.close(fd)
        # The logs' txnids are void from here on (LMDB's ids went back to the checkpoint's): the
        # new checkpoint names a new generation of log files, and only then is the old one removed.
        _write_checkpoint(os.path.join(path, CHECKPOINT_FILE), txnid, psize, metas, ck["gen"] + 1)
        shutil.rmtree(wdir, ignore_errors=True)
        out["replayed"] = len(records)
        log.warning("recovered %s after a restart of the machine: rolled back to checkpoint txn %d "
                    "and replayed %d logged transactions", path, ck["txnid"], len(records))
        return out
    finally:
        os.close(lockfd)
