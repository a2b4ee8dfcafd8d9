"""Registry fast paths keep their results: BM25 pre-selection and dense term arrays against a
brute-force ranking, card rows that share a vector, vectors reused on re-REGISTER, and the
length-sorted, de-duplicated document batches of the embedding thread."""
from __future__ import annotations

import asyncio
import json
import math
import random

import numpy as np
import pytest

from mq9fast.registry import embed as E
from mq9fast.registry import text as T


def _brute_bm25(docs: dict[str, list[str]], query: list[str]) -> list[tuple[str, float]]:
    n = len(docs)
    avgdl = sum(len(t) for t in docs.values()) / n
    df: dict[str, int] = {}
    for toks in docs.values():
        for t in set(toks):
            df[t] = df.get(t, 0) + 1
    out = []
    for name, toks in docs.items():
        s = 0.0
        for t in set(query):
            tf = toks.count(t)
            if not tf:
                continue
            idf = math.log(1.0 + (n - df[t] + 0.5) / (df[t] + 0.5))
            s += idf * (T.K1 + 1) * tf / (tf + T.K1 * (1 - T.B + T.B * len(toks) / avgdl))
        if s > 0:
            out.append((name, s))
    out.sort(key=lambda x: (-x[1], x[0]))
    return out


def test_bm25_search_matches_brute_force():
    rng = random.Random(5)
    common = ["alpha", "beta", "gamma"]  # in most documents: dense path
    rare = [f"w{i}" for i in range(60)]
    docs: dict[str, list[str]] = {}
    idx = T.TextIndex()
    for i in range(600):
        toks = [w for w in common if rng.random() < 0.7] + rng.sample(rare, rng.randint(1, 4))
        toks += rng.choices(toks, k=rng.randint(0, 2))  # some tf > 1
        name = f"d{rng.randint(0, 10**6):07d}"
        docs[name] = toks
        idx.upsert(name, toks)
    for name in list(docs)[::7]:  # tombstoned slots
        idx.remove(name)
        del docs[name]
    queries = [["alpha"], ["alpha", "beta"], ["alpha", "beta", "gamma"], ["w3"], ["w3", "alpha"],
               ["w1", "w2", "beta"], ["nothing"], ["w5", "nothing"]]
    queries += [rng.sample(common + rare, rng.randint(1, 4)) for _ in range(40)]
    for q in queries:
        want = _brute_bm25(docs, q)
        for need in (1, 5, 10, 50, 1000):
            got, total = idx.search(q, need)
            assert total == len(want), q
            assert [n for n, _ in got] == [n for n, _ in want[:need]], (q, need)
            assert np.allclose([s for _, s in got], [s for _, s in want[:need]], rtol=1e-4)
        slots, scores = idx.scores(q)
        assert sorted(idx.names[s] for s in slots.tolist()) == sorted(n for n, _ in want)


def test_embed_sources_alias_parts_that_are_most_of_the_card():
    texts = T.embed_texts({"name": "agent-7", "payload": "Summarizes invoices and drafts "
                           "payment reminders for finance teams in English and German."})
    assert len(texts) == 3 and texts[1] == "agent 7"
    assert T.embed_sources(texts) == [0, 1, 0]
    card = {"name": "pay", "description": "Processes card payments and refunds charges",
            "skills": [{"name": "Charge card", "description": "Charge a credit card at checkout"},
                       {"name": "Refund", "description": "Refund a charge to the card"}]}
    texts = T.embed_texts(card)
    assert T.embed_sources(texts) == list(range(len(texts)))  # no part is most of this card
    assert T.embed_sources(["only the card"]) == [0]


async def test_embed_card_aliases_and_reuses_known_vectors():
    svc = E.EmbedService("hash")
    svc.start()
    try:
        assert await svc.wait_ready(60)
        texts = ["agent 7. summarizes long invoices for finance teams", "agent 7",
                 "summarizes long invoices for finance teams"]
        n0 = svc.texts
        v = await svc.embed_card(texts)
        assert svc.texts - n0 == 2  # the description part takes the card's vector
        assert np.array_equal(v[2], v[0])
        assert np.array_equal(v[0], svc.embedder.embed([texts[0]])[0])
        assert np.array_equal(v[1], svc.embedder.embed([texts[1]])[0])
        known = {texts[1]: np.full(svc.dim, 0.5, dtype=np.float32)}
        svc._doc_cache.clear()
        n1 = svc.texts
        w = await svc.embed_card(texts, known)
        assert svc.texts - n1 == 1 and np.array_equal(w[1], known[texts[1]])
    finally:
        svc.close()


async def test_document_batches_dedupe_and_match_single_runs():
    svc = E.EmbedService("auto")
    svc.start()
    try:
        assert await svc.wait_ready(60)
        if not isinstance(svc.embedder, E.MiniLMEmbedder):
            pytest.skip("MiniLM model not installed")
        shared = "Create and email an invoice for a completed order"
        jobs = [[f"agent {i}. Processes card payments for shop number {i} in Europe", f"agent {i}",
                 shared] for i in range(6)]
        n0 = svc.texts
        out = await asyncio.gather(*(svc.embed(j) for j in jobs))
        assert svc.texts - n0 <= 6 * 2 + 1  # the shared text went to the model once
        ref = svc.embedder.embed([t for j in jobs for t in j])
        got = np.vstack(out)
        assert np.allclose(got, ref, atol=1e-4)  # padding and batching change no vector
    finally:
        svc.close()


async def test_reregister_after_restart_reuses_stored_vectors(tmp_path):
    from mq9fast.config import Config
    from mq9fast.registry import Registry
    from mq9fast.storage import Store

    card = {"name": "billing", "description": "Issues invoices and payment reminders",
            "skills": [{"name": "Send reminder", "description": "Email an overdue payment "
                        "reminder to a customer"}]}
    cfg = Config(data_dir=str(tmp_path), embedder="hash")
    store = Store(str(tmp_path), fsync="never")
    store.start()
    reg = Registry(store, cfg)
    await reg.start()
    await reg.embed.wait_ready(60)
    await reg.register(json.dumps(card).encode())
    before = json.loads(await reg.discover(b'{"semantic":"overdue invoice reminder"}'))
    await reg.close()
    store.close()

    store = Store(str(tmp_path), fsync="never")
    store.start()
    reg = Registry(store, cfg)
    await reg.start()
    await reg.embed.wait_ready(60)
    try:
        n0 = reg.embed.texts
        await reg.register(json.dumps(card).encode())  # unchanged: nothing to embed
        assert reg.embed.texts == n0
        card["skills"].append({"name": "Refund", "description": "Refund a duplicate payment"})
        await reg.register(json.dumps(card).encode())
        # the card text changed and one new part appeared (the one-word skill name is no
        # part); the old parts were reused
        assert reg.embed.texts - n0 == 2
        after = json.loads(await reg.discover(b'{"semantic":"overdue invoice reminder"}'))
        assert after["agents"][0]["name"] == before["agents"][0]["name"] == "billing"
    finally:
        await reg.close()
        store.close()
