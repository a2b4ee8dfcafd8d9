"""The dashboard page rendered by headless Chromium (Debian ``chromium``; see ci/install_chromium.sh).

Keeps a screenshot in tests/artifacts/dashboard.png (git-ignored) for a human look.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import ROOT, BrokerProcess, free_port
from mq9fast import Mq9Client, Priority

ARTIFACTS = ROOT / "tests" / "artifacts"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    script = ROOT / "ci" / "install_chromium.sh"
    try:
        subprocess.run(["sh", str(script)], check=True, capture_output=True, timeout=570)
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"headless chromium is not installed and ci/install_chromium.sh failed: {exc}")
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless chromium could not be installed (no 'chromium' on PATH after ci/install_chromium.sh)")


@pytest.fixture(scope="module")
def chromium():
    return _chromium()


@pytest.fixture(scope="module")
def dash_broker(tmp_path_factory):
    b = BrokerProcess(tmp_path_factory.mktemp("dash") / "data", {"http_port": free_port()})
    b.start()
    b.http = f"http://127.0.0.1:{b.options['http_port']}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(b.http + "/healthz", timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)

    async def populate():
        async with Mq9Client(b.url) as c:
            boxes = {"orders.inbox": (3, 2, 12), "agent.translator.inbox": (0, 1, 4), "agent.billing.inbox": (1, 0, 0)}
            for name, (crit, urg, norm) in boxes.items():
                await c.mailbox_create(name=name, ttl=3600)
                for prio, n in ((Priority.CRITICAL, crit), (Priority.URGENT, urg), (Priority.NORMAL, norm)):
                    for i in range(n):
                        await c.send(name, {"n": i}, priority=prio)
            await c.fetch("orders.inbox", group_name="order-workers", deliver="earliest", num_msgs=2)
            await c.mailbox_create(ttl=0)
            await c.agent_register({"name": "agent.translator", "mailbox": "agent.translator.inbox",
                                    "payload": "Translates documents between English, French and Chinese"})
            await c.agent_register({"name": "agent.billing", "mailbox": "agent.billing.inbox",
                                    "description": "Creates invoices and processes refunds"})
            await c.agent_report({"name": "agent.translator", "status": "ok"})

    asyncio.run(populate())
    yield b
    b.stop()


class Traffic(threading.Thread):
    """Keeps some messages flowing so the throughput chart has a line."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()

    def run(self) -> None:
        async def go():
            async with Mq9Client(self.url) as c:
                box = await c.mailbox_create(ttl=60)
                while not self.stop.is_set():
                    await c.send(box, "tick")
                    await asyncio.sleep(0.02)

        asyncio.run(go())


def _run_chromium(chromium: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--window-size=1280,1000", "--virtual-time-budget=7000", *args]
    return subprocess.run(cmd, capture_output=True, timeout=120)


def test_dashboard_renders_mailboxes_agents_and_throughput(chromium, dash_broker, tmp_path):
    traffic = Traffic(dash_broker.url)
    traffic.start()
    try:
        dom = _run_chromium(chromium, tmp_path, "--dump-dom", dash_broker.http + "/dashboard")
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        if shot.exists():
            shot.unlink()
        png = _run_chromium(chromium, tmp_path, f"--screenshot={shot}", dash_broker.http + "/dashboard")
    finally:
        traffic.stop.set()
        traffic.join(10)
    html = dom.stdout.decode("utf-8", "replace")
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    assert 'data-loaded="1"' in html, "the page's script did not finish a refresh"
    for name in ("orders.inbox", "agent.translator.inbox", "agent.billing.inbox", "order-workers",
                 "agent.translator", "agent.billing", "Creates invoices and processes refunds"):
        assert name in html, name
    assert "dot live" in html          # the translator reported just now
    assert "no report yet" in html     # the billing agent never did
    assert "unavailable" not in html and 'class="banner hidden"' in html
    assert '<td class="num crit">3</td>' in html   # orders.inbox: 3 critical
    assert png.returncode == 0 and shot.exists() and shot.stat().st_size > 20000
