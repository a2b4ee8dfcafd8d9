"""The vector index: exact numpy search in memory, mirrored into a persisted usearch HNSW index.

Vectors of record live in LMDB (``reg.vec``); this module holds two derived copies:

* a float32 matrix (one row per vector, tombstoned rows masked) searched by brute force - exact,
  and at up to ``BRUTE_MAX`` vectors as fast as HNSW (measured: 10 k x 384 in ~0.2 ms);
* a usearch index (metric cos, dtype f16) maintained on one "index" thread and persisted as
  ``<data_dir>/registry.usearch``: written to a temp file, fsynced, renamed over the old file, then
  ``reg.meta["index"]`` in LMDB gets ``{version, size, crc32, ndim, tag, count}``.  Another process
  opens it with ``Index.restore(path, view=True)`` (memory-mapped, read-only) whenever the version
  changes.  Above ``BRUTE_MAX`` live vectors, searches go to usearch when it is in sync.

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

log = logging.getLogger("mq9fast.registry")

BRUTE_MAX = 20_000
#: weight of the best-matching part in a card's score (see ``text.embed_texts``)
PART_WEIGHT = 0.5
SAVE_DELAY = 1.0
INDEX_FILE = "registry.usearch"


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

    return Index(ndim=dim, metric="cos", dtype="f16")


def write_index_file(index, path: str) -> tuple[int, int]:
    """Save ``index`` atomically to ``path``; returns (size, crc32) of the new file."""
    tmp = f"{path}.tmp{os.getpid()}"
    index.save(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    size, crc = file_crc(tmp)
    os.replace(tmp, path)
    try:
        dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return size, crc


def open_index_file(path: str, meta: dict | None, dim: int, tag: str, view: bool):
    """Restore the index file if it matches ``meta`` (size, crc32, ndim, tag); else None."""
    Index = usearch_index_class()

    if not meta or meta.get("tag") != tag or meta.get("ndim") != dim:
        return None
    try:
        size, crc = file_crc(path)
    except OSError:
        return None
    if size != meta.get("size") or crc != meta.get("crc32"):
        log.warning("vector index file %s does not match its LMDB record; rebuilding", path)
        return None
    try:
        index = Index.restore(path, view=view)
    except Exception as exc:  # noqa: BLE001 - damaged file: rebuild
        log.warning("vector index file %s unreadable (%s); rebuilding", path, exc)
        return None
    if index is None or index.ndim != dim:
        return None
    return index


class VectorIndex:
    """Vectors keyed by LMDB vector id, each belonging to an agent name."""

    def __init__(self, dim: int, tag: str) -> None:
        self.dim = dim
        self.tag = tag
        self.matrix = np.zeros((256, dim), dtype=np.float32)
        self.alive = np.zeros(256, dtype=bool)
        self.names: list[str | None] = []
        self.parts: list[np.ndarray | None] = []  # per slot: the part vectors, or None
        self.keys: list[int] = []
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
            m = np.zeros((cap, self.dim), dtype=np.float32)
            m[:slot] = self.matrix[:slot]
            a = np.zeros(cap, dtype=bool)
            a[:slot] = self.alive[:slot]
            self.matrix, self.alive = m, a
        self.matrix[slot] = vec
        self.alive[slot] = True
        self.names.append(name)
        self.parts.append(np.ascontiguousarray(vecs[1:], dtype=np.float32) if len(vecs) > 1
                          else None)
        self.keys.append(key)
        self.slot_of[key] = slot
        if self._pool is not None:
            self._ops.append((key, self.matrix[slot].copy()))
            self.dirty = True

    def remove(self, key: int) -> bool:
        slot = self.slot_of.pop(key, None)
        if slot is None:
            return False
        self.alive[slot] = False
        self.names[slot] = None
        self.parts[slot] = None
        self.n_dead += 1
        if self._pool is not None:
            self._ops.append((key, None))
            self.dirty = True
            self.removed_since_build += 1
        if self.n_dead > 1024 and self.n_dead > len(self.slot_of):
            self._compact()
        return True

    def _compact(self) -> None:
        live = sorted(self.slot_of.values())
        n = len(live)
        cap = max(256, 1 << max(n, 1).bit_length())
        m = np.zeros((cap, self.dim), dtype=np.float32)
        m[:n] = self.matrix[live]
        a = np.zeros(cap, dtype=bool)
        a[:n] = True
        self.names = [self.names[s] for s in live]
        self.parts = [self.parts[s] for s in live]
        self.keys = [self.keys[s] for s in live]
        self.slot_of = {k: i for i, k in enumerate(self.keys)}
        self.matrix, self.alive, self.n_dead = m, a, 0

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

    def rescore(self, q: np.ndarray, slots, card: np.ndarray) -> np.ndarray:
        """Final scores of ``slots`` given their card scores: blend in the best part."""
        blocks = []
        counts = []
        for s in slots:
            p = self.parts[s]
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

    def search(self, q: np.ndarray, need: int) -> list[tuple[str, float]]:
        """The best ``need`` cards as [(name, score)], best first.

        Two stages: exact cosine against every card vector picks the candidates (``need`` plus a
        margin), then each candidate is rescored with its best-matching part vector."""
        if not self.slot_of:
            return []
        q = q.astype(np.float32)
        scores = self.card_scores(q)
        m = len(self.slot_of)
        n = len(self.names)
        cand_n = min(max(need + 32, 2 * need, 64), m)
        if cand_n < n:
            cand = np.argpartition(-scores, cand_n - 1)[:cand_n]
        else:
            cand = np.flatnonzero(self.alive[:n])
        return self._final(q, cand, scores[cand])

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
