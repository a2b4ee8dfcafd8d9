"""Registry durability and liveness over the wire: kill -9 + restart, the vector index file
(missing / damaged => rebuilt from LMDB, readable as a memory-mapped view), ``agent_ttl``, and
the built-in fallback embedder."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import nats
import pytest

from test_registry_support import names, ok
INDEX_FILE = "registry.usearch"


async def connect(broker):
    return await nats.connect(broker.url, allow_reconnect=False)


CARDS = [
    {"name": "p.translator", "mailbox": "p.translator", "payload":
     "Translates documents between English and Japanese"},
    {"name": "p.weather", "description": "Weather forecasts: rain, wind and temperature",
     "skills": [{"id": "f", "name": "forecast", "description": "seven day forecast"}]},
    {"mailbox": "p.payments.inbox", "description": "Charges credit cards and issues invoices",
     "skills": ["payments", "billing"]},
    {"name": "p.sql", "payload": json.dumps({"name": "sql", "description":
                                             "Writes SQL queries from plain questions"})},
]


async def register_all(nc) -> None:
    for card in CARDS:
        await ok(nc, "REGISTER", card)


async def wait_for(pred, timeout: float = 20.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        await asyncio.sleep(step)
    raise AssertionError("condition not met in time")


async def test_state_survives_kill_9(broker_factory):
    b = broker_factory()
    nc = await connect(b)
    await register_all(nc)
    await ok(nc, "REGISTER", {"name": "p.gone", "payload": "Temporary agent about violins"})
    await ok(nc, "REPORT", {"mailbox": "p.payments.inbox", "status": "busy"})
    await ok(nc, "UNREGISTER", {"name": "p.gone"})
    # upsert just before the crash
    await ok(nc, "REGISTER", {"name": "p.sql", "payload": "Tunes slow SQL queries"})
    await nc.close()
    b.restart(kill=True)
    nc = await connect(b)
    try:
        assert await names(nc, {}) == sorted(["p.translator", "p.weather", "p.payments.inbox",
                                              "p.sql"])
        assert await names(nc, {"text": "japanese"}) == ["p.translator"]
        assert await names(nc, {"text": "violins"}) == []
        assert await names(nc, {"text": "tunes"}) == ["p.sql"]
        assert (await names(nc, {"semantic": "will it rain tomorrow"}))[0] == "p.weather"
        assert (await names(nc, {"semantic": "take a card payment"}))[0] == "p.payments.inbox"
        e = [x for x in (await ok(nc, "DISCOVER", {"text": "invoices"}))["agents"]][0]
        assert e["last_report"] == {"mailbox": "p.payments.inbox", "status": "busy"}
        assert isinstance(e["last_report_time"], int)
        # still writable after the crash
        await ok(nc, "REGISTER", {"name": "p.new", "payload": "Restores violins"})
        assert await names(nc, {"text": "violins"}) == ["p.new"]
    finally:
        await nc.close()


async def test_vector_index_file_rebuilt(broker_factory):
    """Missing, garbage or truncated index file: rebuilt from the LMDB vectors."""
    from mq9fast.registry.vectors import usearch_index_class

    Index = usearch_index_class()

    b = broker_factory()
    path = b.data_dir / INDEX_FILE
    nc = await connect(b)
    await register_all(nc)
    await nc.close()
    await wait_for(path.exists)  # published shortly after the changes
    for damage in ("delete", "garbage", "truncate"):
        b.stop()
        # the published file is a complete usearch index another process can map read-only
        view = Index.restore(str(path), view=True)
        assert len(view) == len(CARDS) and view.ndim == 384
        del view
        good = path.read_bytes()
        if damage == "delete":
            path.unlink()
        elif damage == "garbage":
            path.write_bytes(b"\x00garbage" * 1000)
        else:
            path.write_bytes(good[: len(good) // 2])
        b.start()
        nc = await connect(b)
        try:
            assert (await names(nc, {"semantic": "will it rain tomorrow"}))[0] == "p.weather"
            assert (await names(nc, {"semantic": "translate a letter to Japanese"}))[0] == \
                "p.translator"

            def rebuilt():
                try:
                    return Index.restore(str(path), view=True)
                except Exception:  # noqa: BLE001 - not written yet
                    return None
            view = await wait_for(rebuilt)
            assert len(view) == len(CARDS), damage
            del view
        finally:
            await nc.close()


async def test_index_file_reconciled_after_crash(broker_factory):
    """Changes made after the last publication (then kill -9) are reconciled at start."""
    b = broker_factory()
    path = b.data_dir / INDEX_FILE
    nc = await connect(b)
    await register_all(nc)
    await wait_for(path.exists)
    await asyncio.sleep(0.3)
    await ok(nc, "UNREGISTER", {"name": "p.weather"})
    await ok(nc, "REGISTER", {"name": "p.chess", "payload": "Plays chess and explains openings"})
    await nc.close()
    b.restart(kill=True)
    nc = await connect(b)
    try:
        assert (await names(nc, {"semantic": "a chess opening"}))[0] == "p.chess"
        assert "p.weather" not in await names(nc, {"semantic": "rain forecast", "limit": 100})
    finally:
        await nc.close()


async def test_a_report_does_not_revive_an_expired_agent(broker_factory):
    # expired while the broker was down, so not swept yet when it reports: as gone as a
    # swept one (whose REPORT is an unknown agent's, discarded)
    b = broker_factory(agent_ttl=2)
    nc = await connect(b)
    try:
        await ok(nc, "REGISTER", {"name": "ttl.late", "mailbox": "ttl.late.box",
                                  "payload": "Sleepy dormouse agent"})
    finally:
        await nc.close()
    b.kill()
    await asyncio.sleep(2.5)
    b.start()
    nc = await connect(b)
    try:
        await ok(nc, "REPORT", {"name": "ttl.late", "status": "back"})
        await ok(nc, "REPORT", {"mailbox": "ttl.late.box", "status": "back"})
        assert await names(nc, {}) == []
        await asyncio.sleep(1.0)
        assert await names(nc, {"text": "dormouse"}) == []
        # registering again brings it back, with no report
        await ok(nc, "REGISTER", {"name": "ttl.late", "payload": "Sleepy dormouse agent"})
        (entry,) = (await ok(nc, "DISCOVER", {}))["agents"]
        assert entry["name"] == "ttl.late" and entry["last_report"] is None
    finally:
        await nc.close()


async def test_agent_ttl_hides_and_sweeps(broker_factory):
    b = broker_factory(agent_ttl=1)
    nc = await connect(b)
    try:
        await ok(nc, "REGISTER", {"name": "ttl.silent", "payload": "Silent walrus agent"})
        await ok(nc, "REGISTER", {"name": "ttl.alive", "mailbox": "ttl.alive.box",
                                  "payload": "Chatty walrus agent"})
        assert set(await names(nc, {"text": "walrus"})) == {"ttl.silent", "ttl.alive"}
        for _ in range(8):  # 1.6 s of heartbeats for one of them
            await asyncio.sleep(0.2)
            await ok(nc, "REPORT", {"mailbox": "ttl.alive.box", "report_info": "ok"})
        for query in ({"text": "walrus"}, {"semantic": "a walrus agent"}, {}):
            assert await names(nc, query) == ["ttl.alive"], query
        # it stays gone (swept), and comes back when it registers again
        await asyncio.sleep(0.5)
        assert "ttl.silent" not in await names(nc, {"limit": 100})
        await ok(nc, "REGISTER", {"name": "ttl.silent", "payload": "Silent walrus agent"})
        assert set(await names(nc, {"text": "walrus"})) == {"ttl.silent", "ttl.alive"}
    finally:
        await nc.close()
    # the sweep is durable
    b.restart(kill=True)
    nc = await connect(b)
    try:
        await asyncio.sleep(1.2)
        assert await names(nc, {"text": "walrus"}) == []
    finally:
        await nc.close()


MODELS = Path(__file__).parent / "data" / "models"  # (see its README.md)


@pytest.mark.parametrize("options", [{"embedder": "hash"},
                                     {"embedder": "auto", "model_dir": "/nonexistent/model"},
                                     {"embedder": "auto", "model_dir": str(MODELS / "runtimefail")}],
                         ids=["configured", "model-missing", "model-fails-to-run"])
async def test_fallback_embedder(broker_factory, options):
    b = broker_factory(log_level="info", **options)
    nc = await connect(b)
    try:
        await register_all(nc)
        assert (await names(nc, {"semantic": "rain and wind forecast"}))[0] == "p.weather"
        assert (await names(nc, {"semantic": "translate english into japanese"}))[0] == \
            "p.translator"
        assert (await names(nc, {"semantic": "credit card invoices"}))[0] == "p.payments.inbox"
        # every agent is ranked, even without a shared word
        assert len(await names(nc, {"semantic": "zzz qqq"})) == len(CARDS)
    finally:
        await nc.close()
    assert "hash:v1" in b.log()
    # switching to the model later re-embeds the stored cards
    if options["embedder"] == "hash":
        b.stop()
        b.options = {"log_level": "info"}
        b.start()
        nc = await connect(b)
        try:
            # the cards are re-embedded in the background; meanwhile they are still listed
            assert len(await names(nc, {"semantic": "anything"})) == len(CARDS)
            for _ in range(100):
                if (await names(nc, {"semantic": "will it be sunny"}))[0] == "p.weather":
                    break
                await asyncio.sleep(0.1)
            assert (await names(nc, {"semantic": "will it be sunny"}))[0] == "p.weather"
        finally:
            await nc.close()
        assert "minilm:" in b.log()


async def test_a_model_of_another_vector_size_answers_every_request(broker_factory):
    # a --model-dir model that runs but gives 8-dimensional vectors is used at that size (it
    # used to kill the embedding thread: every REGISTER and semantic DISCOVER then hung)
    b = broker_factory(log_level="info", embedder="auto", model_dir=str(MODELS / "dim8"))
    nc = await connect(b)
    try:
        await register_all(nc)
        assert sorted(await names(nc, {"semantic": "rain and wind forecast"})) == \
            sorted(c.get("name") or c["mailbox"] for c in CARDS)
        assert "p.weather" in await names(nc, {"text": "rain"})
    finally:
        await nc.close()
    assert "hash:v1" not in b.log()


async def test_registry_across_workers(broker_factory, workers):
    """--workers 2: every worker answers from the shared LMDB state at once (change log)."""
    if workers < 2:
        pytest.skip("needs several workers")
    b = broker_factory()
    conns = [await connect(b) for _ in range(6)]  # SO_REUSEPORT spreads them over the workers
    try:
        for i, nc in enumerate(conns):
            await ok(nc, "REGISTER", {"name": f"wk.{i}", "payload": f"Bakes sourdough loaf {i}"})
            for other in conns:
                assert len(await names(other, {"text": "sourdough", "limit": 100})) == i + 1
                assert len(await names(other, {"semantic": "bread baking", "limit": 100})) \
                    == i + 1
        await ok(conns[-1], "UNREGISTER", {"name": "wk.0"})
        await ok(conns[0], "REPORT", {"name": "wk.1", "status": "up"})
        for nc in conns:
            got = (await ok(nc, "DISCOVER", {"text": "sourdough", "limit": 100}))["agents"]
            assert sorted(e["name"] for e in got) == [f"wk.{i}" for i in range(1, 6)]
            assert [e["last_report"] for e in got if e["name"] == "wk.1"] == [
                {"name": "wk.1", "status": "up"}]
    finally:
        for nc in conns:
            await nc.close()
