"""The vector index: exact numpy search in memory, mirrored into a persisted usearch HNSW index.

Vectors of record live in LMDB (``reg.vec``); this module holds derived copies:

* float32 matrices (one row per card, one per part of a card; tombstoned rows masked) searched
  by brute force: up to ``BRUTE_MAX`` live cards (the config option ``vector_exact_max``) every
  semantic DISCOVER scores every card and every part, so its ranking is exact and its pages
  consistent;
* on the owner process, a usearch index (metric cos, dtype f16) of the card vectors, maintained
  on one "index" thread and persisted as ``<data_dir>/registry.usearch``: written to a temp file,
  fsynced, renamed over the old file, then ``reg.meta["index"]`` in LMDB gets ``{version, size,
  crc32, ndim, tag, count}``.  Above ``BRUTE_MAX`` the owner's searches go to it when it is in
  sync: its nearest cards (``need`` plus a margin) are rescored with their parts - approximate,
  as any HNSW search is (a card whose whole-card vector is far but one part near can be missed);
* on every other process, a read-only memory-mapped view of that file (``open_index_file(...,
  view=True)``: size/crc32/ndim/tag checked against the LMDB record on the very file descriptor
  that is then mapped).  The registry opens it in the background when the version in LMDB changes
  and swaps it in (``set_view``; the old view is unmapped and its descriptor closed at once).
  ``search_view`` takes the view's nearest keys that are still live (over-fetching by the number
  of view entries deleted or replaced since), adds every live vector the view does not hold
  (``view_delta``: registered after the file was written, scanned exactly), and ranks them with
  the exact float32 scores - so a REGISTER / UNREGISTER on any worker shows in the very next
  DISCOVER, whatever the age of the view.  No view, a damaged / foreign / mismatched file, or a
  view too far behind (``VIEW_MAX_DEAD`` / ``VIEW_MAX_DELTA``): the exact scan answers.

Choosing ``BRUTE_MAX`` (``python benchmarks/registry_view.py [--clusters 500]``; 2 shared cores,
one query thread, need = 20, random unit 384-d cards, query = card + noise 0.03/dim,
expansion_search 128; ms per query for the first stage + part rescoring)::

    cards   exact   view  recall@20 (uniform)   |  exact   view  recall@20 (500 topics)
     1 k    0.072  0.198  0.995                 |  0.062  0.170  1.000
     5 k    0.381  0.321  0.864                 |  0.371  0.257  0.999
    10 k    0.749  0.480  0.734                 |  1.222  0.602  1.000
    20 k    1.574  0.844  0.581                 |  1.618  0.643  1.000
    50 k    4.345  1.472  0.395                 |  4.971  0.729  1.000

The exact scan is faster up to ~5 k cards and costs at most ~0.3 ms more up to 10 k (a MiniLM
query embedding costs ~4.5 ms), while it grows linearly beyond (4-5 ms at 50 k, the view
0.7-1.5 ms); hence ``BRUTE_MAX`` = 10 k: exact where the saving would be marginal.  (Uniform
random vectors are HNSW's worst case - their 2nd..20th neighbours are near-ties; top-1 stays
1.00 up to 20 k, 0.99 at 50 k.  Clustered cards, closer to real embeddings, keep recall 1.000.)
Opening a view is a crc32 pass over the file plus an mmap: 0.7 ms at 1 k, 5-8 ms at 10 k, 20-55
ms at 50 k (45.8 MB), off the event loop.

The exact scan scores the parts too (``scores``): about 0.06 ms per 1 000 part rows on top of the
cards' (``/tmp`` micro-benchmark, 10 k cards, one pinned core, 300 random queries, need 20, p50):
0.66 ms with no parts, 1.99 ms with 1.6 parts per card, 2.49 ms with 2.6 (the evaluation cards'
average), 4.02 ms with 5; the former two-stage search (cards, then the parts of the best 64) took
0.71 / 0.83 / 0.88 / 0.91 ms but could miss a card matching by one part and gave pages that
overlap.  At need 1000 the exact scan is faster (3.21 vs 5.38 ms at 2.6 parts).

At start the owner restores the file only if its size/crc32/ndim/tag match the meta record;
then it reconciles the keys with LMDB (adds what is missing, removes what is gone).  A missing,
damaged or foreign file is rebuilt from the LMDB vectors.  The file is therefore a cache: a
kill -9 at any moment leaves at worst a stale file that is reconciled at the next start.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from ..files import fsync_dir
from .text import top_named

log = logging.getLogger("mq9fast.registry")

#: exact scan up to this many live vectors (the default of ``Config.vector_exact_max``)
BRUTE_MAX = 10_000
#: HNSW search depth (usearch's default is 64): recall@20 0.996 -> 1.000 at 50 k clustered
#: cards for 0.40 -> 0.58 ms (benchmarks/registry_view.py)
EXPANSION_SEARCH = 128
#: the view is not used while it holds more dead entries than this (each one widens the HNSW
#: search) or misses more live vectors than this or 1/8 of them (each one is scanned exactly)
VIEW_MAX_DEAD = 1024
VIEW_MAX_DELTA = 4096
#: weight of the best-matching part in a card's score (see ``text.embed_texts``)
PART_WEIGHT = 0.5
#: hybrid ranking: the most a card's keyword match adds to its score (``text.keyword_bonus``);
#: chosen on tests/data/registry_eval.json, checked on registry_eval_holdout.json
#: (benchmarks/registry_eval.py)
BONUS_MAX = 0.1
SAVE_DELAY = 1.0
#: seconds before a failed save (e.g. a full disk) is tried again
SAVE_RETRY = 5.0
INDEX_FILE = "registry.usearch"

#: names -> the keyword bonus of each (``text.TextIndex.keyword_bonus``)
Bonus = Callable[[list], np.ndarray]


def _grown(a: np.ndarray, cap: int, used: int) -> np.ndarray:
    """``a`` with ``cap`` rows, the first ``used`` copied (the rest zero)."""
    out = np.zeros((cap,) + a.shape[1:], dtype=a.dtype)
    out[:used] = a[:used]
    return out


def _packed(src: np.ndarray, rows) -> tuple[np.ndarray, np.ndarray]:
    """``src[rows]`` at the top of a new matrix of power-of-two capacity (at least 256), and
    the mask of its live rows."""
    n = len(rows)
    cap = max(256, 1 << max(n, 1).bit_length())
    out = np.zeros((cap,) + src.shape[1:], dtype=src.dtype)
    out[:n] = src[rows]
    alive = np.zeros(cap, dtype=bool)
    alive[:n] = True
    return out, alive


def file_crc(path: str) -> tuple[int, int]:
    crc = 0
    size = 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc


def usearch_index_class():
    """``usearch.index.Index``, imported only after onnxruntime.

    Importing usearch first and onnxruntime afterwards crashes the process (SIGSEGV inside
    onnxruntime's module initialisation; seen with usearch 2.26 + onnxruntime 1.32 on Linux),
    so every usearch import in the project goes through here.
    """
    try:
        import onnxruntime  # noqa: F401, PLC0415
    except ImportError:
        pass
    from usearch.index import Index  # noqa: PLC0415

    return Index


def _new_usearch(dim: int):
    Index = usearch_index_class()

    return Index(ndim=dim, metric="cos", dtype="f16", expansion_search=EXPANSION_SEARCH)


def write_index_file(index, path: str) -> tuple[int, int]:
    """Save ``index`` atomically to ``path``; returns (size, crc32) of the new file."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        index.save(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        size, crc = file_crc(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:  # (e.g. a full disk: leave no half-written file behind)
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        fsync_dir(path)
    except OSError:
        pass
    return size, crc


def _fd_crc(fd: int) -> tuple[int, int]:
    crc = 0
    size = 0
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        crc = zlib.crc32(chunk, crc)
        size += len(chunk)
    return size, crc


def open_index_file(path: str, meta: dict | None, dim: int, tag: str, view: bool):
    """Restore the index file if it matches ``meta`` (size, crc32, ndim, tag); else None.

    ``view=True`` maps it read-only (``Index.restore(..., view=True)``; the mapping keeps the
    file's inode alive after the owner renames a newer file over it).  The checksum and the
    restore read the same open file (through ``/proc/self/fd``), so a file published between the
    two cannot be taken for the one that was verified."""
    Index = usearch_index_class()

    if not meta or meta.get("tag") != tag or meta.get("ndim") != dim:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            size, crc = _fd_crc(fd)
        except OSError:
            return None
        if size != meta.get("size") or crc != meta.get("crc32"):
            # a reader may look between the owner's rename and its LMDB commit: not an alarm
            (log.debug if view else log.warning)(
                "vector index file %s does not match its LMDB record%s", path,
                "" if view else "; rebuilding")
            return None
        src = f"/proc/self/fd/{fd}"
        if not os.path.exists(src):  # no procfs: the path (may be newer; the caller copes)
            src = path
        try:
            index = Index.restore(src, view=view)
        except Exception as exc:  # noqa: BLE001 - damaged file: rebuild
            log.warning("vector index file %s unreadable (%s)%s", path, exc,
                        "" if view else "; rebuilding")
            return None
    finally:
        os.close(fd)
    if index is None or index.ndim != dim:
        if index is not None:
            index.reset()
        return None
    index.expansion_search = EXPANSION_SEARCH
    return index


class VectorIndex:
    """Vectors keyed by LMDB vector id, each belonging to an agent name."""

    def __init__(self, dim: int, tag: str) -> None:
        self.dim = dim
        self.tag = tag
        self.matrix = np.zeros((256, dim), dtype=np.float32)
        self.alive = np.zeros(256, dtype=bool)
        self.names: list[str | None] = []
        self.keys: list[int] = []
        # part vectors, all in one matrix so that every query scores every part at once: a
        # slot's parts are the rows p_start[slot] .. + p_count[slot] (count 0: none, or dead).
        # Invariant: rows are appended slot by slot, so the live runs are in slot order and
        # their starts increase (``np.maximum.reduceat`` relies on it); dead rows are masked.
        self.pmat = np.zeros((256, dim), dtype=np.float32)
        self.p_alive = np.zeros(256, dtype=bool)
        self.p_used = 0
        self.p_dead = 0
        self.p_start = np.zeros(256, dtype=np.int64)
        self.p_count = np.zeros(256, dtype=np.int64)
        self.slot_of: dict[int, int] = {}
        self.n_dead = 0
        # usearch mirror (owner only)
        self.usearch: Any = None
        self.usearch_synced = False
        self._ops: list[tuple[int, np.ndarray | None]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._busy = 0
        self.dirty = False
        self.removed_since_build = 0
        # read-only view of the published file (non-owner processes; see ``set_view``)
        self.view: Any = None
        self.view_version = 0
        self.view_delta: set[int] = set()  # live keys the view does not hold (newer than it)
        self.view_dead = 0  # keys the view holds that are no longer live (deleted / replaced)

    def __len__(self) -> int:
        return len(self.slot_of)

    # -- in-memory copy -----------------------------------------------------------------------
    def add(self, key: int, name: str, vecs: np.ndarray) -> None:
        """``vecs``: row 0 = the card, further rows = its parts."""
        vec = vecs[0]
        if key in self.slot_of:
            self.remove(key)
        slot = len(self.names)
        if slot >= len(self.matrix):
            cap = len(self.matrix) * 2
            self.matrix = _grown(self.matrix, cap, slot)
            self.alive = _grown(self.alive, cap, slot)
            self.p_start = _grown(self.p_start, cap, slot)
            self.p_count = _grown(self.p_count, cap, slot)
        self.matrix[slot] = vec
        self.alive[slot] = True
        self.names.append(name)
        k = len(vecs) - 1
        self.p_start[slot] = self.p_used
        self.p_count[slot] = k
        if k:
            end = self.p_used + k
            if end > len(self.pmat):
                cap = max(len(self.pmat) * 2, end)
                self.pmat = _grown(self.pmat, cap, self.p_used)
                self.p_alive = _grown(self.p_alive, cap, self.p_used)
            self.pmat[self.p_used:end] = vecs[1:]
            self.p_alive[self.p_used:end] = True
            self.p_used = end
        self.keys.append(key)
        self.slot_of[key] = slot
        if self.view is not None:
            if self.view.contains(key):
                self.view_dead -= 1  # (re-added: the view's entry is live again)
            else:
                self.view_delta.add(key)
        if self._pool is not None:
            self._ops.append((key, self.matrix[slot].copy()))
            self.dirty = True

    def remove(self, key: int) -> bool:
        slot = self.slot_of.pop(key, None)
        if slot is None:
            return False
        self.alive[slot] = False
        self.names[slot] = None
        k = int(self.p_count[slot])
        if k:
            start = int(self.p_start[slot])
            self.p_alive[start:start + k] = False
            self.p_dead += k
            self.p_count[slot] = 0
        self.n_dead += 1
        if self.view is not None:
            if key in self.view_delta:
                self.view_delta.discard(key)
            else:
                self.view_dead += 1
        if self._pool is not None:
            self._ops.append((key, None))
            self.dirty = True
            self.removed_since_build += 1
        if ((self.n_dead > 1024 and self.n_dead > len(self.slot_of))
                or (self.p_dead > 4096 and self.p_dead > self.p_used - self.p_dead)):
            self._compact()
        return True

    def _compact(self) -> None:
        live = sorted(self.slot_of.values())
        n = len(live)
        m, a = _packed(self.matrix, live)
        counts = self.p_count[live]
        rows = (np.concatenate([np.arange(s0, s0 + c) for s0, c in
                                zip(self.p_start[live].tolist(), counts.tolist()) if c])
                if counts.any() else np.zeros(0, dtype=np.int64))
        self.pmat, self.p_alive = _packed(self.pmat, rows)
        self.p_used, self.p_dead = len(rows), 0
        self.p_start = np.zeros(len(m), dtype=np.int64)
        self.p_start[:n] = np.cumsum(counts) - counts  # (the runs, packed in slot order)
        self.p_count = np.zeros(len(m), dtype=np.int64)
        self.p_count[:n] = counts
        self.names = [self.names[s] for s in live]
        self.keys = [self.keys[s] for s in live]
        self.slot_of = {k: i for i, k in enumerate(self.keys)}
        self.matrix, self.alive, self.n_dead = m, a, 0

    def part_vectors(self, slot: int) -> np.ndarray | None:
        """The part vectors of ``slot`` (a view), or None."""
        k = int(self.p_count[slot])
        if not k:
            return None
        start = int(self.p_start[slot])
        return self.pmat[start:start + k]

    def card_scores(self, q: np.ndarray) -> np.ndarray:
        """cos(query, card) for every slot (dead slots -inf)."""
        n = len(self.names)
        if n >= 2048:
            # not BLAS: OpenBLAS spreads a large matrix-vector product over all cores, which on
            # a busy broker host costs 5-10x more wall time than numpy's own single-threaded
            # SIMD loop (measured at 10 k x 384: 8.5 ms vs 0.9 ms with two busy cores)
            scores = np.einsum("ij,j->i", self.matrix[:n], q)
        else:
            scores = self.matrix[:n] @ q
        if self.n_dead:
            scores[~self.alive[:n]] = -np.inf
        return scores

    def scores(self, q: np.ndarray) -> np.ndarray:
        """The final score of every slot (dead slots -inf): its card's cosine, blended with its
        best part's (``rescore``), every part scored in one pass over ``pmat``."""
        out = self.card_scores(q)
        pn = self.p_used
        if pn == self.p_dead:
            return out
        rows = self.pmat[:pn]
        ps = np.einsum("ij,j->i", rows, q) if pn >= 2048 else rows @ q  # (see card_scores)
        if self.p_dead:
            ps[~self.p_alive[:pn]] = -np.inf
        n = len(self.names)
        has = self.p_count[:n] > 0
        best = np.maximum.reduceat(ps, self.p_start[:n][has])
        out[has] = (1.0 - PART_WEIGHT) * out[has] + PART_WEIGHT * best
        return out

    def rescore(self, q: np.ndarray, slots, card: np.ndarray) -> np.ndarray:
        """Final scores of ``slots`` given their card scores: blend in the best part."""
        blocks = []
        counts = []
        for s in slots:
            p = self.part_vectors(s)
            if p is not None:
                blocks.append(p)
                counts.append(len(p))
            else:
                counts.append(0)
        out = np.array(card, dtype=np.float32)
        if not blocks:
            return out
        part_scores = np.vstack(blocks) @ q
        starts = np.cumsum([0] + counts[:-1])
        has = np.array(counts) > 0
        best = np.maximum.reduceat(part_scores, starts[has])
        out[has] = (1.0 - PART_WEIGHT) * out[has] + PART_WEIGHT * best
        return out

    def search(self, q: np.ndarray, need: int, bonus: Bonus | None = None
               ) -> list[tuple[str, float]]:
        """The best ``need`` cards as [(name, score)], best first (ties by name).

        Exact: every card and every part is scored (``scores``), so the ranking is one total
        order and pages of it never overlap or skip - a card whose one matching skill is
        drowned in its whole-card vector by twenty others still ranks by that skill.

        ``bonus`` (hybrid ranking, ``text.TextIndex.keyword_bonus``) adds at most ``BONUS_MAX``
        to a card's score, so a card scoring below the need-th best by more than that cannot
        reach the top ``need``: only the cards within ``BONUS_MAX`` of the cut get their bonus
        looked up, and the fused ranking is still exact.  (The approximate searches leave the
        bonus to their caller: ``Registry`` adds it to their candidates.)"""
        if not self.slot_of or need <= 0:
            return []
        final = self.scores(q.astype(np.float32))
        n = len(self.names)
        live = np.flatnonzero(self.alive[:n]) if self.n_dead else np.arange(n)
        if bonus is None:
            return top_named(live, final[live] if self.n_dead else final, need, self.names)
        fl = final[live]
        if need < len(live):
            near = fl >= np.partition(fl, len(live) - need)[len(live) - need] - BONUS_MAX
            live, fl = live[near], fl[near]
        fl = fl + bonus([self.names[s] for s in live.tolist()])
        return top_named(live, fl, need, self.names)

    def _final(self, q: np.ndarray, cand, card_scores) -> list[tuple[str, float]]:
        final = self.rescore(q, cand, card_scores)
        out = [(self.names[s], float(v)) for s, v in zip(cand.tolist(), final.tolist())
               if self.names[s] is not None]
        out.sort(key=lambda x: (-x[1], x[0]))
        return out

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        live = sorted(self.slot_of.values())
        keys = np.array([self.keys[s] for s in live], dtype=np.uint64)
        return keys, self.matrix[live].copy()

    # -- read-only view of the published file (the other processes) -----------------------------
    def set_view(self, index, version: int) -> None:
        """Use ``index`` (a read-only view of the published file) as the first stage of
        ``search_view``; the previous view is released (unmapped, its file closed)."""
        self.close_view()
        live = np.fromiter(self.slot_of, dtype=np.uint64, count=len(self.slot_of))
        held = (np.asarray(index.contains(live), dtype=bool) if len(live)
                else np.zeros(0, dtype=bool))
        self.view = index
        self.view_version = version
        self.view_delta = set(live[~held].tolist())
        self.view_dead = max(0, len(index) - int(held.sum()))

    def close_view(self) -> None:
        view, self.view = self.view, None
        self.view_delta = set()
        self.view_dead = 0
        if view is not None:
            view.reset()  # unmaps the file and closes its descriptor now, not at GC time

    def view_usable(self) -> bool:
        """The view saves time: it holds most live vectors and few dead ones."""
        return (self.view is not None and self.view_dead <= VIEW_MAX_DEAD
                and len(self.view_delta) <= max(VIEW_MAX_DELTA, len(self.slot_of) // 8))

    def search_view(self, q: np.ndarray, need: int) -> list[tuple[str, float]]:
        """Like ``search``, with the view's HNSW graph instead of the full scan as first stage.

        Candidates = the view's approximate nearest keys that are still live (fetched with a
        margin of ``view_dead``, so deleted / replaced entries cannot crowd live ones out) plus
        every live vector the view does not hold (``view_delta``, scanned exactly); the best
        ``need`` + margin of them by exact cosine go to the same part rescoring as ``search``."""
        view = self.view
        m = len(self.slot_of)
        if not m:
            return []
        q = q.astype(np.float32)
        cand_n = min(max(need + 32, 2 * need, 64), m)
        slot_of = self.slot_of
        slots: list[int] = []
        k = min(cand_n + self.view_dead, len(view))
        if k > 0:
            for key in view.search(q, k, threads=1).keys.tolist():
                s = slot_of.get(key)
                if s is not None:
                    slots.append(s)
        if self.view_delta:
            slots.extend(slot_of[key] for key in self.view_delta)
        cand = np.unique(np.array(slots, dtype=np.int64))
        if not len(cand):
            return []
        rows = self.matrix[cand]
        # (many newer vectors: numpy's single-threaded loop, not BLAS - see ``card_scores``)
        card = np.einsum("ij,j->i", rows, q) if len(cand) >= 2048 else rows @ q
        if len(cand) > cand_n:
            top = np.argpartition(-card, cand_n - 1)[:cand_n]
            cand, card = cand[top], card[top]
        return self._final(q, cand, card)

    # -- usearch mirror (the owner process) -----------------------------------------------------
    def attach(self, pool: ThreadPoolExecutor, path: str, meta: dict | None) -> asyncio.Future:
        """Restore or rebuild the usearch mirror on ``pool``; resolves to True if it changed."""
        self._pool = pool
        keys, vecs = self.snapshot()
        self._busy += 1
        dim, tag = self.dim, self.tag

        def job() -> bool:
            index = open_index_file(path, meta, dim, tag, view=False)
            changed = False
            if index is None:
                index = _new_usearch(dim)
                if len(keys):
                    index.add(keys, vecs, threads=1)
                changed = True
            else:
                have = np.asarray(index.keys, dtype=np.uint64)
                want = set(keys.tolist())
                stale = [int(k) for k in have.tolist() if k not in want]
                if stale:
                    index.remove(np.array(stale, dtype=np.uint64))
                    changed = True
                got = set(have.tolist())
                missing = [i for i, k in enumerate(keys.tolist()) if k not in got]
                if missing:
                    index.add(keys[missing], vecs[missing], threads=1)
                    changed = True
            self.usearch = index
            return changed

        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(pool, job)
        fut.add_done_callback(self._job_done)
        return fut

    def _job_done(self, fut) -> None:
        self._busy -= 1
        if not fut.cancelled() and fut.exception() is not None:
            log.error("vector index job failed", exc_info=fut.exception())

    def flush(self) -> asyncio.Future | None:
        """Apply queued adds/removes to the usearch mirror on the index thread."""
        if self._pool is None or not self._ops:
            return None
        ops, self._ops = self._ops, []
        rebuild = self.removed_since_build > max(1024, len(self.slot_of))
        snap = self.snapshot() if rebuild else None
        if rebuild:
            self.removed_since_build = 0
        dim = self.dim
        self._busy += 1

        def job() -> None:
            if snap is not None:
                index = _new_usearch(dim)
                keys, vecs = snap
                if len(keys):
                    index.add(keys, vecs, threads=1)
                self.usearch = index
                return
            if self.usearch is None:
                self.usearch = _new_usearch(dim)
            index = self.usearch
            adds_k, adds_v = [], []
            for key, vec in ops:
                if vec is None:
                    if adds_k and key in adds_k:
                        i = adds_k.index(key)
                        del adds_k[i]
                        del adds_v[i]
                    if index.contains(key):
                        index.remove(key)
                else:
                    if index.contains(key):
                        index.remove(key)
                    adds_k.append(key)
                    adds_v.append(vec)
            if adds_k:
                index.add(np.array(adds_k, dtype=np.uint64), np.stack(adds_v), threads=1)

        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, job)
        fut.add_done_callback(self._job_done)
        return fut

    def save(self, path: str) -> asyncio.Future:
        """Write the usearch mirror to ``path`` (after queued ops); resolves to its meta dict."""
        self.flush()
        self.dirty = False
        self._busy += 1
        dim, tag = self.dim, self.tag

        def job() -> dict:
            index = self.usearch
            size, crc = write_index_file(index, path)
            return {"size": size, "crc32": crc, "ndim": dim, "tag": tag, "count": len(index),
                    "dtype": "f16", "metric": "cos", "file": os.path.basename(path)}

        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, job)
        fut.add_done_callback(self._job_done)
        return fut

    @property
    def idle(self) -> bool:
        return self._busy == 0 and not self._ops

    async def search_usearch(self, q: np.ndarray, need: int) -> list[tuple[str, float]] | None:
        """Approximate first stage on the usearch mirror (then the exact part rescoring), or None
        when the mirror is not usable right now."""
        if self.usearch is None or not self.idle or self._pool is None:
            return None
        index = self.usearch
        q = q.astype(np.float32)
        count = min(max(need + 32, 2 * need, 64), len(self.slot_of))
        self._busy += 1
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, lambda: index.search(q, count, threads=1))
        fut.add_done_callback(self._job_done)
        matches = await fut
        slots = [self.slot_of.get(int(k)) for k in matches.keys.tolist()]
        cand = np.array([s for s in slots if s is not None], dtype=np.int64)
        if not len(cand):
            return []
        return self._final(q, cand, self.matrix[cand] @ q)


def meta_dumps(meta: dict) -> bytes:
    return json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()


def meta_loads(raw: Any) -> dict | None:
    if raw is None:
        return None
    try:
        value = json.loads(bytes(raw))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


Callback = Callable[[], None]
