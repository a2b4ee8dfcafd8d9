"""Retrieval quality floor on the fixed evaluation sets (tests/data/registry_eval.json and the
held-out registry_eval_holdout.json), measured through the wire on the shared broker.  A
behaviour check on fixed sets, not a speed test; the full table comes from
``python benchmarks/registry_eval.py``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import registry_eval  # noqa: E402


async def test_eval_set_floor(shared_broker):
    data = registry_eval.load_set()
    assert len(data["agents"]) >= 40 and len(data["intents"]) >= 80
    shapes = {a["shape"] for a in data["agents"]}
    assert {"text", "cardjson", "camel", "snake", "mailbox", "nested"} <= shapes
    nc = await nats.connect(shared_broker.url, allow_reconnect=False)

    async def request(cmd: str, body: dict) -> dict:
        msg = await nc.request(f"$mq9.AI.AGENT.{cmd}", json.dumps(body).encode(), timeout=30)
        return json.loads(msg.data)

    try:
        results = await registry_eval.evaluate(request, data)
        holdout = await registry_eval.evaluate(
            request, registry_eval.load_set(registry_eval.HOLDOUT_SET), modes=("semantic", "hybrid"))
    finally:
        await nc.close()
    sem, text = results["semantic"], results["text"]
    # semantic search finds the right agent in the top 5 for >= 90 % of the intents, first for
    # >= 80 % (measured: 0.972 / 0.880), including paraphrases that share no word with the card
    assert sem["recall@5"] >= 0.90, sem
    assert sem["recall@1"] >= 0.80, sem
    assert sem["mrr"] >= 0.85, sem
    assert sem["no_shared_token"]["recall@5"] >= 0.85, sem["no_shared_token"]
    assert sem["by_kind"]["confusable"]["recall@1"] >= 0.75, sem["by_kind"]
    # BM25 is right whenever the intent shares words with the card, and silent otherwise
    assert text["by_kind"]["direct"]["recall@1"] >= 0.90, text["by_kind"]
    assert text["no_shared_token"]["recall@5"] == 0.0
    # the default ranking (cosine + bounded keyword bonus) is never worse than vectors alone, on
    # the set it was chosen on and on the held-out one (measured: 0.880 = 0.880 and 0.930 vs
    # 0.920; MRR 0.924 = 0.924 and 0.954 vs 0.945)
    for res in (results, holdout):
        hyb, vec = res["hybrid"], res["semantic"]
        assert hyb["recall@1"] >= vec["recall@1"] and hyb["recall@5"] >= vec["recall@5"], res
        assert hyb["mrr"] >= vec["mrr"] - 1e-9, res
    assert holdout["hybrid"]["recall@1"] >= 0.90, holdout["hybrid"]
    assert holdout["hybrid"]["recall@5"] >= 0.95, holdout["hybrid"]
