"""``--workers 2``: clients on different worker processes behave as on one broker."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import nats
import pytest
from nats.errors import NoRespondersError

from conftest import connect_to_worker, make_factory


@pytest.fixture
def broker_factory(tmp_path):
    """These tests choose their own worker count (not the suite-wide matrix)."""
    make, cleanup = make_factory(tmp_path, 2)
    yield make
    cleanup()


@pytest.fixture(scope="module")
def workers_broker(tmp_path_factory):
    from conftest import BrokerProcess

    b = BrokerProcess(tmp_path_factory.mktemp("workers") / "data", {"workers": 2})
    b.start()
    yield b
    assert b.stop() == 0


async def eventually(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_info_names_the_worker(workers_broker):
    a = await connect_to_worker(workers_broker, 0)
    b = await connect_to_worker(workers_broker, 1)
    assert a._server_info["worker_id"] == 0 and b._server_info["worker_id"] == 1
    await a.close()
    await b.close()


async def test_flush_after_subscribe_means_every_worker_knows(workers_broker):
    for _ in range(5):
        a = await connect_to_worker(workers_broker, 0)
        b = await connect_to_worker(workers_broker, 1)
        sub = await a.subscribe("flushed.interest")
        await a.flush()          # PONG only once worker 1 has the interest
        await b.publish("flushed.interest", b"now")
        assert (await sub.next_msg(timeout=2)).data == b"now"
        await sub.unsubscribe()
        await a.flush()
        await b.publish("flushed.interest", b"gone")
        await b.flush()
        with pytest.raises(nats.errors.TimeoutError):
            await sub.next_msg(timeout=0.2)
        await a.close()
        await b.close()


async def test_pub_sub_across_workers(workers_broker):
    a = await connect_to_worker(workers_broker, 0)
    b = await connect_to_worker(workers_broker, 1)
    sub = await a.subscribe("xw.*.>")
    await a.flush()
    got = []

    async def delivered():
        await b.publish("xw.1.2", b"hello")
        try:
            got.append(await sub.next_msg(timeout=0.2))
        except nats.errors.TimeoutError:
            return False
        return True

    assert await eventually(delivered)  # interest propagation is asynchronous, as in NATS
    # from now on every publish arrives exactly once, with headers and reply intact
    while True:  # drain extra copies of the probe
        try:
            await sub.next_msg(timeout=0.2)
        except nats.errors.TimeoutError:
            break
    extra = await a.subscribe("xw.>")  # a second matching pattern on the same worker
    await a.flush()
    await asyncio.sleep(0.2)
    await b.publish("xw.9.9", b"once", headers={"K": "v"}, reply="r.1")
    m = await sub.next_msg(timeout=2)
    assert (m.subject, m.data, m.headers, m.reply) == ("xw.9.9", b"once", {"K": "v"}, "r.1")
    assert (await extra.next_msg(timeout=2)).data == b"once"
    with pytest.raises(nats.errors.TimeoutError):
        await sub.next_msg(timeout=0.3)  # not duplicated by the second pattern
    await a.close()
    await b.close()


async def test_queue_group_exactly_once_across_workers(workers_broker):
    members = [await connect_to_worker(workers_broker, w) for w in (0, 0, 1, 1)]
    seen: list[list[int]] = [[] for _ in members]
    for i, nc in enumerate(members):
        async def cb(msg, i=i):
            seen[i].append(int(msg.data))
        await nc.subscribe("qw.jobs", queue="q", cb=cb)
        await nc.flush()
    await asyncio.sleep(0.5)
    pubs = [await connect_to_worker(workers_broker, w) for w in (0, 1)]
    n = 400
    for i in range(n):
        await pubs[i % 2].publish("qw.jobs", b"%d" % i)
    for p in pubs:
        await p.flush()

    async def all_in():
        return sum(map(len, seen)) >= n
    assert await eventually(all_in)
    await asyncio.sleep(0.3)
    everything = sorted(x for s in seen for x in s)
    assert everything == list(range(n))
    assert sum(len(s) for s in seen[:2]) > 0 and sum(len(s) for s in seen[2:]) > 0
    for nc in members + pubs:
        await nc.close()


async def test_request_reply_and_no_responders_across_workers(workers_broker):
    responder = await connect_to_worker(workers_broker, 0)
    requester = await connect_to_worker(workers_broker, 1)
    with pytest.raises(NoRespondersError):
        await requester.request("xw.nobody", b"?", timeout=2)

    async def handle(msg):
        await msg.respond(b"re:" + msg.data)
    await responder.subscribe("xw.svc", cb=handle)
    await responder.flush()

    async def answered():
        try:
            r = await requester.request("xw.svc", b"x", timeout=0.5)
        except (NoRespondersError, nats.errors.TimeoutError):
            return False
        return r.data == b"re:x"
    assert await eventually(answered)
    replies = await asyncio.gather(*[requester.request("xw.svc", b"%d" % i, timeout=3) for i in range(100)])
    assert [r.data for r in replies] == [b"re:%d" % i for i in range(100)]
    r = await requester.request("xw.svc", b"old", timeout=3, old_style=True)
    assert r.data == b"re:old"
    await responder.close()
    await requester.close()


async def test_kill_one_worker_the_other_keeps_serving(broker_factory):
    b = broker_factory(workers=2)
    await asyncio.sleep(0.5)
    w0 = await connect_to_worker(b, 0)
    w1 = await connect_to_worker(b, 1)
    victim_pid = None
    import subprocess
    out = subprocess.run(["pgrep", "-P", str(b.proc.pid)], capture_output=True, text=True).stdout.split()
    pids = [int(p) for p in out]
    assert len(pids) == 2
    for pid in pids:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        if b"MQ9FAST_WORKER_ID=1" in env:
            victim_pid = pid
    assert victim_pid
    sub = await w0.subscribe("alive")
    os.kill(victim_pid, signal.SIGKILL)
    for i in range(20):  # worker 0's clients never notice
        await w0.publish("alive", b"%d" % i)
        assert (await sub.next_msg(timeout=2)).data == b"%d" % i
    await w1.close() if not w1.is_closed else None

    async def restarted():
        out = subprocess.run(["pgrep", "-P", str(b.proc.pid)], capture_output=True, text=True).stdout.split()
        return len(out) == 2 and victim_pid not in map(int, out)
    assert await eventually(restarted, timeout=10)
    again = await connect_to_worker(b, 1)
    await again.close()
    await w0.close()


async def test_varz_reports_every_worker(broker_factory):
    import json
    import urllib.request

    from conftest import free_port

    http = free_port()
    b = broker_factory(workers=2, http_port=http)
    conns = [await connect_to_worker(b, w) for w in (0, 1, 1)]

    def get():
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/varz", timeout=5) as r:
            return json.loads(r.read())

    deadline = time.monotonic() + 10
    while True:
        try:
            varz = await asyncio.get_running_loop().run_in_executor(None, get)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    workers = {w["worker_id"]: w for w in varz["workers"]}
    assert set(workers) == {0, 1}
    assert workers[0]["connections"] >= 1 and workers[1]["connections"] >= 2
    for w in (0, 1):  # every worker's vector index state: the owner's version, a reader's view
        index = workers[w]["registry_index"]
        assert isinstance(index["index_version"], int) and "index_view_version" in index
    assert varz["registry_index"]["index_file"] == workers[0]["registry_index"]["index_file"]
    for nc in conns:
        await nc.close()
