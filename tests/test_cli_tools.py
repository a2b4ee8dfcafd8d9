"""The human CLI (``mq9fast mailbox|send|fetch|query|agents|request ...``) and the docs it points to."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, BrokerProcess, free_port
from mq9fast import cli
from mq9fast.config import Config


@pytest.fixture(scope="module")
def one_broker(tmp_path_factory):
    """One single-worker broker for the module (this layer is thin: the client tests cover the
    worker variants)."""
    b = BrokerProcess(tmp_path_factory.mktemp("cli") / "data", {})
    b.start()
    yield b
    b.stop()


@pytest.fixture
def run(one_broker, capsys, monkeypatch):
    """run(*argv) -> (exit code, stdout, stderr), in-process, against the module's broker."""
    monkeypatch.setenv("MQ9FAST_SERVER", one_broker.url)

    def _run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return _run


def test_mailbox_send_fetch_query_roundtrip(run):
    code, out, err = run("mailbox", "create", "--ttl", "600", "--json")
    assert code == 0, err
    addr = json.loads(out)["mail_address"]

    code, out, _ = run("send", addr, '{"task":"a"}')
    assert code == 0 and f"to {addr}" in out
    code, out, _ = run("send", addr, "urgent one", "--priority", "urgent", "--tags", "x,y", "--key", "k")
    assert code == 0 and "msg_id 1" in out
    code, out, _ = run("send", addr, "later", "--delay", "60")
    assert code == 0 and "delayed" in out

    code, out, _ = run("fetch", addr, "--group", "g", "--deliver", "earliest")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["MSG_ID", "PRIORITY", "CREATED", "KEY/TAGS", "PAYLOAD"]
    assert "urgent" in lines[2] and "urgent one" in lines[2] and "key=k" in lines[2]   # urgent first
    assert '{"task":"a"}' in lines[3]

    code, out, _ = run("fetch", addr, "--group", "g2", "--deliver", "earliest", "--ack", "--json")
    data = json.loads(out)
    assert code == 0 and data["acked"] and [m["priority"] for m in data["messages"]] == ["urgent", "normal"]
    assert data["messages"][0]["tags"] == ["x", "y"]
    code, out, _ = run("fetch", addr, "--group", "g2", "--json")
    assert json.loads(out)["messages"] == []

    code, out, _ = run("query", addr, "--key", "k", "--json")
    assert [m["payload"] for m in json.loads(out)["messages"]] == ["urgent one"]
    code, out, _ = run("query", addr)
    assert code == 0 and "urgent one" in out and '{"task":"a"}' in out
    code, out, _ = run("delete", addr, "0")
    assert code == 0 and "deleted msg_id 0" in out


def test_named_mailbox_table_and_duplicate_error(run):
    name = f"cli.box.{os.getpid()}"
    code, out, _ = run("mailbox", "create", name, "--ttl", "0")
    assert code == 0 and name in out and "never expires" in out
    code, out, err = run("mailbox", "create", name)
    assert code == 1 and out == ""
    assert err.strip() == f"mq9fast: error: mailbox {name} already exists"


def test_server_error_shown_verbatim(run):
    code, _, err = run("send", "no.such.box", "hi")
    assert code == 1 and err.strip() == "mq9fast: error: mailbox no.such.box does not exist"
    code, _, err = run("mailbox", "create", "Bad_Name")
    assert code == 1 and "name may only contain lowercase letters, digits, and dots" in err
    assert len(err.strip().splitlines()) == 1


def test_usage_errors(run):
    code, _, err = run("fetch", "some.box", "--ack")
    assert code == 2 and "--ack needs --group" in err
    code, _, err = run("agents", "register", "{not json")
    assert code == 2 and "not valid JSON" in err
    code, _, err = run("agents", "register", "/no/such/file.json")
    assert code == 2 and "not valid JSON" in err
    with pytest.raises(SystemExit) as ei:
        run("send", "box", "x", "--priority", "highest")
    assert ei.value.code == 2


def test_connection_refused(run):
    url = f"nats://127.0.0.1:{free_port()}"
    code, out, err = run("mailbox", "create", "--server", url)
    assert code == 3 and out == ""
    assert "connection refused" in err and url in err and len(err.strip().splitlines()) == 1


def test_agents_register_discover_list(run, tmp_path):
    card = {"name": f"cli.agent.{os.getpid()}", "mailbox": "cli.agent.inbox",
            "payload": "Books flights and hotels for business travel"}
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card))
    code, out, _ = run("agents", "register", str(path))
    assert code == 0 and card["name"] in out
    code, out, _ = run("agents", "report", json.dumps({"name": card["name"], "status": "ok"}))
    assert code == 0

    code, out, _ = run("agents", "discover", "hotels", "flights", "--text")
    assert code == 0 and card["name"] in out and "cli.agent.inbox" in out
    assert out.splitlines()[0].split()[:2] == ["NAME", "MAILBOX"]
    code, out, _ = run("agents", "discover", "I", "need", "to", "travel", "to", "Berlin", "--json")
    assert code == 0 and any(a["name"] == card["name"] for a in json.loads(out)["agents"])
    code, out, _ = run("agents", "list", "--json")
    entry = [a for a in json.loads(out)["agents"] if a["name"] == card["name"]][0]
    assert entry["last_report"]["status"] == "ok"
    code, out, _ = run("agents", "list")
    assert card["name"] in out and "ago" in out
    code, out, _ = run("agents", "unregister", card["name"])
    assert code == 0
    code, out, _ = run("agents", "list", "--json")
    assert all(a["name"] != card["name"] for a in json.loads(out)["agents"])


def test_request_like_nats_cli(run):
    code, out, _ = run("mailbox", "create", "--json")
    addr = json.loads(out)["mail_address"]
    code, out, _ = run("request", f"$mq9.AI.MSG.SEND.{addr}", '{"task":"a"}', "-H", "mq9-priority:critical")
    assert code == 0 and json.loads(out) == {"error": "", "msg_id": 0}
    code, out, _ = run("request", f"$mq9.AI.MSG.FETCH.{addr}", '{"deliver":"earliest","payload_encoding":"raw"}')
    msgs = json.loads(out)["messages"]
    assert msgs[0]["priority"] == "critical" and msgs[0]["payload"] == '{"task":"a"}'
    code, _, err = run("request", "no.responders.here", "x", "--timeout", "2")
    assert code == 1 and "no responders" in err


def test_real_entry_point(one_broker):
    """The installed console entry (python -m mq9fast) with MQ9FAST_SERVER and exit codes."""
    env = dict(os.environ, MQ9FAST_SERVER=one_broker.url)
    p = subprocess.run([sys.executable, "-m", "mq9fast", "mailbox", "create", "--json"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert len(json.loads(p.stdout)["mail_address"]) == 32
    p = subprocess.run([sys.executable, "-m", "mq9fast", "query", "no.such.box"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr.strip() == "mq9fast: error: mailbox no.such.box does not exist"


# -------------------------------------------------------------------------------------------- docs
def test_configuration_doc_lists_every_option():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for f in dataclasses.fields(Config):
        assert f"`--{f.name.replace('_', '-')}`" in doc, f.name
        assert f"`MQ9FAST_{f.name.upper()}`" in doc, f.name
        assert f"`{f.name}`" in doc, f.name


def test_configuration_doc_is_generated_output():
    """docs/configuration.md's table is what docs/gen_config.py prints (regenerate when Config changes)."""
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_config
    finally:
        sys.path.pop(0)
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert gen_config.render_table() in doc, "run: python docs/gen_config.py --write"


def test_quickstart_and_differences_docs_exist():
    for name in ("quickstart.md", "differences.md"):
        text = (ROOT / "docs" / name).read_text()
        assert len(text) > 2000
    qs = (ROOT / "docs" / "quickstart.md").read_text()
    for cmd in ("mq9fast agents register", "mq9fast agents discover", "mq9fast mailbox create",
                "mq9fast send", "mq9fast fetch", "nats request '$mq9.AI.MSG.ACK"):
        assert cmd in qs, cmd
