"""The HTTP side port: health, varz, metrics, admin API, error handling (one broker per module)."""
from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import BrokerProcess, free_port
from mq9fast import Mq9Client, Priority


@pytest.fixture(scope="module")
def http_broker(tmp_path_factory):
    b = BrokerProcess(tmp_path_factory.mktemp("http") / "data", {"http_port": free_port(), "ack_wait": 600})
    b.start()
    b.http = f"http://127.0.0.1:{b.options['http_port']}"
    _wait_http(b.http)
    yield b
    b.stop()


def _wait_http(base: str) -> None:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("HTTP side port did not come up")


def get(base: str, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(base + path, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_json(base: str, path: str) -> tuple[int, dict]:
    status, headers, body = get(base, path)
    assert headers.get("content-type", headers.get("Content-Type", "")).startswith("application/json"), path
    return status, json.loads(body)


@pytest.fixture(scope="module")
def traffic(http_broker):
    """Mailboxes with messages of every priority, a consumer group, two agents (one reporting)."""

    async def go():
        async with Mq9Client(http_broker.url) as c:
            box = await c.mailbox_create(name="http.test.box", ttl=3600)
            for prio in (Priority.NORMAL, Priority.NORMAL, Priority.URGENT, Priority.CRITICAL):
                await c.send(box, "x", priority=prio)
            await c.fetch(box, group_name="workers", deliver="earliest", num_msgs=1)
            others = [await c.mailbox_create(name=f"http.test.other{i}", ttl=0) for i in range(3)]
            await c.agent_register({"name": "http.agent.a", "mailbox": box, "payload": "answers HTTP questions"})
            await c.agent_register({"name": "http.agent.b", "mailbox": others[0], "description": "idle agent"})
            await c.agent_report({"name": "http.agent.a", "status": "ok"})
            return box, others

    return asyncio.run(go())


def test_healthz_readyz(http_broker):
    status, body = get_json(http_broker.http, "/healthz")
    assert status == 200 and body["status"] == "ok"
    status, body = get_json(http_broker.http, "/readyz")
    assert status == 200 and body["status"] == "ready"
    assert body["checks"]["storage"] and body["checks"]["nats"]


def test_varz_snapshot_without_secrets(http_broker, traffic):
    status, v = get_json(http_broker.http, "/varz")
    assert status == 200
    for key in ("server_id", "connections", "uptime_s", "total_in_msgs", "storage", "commands", "mailbox",
                "registry", "config", "ready"):
        assert key in v, key
    assert v["commands"]["MSG.SEND:ok"] >= 4
    assert v["config"]["http_port"] == http_broker.options["http_port"]
    assert not {"auth_token", "password", "user"} & set(v["config"])
    assert v["registry"]["agents"] >= 2


def _metrics(base: str) -> dict[str, list]:
    status, headers, body = get(base, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def _value(samples: dict, name: str, **labels) -> float:
    for s in samples.get(name, []):
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError((name, labels))


def test_metrics(http_broker, traffic):
    m = _metrics(http_broker.http)
    for name in ("mq9fast_connections", "mq9fast_subscriptions", "mq9fast_messages_in_total",
                 "mq9fast_messages_out_total", "mq9fast_bytes_in_total", "mq9fast_bytes_out_total",
                 "mq9fast_slow_consumers_total", "mq9fast_fsync_batches_total", "mq9fast_fsync_batched_writes_total",
                 "mq9fast_fsync_last_batch_size", "mq9fast_mailboxes", "mq9fast_agents", "mq9fast_uptime_seconds",
                 "mq9fast_build_info"):
        assert name in m, name
    assert _value(m, "mq9fast_commands_total", command="MSG.SEND", outcome="ok") >= 4
    assert _value(m, "mq9fast_commands_total", command="MAILBOX.CREATE", outcome="ok") >= 4
    assert _value(m, "mq9fast_command_duration_seconds_count", command="MSG.SEND") >= 4
    assert _value(m, "mq9fast_command_duration_seconds_count", command="MSG.FETCH") >= 1
    assert _value(m, "mq9fast_command_duration_seconds_bucket", command="MSG.SEND", le="+Inf") >= 4
    assert _value(m, "mq9fast_mailboxes") >= 4 and _value(m, "mq9fast_agents") >= 2
    assert _value(m, "mq9fast_fsync_batched_writes_total") >= 4
    # engine statistics: stored messages by lane and the lease of the one fetched message
    assert _value(m, "mq9fast_stored_messages", priority="critical") >= 1
    assert _value(m, "mq9fast_stored_messages", priority="normal") >= 2
    assert _value(m, "mq9fast_leases_outstanding") >= 1
    # --fsync always: the writes went through the write-ahead log; the start took a checkpoint
    records = _value(m, "mq9fast_wal_records_total")
    assert records >= 4 and _value(m, "mq9fast_wal_bytes_total") > 4 * 20
    assert 4 <= _value(m, "mq9fast_wal_sync_duration_seconds_count") <= records  # (from install on)
    assert _value(m, "mq9fast_wal_sync_seconds_total") > 0
    assert _value(m, "mq9fast_checkpoints_total") >= 1 and "mq9fast_checkpoint_txn" in m


def test_traffic_counters(http_broker):
    async def go():
        async with Mq9Client(http_broker.url) as c:
            box = await c.mailbox_create(ttl=60)
            await c.send(box, "0123456789")
            return _metrics(http_broker.http)

    m = asyncio.run(go())
    assert _value(m, "mq9fast_connections") >= 1
    assert _value(m, "mq9fast_messages_in_total") >= 2 and _value(m, "mq9fast_messages_out_total") >= 2
    assert _value(m, "mq9fast_bytes_in_total") >= 10


def test_traffic_counters_are_monotonic(http_broker):
    before = _value(_metrics(http_broker.http), "mq9fast_messages_in_total")

    async def burst():
        async with Mq9Client(http_broker.url) as c:
            box = await c.mailbox_create(ttl=60)
            for _ in range(5):
                await c.send(box, "y")
            return _value(_metrics(http_broker.http), "mq9fast_messages_in_total")

    during = asyncio.run(burst())  # the client is gone after this
    after = _value(_metrics(http_broker.http), "mq9fast_messages_in_total")
    assert during >= before + 6 and after >= during


def test_admin_mailboxes(http_broker, traffic):
    box, others = traffic
    status, r = get_json(http_broker.http, "/api/mailboxes?limit=1000")
    assert status == 200 and r["total"] >= 4 and r["offset"] == 0 and r["page"] == 1
    item = [i for i in r["items"] if i["address"] == box][0]
    assert item["ttl"] == 3600 and item["depth"] == {"critical": 1, "urgent": 1, "normal": 2}
    assert item["total"] == 4
    assert [g["name"] if isinstance(g, dict) else g for g in item["groups"]] == ["workers"]
    assert item["groups"][0].get("leased", 1) == 1       # one message fetched, not yet ACKed
    # paging: page / offset / prefix
    status, p1 = get_json(http_broker.http, "/api/mailboxes?prefix=http.test.other&limit=2&page=1")
    status, p2 = get_json(http_broker.http, "/api/mailboxes?prefix=http.test.other&limit=2&page=2")
    status, o1 = get_json(http_broker.http, "/api/mailboxes?prefix=http.test.other&limit=2&offset=1")
    names = [i["address"] for i in p1["items"] + p2["items"]]
    assert names == sorted(others) and p1["total"] == 3 and len(p2["items"]) == 1
    assert [i["address"] for i in o1["items"]] == sorted(others)[1:]
    assert all(i["ttl"] == 0 and i["depth"] == {"critical": 0, "urgent": 0, "normal": 0} for i in p1["items"])


def test_admin_agents(http_broker, traffic):
    status, r = get_json(http_broker.http, "/api/agents?limit=100")
    assert status == 200
    agents = {a["name"]: a for a in r["items"]}
    a, b = agents["http.agent.a"], agents["http.agent.b"]
    assert a["mailbox"] == traffic[0] and a["card"]["payload"] == "answers HTTP questions"
    assert a["last_report"]["status"] == "ok" and a["last_report_age_s"] is not None
    assert a["last_report_age_s"] < 600
    assert b["last_report"] is None and b["last_report_age_s"] is None and b["description"] == "idle agent"
    status, page = get_json(http_broker.http, "/api/agents?limit=1&page=2")
    assert status == 200 and len(page["items"]) == 1 and page["offset"] == 1


@pytest.mark.parametrize("query,needle", [
    ("limit=abc", "limit must be an integer"),
    ("limit=0", "limit must be between 1 and 1000"),
    ("limit=5000", "limit must be between 1 and 1000"),
    ("page=0", "page must be >= 1"),
    ("offset=-3", "offset must be >= 0"),
    ("page=2&offset=4", "either page or offset"),
])
def test_admin_bad_params_are_400_json(http_broker, query, needle):
    for path in ("/api/mailboxes", "/api/agents"):
        status, body = get_json(http_broker.http, f"{path}?{query}")
        assert status == 400 and needle in body["error"], (path, body)


def test_unknown_paths_and_methods_are_json(http_broker):
    status, body = get_json(http_broker.http, "/no/such/page")
    assert status == 404 and body == {"error": "Not Found"}
    status, headers, raw = get(http_broker.http, "/healthz", method="POST")
    assert status == 405 and json.loads(raw)["error"]


def test_dashboard_assets_served(http_broker):
    status, headers, body = get(http_broker.http, "/dashboard")
    assert status == 200 and headers["content-type"].startswith("text/html")
    html = body.decode()
    for needle in ('id="mailboxes-body"', 'id="agents-body"', 'id="chart"', "/static/dashboard.js",
                   "/static/dashboard.css"):
        assert needle in html
    assert "http://" not in html.replace("http://127.0.0.1", "") and "https://" not in html  # no CDN
    for asset, ctype in (("/static/dashboard.js", "javascript"), ("/static/dashboard.css", "text/css")):
        status, headers, body = get(http_broker.http, asset)
        assert status == 200 and ctype in headers["content-type"] and len(body) > 500
    status, headers, _ = get(http_broker.http, "/static/../app.py")
    assert status == 404


def test_overview_and_oauth_helpers(http_broker):
    status, o = get_json(http_broker.http, "/api/overview")
    assert status == 200 and "config" not in o and o["ready"]["status"] == "ready"
    status, r = get_json(http_broker.http, "/.well-known/oauth-protected-resource")
    assert status == 200 and r["resource"].endswith("/mcp") and r["bearer_methods_supported"] == []
    status, headers, raw = get(http_broker.http, "/register", method="POST")
    assert status == 400 and json.loads(raw)["error"] == "invalid_client_metadata"


# ------------------------------------------------------------------- in-process: containment, collector
def _fake_broker(mailbox=None, registry=None):
    from mq9fast.config import Config

    cfg = Config(http_port=0)
    server = SimpleNamespace(clients={}, router=SimpleNamespace(count=0), slow_consumers=0, started=1.0,
                             port=4222, varz=lambda: {"connections": 0})
    store = SimpleNamespace(batches=3, batched_writes=7, last_batch_size=2, max_batch_size=4, path="/x",
                            full=False, room=1 << 30, reserve=64 << 20,
                            fsync="always", env=SimpleNamespace(stat=lambda: {}), _closed=False,
                            read=None)
    control = SimpleNamespace(counts={("MSG.SEND", "ok"): 2}, dispatch=lambda *a: None)
    return SimpleNamespace(config=cfg, server=server, store=store, control=control, mailbox=mailbox,
                           registry=registry)


def test_handler_exceptions_are_contained():
    from starlette.testclient import TestClient

    from mq9fast.http import HttpSidePort

    class BrokenMailbox:
        def list_mailboxes(self, offset, limit):
            raise RuntimeError("disk on fire")

        def stats(self):
            raise RuntimeError("stats broke")

    port = HttpSidePort(_fake_broker(mailbox=BrokenMailbox()))
    client = TestClient(port.app, raise_server_exceptions=False)
    r = client.get("/api/mailboxes")
    assert r.status_code == 500 and r.json() == {"error": "internal error: disk on fire"}
    r = client.get("/metrics")                         # a failing stats() does not fail the scrape
    assert r.status_code == 200 and "mq9fast_fsync_batches_total 3.0" in r.text
    assert client.get("/healthz").status_code == 200


def test_collector_reads_service_stats_hooks():
    from prometheus_client import generate_latest

    from mq9fast.http.metrics import Metrics

    class Mailbox:
        def stats(self):
            return {"mailboxes": 5, "messages_by_priority": {"critical": 1, "urgent": 2, "normal": 3},
                    "leases": 4, "redeliveries": 6, "delayed": 7}

    class Registry:
        def stats(self):
            return {"agents": 9}

    broker = _fake_broker(Mailbox(), Registry())
    broker.control.observers = []
    broker.store.batch_observers = []
    metrics = Metrics(broker)
    metrics.install()
    assert broker.control.observers == [metrics.observe_command]
    broker.control.observers[0]("MSG.FETCH", "ok", 0.002)
    broker.control.observers[0]("MSG.FETCH", "ok", 0.0005)   # on a bound: counted in that bucket
    broker.control.observers[0]("NOT.A.COMMAND", "ok", 0.03)
    broker.control.observers[0].many("MSG.QUERY", "", [0.0005, 0.002, 0.002])  # one call per batch
    broker.store.batch_observers[0](12)
    text = generate_latest(metrics.registry).decode()
    for line in ('mq9fast_stored_messages{priority="urgent"} 2.0', "mq9fast_leases_outstanding 4.0",
                 "mq9fast_redeliveries_total 6.0", "mq9fast_delayed_messages 7.0", "mq9fast_mailboxes 5.0",
                 "mq9fast_agents 9.0", 'mq9fast_command_duration_seconds_count{command="MSG.FETCH"} 2.0',
                 'mq9fast_command_duration_seconds_bucket{command="MSG.FETCH",le="0.00025"} 0.0',
                 'mq9fast_command_duration_seconds_bucket{command="MSG.FETCH",le="0.0005"} 1.0',
                 'mq9fast_command_duration_seconds_bucket{command="MSG.FETCH",le="0.0025"} 2.0',
                 'mq9fast_command_duration_seconds_bucket{command="MSG.FETCH",le="+Inf"} 2.0',
                 'mq9fast_command_duration_seconds_sum{command="MSG.FETCH"} 0.0025',
                 'mq9fast_command_duration_seconds_count{command="unknown"} 1.0',
                 'mq9fast_command_duration_seconds_bucket{command="MSG.QUERY",le="0.0005"} 1.0',
                 'mq9fast_command_duration_seconds_bucket{command="MSG.QUERY",le="0.0025"} 3.0',
                 'mq9fast_command_duration_seconds_sum{command="MSG.QUERY"} 0.0045',
                 "mq9fast_fsync_batch_size_count 1.0", 'mq9fast_commands_total{command="MSG.SEND",outcome="ok"} 2.0'):
        assert line in text, line
    metrics.uninstall()
    assert broker.control.observers == [] and broker.store.batch_observers == []


def test_admin_depth_of_a_large_mailbox(http_broker):
    async def go():
        async with Mq9Client(http_broker.url) as c:
            await c.mailbox_create(name="http.big", ttl=600)
            await asyncio.gather(*[c.send("http.big", b"x") for _ in range(1200)])
            await c.send("http.big", b"y", priority=Priority.URGENT)

    asyncio.run(go())
    status, r = get_json(http_broker.http, "/api/mailboxes?prefix=http.big")
    assert status == 200 and r["items"][0]["depth"] == {"critical": 0, "urgent": 1, "normal": 1200}


def test_side_port_with_two_workers(tmp_path):
    """--workers 2: worker 0 serves the side port; the listings come from the shared LMDB."""
    b = BrokerProcess(tmp_path / "data", {"http_port": free_port(), "workers": 2})
    b.start()
    try:
        base = f"http://127.0.0.1:{b.options['http_port']}"
        _wait_http(base)

        async def go():
            for i in range(6):  # separate connections land on both workers
                async with Mq9Client(b.url) as c:
                    await c.mailbox_create(name=f"w2.box{i}", ttl=60)
                    await c.send(f"w2.box{i}", "x", priority=Priority.URGENT)

        asyncio.run(go())
        status, r = get_json(base, "/api/mailboxes?prefix=w2.")
        assert status == 200 and [i["address"] for i in r["items"]] == [f"w2.box{i}" for i in range(6)]
        assert all(i["depth"]["urgent"] == 1 for i in r["items"])
        assert get_json(base, "/readyz")[0] == 200
        assert "mq9fast_mailboxes" in _metrics(base)
    finally:
        assert b.stop() == 0
