"""Engine figures through the wire: ``/metrics``, ``/api/overview`` and ``/api/mailboxes`` after real
SENDs (every priority, one delayed), group FETCHes, a lease expiry and the redelivery it causes.

Runs with one worker and with two (``workers`` fixture).  With two, the commands go through a
connection on the *other* worker than the side port's (worker 0), so the figures only add up if
the mailbox statistics are broker-wide and the per-process ones are summed over the workers.
"""
from __future__ import annotations

import asyncio
import json
import time

from conftest import connect_to_worker, free_port
from test_http import _metrics, _value, _wait_http, get_json

ACK_WAIT_MS = 2000


async def mq9(nc, subject: str, body: dict | bytes = b"", headers: dict | None = None) -> dict:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    msg = await nc.request("$mq9.AI." + subject, data, timeout=10, headers=headers)
    reply = json.loads(msg.data)
    assert reply.get("error", "") == "", reply
    return reply


def fetch_body(num: int, ack_wait_ms: int | None = None, deliver: str = "earliest", max_wait_ms: int = 0) -> dict:
    config: dict = {"num_msgs": num, "max_wait_ms": max_wait_ms}
    if ack_wait_ms is not None:
        config["ack_wait_ms"] = ack_wait_ms
    return {"group_name": "g", "deliver": deliver, "config": config}


async def eventually(check, timeout: float = 10.0):
    """Poll ``check()`` (a blocking scrape) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


def test_engine_figures_through_the_wire(broker_factory, workers):
    b = broker_factory(http_port=free_port(), ack_wait=600)
    base = f"http://127.0.0.1:{b.options['http_port']}"
    _wait_http(base)
    far = workers - 1  # with two workers: not the worker that serves the side port

    def scrape() -> dict:
        return _metrics(base)

    async def go():
        nc = await connect_to_worker(b, far)
        near = await connect_to_worker(b, 0) if far else None
        try:
            await mq9(nc, "MAILBOX.CREATE", {"name": "stats.box", "ttl": 3600})
            await mq9(nc, "MAILBOX.CREATE", {"name": "stats.empty", "ttl": 0})
            for prio, n in (("critical", 1), ("urgent", 2), ("normal", 3)):
                for i in range(n):
                    hdrs = {"mq9-priority": prio} if prio != "normal" else None
                    await mq9(nc, "MSG.SEND.stats.box", f"{prio}{i}".encode(), hdrs)
            assert (await mq9(nc, "MSG.SEND.stats.box", b"later", {"mq9-delay": "3600"}))["msg_id"] == -1

            # group g takes 4 messages (critical, urgent x2, normal) on a short lease
            first = (await mq9(nc, "MSG.FETCH.stats.box", fetch_body(4, ACK_WAIT_MS)))["messages"]
            assert [m["priority"] for m in first] == ["critical", "urgent", "urgent", "normal"]
            m = scrape()
            assert _value(m, "mq9fast_leases_outstanding") == 4
            assert _value(m, "mq9fast_redeliveries_total") == 0
            assert _value(m, "mq9fast_delayed_messages") == 1
            for prio, n in (("critical", 1), ("urgent", 2), ("normal", 3)):
                assert _value(m, "mq9fast_stored_messages", priority=prio) == n
            assert _value(m, "mq9fast_mailboxes") == 2 and _value(m, "mq9fast_consumer_groups") == 1

            # the leases expire; the next FETCH hands those 4 out again, with the other 2
            await asyncio.sleep(ACK_WAIT_MS / 1000 + 0.2)
            assert _value(scrape(), "mq9fast_leases_outstanding") == 0
            second = (await mq9(nc, "MSG.FETCH.stats.box", fetch_body(10)))["messages"]
            again = [x["msg_id"] for x in second if x.get("redelivered")]
            assert sorted(again) == sorted(x["msg_id"] for x in first) and len(second) == 6
            m = scrape()
            assert _value(m, "mq9fast_redeliveries_total") == len(again) == 4
            assert _value(m, "mq9fast_leases_outstanding") == 6
            # ACK of the first message of the batch confirms it alone: one lease fewer
            await mq9(nc, "MSG.ACK.stats.box", {"group_name": "g", "mail_address": "stats.box",
                                                "msg_id": second[0]["msg_id"]})
            m = scrape()
            assert _value(m, "mq9fast_leases_outstanding") == 5
            assert _value(m, "mq9fast_redeliveries_total") == 4
            assert _value(m, "mq9fast_delayed_messages") == 1
            for prio, n in (("critical", 1), ("urgent", 2), ("normal", 3)):  # ACK does not delete
                assert _value(m, "mq9fast_stored_messages", priority=prio) == n
            # commands are counted on the worker that ran them, reported summed
            assert _value(m, "mq9fast_commands_total", command="MSG.SEND", outcome="ok") == 7
            assert _value(m, "mq9fast_commands_total", command="MSG.FETCH", outcome="ok") == 2
            assert _value(m, "mq9fast_commands_total", command="MSG.ACK", outcome="ok") == 1

            # admin API: the same figures per mailbox and in the overview
            status, r = get_json(base, "/api/mailboxes?prefix=stats.")
            assert status == 200 and r["total"] == 2
            box, empty = r["items"]
            assert box["address"] == "stats.box" and empty["address"] == "stats.empty"
            assert box["depth"] == {"critical": 1, "urgent": 2, "normal": 3} and box["total"] == 6
            assert empty["depth"] == {"critical": 0, "urgent": 0, "normal": 0} and empty["groups"] == []
            (g,) = box["groups"]
            assert g["name"] == "g" and g["leased"] == 5
            status, o = get_json(base, "/api/overview")
            mb = o["mailbox"]
            assert (mb["mailboxes"], mb["delayed"], mb["leases"], mb["redeliveries"], mb["groups"]) == (2, 1, 5, 4, 1)
            assert mb["messages_by_priority"] == {"critical": 1, "urgent": 2, "normal": 3}
            assert o["commands"]["MSG.SEND:ok"] == 7

            # agents: count and listing (name order, prefix, paging) from the registry's hooks
            for name in ("stats.a2", "stats.a1", "stats.b1"):
                await mq9(nc, "AGENT.REGISTER", {"name": name, "mailbox": "stats.box", "payload": "helps"})
            assert await eventually(lambda: _value(scrape(), "mq9fast_agents") == 3)
            status, r = get_json(base, "/api/agents?prefix=stats.a&limit=1&page=2")
            assert status == 200 and r["total"] == 2 and [a["name"] for a in r["items"]] == ["stats.a2"]
            assert r["items"][0]["mailbox"] == "stats.box" and r["items"][0]["create_time"] > 0
            status, r = get_json(base, "/api/agents?offset=1&limit=5")
            assert r["total"] == 3 and [a["name"] for a in r["items"]] == ["stats.a2", "stats.b1"]

            # a long-poll parked on the far worker is counted; it leaves when a message arrives
            await mq9(nc, "MAILBOX.CREATE", {"name": "stats.poll", "ttl": 0})
            poll = asyncio.ensure_future(mq9(nc, "MSG.FETCH.stats.poll",
                                             {"deliver": "latest", "config": {"max_wait_ms": 8000}}))
            assert await eventually(lambda: _value(scrape(), "mq9fast_waiting_fetches") == 1)
            await mq9(nc, "MSG.SEND.stats.poll", b"wake")
            assert len((await poll)["messages"]) == 1
            assert _value(scrape(), "mq9fast_waiting_fetches") == 0
        finally:
            await nc.close()
            if near is not None:
                await near.close()

    asyncio.run(go())


def test_traffic_and_connections_summed_over_workers(broker_factory, workers):
    b = broker_factory(http_port=free_port())
    base = f"http://127.0.0.1:{b.options['http_port']}"
    _wait_http(base)
    far = workers - 1

    async def go():
        conns = [await connect_to_worker(b, w) for w in range(workers)]
        try:
            def settled():  # connections opened and closed while searching are gone
                m = _metrics(base)
                return m if _value(m, "mq9fast_connections") == workers else None

            before = await eventually(settled)
            assert before, "connection count did not settle"
            if workers > 1:
                for w in range(workers):
                    assert _value(before, "mq9fast_worker_connections", worker=str(w)) == 1
                assert _value(before, "mq9fast_workers_answering") == workers
            nc = conns[far]
            for _ in range(25):
                await nc.publish("stats.traffic", b"0123456789")
            await nc.flush()
            after = _metrics(base)
            assert _value(after, "mq9fast_messages_in_total") >= _value(before, "mq9fast_messages_in_total") + 25
            assert _value(after, "mq9fast_bytes_in_total") >= _value(before, "mq9fast_bytes_in_total") + 250
            status, o = get_json(base, "/api/overview")
            assert o["connections"] == workers and o["total_in_msgs"] >= 25
        finally:
            for c in conns:
                await c.close()

    asyncio.run(go())
