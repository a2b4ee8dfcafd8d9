"""Mailboxes with ``--workers 2``: state in shared LMDB, leases shared, wake-ups across workers."""
from __future__ import annotations

import asyncio
import collections
import time

import nats
import pytest

from conftest import connect_to_worker
from test_mailbox_support import ack, create, data, fetch, ids, module_broker, send, uniq


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    b = module_broker(tmp_path_factory, workers=2)
    time.sleep(1.0)  # let both workers listen and link up
    yield b
    b.stop()


@pytest.fixture
async def pair(two_workers):
    a = await connect_to_worker(two_workers, 0)
    b = await connect_to_worker(two_workers, 1)
    yield a, b
    await a.close()
    await b.close()


async def test_state_is_shared(pair):
    a, b = pair
    name = await create(a, uniq())
    assert [await send(x, name, b"%d" % i) for i, x in enumerate((a, b, a, b))] == [0, 1, 2, 3]
    assert ids(await fetch(b, name, deliver="earliest")) == [0, 1, 2, 3]


async def test_long_poll_is_woken_by_a_send_on_the_other_worker(pair):
    a, b = pair
    name = await create(a, uniq())
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    waiting = asyncio.ensure_future(fetch(a, name, deliver="earliest", config={"max_wait_ms": 10000}))
    await asyncio.sleep(0.3)
    await send(b, name, b"cross")
    assert [data(m) for m in await waiting] == [b"cross"]
    assert loop.time() - t0 < 3.0


async def test_leases_are_shared_by_workers(pair):
    a, b = pair
    name = await create(a, uniq())
    for i in range(60):
        await send(a, name, b"%d" % i)
    seen = collections.Counter()

    async def worker(nc):
        idle = 0
        while idle < 3:
            msgs = await fetch(nc, name, group_name="g", deliver="earliest",
                               config={"num_msgs": 5, "max_wait_ms": 100})
            if not msgs:
                idle += 1
                continue
            idle = 0
            for m in msgs:
                seen[m["msg_id"]] += 1
                await ack(nc, name, "g", m["msg_id"])

    await asyncio.gather(worker(a), worker(b), worker(a), worker(b))
    assert sorted(seen) == list(range(60)) and set(seen.values()) == {1}


async def test_delayed_message_across_workers(pair):
    a, b = pair
    name = await create(a, uniq())
    assert await send(b, name, b"later", delay=1) == -1
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    msgs = await fetch(a, name, deliver="earliest", config={"max_wait_ms": 10000})
    assert [data(m) for m in msgs] == [b"later"] and loop.time() - t0 < 4.0
