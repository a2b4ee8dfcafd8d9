"""Mailbox storage measurements: bytes on disk per message, group-commit batch sizes, lane scans.

Runs the mailbox engine in-process on a real ``Store`` in a temporary directory (no network: this
measures the engine and LMDB, not a client).

    python benchmarks/mailbox_disk.py                 # all three sections
    python benchmarks/mailbox_disk.py disk --messages 100000 --size 128
    python benchmarks/mailbox_disk.py batches --fsync always
    python benchmarks/mailbox_disk.py lanes

* ``disk``: stores N messages of S bytes in one mailbox and reports the growth of the LMDB data
  (pages in use x page size, and the data.mdb file) per message.
* ``batches``: C concurrent senders each SEND in a loop under ``--fsync``; reports SENDs/s and the
  Store's group-commit counters (``batches``, ``batched_writes``, ``max_batch_size``).
* ``lanes``: the measurement behind the "LMDB range scans instead of in-memory lanes" decision:
  collecting a FETCH page by a cursor range scan vs. an in-memory sorted id list per lane plus one
  LMDB get per message.
"""
from __future__ import annotations

import argparse
import asyncio
import bisect
import inspect
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mq9fast.config import Config  # noqa: E402
from mq9fast.mailbox import MailboxService  # noqa: E402
from mq9fast.mailbox.layout import BE_U64, Box, lane_prefix, msg_key, u64  # noqa: E402
from mq9fast.storage import Store  # noqa: E402


async def _call(result):
    if inspect.isawaitable(result):
        result = await result
    return result


async def _service(path: str, fsync: str):
    store = Store(path, fsync=fsync, map_size=8 * 1024**3)
    store.start()
    svc = MailboxService(store, Config(data_dir=path, fsync=fsync))
    await svc.start()
    return store, svc


async def _shutdown(store, svc) -> None:
    await svc.close()
    await store.drain()
    store.close()


def _used_bytes(store) -> int:
    info = store.env.info()
    return (info["last_pgno"] + 1) * store.env.stat()["psize"]


async def disk(messages: int, size: int, headers: bool, mailboxes: int = 1) -> None:
    path = tempfile.mkdtemp(prefix="mq9disk-")
    try:
        store, svc = await _service(path, "never")
        names = [f"disk{i}" for i in range(mailboxes)]
        for name in names:
            await _call(svc.create(b'{"name":"%s","ttl":0}' % name.encode()))
            await _call(svc.send(name, None, b"warm-up"))
        store.env.sync(True)
        used0 = _used_bytes(store)
        file0 = os.path.getsize(os.path.join(path, "data.mdb"))
        payload = os.urandom(size)
        hdr = b"NATS/1.0\r\nmq9-priority: urgent\r\n\r\n" if headers else None
        t = time.perf_counter()
        step = 1000
        for i in range(0, messages, step):
            await asyncio.gather(*(_call(svc.send(names[(i + j) % mailboxes], hdr, payload))
                                   for j in range(min(step, messages - i))))
        dt = time.perf_counter() - t
        store.env.sync(True)
        used1 = _used_bytes(store)
        file1 = os.path.getsize(os.path.join(path, "data.mdb"))
        with store.read() as txn:
            st = txn.stat(svc.d_msgs)
        per = (used1 - used0) / messages
        print(f"disk: {messages} messages x {size} B payload{' + priority header' if headers else ''}"
              f" in {mailboxes} mailbox{'es' if mailboxes > 1 else ''} (round-robin)")
        print(f"  pages in use grew {used1 - used0:,} B -> {per:.1f} B/message "
              f"({per / size:.2f}x payload, {per - size:.1f} B overhead)")
        print(f"  data.mdb grew {file1 - file0:,} B -> {(file1 - file0) / messages:.1f} B/message")
        print(f"  mb.msgs: {st['entries']} entries, depth {st['depth']}, {st['leaf_pages']} leaf pages, "
              f"{st['overflow_pages']} overflow pages ({st['entries'] / max(1, st['leaf_pages']):.1f}/leaf)")
        print(f"  stored at {messages / dt:,.0f} SENDs/s (fsync=never, engine only)")
        await _shutdown(store, svc)
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def batches(fsync: str, total: int, concurrency_levels: list[int]) -> None:
    print(f"group commit under concurrent SENDs (fsync={fsync}, 128 B payloads, engine only)")
    print(f"  {'senders':>7} {'SENDs/s':>10} {'commits':>8} {'avg batch':>9} {'max batch':>9}")
    for conc in concurrency_levels:
        path = tempfile.mkdtemp(prefix="mq9batch-")
        try:
            store, svc = await _service(path, fsync)
            await _call(svc.create(b'{"name":"b","ttl":0}'))
            b0, w0 = store.batches, store.batched_writes
            store.max_batch_size = 0
            per = max(1, total // conc)
            payload = b"x" * 128

            async def sender() -> None:
                for _ in range(per):
                    await _call(svc.send("b", None, payload))

            t = time.perf_counter()
            await asyncio.gather(*(sender() for _ in range(conc)))
            dt = time.perf_counter() - t
            nb, nw = store.batches - b0, store.batched_writes - w0
            print(f"  {conc:>7} {per * conc / dt:>10,.0f} {nb:>8} {nw / max(1, nb):>9.1f} {store.max_batch_size:>9}")
            await _shutdown(store, svc)
        finally:
            shutil.rmtree(path, ignore_errors=True)


async def lanes(messages: int) -> None:
    """FETCH-page collection: LMDB range scan vs in-memory per-lane id lists + LMDB gets."""
    import random

    path = tempfile.mkdtemp(prefix="mq9lanes-")
    try:
        store, svc = await _service(path, "never")
        await _call(svc.create(b'{"name":"l","ttl":0}'))
        rnd = random.Random(1)
        mem: list[list[int]] = [[], [], []]
        names = ("critical", "urgent", "normal")
        step = 1000
        for i in range(0, messages, step):
            lanes_ = [rnd.choices((0, 1, 2), (1, 2, 7))[0] for _ in range(step)]
            hdrs = [None if ln == 2 else b"NATS/1.0\r\nmq9-priority: %s\r\n\r\n" % names[ln].encode()
                    for ln in lanes_]
            ids = await asyncio.gather(*(_call(svc.send("l", h, b"x" * 128)) for h in hdrs))
            for ln, mid in zip(lanes_, ids):
                mem[ln].append(int(mid.split(b":")[-1].rstrip(b"}")))
        for lst in mem:
            lst.sort()
        with store.read() as txn:
            mbid = Box.decode(b"l", txn.get(b"l", db=svc.d_boxes)).mbid
        d = svc.d_msgs

        def scan(p: int, limit: int):
            out = []
            with store.read() as txn:
                cur = txn.cursor(db=d)
                for lane in (0, 1, 2):
                    pre = lane_prefix(mbid, lane)
                    if not cur.set_range(pre + u64(p)):
                        break
                    for k, v in cur:
                        if k[:9] != pre:
                            break
                        out.append((lane, BE_U64.unpack_from(k, 9)[0], len(v)))
                        if len(out) >= limit:
                            return out
            return out

        def in_memory(p: int, limit: int):
            picked = []
            for lane in (0, 1, 2):
                a = mem[lane]
                j = bisect.bisect_left(a, p)
                while j < len(a) and len(picked) < limit:
                    picked.append((lane, a[j]))
                    j += 1
            with store.read() as txn:
                return [(ln, i, len(txn.get(msg_key(mbid, ln, i), db=d))) for ln, i in picked]

        mid = messages // 2
        assert scan(mid, 100) == in_memory(mid, 100)
        print(f"lanes: collecting a FETCH page from {messages} messages (10% critical, 20% urgent)")
        for label, p, limit, reps in (("100 msgs", mid, 100, 3000), ("1 msg", mid, 1, 20000),
                                      ("empty", messages + 10, 100, 20000)):
            row = []
            for fn in (scan, in_memory):
                t = time.perf_counter()
                for _ in range(reps):
                    fn(p, limit)
                row.append((time.perf_counter() - t) / reps * 1e6)
            print(f"  {label:>9}: LMDB range scan {row[0]:7.1f} us | in-memory lanes + get {row[1]:7.1f} us")
        t = time.perf_counter()
        with store.read() as txn:
            rebuilt = sum(1 for _ in txn.cursor(db=d).iternext(values=False))
        print(f"  rebuilding in-memory lanes would scan {rebuilt} keys: {(time.perf_counter() - t) * 1e3:.0f} ms")
        await _shutdown(store, svc)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("section", nargs="?", default="all", choices=("all", "disk", "batches", "lanes"))
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--fsync", default="always", choices=("always", "interval", "never"))
    ap.add_argument("--sends", type=int, default=20_000, help="SENDs per concurrency level")
    ap.add_argument("--concurrency", default="1,10,100,1000")
    args = ap.parse_args()
    try:
        import uvloop
        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    if args.section in ("all", "disk"):
        run(disk(args.messages, args.size, False))
        run(disk(args.messages, args.size, False, 100))
        run(disk(args.messages // 10, args.size, True))
    if args.section in ("all", "batches"):
        run(batches(args.fsync, args.sends, [int(c) for c in args.concurrency.split(",")]))
    if args.section in ("all", "lanes"):
        run(lanes(args.messages))


if __name__ == "__main__":
    main()
