"""The agent registry service: REGISTER / UNREGISTER / REPORT / DISCOVER (PROTOCOL.md §7).

See the package docstring for the design; ``records`` for the LMDB layout.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from .. import jsonbody
from ..control import Mq9Error
from . import records as R
from .embed import EmbedService
from .text import TextIndex, embed_sources, embed_texts, tokens
from .vectors import (BONUS_MAX, BRUTE_MAX, INDEX_FILE, SAVE_DELAY, SAVE_RETRY, VectorIndex,
                      meta_dumps, meta_loads, open_index_file)

log = logging.getLogger("mq9fast.registry")

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
U32_MAX = 0xFFFFFFFF
#: how long a REGISTER waits for the embedder before storing the card without a vector
#: (the background indexer embeds it later)
REGISTER_EMBED_WAIT = 10.0
#: how long a semantic DISCOVER waits for the model to finish loading; after that the query is
#: ranked by BM25 (never an error)
SEMANTIC_WAIT = 15.0
LOG_KEEP = 100_000
#: how often the owner looks for changes made by other worker processes (one LMDB get)
WATCH_PERIOD = 0.5
RANK_CACHE = 1024
#: keys of a DISCOVER entry that the registry sets (a body's own values are replaced)
ENTRY_KEYS = ("name", "agent_info", "agent_id", "description", "score", "last_report",
              "last_report_time")
RANKINGS = ("vector", "hybrid")
#: ranking used for ``semantic`` queries: the cosine plus a bounded keyword bonus (``hybrid``,
#: ``vectors.BONUS_MAX``) ranks no intent of tests/data/registry_eval.json lower than vectors
#: alone and four of registry_eval_holdout.json higher (benchmarks/registry_eval.py)
DEFAULT_RANKING = "hybrid"

_OK = {"error": ""}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _add_bonus(ranked: list[tuple[str, float]], bonus: Callable[[list], Any]
               ) -> list[tuple[str, float]]:
    """``ranked`` (name, score) with each name's keyword bonus added, re-sorted: hybrid
    ranking over the candidates of an approximate search (the exact one adds it itself)."""
    extra = bonus([n for n, _ in ranked]).tolist()
    out = [(n, v + e) for (n, v), e in zip(ranked, extra)]
    out.sort(key=lambda x: (-x[1], x[0]))
    return out


def _parse_object(payload: bytes, command: str, empty_ok: bool) -> dict:
    data = bytes(payload)
    if not data.strip():
        if empty_ok:
            return {}
        raise Mq9Error("payload must not be empty")
    try:
        value = jsonbody.loads(data)
    except UnicodeDecodeError as exc:
        raise Mq9Error(f"invalid {command} payload: not UTF-8 ({exc.reason})") from None
    except ValueError as exc:
        raise Mq9Error(f"invalid {command} payload: {exc}") from None
    if not isinstance(value, dict):
        raise Mq9Error(f"invalid {command} payload: expected a JSON object, got "
                       f"{type(value).__name__ if value is not None else 'null'}")
    return value


def _opt_str(body: dict, key: str, command: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Mq9Error(f"invalid {command} payload: `{key}` must be a string")
    return value


def _check_identity(value: str, what: str, command: str) -> None:
    if "\x00" in value:
        raise Mq9Error(f"invalid {command} payload: `{what}` must not contain NUL")
    if len(value.encode()) > R.MAX_NAME_BYTES:
        raise Mq9Error(f"invalid {command} payload: `{what}` is longer than "
                       f"{R.MAX_NAME_BYTES} bytes")


def _opt_uint(body: dict, key: str, default: int) -> int:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Mq9Error(f"invalid AGENT.DISCOVER payload: `{key}` must be a non-negative integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise Mq9Error(f"invalid AGENT.DISCOVER payload: `{key}` must be a non-negative "
                           "integer")
        value = int(value)
    if value < 0 or value > U32_MAX:
        raise Mq9Error(f"invalid AGENT.DISCOVER payload: `{key}` must be a non-negative integer "
                       "(u32)")
    return value


def _payload_description(payload: Any) -> str:
    """``payload`` if it is a string - or, when that string is a JSON AgentCard with a string
    ``description``, the card's description (what RobustMQ returns for such cards)."""
    if not isinstance(payload, str):
        return ""
    t = payload.strip()
    if t.startswith("{") and t.endswith("}"):
        try:
            card = json.loads(t)
        except (ValueError, RecursionError):
            return payload
        if isinstance(card, dict) and isinstance(card.get("description"), str):
            return card["description"]
    return payload


class Registry:
    """Agent registry backed by the shared LMDB ``Store``.

    ``owner`` marks the process that maintains and publishes the usearch file, sweeps expired
    agents, embeds cards that are waiting for a vector and trims the change log.  By default it
    is the process whose ``MQ9FAST_WORKER_ID`` is 0 or unset, so with ``--workers N`` exactly
    one worker is the owner.
    """

    def __init__(self, store: Any, config: Any, owner: bool | None = None) -> None:
        self.store = store
        self.config = config
        if owner is None:
            # with --workers N the supervisor numbers its workers; worker 0 owns the index
            owner = os.environ.get("MQ9FAST_WORKER_ID", "0").strip() in ("", "0")
        self.owner = owner
        self.agent_ttl = float(getattr(config, "agent_ttl", 0.0) or 0.0)
        #: semantic DISCOVER scans every card vector up to this many; above, the usearch index
        #: picks the candidates (the owner's own copy; a view of the published file elsewhere)
        exact_max = getattr(config, "vector_exact_max", None)
        self.brute_max = BRUTE_MAX if exact_max is None else max(int(exact_max), 0)
        self.default_ranking = DEFAULT_RANKING
        self.index_path = os.path.join(store.path, INDEX_FILE)
        self.embed = EmbedService(getattr(config, "embedder", "auto") or "auto",
                                  getattr(config, "model_dir", None))
        self.text = TextIndex()
        self.vec: VectorIndex | None = None
        self.known: dict[str, tuple[float, int]] = {}  # name -> (reg_time, vec_id) applied
        #: name -> its DISCOVER entry prefix (``records``), so search replies are spliced
        #: without reading the records again
        self.prefixes: dict[str, bytes] = {}
        self.pending: set[str] = set()  # names without a vector of the current embedder
        self.applied_seq = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task] = set()
        self._indexer: asyncio.Task | None = None
        self._save_handle: asyncio.TimerHandle | None = None
        self._saving: asyncio.Task | None = None
        self._closed = False
        self.index_version = 0
        #: non-owner: the open of the published file in flight, and the (VectorIndex, raw
        #: ``reg.meta["index"]``) last acted on (one attempt per published version)
        self._view_opening: asyncio.Future | None = None
        self._view_seen: tuple[Any, Any] = (None, None)
        self._rank_cache: dict = {}
        self._rank_cache_seq = -1
        #: resolved once the latest REGISTER/UNREGISTER/REPORT has been handed to the store
        #: (see ``_turn``)
        self._last_turn: asyncio.Future | None = None
        # statistics
        self.rebuilt_index = False

    # ------------------------------------------------------------------------------------------
    # life cycle
    # ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        st = self.store
        self.db_agents = st.db(R.DB_AGENTS)
        self.db_reports = st.db(R.DB_REPORTS)
        self.db_mailbox = st.db(R.DB_MAILBOX)
        self.db_vec = st.db(R.DB_VEC)
        self.db_log = st.db(R.DB_LOG)
        self.db_meta = st.db(R.DB_META)
        with st.read() as txn:
            self._refresh(txn)
        self.embed.start().add_done_callback(self._on_embedder_ready)
        if self.owner:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mq9fast-vindex")
            self._spawn(self._housekeeping())
            self._spawn(self._watch())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except BaseException:  # noqa: BLE001 - cancelled / already logged
                pass
        if self._save_handle is not None:
            self._save_handle.cancel()
        if self.owner and self.vec is not None:
            try:
                with self.store.read() as txn:  # changes other workers made just now
                    self._refresh(txn)
            except Exception:  # noqa: BLE001
                log.exception("registry refresh at shutdown failed")
        if self._saving is not None:
            try:
                await self._saving
            except BaseException:  # noqa: BLE001
                pass
        if self._view_opening is not None:
            try:
                await self._view_opening  # its callback releases what it opened (closed)
            except BaseException:  # noqa: BLE001
                pass
        if self.vec is not None:
            self.vec.close_view()
        if self.owner and self.vec is not None and self.vec.dirty and self.vec.usearch is not None:
            try:
                await self._save_index()
            except Exception:  # noqa: BLE001
                log.exception("saving the vector index at shutdown failed")
        if self._loop is not None:  # (None: the broker stopped before the registry started)
            await self._loop.run_in_executor(None, self.embed.close)
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _spawn(self, coro) -> asyncio.Task:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("registry task failed", exc_info=task.exception())

    # ------------------------------------------------------------------------------------------
    # in-memory state <- LMDB
    # ------------------------------------------------------------------------------------------
    def _refresh(self, txn) -> None:
        """Apply every change committed since the last call (ours or another process')."""
        seq = R.get_u64(txn, self.db_meta, R.META_SEQ)
        if seq == self.applied_seq:
            return
        if self.applied_seq < 0:
            self._reload(txn, seq)
            return
        cur = txn.cursor(db=self.db_log)
        first = self.applied_seq + 1
        if not cur.set_key(R.U64BE.pack(first)):
            self._reload(txn, seq)
            return
        changed = set()
        for k, v in cur:
            if R.U64BE.unpack(bytes(k))[0] > seq:
                break
            changed.add(bytes(v))
        for key in changed:
            self._apply(txn, R.name_of_key(key), txn.get(key, db=self.db_agents))
        self.applied_seq = seq

    def _reload(self, txn, seq: int) -> None:
        self.text = TextIndex()
        self.known = {}
        self.prefixes = {}
        self.pending = set()
        if self.vec is not None:
            self.vec.close_view()
            self.vec = VectorIndex(self.vec.dim, self.vec.tag)
            if self.owner and self._pool is not None:
                self.vec.attach(self._pool, self.index_path, None)
        for k, raw in txn.cursor(db=self.db_agents):
            self._apply(txn, R.name_of_key(k), raw)
        self.applied_seq = seq

    def _apply(self, txn, name: str, raw) -> None:
        old = self.known.get(name)
        vec = self.vec
        if raw is None:
            if old is None:
                return
            del self.known[name]
            self.prefixes.pop(name, None)
            self.text.remove(name)
            self.pending.discard(name)
            if vec is not None and old[1]:
                vec.remove(old[1])
                self._schedule_save()
            return
        reg_time, vec_id = R.header(raw)
        if old == (reg_time, vec_id):
            return
        if old is None or old[0] != reg_time:
            rec = R.unpack_record(raw)
            self.text.upsert(name, tokens(rec.text))
            self.prefixes[name] = rec.prefix
        self.known[name] = (reg_time, vec_id)
        if vec is None:
            return
        if old is not None and old[1] and old[1] != vec_id:
            vec.remove(old[1])
            self._schedule_save()
        self._load_vector(txn, name, vec_id)

    def _load_vector(self, txn, name: str, vec_id: int) -> None:
        v = None
        if vec_id:
            raw = txn.get(R.U64BE.pack(vec_id), db=self.db_vec)
            if raw is not None:
                v = R.unpack_vec(raw, self.vec.tag, self.vec.dim)
        if v is None:
            self.pending.add(name)
            self._kick_indexer()
            return
        self.pending.discard(name)
        self.vec.add(vec_id, name, v)
        self._schedule_save()

    def _on_embedder_ready(self, fut: asyncio.Future) -> None:
        if self._closed or fut.cancelled() or fut.exception() is not None:
            return
        emb = fut.result()
        if self.vec is not None:
            self.vec.close_view()
        self.vec = VectorIndex(emb.dim, emb.tag)
        with self.store.read() as txn:
            self._refresh(txn)
            for name, (_t, vec_id) in list(self.known.items()):
                self._load_vector(txn, name, vec_id)
            raw = txn.get(R.META_INDEX, db=self.db_meta)
        meta = meta_loads(raw)
        if meta:
            self.index_version = int(meta.get("version", 0))
        if self.owner:
            attached = self.vec.attach(self._pool, self.index_path, meta)
            attached.add_done_callback(self._attached)
        elif len(self.vec) > self.brute_max:
            self._check_view(self.vec)

    def _attached(self, fut) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        if fut.result():
            self.rebuilt_index = True
            self.vec.dirty = True
        if self.vec.dirty:
            self._schedule_save(0.0)

    # ------------------------------------------------------------------------------------------
    # usearch publication (owner)
    # ------------------------------------------------------------------------------------------
    def _schedule_save(self, delay: float = SAVE_DELAY) -> None:
        if not self.owner or self._closed or self.vec is None or self._pool is None:
            return
        if self._save_handle is None:
            self._save_handle = self._loop.call_later(delay, self._start_save)

    def _start_save(self) -> None:
        self._save_handle = None
        if self._closed:
            return
        if self._saving is not None and not self._saving.done():
            self._schedule_save()
            return
        self._saving = self._spawn(self._save_index())

    async def _save_index(self) -> None:
        vec = self.vec
        try:
            meta = await vec.save(self.index_path)
        except Exception as exc:  # noqa: BLE001 - e.g. a full disk: the file stays as it was
            log.warning("saving the vector index failed (%s); retrying in %.0f s", exc, SAVE_RETRY)
            vec.dirty = True
            self._schedule_save(SAVE_RETRY)
            return

        def publish(txn) -> int:
            old = meta_loads(txn.get(R.META_INDEX, db=self.db_meta)) or {}
            meta["version"] = int(old.get("version", 0)) + 1
            meta["saved"] = time.time()
            txn.put(R.META_INDEX, meta_dumps(meta), db=self.db_meta)
            return meta["version"]

        self.index_version = await self.store.write(publish)

    # ------------------------------------------------------------------------------------------
    # the published file as a read-only view (the other workers)
    # ------------------------------------------------------------------------------------------
    def _check_view(self, vec: VectorIndex) -> None:
        """Open the published file (in the background) when ``reg.meta["index"]`` changed since
        the last look; the current view, or the exact scan, answers meanwhile.  One LMDB get."""
        if self._view_opening is not None or self._closed or self.owner:
            return
        with self.store.read() as txn:
            raw = txn.get(R.META_INDEX, db=self.db_meta)
            raw = bytes(raw) if raw is not None else None
        seen_vec, seen_raw = self._view_seen
        if seen_vec is vec and seen_raw == raw:
            return
        self._view_seen = (vec, raw)  # a failed open is retried at the next publication only
        meta = meta_loads(raw)
        if not meta:
            return
        version = int(meta.get("version", 0))
        if vec.view is not None and vec.view_version == version:
            return
        fut = self._loop.run_in_executor(None, open_index_file, self.index_path, meta, vec.dim,
                                         vec.tag, True)
        self._view_opening = fut
        fut.add_done_callback(lambda f: self._view_opened(f, vec, version))

    def _view_opened(self, fut: asyncio.Future, vec: VectorIndex, version: int) -> None:
        self._view_opening = None
        if fut.cancelled():
            return
        if fut.exception() is not None:
            log.error("opening the vector index view failed", exc_info=fut.exception())
            return
        index = fut.result()
        if index is None:
            log.debug("vector index file version %d not usable here; exact search", version)
            return
        if self._closed or self.vec is not vec:
            index.reset()
            return
        vec.set_view(index, version)
        self.index_version = version

    def index_info(self) -> dict:
        """Statistics for metrics / admin."""
        vec = self.vec
        return {
            "agents": len(self.known),
            "vectors": len(vec) if vec is not None else 0,
            "pending_vectors": len(self.pending),
            "embedder": self.embed.tag,
            "index_version": self.index_version,
            "index_view_version": vec.view_version if vec is not None and vec.view is not None
            else None,
            "index_file": self.index_path,
            "seq": self.applied_seq,
            "embed_runs": self.embed.runs,
            "embed_texts": self.embed.texts,
            "embed_max_batch": self.embed.max_batch,
        }

    # ------------------------------------------------------------------------------------------
    # background work (owner)
    # ------------------------------------------------------------------------------------------
    def _kick_indexer(self) -> None:
        if (not self.owner or self._closed or self._loop is None
                or (self._indexer is not None and not self._indexer.done())):
            return
        self._indexer = self._spawn(self._index_pending())

    async def _index_pending(self) -> None:
        """Embed cards that have no vector of the current embedder (model was not ready,
        embedder changed, or a vector was lost)."""
        await asyncio.sleep(0)
        while self.pending and not self._closed and self.vec is not None:
            batch = sorted(self.pending)[:64]
            with self.store.read() as txn:
                items = []
                for name in batch:
                    raw = txn.get(R.agent_key(name), db=self.db_agents)
                    if raw is None:
                        self.pending.discard(name)
                        continue
                    rec = R.unpack_record(raw)
                    try:
                        texts = embed_texts(json.loads(rec.body))
                    except ValueError:
                        texts = [rec.text]
                    items.append((name, rec.reg_time, texts))
            if not items:
                continue
            tag = self.vec.tag
            try:
                # one job per card; the embedding thread runs them together
                vecs = list(await asyncio.gather(*(self.embed.embed_card(ts)
                                                   for _, _, ts in items)))
            except Exception:  # noqa: BLE001
                log.exception("embedding pending cards failed; retrying later")
                await asyncio.sleep(5)
                continue

            def fn(txn) -> None:
                for (name, reg_time, _), v in zip(items, vecs):
                    key = R.agent_key(name)
                    raw = txn.get(key, db=self.db_agents)
                    if raw is None or R.header(raw)[0] != reg_time:
                        continue  # changed meanwhile; its own REGISTER carries a vector
                    old_vid = R.header(raw)[1]
                    if old_vid:
                        txn.delete(R.U64BE.pack(old_vid), db=self.db_vec)
                    vid = self._next_vec_id(txn)
                    txn.put(R.U64BE.pack(vid), R.pack_vec(tag, v), db=self.db_vec)
                    txn.put(key, R.with_vec_id(raw, vid), db=self.db_agents)
                    self._bump(txn, key)

            await self.store.write(fn)
            with self.store.read() as txn:
                self._refresh(txn)
            for name, _, _ in items:  # gone or re-registered meanwhile: not ours to retry
                if name in self.pending:
                    k = self.known.get(name)
                    if k is None or k[1]:
                        self.pending.discard(name)

    async def _housekeeping(self) -> None:
        """Sweep expired agents (agent_ttl) and trim the change log."""
        ttl = self.agent_ttl
        period = min(max(ttl / 4.0, 0.25), 30.0) if ttl > 0 else 60.0
        while not self._closed:
            await asyncio.sleep(period)
            try:
                if ttl > 0:
                    await self._sweep(ttl)
                await self._trim_log()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("registry housekeeping failed")

    async def _watch(self) -> None:
        """Owner: apply other workers' changes promptly, so the published index, the pending
        embeddings and the sweep follow them even when nobody asks this process."""
        while not self._closed:
            await asyncio.sleep(WATCH_PERIOD)
            try:
                with self.store.read() as txn:
                    self._refresh(txn)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("registry refresh failed")

    async def _sweep(self, ttl: float) -> int:
        cutoff = time.time() - ttl
        with self.store.read() as txn:
            expired = [name for name in self.known
                       if not self._alive(txn, R.agent_key(name), cutoff)]
        if not expired:
            return 0

        def fn(txn) -> int:
            n = 0
            for name in expired:
                if not self._alive(txn, R.agent_key(name), cutoff):
                    n += self._delete_agent(txn, name)
            return n

        n = await self.store.write(fn)
        with self.store.read() as txn:
            self._refresh(txn)
        if n:
            log.info("registry: swept %d agents silent for more than %gs", n, ttl)
        return n

    async def _trim_log(self) -> None:
        with self.store.read() as txn:
            seq = R.get_u64(txn, self.db_meta, R.META_SEQ)
            cur = txn.cursor(db=self.db_log)
            if not cur.first():
                return
            first = R.U64BE.unpack(bytes(cur.key()))[0]
        limit = seq - LOG_KEEP
        if first > limit:
            return

        def fn(txn) -> None:
            cur = txn.cursor(db=self.db_log)
            if cur.first():
                while R.U64BE.unpack(bytes(cur.key()))[0] <= limit:
                    if not cur.delete():
                        break

        await self.store.write(fn)

    # ------------------------------------------------------------------------------------------
    # write helpers (run on the writer thread inside a transaction)
    # ------------------------------------------------------------------------------------------
    def _bump(self, txn, key: bytes) -> None:
        seq = R.get_u64(txn, self.db_meta, R.META_SEQ) + 1
        txn.put(R.META_SEQ, R.U64LE.pack(seq), db=self.db_meta)
        txn.put(R.U64BE.pack(seq), key, db=self.db_log)

    def _next_vec_id(self, txn) -> int:
        vid = R.get_u64(txn, self.db_meta, R.META_NEXT_VEC) + 1
        txn.put(R.META_NEXT_VEC, R.U64LE.pack(vid), db=self.db_meta)
        return vid

    def _delete_agent(self, txn, name: str) -> int:
        key = R.agent_key(name)
        raw = txn.get(key, db=self.db_agents)
        if raw is None:
            return 0
        rec = R.unpack_record(raw)
        txn.delete(key, db=self.db_agents)
        txn.delete(key, db=self.db_reports)
        if rec.mailbox:
            txn.delete(R.mailbox_key(rec.mailbox, name), db=self.db_mailbox)
        if rec.vec_id:
            txn.delete(R.U64BE.pack(rec.vec_id), db=self.db_vec)
        self._bump(txn, key)
        return 1

    def _names_for(self, txn, name: str, mailbox: str, name_first: bool) -> list[str]:
        """Agents addressed by ``name`` and/or ``mailbox`` (PROTOCOL.md §7.2/§7.3)."""
        out: list[str] = []
        if len(name.encode()) > R.MAX_NAME_BYTES or "\x00" in name:
            name = ""  # cannot be registered, so nothing to find
        if len(mailbox.encode()) > R.MAX_NAME_BYTES or "\x00" in mailbox:
            mailbox = ""
        if name and txn.get(R.agent_key(name), db=self.db_agents) is not None:
            out.append(name)
            if name_first:
                return out
        if mailbox:
            prefix = R.mailbox_prefix(mailbox)
            cur = txn.cursor(db=self.db_mailbox)
            if cur.set_range(prefix):
                for k in cur.iternext(values=False):
                    k = bytes(k)
                    if not k.startswith(prefix):
                        break
                    n = k[len(prefix):].decode()
                    if n not in out:
                        out.append(n)
            if mailbox not in out and txn.get(R.agent_key(mailbox), db=self.db_agents) is not None:
                out.append(mailbox)
        return out

    def _alive(self, txn, key: bytes, cutoff: float, raw=None) -> bool:
        """Registered or reported at or after ``cutoff``."""
        if raw is None:
            raw = txn.get(key, db=self.db_agents)
            if raw is None:
                return False
        if R.header(raw)[0] >= cutoff:
            return True
        rep = txn.get(key, db=self.db_reports)
        return rep is not None and R.F64.unpack_from(rep, 0)[0] >= cutoff

    # ------------------------------------------------------------------------------------------
    # commands
    # ------------------------------------------------------------------------------------------
    # REGISTER, UNREGISTER and REPORT reach the store in the order they arrived, whatever each
    # one waits for first (a REGISTER waits for its embedding): a client that pipelines
    # REGISTER then UNREGISTER (or REPORT, or a second REGISTER of the name) gets that order's
    # result.  Each takes a turn before its first ``await`` - the commands start in arrival
    # order - and hands its write to the store (``Store.write`` queues it at once; the queue is
    # applied in order) only after the previous turn's write was handed over.  The embeddings of
    # concurrent REGISTERs still run together; only the queueing is ordered.
    def _turn(self) -> tuple[asyncio.Future | None, asyncio.Future]:
        prev = self._last_turn
        mine = asyncio.get_running_loop().create_future()
        self._last_turn = mine
        return prev, mine

    @staticmethod
    def _pass(turn: tuple[asyncio.Future | None, asyncio.Future]) -> None:
        if not turn[1].done():
            turn[1].set_result(None)

    async def _write_in_turn(self, turn, fn, grows: bool = False) -> Any:
        prev = turn[0]
        try:
            if prev is not None and not prev.done():
                await asyncio.wait((prev,))  # (never cancels ``prev``, even if we are cancelled)
            fut = self.store.write(fn, grows=grows)
        finally:
            self._pass(turn)
        return await fut

    async def register(self, payload: bytes) -> dict:
        cmd = "AGENT.REGISTER"
        body = _parse_object(payload, cmd, empty_ok=False)
        name = _opt_str(body, "name", cmd)
        mailbox = _opt_str(body, "mailbox", cmd)
        name = name or mailbox
        if not name:
            raise Mq9Error("agent name must not be empty")
        _check_identity(name, "name", cmd)
        if mailbox:
            _check_identity(mailbox, "mailbox", cmd)
        info = body.get("payload")
        if not isinstance(info, str):
            info = _dumps(body)
        if not info:
            raise Mq9Error("agent_info must not be empty")
        desc = body.get("description")
        if not isinstance(desc, str):
            desc = _payload_description(body.get("payload"))
        # list-all keeps the card's own values of the keys that only search modes set
        own_keys = ("agent_id" in body or "score" in body
                    or ("description" in body and not isinstance(body["description"], str)))
        entry = {k: v for k, v in body.items() if k not in ENTRY_KEYS}
        entry["name"] = name
        entry["agent_info"] = info
        entry["agent_id"] = f"{R.TENANT_ID}/{name}"
        entry["description"] = desc
        prefix = _dumps(entry)[1:-1].encode()
        body_json = _dumps(body).encode()
        texts = embed_texts(body)
        text = texts[0]

        turn = self._turn()
        vec = tag = None
        try:
            if await self.embed.wait_ready(REGISTER_EMBED_WAIT) and not self._closed:
                tag = self.embed.tag
                try:
                    vec = await self.embed.embed_card(texts if text else [name],
                                                      self._previous_vectors(name, tag))
                except Exception:  # noqa: BLE001 - stored now, embedded by the indexer later
                    log.exception("embedding a card failed")
                    vec = None
        except BaseException:
            self._pass(turn)
            raise
        now = time.time()
        key = R.agent_key(name)

        def fn(txn) -> None:
            old = txn.get(key, db=self.db_agents)
            if old is not None:
                rec = R.unpack_record(old)
                if rec.mailbox:
                    txn.delete(R.mailbox_key(rec.mailbox, name), db=self.db_mailbox)
                if rec.vec_id:
                    txn.delete(R.U64BE.pack(rec.vec_id), db=self.db_vec)
            vid = 0
            if vec is not None:
                vid = self._next_vec_id(txn)
                txn.put(R.U64BE.pack(vid), R.pack_vec(tag, vec), db=self.db_vec)
            txn.put(key, R.pack_record(now, vid, body_json, prefix, text, mailbox, own_keys),
                    db=self.db_agents)
            if mailbox:
                txn.put(R.mailbox_key(mailbox, name), b"", db=self.db_mailbox)
            self._bump(txn, key)

        await self._write_in_turn(turn, fn, grows=True)
        with self.store.read() as txn:
            self._refresh(txn)
        return _OK

    def _previous_vectors(self, name: str, tag: str) -> dict | None:
        """text -> vector of the agent's current registration (made by embedder ``tag``), so a
        re-REGISTER embeds only the texts that changed - also after a restart, when the
        embedder's in-memory document cache is empty."""
        with self.store.read() as txn:
            raw = txn.get(R.agent_key(name), db=self.db_agents)
            if raw is None or not R.header(raw)[1]:
                return None
            rec = R.unpack_record(raw)
            vraw = txn.get(R.U64BE.pack(rec.vec_id), db=self.db_vec)
            vecs = R.unpack_vec(vraw, tag, self.embed.dim) if vraw is not None else None
        if vecs is None:
            return None
        try:
            texts = embed_texts(json.loads(rec.body)) if rec.text else [name]
        except ValueError:
            return None
        if len(texts) != len(vecs):
            return None  # written by another version of embed_texts: rows do not line up
        # rows that took the card's vector (``text.embed_sources``) are not their text's own
        return {t: vecs[i] for i, (t, src) in enumerate(zip(texts, embed_sources(texts)))
                if src == i}

    async def unregister(self, payload: bytes) -> dict:
        cmd = "AGENT.UNREGISTER"
        body = _parse_object(payload, cmd, empty_ok=True)
        name = _opt_str(body, "name", cmd)
        mailbox = _opt_str(body, "mailbox", cmd)
        if not name and not mailbox:
            raise Mq9Error("agent name must not be empty")

        def fn(txn) -> int:
            return sum(self._delete_agent(txn, n)
                       for n in self._names_for(txn, name, mailbox, name_first=False))

        n = await self._write_in_turn(self._turn(), fn)
        if n:
            with self.store.read() as txn:
                self._refresh(txn)
        return _OK

    async def report(self, payload: bytes) -> dict:
        cmd = "AGENT.REPORT"
        body = _parse_object(payload, cmd, empty_ok=True)
        name = _opt_str(body, "name", cmd)
        mailbox = _opt_str(body, "mailbox", cmd)
        if not name and not mailbox:
            raise Mq9Error("agent name must not be empty")
        now = time.time()
        value = R.F64.pack(now) + _dumps(body).encode()
        cutoff = now - self.agent_ttl if self.agent_ttl > 0 else None

        def fn(txn) -> int:
            names = self._names_for(txn, name, mailbox, name_first=True)
            if cutoff is not None:
                # an expired agent is gone, swept or not yet: its REPORT is discarded as an
                # unknown agent's is (it must REGISTER again)
                names = [n for n in names if self._alive(txn, R.agent_key(n), cutoff)]
            for n in names:
                txn.put(R.agent_key(n), value, db=self.db_reports)
            return len(names)

        await self._write_in_turn(self._turn(), fn)
        return _OK

    def discover(self, payload: bytes):
        body = _parse_object(payload, "AGENT.DISCOVER", empty_ok=True)
        text = _opt_str(body, "text", "AGENT.DISCOVER")
        semantic = _opt_str(body, "semantic", "AGENT.DISCOVER")
        limit = _opt_uint(body, "limit", DEFAULT_LIMIT) or DEFAULT_LIMIT
        limit = min(limit, MAX_LIMIT)
        page = max(_opt_uint(body, "page", 1), 1)
        skip = (page - 1) * limit
        ranking = body.get("ranking")
        if ranking is not None and ranking not in RANKINGS:
            raise Mq9Error("invalid AGENT.DISCOVER payload: `ranking` must be one of "
                           + ", ".join(RANKINGS))
        if semantic.strip():
            return self._discover_semantic(semantic, skip, limit, ranking or self.default_ranking)
        if text.strip():
            return self._collect(self._text_ranker(text), skip, limit, True)
        return self._list_all(skip, limit)

    # -- DISCOVER internals ---------------------------------------------------------------------
    def _text_ranker(self, text: str) -> Callable[[int], tuple[list[tuple[str, float]], int]]:
        """BM25 ranking of ``text``; rankings are cached until the next change (agents repeat
        their queries)."""
        qt = tuple(sorted(set(tokens(text))))

        def rank(need: int) -> tuple[list[tuple[str, float]], int]:
            cache = self._rank_cache
            if self._rank_cache_seq != self.applied_seq:
                cache.clear()
                self._rank_cache_seq = self.applied_seq
            key = (qt, need)
            hit = cache.get(key)
            if hit is None:
                hit = self.text.search(qt, need)
                if len(cache) >= RANK_CACHE:
                    cache.pop(next(iter(cache)))
                cache[key] = hit
            return hit

        return rank

    async def _discover_semantic(self, query: str, skip: int, limit: int, ranking: str) -> bytes:
        ready = await self.embed.wait_ready(SEMANTIC_WAIT)
        if not ready or self.vec is None:
            log.warning("semantic model not ready; ranking %r by keywords", query)
            return self._collect(self._text_ranker(query), skip, limit, True)
        qv = (await self.embed.embed([query], query=True))[0]
        with self.store.read() as txn:
            # (first: the other workers' changes go into the mirror's queue, so it is not idle)
            self._refresh(txn)
        vec = self.vec
        large = len(vec) > self.brute_max
        approx = None
        approx_seq = self.applied_seq
        if large and self.owner:
            if vec.idle and vec.usearch is not None:
                approx = await vec.search_usearch(qv, skip + limit + 64)
        elif large:
            self._check_view(vec)
        qt = tokens(query) if ranking == "hybrid" else None

        def first(need: int, bonus) -> list[tuple[str, float]]:
            # a non-owner's view: searched after ``_refresh``, so the vectors newer than the
            # file are in ``view_delta`` and the deleted ones are filtered out
            if not self.owner and len(vec) > self.brute_max and vec.view_usable():
                got = vec.search_view(qv, need)
                if len(got) >= min(need, len(vec)):
                    return got if bonus is None else _add_bonus(got, bonus)
            return vec.search(qv, need, bonus)

        def rank(need: int) -> tuple[list[tuple[str, float]], int]:
            # (the bonus reads the BM25 index as ``_collect`` refreshed it, just before)
            bonus = self.text.keyword_bonus(qt, BONUS_MAX) if qt is not None else None
            total = len(vec) + len(self.pending)
            if (approx is not None and need <= len(approx) and self.vec is vec
                    and self.applied_seq == approx_seq):  # (nothing changed during the search)
                ranked = approx if bonus is None else _add_bonus(approx, bonus)
            else:
                ranked = first(need, bonus)
            if len(ranked) < need and self.pending:
                ranked = ranked + [(n, 0.0) for n in sorted(self.pending)]
            return ranked, total

        return self._collect(rank, skip, limit, True)

    def _collect(self, rank: Callable[[int], tuple[list[tuple[str, float]], int]], skip: int,
                 limit: int, with_score: bool) -> bytes:
        cutoff = time.time() - self.agent_ttl if self.agent_ttl > 0 else None
        with self.store.read() as txn:
            self._refresh(txn)
            get = txn.get
            db_agents = self.db_agents
            db_reports = self.db_reports
            prefixes = self.prefixes  # in step with this snapshot after _refresh
            tenant = R.TENANT
            need = skip + limit
            while True:
                ranked, total = rank(need)
                out: list = []
                append = out.append
                count = 0
                seen = 0
                for name, score in ranked:
                    prefix = prefixes.get(name)
                    if prefix is None:
                        continue
                    key = tenant + name.encode()
                    if cutoff is not None:
                        raw = get(key, db=db_agents)
                        if raw is None or not self._alive(txn, key, cutoff, raw):
                            continue
                    if seen < skip:
                        seen += 1
                        continue
                    # = self._entry(out, txn, key, raw, score), inlined (the hot path)
                    append(b",{" if count else b"{")
                    append(prefix)
                    if with_score:
                        append(b',"score":%.6f' % score if score == score and abs(score) < 1e300
                               else b',"score":0.0')
                    rep = get(key, db=db_reports)
                    if rep is None:
                        append(b',"last_report":null,"last_report_time":null}')
                    else:
                        append(b',"last_report":')
                        append(rep[8:])
                        append(b',"last_report_time":%d}' % _F64_UNPACK(rep, 0)[0])
                    count += 1
                    if count >= limit:
                        break
                if count >= limit or len(ranked) >= total or need >= total:
                    break
                need = min(need * 2 + 64, total)
            return _reply(out)

    def _list_all(self, skip: int, limit: int) -> bytes:
        cutoff = time.time() - self.agent_ttl if self.agent_ttl > 0 else None
        out: list = []
        with self.store.read() as txn:
            seen = 0
            count = 0
            cur = txn.cursor(db=self.db_agents)
            if cur.set_range(R.TENANT):
                for key, raw in cur:
                    key = bytes(key)
                    if not key.startswith(R.TENANT):
                        break
                    if cutoff is not None and not self._alive(txn, key, cutoff, raw):
                        continue
                    if seen < skip:
                        seen += 1
                        continue
                    self._entry(out, txn, key, raw, None)
                    count += 1
                    if count >= limit:
                        break
            return _reply(out)

    # -- statistics and listing (HTTP side port) ------------------------------------------------
    def stats(self) -> dict:
        """``agents``: agent records (an LMDB entry count, cheap enough for every scrape; with
        ``agent_ttl`` an expired agent counts until the owner's sweep removes it)."""
        with self.store.read() as txn:
            return {"agents": int(txn.stat(self.db_agents)["entries"])}

    def list_agents(self, offset: int, limit: int, prefix: str | None = None) -> tuple[int, list[dict]]:
        """Agents in name order (live ones only, with ``agent_ttl``), names starting with
        ``prefix``: ``(total, entries)``, each its DISCOVER entry plus ``register_time``."""
        cutoff = time.time() - self.agent_ttl if self.agent_ttl > 0 else None
        start = R.TENANT + (prefix or "").encode()
        items: list[dict] = []
        seen = 0
        with self.store.read() as txn:
            total = int(txn.stat(self.db_agents)["entries"]) if cutoff is None and not prefix else None
            cur = txn.cursor(db=self.db_agents)
            found = cur.set_range(start)
            while found:
                key = bytes(cur.key())
                if not key.startswith(start):
                    break
                raw = cur.value()
                if cutoff is None or self._alive(txn, key, cutoff, raw):
                    if seen >= offset:
                        if len(items) >= limit:
                            if total is not None:
                                break
                        else:
                            pieces: list = []
                            self._entry(pieces, txn, key, raw, None)
                            entry = json.loads(b"".join(pieces))
                            entry["register_time"] = R.header(raw)[0]
                            items.append(entry)
                    seen += 1
                found = cur.next()
        return (seen if total is None else total), items

    def _entry(self, out: list, txn, key: bytes, raw, score: float | None) -> None:
        """Append one DISCOVER entry (as byte pieces) to ``out``; ``raw`` is the record, and
        ``score`` None means a listing (list-all), where the card keeps its own ``agent_id``,
        ``description`` and ``score`` (PROTOCOL.md §7.4: the registry sets those in search
        modes only)."""
        v, _t, _vid, lb, lp, _lt, _lm = _HDR_UNPACK(raw, 0)
        start = _HDR_SIZE + lb
        out.append(b",{" if out else b"{")
        prefix = raw[start:start + lp]
        if score is None and v & R.OWN_SEARCH_KEYS:
            prefix = _listing_prefix(bytes(raw[_HDR_SIZE:start]), bytes(prefix))
        out.append(prefix)
        if score is not None:
            out.append(b',"score":%.6f' % score if score == score and abs(score) < 1e300
                       else b',"score":0.0')
        rep = txn.get(key, db=self.db_reports)
        if rep is None:
            out.append(b',"last_report":null,"last_report_time":null}')
        else:
            out.append(b',"last_report":')
            out.append(rep[8:])
            out.append(b',"last_report_time":%d}' % _F64_UNPACK(rep, 0)[0])


def _listing_prefix(body: bytes, prefix: bytes) -> bytes:
    """The entry prefix of a listing: the search-mode ``prefix`` with the card's own top-level
    ``agent_id`` / ``description`` / ``score`` put back."""
    card = json.loads(body)
    entry = json.loads(b"{" + prefix + b"}")
    for k in ("agent_id", "description", "score"):
        if k in card:
            entry[k] = card[k]
    return _dumps(entry)[1:-1].encode()


_HDR_UNPACK = R.HDR.unpack_from
_HDR_SIZE = R.HDR.size
_F64_UNPACK = R.F64.unpack_from


def _reply(pieces: list) -> bytes:
    return b'{"error":"","agents":[' + b"".join(pieces) + b"]}"
