"""The write-ahead log (mq9fast/wal.py) in-process: record framing, torn tails, file reuse, abort
records, and recovery through ``Store`` after a simulated power cut.  The wire-level power-cut tests
are in test_mailbox_powercut.py."""
from __future__ import annotations

import os
import random

import lmdb
import pytest

from mq9fast import wal, wallog_py
from mq9fast.storage import Store
from twins import twin_params

try:
    from mq9fast import _wallog
except ImportError:  # pragma: no cover - the extension is built by setup.py
    _wallog = None

LOGS = twin_params(wallog_py, _wallog, "mq9fast._wallog")



def records_of(path: str) -> list[tuple[int, int, bytes]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        epoch = wal._file_epoch(fd)
        if epoch is None:
            return []
        return [(t, f, b) for _o, t, f, b in wal._records(fd, epoch, os.fstat(fd).st_size)]
    finally:
        os.close(fd)


def ops(*items) -> bytes:
    log = wal.OpLog()
    for kind, name, key, value in items:
        log.add(kind, name, key, value)
    return log.getvalue()


async def test_records_round_trip_and_survive_reopen(tmp_path):
    w = wal.Wal(str(tmp_path), 1, 0)
    bodies = [ops((wal.PUT, b"db", b"k%d" % i, b"v" * i)) for i in range(50)]
    for i, body in enumerate(bodies):
        w.append(10 + i, body)
    w.close()
    got = records_of(w.paths[0])
    assert [(t, b) for t, _f, b in got] == [(10 + i, b) for i, b in enumerate(bodies)]
    assert list(wal.decode_ops(got[3][2])) == [(wal.PUT, b"db", b"k3", b"vvv")]
    # a restart in the same boot continues after the last record instead of overwriting it
    w = wal.Wal(str(tmp_path), 1, 0)
    w.append(99, ops((wal.DELETE, b"", b"gone", b"")))
    w.close()
    assert [t for t, _f, _b in records_of(w.paths[0])] == [10 + i for i in range(50)] + [99]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
async def test_records_across_block_boundaries(tmp_path, monkeypatch, direct):
    """Direct appends rewrite the partial block before each record and pad after it: records of
    every size, ending inside a block or exactly on its end, read back byte for byte, also when a
    reopened log continues in the middle of a block."""
    monkeypatch.setattr(wal, "DIRECT", direct)
    rnd = random.Random(7)
    w = wal.Wal(str(tmp_path), 1, 0)
    if not direct:
        assert w.dfds == [None, None]
    written = []
    for txn in range(1, 120):
        if txn == 60:  # end this record exactly on a block boundary
            size = (-(w.off + wal.REC.size) % wal.ALIGN) or wal.ALIGN
        else:
            size = rnd.choice((1, 17, 4000, 4096, 5000, 9000, rnd.randrange(1, 70000)))
        body = rnd.randbytes(size)
        w.append(txn, body)
        written.append((txn, body))
        if txn == 60:
            assert w.off % wal.ALIGN == 0
        if txn in (40, 61):  # a restart: the next append continues inside the same block
            w.close()
            w = wal.Wal(str(tmp_path), 1, 0)
    w.close()
    assert [(t, b) for t, _f, b in records_of(w.paths[0])] == written


async def test_a_filesystem_refusing_direct_io_gets_write_and_fdatasync(tmp_path, caplog):
    w = wal.Wal(str(tmp_path), 1, 0)
    if w.dfds[0] is None:
        pytest.skip("this filesystem has no direct I/O at all (the buffered path is tested above)")
    w.append(1, ops((wal.PUT, b"", b"a", b"1")))
    # Make the next direct write start off the block grid: the kernel refuses it with EINVAL, as
    # a filesystem without direct I/O for this file would.
    w._tail += b"?"
    w.append(2, ops((wal.PUT, b"", b"b", b"2")))
    w.append(3, ops((wal.PUT, b"", b"c", b"3")))
    assert w.dfds == [None, None]
    assert "direct I/O refused" in caplog.text
    w.close()
    assert [t for t, _f, _b in records_of(w.paths[0])] == [1, 2, 3]


async def test_torn_tail_ends_the_log_and_is_overwritten(tmp_path):
    w = wal.Wal(str(tmp_path), 1, 0)
    w.append(1, ops((wal.PUT, b"", b"a", b"1")))
    w.append(2, ops((wal.PUT, b"", b"b", b"2")))
    tail = w.off
    w.close()
    fd = os.open(w.paths[0], os.O_RDWR)
    # a record cut short by the crash: header claims more than was written
    hdr = wal.REC.pack(wal.REC_MAGIC, 1000, 3, 0, 12345)
    os.pwrite(fd, hdr + b"x" * 100, tail)
    os.close(fd)
    assert [t for t, _f, _b in records_of(w.paths[0])] == [1, 2]
    w = wal.Wal(str(tmp_path), 1, 0)
    assert w.off == tail
    w.append(3, ops((wal.PUT, b"", b"c", b"3")))
    w.close()
    assert [t for t, _f, _b in records_of(w.paths[0])] == [1, 2, 3]


async def test_a_reused_file_never_yields_records_of_its_previous_use(tmp_path, monkeypatch):
    monkeypatch.setattr(wal, "SWITCH_BYTES", 8192)
    monkeypatch.setattr(wal, "SWITCH_RETRY_BYTES", 0)  # look at the checkpoint on every append
    ck = tmp_path / wal.CHECKPOINT_FILE
    w = wal.Wal(str(tmp_path), 1, 0)
    big = ops((wal.PUT, b"", b"k", b"v" * 3000))
    txn = 0

    def append() -> None:
        nonlocal txn
        txn += 1
        w.append(txn, big)

    for _ in range(4):
        append()
    # not checkpointed yet: the other file is empty, so the log may move on
    wal._write_checkpoint(str(ck), 0, 4096, bytes(8192), 1)
    append()  # txn 5, past SWITCH_BYTES: goes to file b (nothing in b is newer than the checkpoint)
    assert w.cur == 1 and w.epoch == 2
    for _ in range(3):
        append()
    # file a's records (txn 1-4) are not checkpointed yet: b keeps growing instead of reusing a
    assert w.cur == 1
    wal._write_checkpoint(str(ck), 5, 4096, bytes(8192), 1)
    append()
    assert w.cur == 0 and w.epoch == 3
    w.close()
    # file a: only the new epoch's record, although the old epoch's longer run of records
    # still sits in the file after it
    assert [t for t, _f, _b in records_of(w.paths[0])] == [9]
    assert [t for t, _f, _b in records_of(w.paths[1])] == [5, 6, 7, 8]


async def store_with_a(tmp_path, monkeypatch) -> tuple[Store, str, object, int]:
    """A logged store (boot "one") holding key "a" in database "t"; -> (store, its path, the
    database, the txnid its next commit gets)."""
    path = str(tmp_path / "env")
    monkeypatch.setenv("MQ9FAST_BOOT_ID", "one")
    store = Store(path, map_size=1 << 28, checkpoint_interval=3600)
    store.start()
    db = store.db("t")
    await store.write(lambda txn: txn.put(b"a", b"1", db=db))
    with store.read() as txn:
        return store, path, db, txn.id() + 1


def keys_after_reboot(store: Store, path: str, monkeypatch) -> set[bytes]:
    """kill -9 of ``store``, then a start under another boot id (recovery from the log); ->
    the keys of its database "t"."""
    crash(store)
    monkeypatch.setenv("MQ9FAST_BOOT_ID", "two")
    again = Store(path, map_size=1 << 28)
    again.start()
    try:
        h = again.db("t")
        with again.read() as txn:
            return {bytes(k) for k, _v in txn.cursor(db=h)}
    finally:
        again.close()


def crash(store: Store) -> None:
    """Stop a store the way kill -9 would: no checkpoint, commits left in the page cache only."""
    store._closed = True
    store._jobs.put(None)
    store._thread.join()
    store.wal.close()
    store.env.close()


def lose_page_cache(path: str, snapshot: bytes, seed: int) -> None:
    data = os.path.join(path, "data.mdb")
    with open(data, "rb") as fh:
        now = bytearray(fh.read())
    rng = random.Random(seed)
    for off in range(0, len(now), 4096):
        if rng.random() < 0.5:
            now[off:off + 4096] = snapshot[off:off + 4096].ljust(min(4096, len(now) - off), b"\0")
    now[0:8192] = bytes(8192)
    with open(data, "wb") as fh:
        fh.write(now)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_store_replays_the_log_after_a_reboot(tmp_path, monkeypatch, seed):
    path = str(tmp_path / "env")
    monkeypatch.setenv("MQ9FAST_BOOT_ID", "before")
    store = Store(path, map_size=1 << 28, checkpoint_interval=3600)
    store.start()
    db = store.db("things")
    other = store.db("other")
    await store.write(lambda txn: txn.put(b"old", b"1", db=db))
    store.checkpointer.take()
    with open(os.path.join(path, "data.mdb"), "rb") as fh:
        snapshot = fh.read()
    expect = {b"old": b"1"}

    def fill(txn, lo, hi):
        cur = txn.cursor(db=db)
        for i in range(lo, hi):
            cur.put(b"k%05d" % i, os.urandom(50) * 3)
        return True

    for lo in range(0, 3000, 300):
        await store.write(lambda txn, lo=lo: fill(txn, lo, lo + 300))
    await store.write(lambda txn: txn.delete(b"old", db=db))
    await store.write(lambda txn: [txn.put(b"x%d" % i, b"y", db=other) for i in range(10)])
    await store.write(lambda txn: txn.cursor(db=other).pop(b"x3"))
    expect = {}
    with store.read() as txn:
        for name, handle in ((b"things", db), (b"other", other)):
            expect[name] = {bytes(k): bytes(v) for k, v in txn.cursor(db=handle)}
    # a request that fails rolls back its child transaction: nothing of it may be replayed
    def bad(txn):
        txn.put(b"never", b"1", db=db)
        raise RuntimeError("no")
    with pytest.raises(RuntimeError):
        await store.write(bad)
    crash(store)  # the process dies with its commits in the page cache only
    lose_page_cache(path, snapshot, seed)
    monkeypatch.setenv("MQ9FAST_BOOT_ID", "after")
    again = Store(path, map_size=1 << 28, checkpoint_interval=3600)
    assert again.recovery["rolled_back"] and again.recovery["replayed"] == 13
    again.start()
    try:
        handles = {name: again.db(name.decode()) for name in (b"things", b"other")}
        with again.read() as txn:
            for name, h in handles.items():
                assert {bytes(k): bytes(v) for k, v in txn.cursor(db=h)} == expect[name]
        assert wal.read_checkpoint(os.path.join(path, "checkpoint"))["gen"] == 2
    finally:
        again.close()


async def test_an_aborted_commit_is_not_replayed(tmp_path, monkeypatch):
    store, path, db, nxt = await store_with_a(tmp_path, monkeypatch)
    # the record of a transaction whose commit then failed, followed by its abort record
    store.wal.append(nxt, ops((wal.PUT, b"t", b"phantom", b"1")))
    store.wal.append(nxt, b"", wal.FLAG_ABORT)
    await store.write(lambda txn: txn.put(b"b", b"2", db=db))
    assert keys_after_reboot(store, path, monkeypatch) == {b"a", b"b"}


async def test_switching_policy_replays_first_then_drops_the_log(tmp_path, monkeypatch):
    """A run under --fsync interval after one under always: the log of the earlier run is replayed
    if the machine restarted in between, and then removed (LMDB is no longer checkpointed)."""
    path = str(tmp_path / "env")
    monkeypatch.setenv("MQ9FAST_BOOT_ID", "one")
    store = Store(path, map_size=1 << 28, checkpoint_interval=3600)
    store.start()
    db = store.db("t")
    with open(os.path.join(path, "data.mdb"), "rb") as fh:
        snapshot = fh.read()
    await store.write(lambda txn: txn.put(b"kept", b"1", db=db))
    crash(store)
    lose_page_cache(path, snapshot, 7)
    monkeypatch.setenv("MQ9FAST_BOOT_ID", "two")
    again = Store(path, map_size=1 << 28, fsync="interval")
    assert again.recovery["replayed"] == 1
    assert not os.path.exists(os.path.join(path, "checkpoint"))
    assert not os.path.exists(os.path.join(path, "wal"))
    again.start()
    try:
        h = again.db("t")
        with again.read() as txn:
            assert bytes(txn.get(b"kept", db=h)) == b"1"
    finally:
        again.close()


@pytest.mark.parametrize("mod", LOGS)
def test_oplog_twins_write_the_same_bytes_and_only_what_lmdb_took(tmp_path, mod):
    env = lmdb.open(str(tmp_path / "e"), map_size=1 << 24, max_dbs=4)
    db = env.open_db(b"d")
    log = mod.OpLog()
    with env.begin(write=True) as txn:
        cur = mod.LoggedCursor(txn.cursor(db=db), log, b"d")
        assert cur.put(b"a", b"1") and cur.put(memoryview(b"b"), bytearray(b"22"))
        assert not cur.put(b"a", b"x", overwrite=False)       # refused by LMDB: not logged
        assert cur.set_key(b"a") and cur.value() == b"1"     # reads pass through
        assert cur.delete()
        assert cur.pop(b"missing") is None
        cur.putmulti([(b"c", b""), (b"d", b"4" * 300)])
        assert cur.replace(b"b", b"3") == b"22"
    child = mod.OpLog()
    child.add(wal.DELETE, b"", b"k", b"")
    log.extend(child)
    expect = [(wal.PUT, b"d", b"a", b"1"), (wal.PUT, b"d", b"b", b"22"), (wal.DELETE, b"d", b"a", b""),
              (wal.PUT, b"d", b"c", b""), (wal.PUT, b"d", b"d", b"4" * 300), (wal.PUT, b"d", b"b", b"3"),
              (wal.DELETE, b"", b"k", b"")]
    assert list(wal.decode_ops(log.getvalue())) == expect
    assert log.ops == len(expect) and len(log) == len(log.getvalue())
    twin = wallog_py.OpLog()
    for op in expect:
        twin.add(*op)
    assert twin.getvalue() == log.getvalue()
    with pytest.raises(ValueError):
        log.add(wal.PUT, b"n" * 256, b"k", b"v")
    env.close()


async def test_an_abort_in_the_other_log_file_still_cancels_its_record(tmp_path, monkeypatch):
    """The log moved on to its other file between a record and its abort record (as when the
    disk is full): the abort still cancels it, and the record of the same txnid committed after
    it is the one replayed."""
    store, path, db, nxt = await store_with_a(tmp_path, monkeypatch)
    store.checkpointer.take()
    before = store.wal.cur
    store.wal.append(nxt, ops((wal.PUT, b"t", b"phantom", b"1")))
    assert store.wal._maybe_switch()  # the other file holds nothing newer than the checkpoint
    assert store.wal.cur != before
    store.wal.append(nxt, b"", wal.FLAG_ABORT)
    await store.write(lambda txn: txn.put(b"b", b"2", db=db))  # commits as txn ``nxt``
    assert keys_after_reboot(store, path, monkeypatch) == {b"a", b"b"}


async def test_an_abort_record_without_room_is_written_before_the_next_record(tmp_path, monkeypatch):
    """A commit failed after its record was logged, and the log had no room for the abort
    record either: the abort goes first into the next append, so a reboot after that does not
    replay the failed transaction - even when its txnid was then taken by another worker's
    commit, so that no later record of this log supersedes it."""
    store, path, db, nxt = await store_with_a(tmp_path, monkeypatch)

    class FailingCommit:  # a write transaction whose commit finds the disk full
        def id(self) -> int:
            return nxt

        def commit(self) -> None:
            raise lmdb.DiskError("mdb_txn_commit: No space left on device")

        def abort(self) -> None:
            pass

    real_append = store.wal.append

    def append(txnid: int, body: bytes, flags: int = 0) -> None:
        if flags & wal.FLAG_ABORT and not append.refused:
            append.refused = True
            raise OSError(28, "No space left on device")
        real_append(txnid, body, flags)

    append.refused = False
    monkeypatch.setattr(store.wal, "append", append)
    phantom = wal.OpLog()
    phantom.add(wal.PUT, b"t", b"phantom", b"1")
    with pytest.raises(lmdb.DiskError):
        store._log_and_commit(FailingCommit(), phantom)
    assert store.wal.abort_pending == nxt
    monkeypatch.setattr(store.wal, "append", real_append)
    # another worker commits txn ``nxt`` (its record would be in its own log, not this one)
    with store.env.begin(write=True) as txn:
        txn.put(b"other", b"x", db=db)
    await store.write(lambda txn: txn.put(b"b", b"2", db=db))  # txn ``nxt + 1`` here
    assert store.wal.abort_pending is None
    assert keys_after_reboot(store, path, monkeypatch) == {b"a", b"b"}


async def test_a_full_disk_moves_the_log_on_to_its_other_file(tmp_path, monkeypatch):
    """The current file cannot grow (ENOSPC): the record goes to the other file, which every
    record is checkpointed out of, and is read back from there."""
    ck = tmp_path / wal.CHECKPOINT_FILE
    w = wal.Wal(str(tmp_path), 1, 0)
    big = ops((wal.PUT, b"", b"k", b"v" * 3000))
    assert os.path.getsize(w.paths[1]) >= wal.HEAD_BYTES + wal.CHUNK_MIN  # pre-sized at start

    def no_room(fd: int, to: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(w, "_extend", no_room)
    txn = 0
    while w.cur == 0:
        txn += 1
        if w.off + 3100 > w.size:  # the next record does not fit: let the log move on
            wal._write_checkpoint(str(ck), txn - 1, 4096, bytes(8192), 1)
        w.append(txn, big)
    w.close()
    assert [t for t, _f, _b in records_of(w.paths[0])] == list(range(1, txn))
    assert [t for t, _f, _b in records_of(w.paths[1])] == [txn]


async def test_every_record_leaves_room_for_its_abort_record(tmp_path, monkeypatch):
    """On a disk with no room left, a record that would fill its file to the last byte is
    refused, so that the abort record of an accepted one always fits without new room."""
    w = wal.Wal(str(tmp_path), 1, 0)

    def no_room(fd: int, to: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(w, "_extend", no_room)
    monkeypatch.setattr(w, "_maybe_switch", lambda: False)  # nothing checkpointed: no other file
    w.append(1, ops((wal.PUT, b"", b"k", b"v")))
    exact = w.size - w.off - wal.REC.size  # a body that would end the file exactly
    with pytest.raises(OSError):
        w.append(2, b"x" * exact)
    w.append(1, b"", wal.FLAG_ABORT)  # fits: the room was kept
    w.close()
    assert [(t, f) for t, f, _b in records_of(w.paths[0])] == [(1, 0), (1, wal.FLAG_ABORT)]
