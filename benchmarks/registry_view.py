"""Micro-benchmark: the semantic first stage of a non-owner worker, exact scan vs the
memory-mapped usearch view (``mq9fast.registry.vectors.VectorIndex.search`` vs ``search_view``).

    python benchmarks/registry_view.py [--sizes 1000,10000,50000] [--queries 300]
                                       [--clusters 500 [--spread 0.3]] [--noise 0.03] [--ef N]

Random unit 384-d card vectors (no part vectors): uniform on the sphere by default (HNSW's worst
case), or around ``--clusters`` topic centres (closer to real embeddings).  Queries are cards plus
``--noise`` per dimension, so the true nearest card is well defined.  For each size it builds the
owner's f16 HNSW index, publishes it with ``write_index_file``, opens it the way a reader does
(``open_index_file(..., view=True)``: crc check + ``Index.restore(view=True)``), then times
``need=20`` searches both ways on one thread, and reports recall@20 / top-1 of the view path
against the exact ranking.  Its numbers pick ``BRUTE_MAX`` (see the vectors.py docstring); the
50 k size takes ~1 min to build on one core.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mq9fast.registry.vectors import (  # noqa: E402
    VectorIndex, _new_usearch, open_index_file, write_index_file)

DIM = 384


def bench(n: int, queries: int, rng, noise: float, ef: int | None, clusters: int,
          spread: float) -> dict:
    if clusters:  # topics: a card is its topic's centre plus its own direction
        centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
        cards = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal(
            (n, DIM)).astype(np.float32)
    else:
        cards = rng.standard_normal((n, DIM)).astype(np.float32)
    cards /= np.linalg.norm(cards, axis=1, keepdims=True)
    keys = np.arange(1, n + 1, dtype=np.uint64)
    vi = VectorIndex(DIM, "bench")
    for i in range(n):
        vi.add(int(keys[i]), f"a{i:06d}", cards[i:i + 1])
    t = time.perf_counter()
    owner = _new_usearch(DIM)
    owner.add(keys, cards, threads=1)
    build = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "registry.usearch")
        size, crc = write_index_file(owner, path)
        meta = {"size": size, "crc32": crc, "ndim": DIM, "tag": "bench"}
        t = time.perf_counter()
        view = open_index_file(path, meta, DIM, "bench", view=True)
        opened = time.perf_counter() - t
        if ef:
            view.expansion_search = ef
        vi.set_view(view, 1)
        qs = cards[rng.integers(0, n, queries)] + noise * rng.standard_normal(
            (queries, DIM)).astype(np.float32)
        qs /= np.linalg.norm(qs, axis=1, keepdims=True)
        for q in qs[:20]:  # warm up (page cache, code paths)
            vi.search(q, 20)
            vi.search_view(q, 20)
        t = time.perf_counter()
        exact = [vi.search(q, 20)[:20] for q in qs]
        t_exact = (time.perf_counter() - t) / queries
        t = time.perf_counter()
        approx = [vi.search_view(q, 20)[:20] for q in qs]
        t_view = (time.perf_counter() - t) / queries
        recall = np.mean([len({a for a, _ in x} & {a for a, _ in y}) / 20
                          for x, y in zip(exact, approx)])
        top1 = np.mean([x[0][0] == y[0][0] for x, y in zip(exact, approx)])
        vi.close_view()
    return {"n": n, "exact_ms": t_exact * 1e3, "view_ms": t_view * 1e3, "recall20": recall,
            "top1": top1, "open_ms": opened * 1e3, "file_mb": size / 1e6, "build_s": build}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,50000")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--noise", type=float, default=0.03,
                    help="per-dimension query noise (0.03: cos(query, its card) ~0.86)")
    ap.add_argument("--ef", type=int, default=None, help="view expansion_search (default: "
                    "vectors.EXPANSION_SEARCH, what the reader uses)")
    ap.add_argument("--clusters", type=int, default=0,
                    help="cards around this many topic centres (0: uniform on the sphere)")
    ap.add_argument("--spread", type=float, default=0.3,
                    help="per-dimension spread of a topic (0.3: cos between its cards ~0.92)")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    data = (f"{args.clusters} clusters, spread {args.spread}" if args.clusters
            else "uniform random")
    print(f"# {args.queries} queries, noise {args.noise}, ef {args.ef or 'default'}, {data}")
    print(f"{'agents':>8} {'exact ms':>9} {'view ms':>8} {'recall@20':>9} {'top1':>5} "
          f"{'open ms':>8} {'file MB':>8} {'build s':>8}")
    for n in (int(x) for x in args.sizes.split(",")):
        r = bench(n, args.queries, rng, args.noise, args.ef, args.clusters, args.spread)
        print(f"{r['n']:>8} {r['exact_ms']:>9.3f} {r['view_ms']:>8.3f} {r['recall20']:>9.3f} "
              f"{r['top1']:>5.2f} {r['open_ms']:>8.1f} {r['file_mb']:>8.1f} {r['build_s']:>8.1f}",
              flush=True)


if __name__ == "__main__":
    main()
