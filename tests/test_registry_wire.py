"""Agent registry over the wire (PROTOCOL.md §7, DESIGN.md §3.8/§4): body shapes, upsert,
unregister, reports, DISCOVER modes and pagination, error texts, the RobustMQ scenario.

All tests share one broker (``shared_broker``); each uses its own agent names and rare words so
they do not see each other's agents.
"""
from __future__ import annotations

import json

import nats
import pytest

from test_registry_support import names, ok, req


@pytest.fixture
async def client(shared_broker):
    nc = await nats.connect(shared_broker.url, allow_reconnect=False)
    yield nc
    await nc.close()


def by_name(reply: dict, name: str) -> dict:
    entries = [e for e in reply["agents"] if e["name"] == name]
    assert entries, f"{name} not in {[e['name'] for e in reply['agents']]}"
    return entries[0]


# --------------------------------------------------------------------------------------------
# REGISTER body shapes
# --------------------------------------------------------------------------------------------

async def test_shape_a_text_payload(client):
    body = {"name": "shape.a.translator", "mailbox": "shape.a.translator",
            "payload": "Translation between Quenya and Sindarin"}
    assert await req(client, "REGISTER", body) == {"error": ""}
    e = by_name(await ok(client, "DISCOVER", {"text": "quenya"}), "shape.a.translator")
    assert e["mailbox"] == "shape.a.translator"
    assert e["payload"] == body["payload"]
    assert e["agent_info"] == body["payload"]
    assert e["description"] == body["payload"]
    assert e["agent_id"] == "default/shape.a.translator"
    assert isinstance(e["score"], float) and e["score"] > 0
    assert e["last_report"] is None and e["last_report_time"] is None


async def test_shape_a_agent_card_json_payload(client):
    card = {"name": "Glimmer", "description": "Polishes gemstone catalogues",
            "version": "2.0.1", "url": "https://glimmer.example.com/a2a",
            "skills": [{"id": "sk-77", "name": "facet", "description": "facet grading reports",
                        "tags": ["lapidary"], "examples": ["grade this sapphire"]}]}
    body = {"name": "shape.a.card", "payload": json.dumps(card)}
    await ok(client, "REGISTER", body)
    # strings inside the JSON payload are searchable: description, skill name/description,
    # tags and examples
    for word in ("gemstone", "facet", "lapidary", "sapphire"):
        assert "shape.a.card" in await names(client, {"text": word}), word
    e = by_name(await ok(client, "DISCOVER", {"text": "lapidary"}), "shape.a.card")
    assert e["agent_info"] == body["payload"]
    assert e["payload"] == body["payload"]
    assert e["description"] == "Polishes gemstone catalogues"
    # identifiers are not: id, version, url
    for word in ("sk", "77", "example.com", "https", "a2a", "2.0.1"):
        assert "shape.a.card" not in await names(client, {"text": word}), word


@pytest.mark.parametrize("style", ["camel", "snake"])
async def test_shape_b_a2a_agent_card(client, style):
    name = f"shape.b.{style}"
    modes = ({"defaultInputModes": ["text/plain"], "protocolVersion": "0.3.0",
              "preferredTransport": "JSONRPC"} if style == "camel" else
             {"default_input_modes": ["text/plain"], "protocol_version": "0.3.0"})
    body = {"name": name, "description": f"Marmalade {style} tasting agent",
            "version": "1.0.0", "capabilities": {"streaming": False},
            "skills": [{"id": "s1", "name": "zest", "description": "rates bitterness of peel",
                        "tags": ["citrus"]}], **modes}
    await ok(client, "REGISTER", body)
    for word in ("marmalade", "zest", "bitterness", "citrus"):
        assert name in await names(client, {"text": word}), word
    e = by_name(await ok(client, "DISCOVER", {"text": f"marmalade {style}"}), name)
    # the stored card comes back as registered
    for k, v in body.items():
        assert e[k] == v, k
    assert json.loads(e["agent_info"]) == body
    assert e["description"] == body["description"]
    assert "jsonrpc" not in [w.lower() for w in await names(client, {"text": "jsonrpc"})]


async def test_shape_c_object_with_mailbox_only(client):
    body = {"mailbox": "shape.c.inbox.x1", "description": "Weighs zeppelin ballast",
            "skills": ["ballast", "buoyancy"]}
    await ok(client, "REGISTER", body)
    e = by_name(await ok(client, "DISCOVER", {"text": "zeppelin"}), "shape.c.inbox.x1")
    assert e["mailbox"] == "shape.c.inbox.x1"
    assert e["skills"] == ["ballast", "buoyancy"]
    assert json.loads(e["agent_info"]) == body
    assert "shape.c.inbox.x1" in await names(client, {"text": "buoyancy"})
    # the mailbox address itself is an identifier, not searchable text
    assert "shape.c.inbox.x1" not in await names(client, {"text": "x1"})


async def test_shape_nested_agent_card_and_extras(client):
    body = {"name": "shape.nested", "mailbox": "shape.nested", "payload": "Kiln agent",
            "agent_card": {"name": "kiln", "description": "fires porcelain",
                           "skills": [{"name": "glaze", "tags": ["celadon"]}]},
            "owner": {"team": "ceramics"}, "priority": 3}
    await ok(client, "REGISTER", body)
    for word in ("porcelain", "celadon", "ceramics", "kiln"):
        assert "shape.nested" in await names(client, {"text": word}), word
    e = by_name(await ok(client, "DISCOVER", {"text": "porcelain"}), "shape.nested")
    assert e["agent_card"] == body["agent_card"] and e["priority"] == 3
    assert e["owner"] == {"team": "ceramics"}


async def test_name_falls_back_to_mailbox_and_empty_name(client):
    await ok(client, "REGISTER", {"name": "", "mailbox": "shape.fallback.box",
                                  "description": "Counts hedgehogs"})
    assert "shape.fallback.box" in await names(client, {"text": "hedgehogs"})


async def test_entry_keys_override_body_keys(client):
    body = {"name": "shape.override", "description": "Tunes theremins",
            "score": "high", "agent_id": "x", "last_report": "never", "agent_info": "mine"}
    await ok(client, "REGISTER", body)
    e = by_name(await ok(client, "DISCOVER", {"text": "theremins"}), "shape.override")
    assert isinstance(e["score"], float)
    assert e["agent_id"] == "default/shape.override"
    assert e["last_report"] is None
    assert json.loads(e["agent_info"]) == body


async def test_a_payload_of_deeply_nested_json_registers(client):
    # the payload string is read as JSON for its text; nesting too deep for that is just text
    body = {"name": "shape.deep.payload", "payload": "[" * 5000 + "]" * 5000,
            "description": "Stacks nested crates"}
    assert await req(client, "REGISTER", body) == {"error": ""}
    e = by_name(await ok(client, "DISCOVER", {"text": "crates"}), "shape.deep.payload")
    assert e["payload"] == body["payload"] and e["description"] == "Stacks nested crates"
    assert "shape.deep.payload" in await names(client, {"semantic": "nested crates", "limit": 1000})


async def test_listing_keeps_the_cards_own_search_keys(client):
    # PROTOCOL.md §7.4: the registry sets agent_id / description / score in search modes only;
    # list-all returns the card's own values
    body = {"name": "shape.own.keys", "mailbox": "shape.own.keys.inbox",
            "description": {"en": "Tunes carillons", "de": "Stimmt Glockenspiele"},
            "agent_id": "acme-42", "score": 4.5, "skills": [{"name": "tune carillon bells"}]}
    await ok(client, "REGISTER", body)
    listed = by_name(await ok(client, "DISCOVER", {"limit": 1000}), "shape.own.keys")
    assert listed["description"] == body["description"]
    assert listed["agent_id"] == "acme-42"
    assert listed["score"] == 4.5
    assert listed["mailbox"] == body["mailbox"]
    found = by_name(await ok(client, "DISCOVER", {"text": "carillon"}), "shape.own.keys")
    assert found["agent_id"] == "default/shape.own.keys"
    assert found["description"] == ""  # not a string, and no string payload
    assert isinstance(found["score"], float) and found["score"] != 4.5


# --------------------------------------------------------------------------------------------
# upsert, unregister, report
# --------------------------------------------------------------------------------------------

async def test_reregister_replaces(client):
    await ok(client, "REGISTER", {"name": "upsert.agent", "mailbox": "upsert.box.one",
                                  "payload": "Repairs accordions"})
    await ok(client, "REGISTER", {"name": "upsert.agent", "mailbox": "upsert.box.two",
                                  "payload": "Tunes bagpipes"})
    assert "upsert.agent" not in await names(client, {"text": "accordions"})
    e = by_name(await ok(client, "DISCOVER", {"text": "bagpipes"}), "upsert.agent")
    assert e["mailbox"] == "upsert.box.two" and e["payload"] == "Tunes bagpipes"
    semantic = await ok(client, "DISCOVER", {"semantic": "bagpipe tuning", "limit": 1000})
    assert sum(1 for x in semantic["agents"] if x["name"] == "upsert.agent") == 1
    listed = await ok(client, "DISCOVER", {"limit": 1000})
    assert sum(1 for x in listed["agents"] if x["name"] == "upsert.agent") == 1
    # the old mailbox no longer addresses it
    await ok(client, "UNREGISTER", {"mailbox": "upsert.box.one"})
    assert "upsert.agent" in await names(client, {"text": "bagpipes"})


async def test_unregister_by_name(client):
    await ok(client, "REGISTER", {"name": "unreg.byname", "payload": "Sharpens katanas"})
    assert "unreg.byname" in await names(client, {"text": "katanas"})
    assert await req(client, "UNREGISTER", {"name": "unreg.byname"}) == {"error": ""}
    assert "unreg.byname" not in await names(client, {"text": "katanas"})
    assert "unreg.byname" not in await names(client, {"semantic": "sharpen a katana",
                                                      "limit": 1000})
    assert "unreg.byname" not in await names(client, {"limit": 1000})
    # unknown name: still success
    assert await req(client, "UNREGISTER", {"name": "unreg.never.there"}) == {"error": ""}


async def test_unregister_by_mailbox(client):
    # the SDKs send {"mailbox": ...}: removes every agent registered with that mailbox
    await ok(client, "REGISTER", {"name": "unreg.mb.a", "mailbox": "unreg.shared.box",
                                  "payload": "Paints lighthouses"})
    await ok(client, "REGISTER", {"name": "unreg.mb.b", "mailbox": "unreg.shared.box",
                                  "payload": "Paints lighthouses at night"})
    await ok(client, "REGISTER", {"mailbox": "unreg.only.box", "description": "Paints lighthouses"})
    await ok(client, "REGISTER", {"name": "unreg.mb.keep", "mailbox": "unreg.other.box",
                                  "payload": "Paints lighthouses too"})
    found = await names(client, {"text": "lighthouses"})
    assert {"unreg.mb.a", "unreg.mb.b", "unreg.only.box", "unreg.mb.keep"} <= set(found)
    await ok(client, "UNREGISTER", {"mailbox": "unreg.shared.box"})
    await ok(client, "UNREGISTER", {"mailbox": "unreg.only.box"})
    found = await names(client, {"text": "lighthouses"})
    assert "unreg.mb.keep" in found
    assert not {"unreg.mb.a", "unreg.mb.b", "unreg.only.box"} & set(found)
    await ok(client, "UNREGISTER", {"mailbox": "unreg.nothing.here"})


async def test_agents_do_not_expire_by_default(client):
    import asyncio

    await ok(client, "REGISTER", {"name": "nottl.agent", "payload": "Patient tortoise"})
    await asyncio.sleep(1.2)
    assert await names(client, {"text": "tortoise"}) == ["nottl.agent"]


async def test_report_fields_in_discover(client):
    await ok(client, "REGISTER", {"name": "report.agent", "mailbox": "report.box",
                                  "payload": "Calibrates sextants"})
    e = by_name(await ok(client, "DISCOVER", {"text": "sextants"}), "report.agent")
    assert e["last_report"] is None and e["last_report_time"] is None
    await ok(client, "REPORT", {"name": "report.agent", "report_info": "busy", "load": 0.5})
    e = by_name(await ok(client, "DISCOVER", {"text": "sextants"}), "report.agent")
    assert e["last_report"] == {"name": "report.agent", "report_info": "busy", "load": 0.5}
    assert isinstance(e["last_report_time"], int) and e["last_report_time"] > 1_700_000_000
    # by mailbox (Go/JS/Java send {mailbox, status...}); the latest report wins, in every mode
    await ok(client, "REPORT", {"mailbox": "report.box", "status": "idle", "queue": 0})
    for query in ({"text": "sextants"}, {"semantic": "calibrate a sextant", "limit": 1000},
                  {"limit": 1000}):
        e = by_name(await ok(client, "DISCOVER", query), "report.agent")
        assert e["last_report"] == {"mailbox": "report.box", "status": "idle", "queue": 0}
    # unknown agent: success, nothing stored
    assert await req(client, "REPORT", {"name": "report.unknown"}) == {"error": ""}
    # re-registering keeps the last report
    await ok(client, "REGISTER", {"name": "report.agent", "mailbox": "report.box",
                                  "payload": "Calibrates sextants and astrolabes"})
    e = by_name(await ok(client, "DISCOVER", {"text": "astrolabes"}), "report.agent")
    assert e["last_report"]["status"] == "idle"


# --------------------------------------------------------------------------------------------
# DISCOVER modes and pagination
# --------------------------------------------------------------------------------------------

async def test_discover_modes_and_precedence(client):
    await ok(client, "REGISTER", {"name": "mode.cheese", "payload": "Ages cheddar wheels"})
    await ok(client, "REGISTER", {"name": "mode.wine", "payload": "Decants vintage wine"})
    # semantic wins over text
    top = await names(client, {"semantic": "decanting red wine", "text": "cheddar"})
    assert top.index("mode.wine") < top.index("mode.cheese")
    # text ranks only agents sharing a token, by score
    assert await names(client, {"text": "cheddar wheels"}) == ["mode.cheese"]
    assert await names(client, {"text": "zzqqxy nonexistentword"}) == []
    assert await names(client, {"text": "the and of"}) == []  # only stop-words
    # semantic ranks every agent (no threshold)
    listed = await ok(client, "DISCOVER", {"limit": 1000})
    semantic = await ok(client, "DISCOVER", {"semantic": "decanting red wine", "limit": 1000})
    assert len(semantic["agents"]) == len(listed["agents"])
    assert semantic["agents"][0]["name"] == "mode.wine"
    scores = [e["score"] for e in semantic["agents"]]
    assert scores == sorted(scores, reverse=True)
    # list-all: sorted by name, no score (but a card's own, for the cards registered with one)
    all_names = [e["name"] for e in listed["agents"]]
    assert all_names == sorted(all_names)
    own_score = {"shape.override", "shape.own.keys"}
    assert all("score" not in e for e in listed["agents"] if e["name"] not in own_score)
    # empty body and empty strings = list all
    assert (await ok(client, "DISCOVER", b""))["agents"][:3] == listed["agents"][:3]
    assert (await names(client, {"text": "", "semantic": "", "limit": 1000})) == all_names


async def test_semantic_ranking_is_exact_and_its_pages_consistent(client):
    # cards whose one matching skill is drowned in the whole-card vector by a long description
    # of something else: they rank by that skill at any limit, and paging walks one total order
    import asyncio

    chores = ["mows lawns", "washes windows", "walks dogs", "folds laundry", "paints fences",
              "cleans gutters", "waters plants", "feeds cats", "irons shirts", "bakes bread",
              "shovels snow", "rakes leaves", "fixes bikes", "sorts mail", "polishes shoes",
              "trims hedges", "sweeps floors", "hangs pictures", "assembles furniture"]
    needles = [{"name": f"exact.needle.{i}",
                "description": "General household help: it " + ", ".join(chores) + ".",
                "skills": [{"name": "stargazing", "description":
                            "Identifies constellations in photographs of the night sky"}]}
               for i in range(3)]
    # more cards nearer the query as a whole than the needles' card vectors than a first stage
    # by card vector alone would take (it took 64 for a limit up to 32; the needles rank 70-85
    # by card vector here)
    subjects = ["sunsets", "mountains", "city lights", "the moon", "clouds", "beaches",
                "forests", "lakes", "storms", "rainbows", "deserts", "harbours"]
    fillers = [{"name": f"exact.filler.{i}.{j}", "payload": f"{verb} photos of {subject}"}
               for i, subject in enumerate(subjects)
               for j, verb in enumerate(["Retouches", "Sharpens", "Crops", "Captions",
                                         "Colour-grades", "Frames", "Prints", "Archives"])]
    replies = await asyncio.gather(*(req(client, "REGISTER", b) for b in fillers + needles))
    assert all(r == {"error": ""} for r in replies)
    query = {"semantic": "which constellations are in my night sky photo"}
    full = await names(client, {**query, "limit": 1000})
    assert set(full[:3]) == {f"exact.needle.{i}" for i in range(3)}, full[:6]
    for limit in (1, 3, 5, 20):
        assert await names(client, {**query, "limit": limit}) == full[:limit]
    assert await _pages(client, query, 7) == full
    for b in fillers + needles:
        await ok(client, "UNREGISTER", {"name": b["name"]})


async def test_default_ranking_adds_a_bounded_keyword_bonus(client):
    # the default ranking of a semantic query is "hybrid": each card's cosine plus a bonus of at
    # most 0.1 for the share of the query's keywords it holds - so among cards the vectors rank
    # close together, the one that says what the query says comes first
    cards = [{"name": "ledger.quasarix",
              "payload": "Reconciles the Quasarix ledger against bank statements every night"},
             {"name": "ledger.books",
              "payload": "Reconciles accounting ledgers against bank statements every night"},
             {"name": "ledger.audit",
              "payload": "Audits general ledgers and flags unusual journal entries"}]
    for c in cards:
        await ok(client, "REGISTER", c)
    query = {"semantic": "reconcile the Quasarix ledger", "limit": 1000}
    default = await ok(client, "DISCOVER", query)
    assert default == await ok(client, "DISCOVER", {**query, "ranking": "hybrid"})
    vector = await ok(client, "DISCOVER", {**query, "ranking": "vector"})

    def scores(reply):
        return {c["name"]: by_name(reply, c["name"])["score"] for c in cards}

    fused, cos = scores(default), scores(vector)
    extra = {n: fused[n] - cos[n] for n in fused}
    assert all(-1e-5 <= v <= 0.1 + 1e-5 for v in extra.values()), extra
    # every keyword held > two of them ("reconcile", "ledger") > one ("ledger")
    assert extra["ledger.quasarix"] > extra["ledger.books"] > extra["ledger.audit"] > 0
    # (the pinned model puts the auditor a little nearer than the bookkeeper: 0.50 vs 0.47)
    order = [e["name"] for e in vector["agents"] if e["name"].startswith("ledger.")]
    assert order == ["ledger.quasarix", "ledger.audit", "ledger.books"]
    order = [e["name"] for e in default["agents"] if e["name"].startswith("ledger.")]
    assert order == ["ledger.quasarix", "ledger.books", "ledger.audit"]
    bad = await req(client, "DISCOVER", {**query, "ranking": "rrf"})
    assert bad["error"].startswith("invalid AGENT.DISCOVER payload: `ranking`"), bad
    for c in cards:
        await ok(client, "UNREGISTER", {"name": c["name"]})


async def _pages(client, query: dict, limit: int) -> list[str]:
    out: list[str] = []
    page = 1
    while True:
        got = await names(client, {**query, "limit": limit, "page": page})
        assert len(got) <= limit
        if not got:
            return out
        out += got
        page += 1


async def test_pagination_in_every_mode(client):
    for i in range(7):
        await ok(client, "REGISTER", {"name": f"page.agent.{i}",
                                      "payload": f"Knits woollen scarves pattern {i}"})
    for query in ({}, {"text": "woollen scarves"}, {"semantic": "knitting a scarf"}):
        full = await names(client, {**query, "limit": 1000})
        assert await _pages(client, query, 3) == full, query
        # default limit 20, page 0 = page 1
        assert await names(client, {**query, "page": 0}) == full[:20]
        assert await names(client, {**query, "limit": 2, "page": 10_000}) == []
    assert len(await names(client, {"text": "woollen"})) == 7
    assert await names(client, {"text": "woollen", "limit": 2, "page": 4}) == [
        (await names(client, {"text": "woollen", "limit": 1000}))[6]]
    # limit 0 = default, huge limits are clamped
    assert len(await names(client, {"text": "woollen", "limit": 0})) == 7
    assert len(await names(client, {"text": "woollen", "limit": 4_000_000_000})) == 7


async def test_robustmq_scenario(client):
    """RobustMQ integration test agent_core / agent_discover."""
    card = {"name": "payment-agent", "description": "Handles payments and invoicing",
            "version": "1.0.0", "url": "http://localhost:8080",
            "capabilities": {"streaming": False},
            "defaultInputModes": ["text"], "defaultOutputModes": ["text"],
            "skills": [{"id": "pay", "name": "process payment",
                        "description": "Process a payment and generate invoice",
                        "tags": ["payment", "invoice"]}]}
    await ok(client, "REGISTER", {"name": "robustmq.payment", "payload": json.dumps(card)})
    assert "robustmq.payment" in await names(client, {"text": "payment invoice"})
    found = await names(client, {"semantic": "process a payment and generate invoice"})
    assert "robustmq.payment" in found
    await ok(client, "UNREGISTER", {"name": "robustmq.payment"})
    assert "robustmq.payment" not in await names(client, {"text": "payment invoice"})
    assert "robustmq.payment" not in await names(
        client, {"semantic": "process a payment and generate invoice", "limit": 1000})


async def test_register_is_visible_to_the_next_discover(client):
    # several REGISTERs in flight at once (one batch), each visible right after its reply
    import asyncio

    bodies = [{"name": f"burst.{i}", "payload": f"Restores harpsichord number {i}"}
              for i in range(20)]
    replies = await asyncio.gather(*(req(client, "REGISTER", b) for b in bodies))
    assert all(r == {"error": ""} for r in replies)
    assert len(await names(client, {"text": "harpsichord", "limit": 100})) == 20
    sem = await names(client, {"semantic": "harpsichord restoration", "limit": 20})
    assert set(sem) == {f"burst.{i}" for i in range(20)}


async def test_pipelined_writes_take_effect_in_the_order_sent(client):
    # a REGISTER waits for its embedding before it is stored; what the client sent after it
    # on the same connection must still land after it
    subj = "$mq9.AI.AGENT."
    long_card = {"name": "order.c", "payload": "version A " + " ".join(
        f"sentence {i} about restoring pipe organs and their bellows." for i in range(200)),
        "skills": [{"name": f"organ skill {i}", "description": f"voicing organ pipes, rank {i}"}
                   for i in range(20)]}
    for _ in range(3):
        await client.publish(subj + "REGISTER", json.dumps(
            {"name": "order.a", "payload": "Restores pipe organs"}).encode())
        await client.publish(subj + "UNREGISTER", json.dumps({"name": "order.a"}).encode())
        await client.publish(subj + "REGISTER", json.dumps(
            {"name": "order.b", "payload": "Restores pipe organs"}).encode())
        await client.publish(subj + "REPORT", json.dumps(
            {"name": "order.b", "status": "ready"}).encode())
        await client.publish(subj + "REGISTER", json.dumps(long_card).encode())
        await client.publish(subj + "REGISTER", json.dumps(
            {"name": "order.c", "payload": "version B"}).encode())
        # a DISCOVER on this connection waits for those writes (server.py), so it sees them all
        listed = {e["name"]: e for e in (await ok(client, "DISCOVER", {"limit": 1000}))["agents"]}
        assert "order.a" not in listed
        assert listed["order.b"]["last_report"] == {"name": "order.b", "status": "ready"}
        assert listed["order.c"]["payload"] == "version B"
        for name in ("order.b", "order.c"):
            await ok(client, "UNREGISTER", {"name": name})


# --------------------------------------------------------------------------------------------
# bad input: exact texts, connection still usable
# --------------------------------------------------------------------------------------------

BAD = [
    ("REGISTER", b"", "payload must not be empty"),
    ("REGISTER", b"   ", "payload must not be empty"),
    ("REGISTER", b"not json", "invalid AGENT.REGISTER payload: "),
    ("REGISTER", b"[1,2]", "invalid AGENT.REGISTER payload: "),
    ("REGISTER", b'"text"', "invalid AGENT.REGISTER payload: "),
    ("REGISTER", b"\xff\xfe", "invalid AGENT.REGISTER payload: "),
    ("REGISTER", b"{}", "agent name must not be empty"),
    ("REGISTER", b'{"payload":"x"}', "agent name must not be empty"),
    ("REGISTER", b'{"name":"","mailbox":""}', "agent name must not be empty"),
    ("REGISTER", b'{"name":"bad.info","payload":""}', "agent_info must not be empty"),
    ("REGISTER", b'{"name":42}', "invalid AGENT.REGISTER payload: `name` must be a string"),
    ("REGISTER", b'{"name":"bad.mb","mailbox":["a"]}',
     "invalid AGENT.REGISTER payload: `mailbox` must be a string"),
    ("REGISTER", json.dumps({"name": "x" * 300}).encode(), "invalid AGENT.REGISTER payload: "),
    ("UNREGISTER", b"", "agent name must not be empty"),
    ("UNREGISTER", b"{}", "agent name must not be empty"),
    ("UNREGISTER", b"{bad", "invalid AGENT.UNREGISTER payload: "),
    ("UNREGISTER", b'{"name":7}', "invalid AGENT.UNREGISTER payload: `name` must be a string"),
    ("REPORT", b"{}", "agent name must not be empty"),
    ("REPORT", b"nope", "invalid AGENT.REPORT payload: "),
    ("REPORT", b'{"mailbox":false}', "invalid AGENT.REPORT payload: `mailbox` must be a string"),
    ("DISCOVER", b"nope", "invalid AGENT.DISCOVER payload: "),
    ("DISCOVER", b"[]", "invalid AGENT.DISCOVER payload: "),
    ("DISCOVER", b'{"text":5}', "invalid AGENT.DISCOVER payload: `text` must be a string"),
    ("DISCOVER", b'{"semantic":{}}', "invalid AGENT.DISCOVER payload: `semantic` must be a string"),
    ("DISCOVER", b'{"limit":-1}', "invalid AGENT.DISCOVER payload: `limit` must be a non-negative"),
    ("DISCOVER", b'{"limit":"5"}', "invalid AGENT.DISCOVER payload: `limit` must be a non-negative"),
    ("DISCOVER", b'{"page":1.5}', "invalid AGENT.DISCOVER payload: `page` must be a non-negative"),
    ("DISCOVER", b'{"limit":true}', "invalid AGENT.DISCOVER payload: `limit` must be a non-negative"),
    # JSON a strict client could not read back in a DISCOVER reply (jsonbody.py)
    ("REGISTER", b'{"name":"bad.nan","payload":"x","v":NaN}',
     "invalid AGENT.REGISTER payload: NaN is not a JSON value"),
    ("REGISTER", b'{"name":"bad.inf","payload":"x","v":-Infinity}',
     "invalid AGENT.REGISTER payload: -Infinity is not a JSON value"),
    ("REGISTER", b'{"name":"bad.big","payload":"x","v":1e400}',
     "invalid AGENT.REGISTER payload: number 1e400 is out of range"),
    ("REPORT", b'{"name":"bad.big","load":-1e999}',
     "invalid AGENT.REPORT payload: number -1e999 is out of range"),
    # a lone UTF-16 surrogate: valid JSON, no UTF-8 for it
    ("REGISTER", b'{"name":"bad.sur","payload":"\\ud800 x"}',
     "invalid AGENT.REGISTER payload: a string holds a lone UTF-16 surrogate (\\ud800)"),
    ("REPORT", b'{"name":"bad.sur","status":"\\udfff"}',
     "invalid AGENT.REPORT payload: a string holds a lone UTF-16 surrogate (\\udfff)"),
    ("DISCOVER", b'{"semantic":"\\udbff weather"}',
     "invalid AGENT.DISCOVER payload: a string holds a lone UTF-16 surrogate (\\udbff)"),
    # nesting deeper than the parser's recursion
    *((cmd, b'{"name":"bad.deep","x":' + b"[" * 5000 + b"]" * 5000 + b"}",
       f"invalid AGENT.{cmd} payload: nested too deeply")
      for cmd in ("REGISTER", "UNREGISTER", "REPORT", "DISCOVER")),
]


@pytest.mark.parametrize("cmd,body,text", BAD, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(BAD)])
async def test_bad_input(client, cmd, body, text):
    reply = await req(client, cmd, body)
    assert list(reply) == ["error"], reply  # failure replies carry only the error
    if text.endswith(": ") or text.endswith("non-negative"):
        assert reply["error"].startswith(text), reply
        assert len(reply["error"]) > len(text)
    else:
        assert reply["error"] == text
    # nothing stored half-way; the connection is still usable
    assert (await req(client, "DISCOVER", {"limit": 1}))["error"] == ""
    if cmd == "REGISTER":
        listed = await names(client, {"limit": 1000})
        for name in ("bad.info", "bad.mb", "bad.nan", "bad.inf", "bad.big", "bad.sur",
                     "bad.deep"):
            assert name not in listed
