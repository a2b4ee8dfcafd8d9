"""NATS core through the wire with nats-py: what any NATS client does (PROTOCOL.md §1)."""
from __future__ import annotations

import asyncio

import nats
import pytest
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout


async def connect(b, **kw):
    kw.setdefault("allow_reconnect", False)
    return await nats.connect(b.url, **kw)


async def collect(sub, n, timeout=3.0):
    out = []
    for _ in range(n):
        out.append(await sub.next_msg(timeout=timeout))
    return out


async def nothing_more(sub, wait=0.2):
    with pytest.raises(NatsTimeout):
        await sub.next_msg(timeout=wait)


async def test_pub_sub_and_wildcards(core_broker):
    nc = await connect(core_broker)
    lit = await nc.subscribe("w.a.b")
    star = await nc.subscribe("w.*.b")
    gt = await nc.subscribe("w.>")
    await nc.publish("w.a.b", b"1")
    await nc.publish("w.x.b", b"2")
    await nc.publish("w.a.b.c", b"3")
    await nc.publish("w", b"none")  # matched by none of them
    assert [m.data for m in await collect(lit, 1)] == [b"1"]
    assert [m.data for m in await collect(star, 2)] == [b"1", b"2"]
    got = await collect(gt, 3)
    assert [(m.subject, m.data) for m in got] == [("w.a.b", b"1"), ("w.x.b", b"2"), ("w.a.b.c", b"3")]
    await nothing_more(gt)
    await nc.close()


async def test_queue_group_delivers_each_message_once(core_broker):
    pub = await connect(core_broker)
    workers = [await connect(core_broker) for _ in range(3)]
    seen: list[list[bytes]] = [[] for _ in workers]
    for i, w in enumerate(workers):
        async def cb(msg, i=i):
            seen[i].append(msg.data)
        await w.subscribe("jobs.>", queue="workers", cb=cb)
        await w.flush()
    plain = await pub.subscribe("jobs.>")
    n = 300
    for i in range(n):
        await pub.publish(f"jobs.{i % 7}", str(i).encode())
    await pub.flush()
    assert len(await collect(plain, n)) == n  # a plain subscriber still gets every message
    for _ in range(100):
        if sum(map(len, seen)) >= n:
            break
        await asyncio.sleep(0.02)
    everything = sorted(int(x) for s in seen for x in s)
    assert everything == list(range(n))  # each exactly once across the group
    # spread over the members on the publisher's worker (members on this worker are preferred
    # over those on other workers, as nats-server prefers local members over routes)
    here = [i for i, w in enumerate(workers)
            if w._server_info.get("worker_id", 0) == pub._server_info.get("worker_id", 0)]
    if len(here) >= 2:
        assert sum(1 for i in here if seen[i]) >= 2
    elif len(here) == 1:
        assert len(seen[here[0]]) == n
    for c in workers + [pub]:
        await c.close()


async def test_headers_pass_through(core_broker):
    nc = await connect(core_broker)
    sub = await nc.subscribe("hdr.test")
    await nc.publish("hdr.test", b"body", headers={"X-One": "1", "x-two": "two words"})
    msg = await sub.next_msg(timeout=2)
    assert msg.data == b"body"
    assert msg.headers == {"X-One": "1", "x-two": "two words"}
    await nc.close()


async def test_request_reply_muxed_and_old_style(core_broker):
    responder = await connect(core_broker)
    requester = await connect(core_broker)

    async def handle(msg):
        await msg.respond(b"re:" + msg.data)
    await responder.subscribe("svc.echo", cb=handle)
    await responder.flush()
    r = await requester.request("svc.echo", b"a", timeout=2)
    assert r.data == b"re:a"
    r = await requester.request("svc.echo", b"b", timeout=2, old_style=True)
    assert r.data == b"re:b"
    replies = await asyncio.gather(*[requester.request("svc.echo", str(i).encode(), timeout=3)
                                     for i in range(50)])
    assert [x.data for x in replies] == [b"re:%d" % i for i in range(50)]
    await responder.close()
    await requester.close()


async def test_no_responders(core_broker):
    nc = await connect(core_broker)
    with pytest.raises(NoRespondersError):
        await nc.request("nobody.home", b"x", timeout=2)
    await nc.close()


async def test_unsub_max(core_broker):
    nc = await connect(core_broker)
    sub = await nc.subscribe("limited")
    await sub.unsubscribe(limit=3)
    for i in range(6):
        await nc.publish("limited", str(i).encode())
    got = await collect(sub, 3)
    assert [m.data for m in got] == [b"0", b"1", b"2"]
    # the server removed the subscription: a wildcard watcher sees that nothing else is delivered
    watch = await nc.subscribe("limited")
    await nc.publish("limited", b"later")
    assert (await watch.next_msg(timeout=2)).data == b"later"
    await nc.close()


async def test_large_payloads_up_to_max(broker_factory):
    b = broker_factory(max_payload=2 * 1024 * 1024)
    nc = await connect(b)
    assert nc.max_payload == 2 * 1024 * 1024
    sub = await nc.subscribe("big")
    payload = bytes(range(256)) * (2 * 1024 * 1024 // 256)
    await nc.publish("big", payload)
    msg = await sub.next_msg(timeout=5)
    assert msg.data == payload
    with pytest.raises(nats.errors.MaxPayloadError):
        await nc.publish("big", payload + b"x")
    await nc.close()


async def test_echo_false(core_broker):
    quiet = await connect(core_broker, no_echo=True)
    other = await connect(core_broker)
    own = await quiet.subscribe("echo.t")
    theirs = await other.subscribe("echo.t")
    await quiet.flush()
    await other.flush()
    await quiet.publish("echo.t", b"from-quiet")
    await other.publish("echo.t", b"from-other")
    assert (await own.next_msg(timeout=2)).data == b"from-other"
    await nothing_more(own)
    assert sorted(m.data for m in await collect(theirs, 2)) == [b"from-other", b"from-quiet"]
    await quiet.close()
    await other.close()


async def test_mq9_commands_never_reach_subscribers(core_broker):
    spy = await connect(core_broker)
    everything = await spy.subscribe(">")
    await spy.flush()
    nc = await connect(core_broker)
    r = await nc.request("$mq9.AI.NOT.A.COMMAND", b"{}", timeout=2)
    assert r.data.startswith(b'{"error":"unrecognized mq9 subject')
    await nc.publish("$mq9.AI.MAILBOX.CREATE", b"{}")
    await nc.publish("visible", b"x")
    msg = await everything.next_msg(timeout=2)
    assert msg.subject == "visible"  # neither the command nor its reply was seen
    await nothing_more(everything)
    await spy.close()
    await nc.close()


async def test_many_subscribers_and_unsubscribe(core_broker):
    nc = await connect(core_broker)
    subs = [await nc.subscribe(f"fan.{i}") for i in range(50)]
    all_sub = await nc.subscribe("fan.*")
    for i in range(50):
        await nc.publish(f"fan.{i}", b"%d" % i)
    for i, s in enumerate(subs):
        assert (await s.next_msg(timeout=2)).data == b"%d" % i
    assert len(await collect(all_sub, 50)) == 50
    await all_sub.unsubscribe()
    await nc.publish("fan.1", b"again")
    assert (await subs[1].next_msg(timeout=2)).data == b"again"
    await nc.close()
