"""Latency of one durable 4 KiB write, as the write-ahead log does it (``O_DIRECT | O_DSYNC``
``pwrite``; ``--buffered``: ``pwrite`` + ``fdatasync``), in three patterns:

* ``back-to-back`` - the next write as soon as the last returned;
* ``idle gaps``    - 0.5 ms of sleep between writes (a closed-loop client: the machine idles while
  it waits for the reply);
* ``gaps + spin``  - the same gaps while a helper process keeps another CPU busy (one outside this
  process's affinity when there is one: run it under ``taskset -c 0`` as the broker runs).

On a VM the second pattern shows what a halted vCPU adds to each flush (the I/O completion has to
wake it).  Usage::

    python benchmarks/flush_latency.py [--dir DIR] [--count 2000] [--buffered]
"""
from __future__ import annotations

import argparse
import mmap
import multiprocessing
import os
import tempfile
import time

SIZE = 4096
FILE_BYTES = 64 << 20


def _spin(stop, cpus) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    while not stop.is_set():
        pass


def run(path: str, count: int, gap: float, direct: bool) -> list[float]:
    flags = os.O_RDWR | (os.O_DIRECT | os.O_DSYNC if direct else 0)
    fd = os.open(path, flags)
    buf = mmap.mmap(-1, SIZE)  # page-aligned, as O_DIRECT needs
    out = []
    try:
        for i in range(count):
            t = time.perf_counter()
            os.pwrite(fd, buf, (i * SIZE) % FILE_BYTES)
            if not direct:
                os.fdatasync(fd)
            out.append((time.perf_counter() - t) * 1e6)
            if gap:
                time.sleep(gap)
    finally:
        os.close(fd)
    return sorted(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=None, help="directory on the disk to measure (default: a temp dir)")
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--buffered", action="store_true", help="pwrite + fdatasync instead of O_DIRECT|O_DSYNC")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        path = os.path.join(d, "flush.bin")
        with open(path, "wb") as f:
            f.write(bytes(FILE_BYTES))
            os.fsync(f.fileno())
        stop = multiprocessing.Event()
        for label, gap, spin in (("back-to-back", 0.0, False), ("idle gaps", 0.0005, False),
                                 ("gaps + spin", 0.0005, True)):
            helper = None
            if spin:
                others = set(range(os.cpu_count() or 1)) - os.sched_getaffinity(0)
                helper = multiprocessing.Process(target=_spin, args=(stop, others), daemon=True)
                helper.start()
            try:
                v = run(path, args.count, gap, not args.buffered)
            finally:
                if helper is not None:
                    stop.set()
                    helper.join()
                    stop.clear()
            n = len(v)
            print(f"{label:13}  p50 {v[n // 2]:6.0f} µs  p90 {v[int(n * 0.9)]:6.0f} µs  "
                  f"p99 {v[int(n * 0.99)]:6.0f} µs")


if __name__ == "__main__":
    main()
