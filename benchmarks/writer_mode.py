"""Per-worker group commit vs one writer process, on LMDB (the [workers] issue).

LMDB admits one write transaction at a time across processes.  With ``--workers N`` each worker
can either commit its own group-commit batches (taking turns on LMDB's writer lock, one fsync per
batch per worker), or forward every write to a single writer process that commits what all
workers sent in one transaction (one fsync for everyone, plus the hand-off).  This measures both
with the storage pattern of ``MSG.SEND`` (a 128-byte payload and two index entries per message,
durable commit) and a closed loop of ``--inflight`` requests per worker, so the batch each commit
carries is what it would be in the broker:

* ``per-worker``: N processes, each commits batches of its own in-flight requests;
* ``single``:     N producer processes send their batches over a Unix socket to one writer
  process, which commits everything that has arrived in one transaction and acknowledges each
  producer after the commit (the producers' side of the hand-off is included);
* ``one-process``: one process committing N x inflight per batch (the upper bound: no lock
  hand-off, no IPC).

    python benchmarks/writer_mode.py --workers 2 --inflight 64 --seconds 5

Prints one JSON line per mode: records/s, commits/s, mean records per commit.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import select
import shutil
import socket
import struct
import tempfile
import time

import lmdb

PAYLOAD = b"x" * 128


def open_env(path: str) -> tuple[lmdb.Environment, object, object]:
    env = lmdb.open(path, map_size=8 << 30, max_dbs=4, sync=True, metasync=True)
    return env, env.open_db(b"msgs"), env.open_db(b"index")


def apply(txn, msgs, index, worker: int, seq: int, n: int) -> None:
    """What a bulk SEND writes per message: the payload and two index entries."""
    for i in range(seq, seq + n):
        key = struct.pack(">IQ", worker, i)
        txn.put(key, PAYLOAD, db=msgs)
        txn.put(b"l" + key, b"", db=index)
        txn.put(b"e" + key, b"", db=index)


def per_worker(path: str, worker: int, batch: int, seconds: float, out) -> None:
    env, msgs, index = open_env(path)
    seq = commits = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        with env.begin(write=True) as txn:
            apply(txn, msgs, index, worker, seq, batch)
        seq += batch
        commits += 1
    out.put((seq, commits))


def producer(sock: socket.socket, batch: int, seconds: float, out, unused) -> None:
    """One worker's side of the single-writer design: send a batch, wait for its commit."""
    for s in unused:  # fork copied every socket: keep only our own, so EOFs reach the writer
        s.close()
    frame = struct.pack(">I", batch) + PAYLOAD * batch
    done = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sock.sendall(frame)
        if len(sock.recv(8)) == 0:
            break
        done += batch
    sock.close()
    out.put((done, 0))


def writer(path: str, socks: list[socket.socket], out, unused) -> None:
    for s in unused:
        s.close()
    env, msgs, index = open_env(path)
    bufs = {s.fileno(): b"" for s in socks}
    by_fd = {s.fileno(): s for s in socks}
    seq = commits = written = 0
    open_fds = set(by_fd)
    while open_fds:
        ready, _, _ = select.select(list(open_fds), [], [])
        complete: list[tuple[int, int]] = []
        for fd in ready:
            data = by_fd[fd].recv(1 << 20)
            if not data:
                open_fds.discard(fd)
                continue
            buf = bufs[fd] + data
            while len(buf) >= 4:
                n = struct.unpack_from(">I", buf)[0]
                if len(buf) < 4 + n * len(PAYLOAD):
                    break
                complete.append((fd, n))
                buf = buf[4 + n * len(PAYLOAD):]
            bufs[fd] = buf
        if not complete:
            continue
        with env.begin(write=True) as txn:
            for fd, n in complete:
                apply(txn, msgs, index, 0, seq, n)
                seq += n
        commits += 1
        written += sum(n for _, n in complete)
        for fd, _ in complete:
            try:
                by_fd[fd].sendall(b"k")
            except OSError:
                open_fds.discard(fd)
    out.put((written, commits))


def run(mode: str, workers: int, inflight: int, seconds: float, root: str) -> dict:
    path = tempfile.mkdtemp(dir=root)
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = []
    if mode == "per-worker":
        procs = [ctx.Process(target=per_worker, args=(path, w, inflight, seconds, out))
                 for w in range(workers)]
    elif mode == "one-process":
        procs = [ctx.Process(target=per_worker, args=(path, 0, inflight * workers, seconds, out))]
    else:
        pairs = [socket.socketpair() for _ in range(workers)]
        every = [s for pair in pairs for s in pair]
        procs = [ctx.Process(target=writer, args=(path, [b for _, b in pairs], out,
                                                  [a for a, _ in pairs]))]
        procs += [ctx.Process(target=producer, args=(a, inflight, seconds, out,
                                                     [s for s in every if s is not a]))
                  for a, _ in pairs]
    for p in procs:
        p.start()
    if mode == "single":
        for a, b in pairs:  # the children hold their ends
            a.close()
            b.close()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    if mode == "single":  # the writer's own count (the producers report only what was acked)
        records, commits = max(results, key=lambda r: r[1])
    else:
        records = sum(r[0] for r in results)
        commits = sum(r[1] for r in results)
    shutil.rmtree(path)
    return {"mode": mode, "workers": workers, "inflight": inflight,
            "records_per_s": round(records / seconds),
            "commits_per_s": round(commits / seconds), "records_per_commit": round(records / max(commits, 1), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--inflight", type=int, default=64, help="requests in flight per worker")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--dir", default=os.environ.get("TMPDIR", "/var/tmp"),
                    help="where the LMDB files go (a real disk: fsync is the point)")
    ap.add_argument("--modes", default="per-worker,single,one-process")
    a = ap.parse_args()
    for mode in a.modes.split(","):
        print(json.dumps(run(mode, a.workers, a.inflight, a.seconds, a.dir)), flush=True)


if __name__ == "__main__":
    main()
