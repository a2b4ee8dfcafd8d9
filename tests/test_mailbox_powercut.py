"""Power cuts (``--fsync always``, mq9fast/wal.py): a restart after the machine lost its page cache
rolls LMDB back to the last checkpoint and replays the write-ahead log, so every acknowledged SEND,
ACK, DELETE and CREATE is there.

A power cut is simulated after a kill -9: ``data.mdb`` is rebuilt page by page from the file as it
was at the checkpoint and the file as the dead broker left it (each page randomly one or the other,
which is what an arbitrary subset of unsynced page writes reaching the disk looks like), and the
broker is restarted under another boot id (``MQ9FAST_BOOT_ID``).
"""
from __future__ import annotations

import asyncio
import json
import random
import shutil
import time

import nats
import pytest

from conftest import BrokerProcess
from test_mailbox_support import ack, create, data, fetch, ids, ok, send



def wait_checkpoint(data_dir, timeout=20.0) -> dict:
    path = data_dir / "checkpoint"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_bytes().partition(b"\n")[0])
        time.sleep(0.05)
    raise AssertionError("no checkpoint file")


def lose_page_cache(data_dir, snapshot: bytes, seed: int, psize: int = 4096) -> None:
    """data.mdb := per page, the checkpoint-time content or the latest, at random."""
    path = data_dir / "data.mdb"
    now = path.read_bytes()
    rng = random.Random(seed)
    out = bytearray(now)
    for off in range(0, len(now), psize):
        if rng.random() < 0.5:
            old = snapshot[off:off + psize]
            out[off:off + psize] = old.ljust(min(psize, len(now) - off), b"\0")
    # and the newest meta pages did not make it (the worst case for an unsynced LMDB)
    out[0:2 * psize] = bytes(2 * psize)
    path.write_bytes(bytes(out))


@pytest.mark.parametrize("workers", [1, 2], ids=["workers1", "workers2"], indirect=False)
async def test_power_cut_after_acknowledged_writes(tmp_path, workers):
    b = BrokerProcess(tmp_path / "data", {"workers": workers, "checkpoint_interval": 3600},
                      env={"MQ9FAST_BOOT_ID": "boot-1"})
    b.start()
    try:
        ck = wait_checkpoint(b.data_dir)
        assert ck["boot"] == "boot-1"
        await asyncio.sleep(0.5)  # the other worker's start-up checkpoint too
        snapshot = (b.data_dir / "data.mdb").read_bytes()
        nc = await nats.connect(b.url, allow_reconnect=False)
        box = await create(nc, "power.box", ttl=0)
        n = 300
        got = await asyncio.gather(*(send(nc, box, b"payload-%d" % i,
                                          priority=("normal", "urgent", "critical")[i % 3],
                                          tags="even" if i % 2 == 0 else None)
                                     for i in range(n)))
        assert sorted(got) == list(range(n))
        sent = {mid: b"payload-%d" % i for i, mid in enumerate(got)}
        batch = await fetch(nc, box, group_name="g", deliver="earliest", config={"num_msgs": 50})
        await ack(nc, box, "g", batch[-1]["msg_id"])
        await ok(nc, f"$mq9.AI.MSG.DELETE.{box}.7", b"")
        await nc.close()
        b.kill()
        lose_page_cache(b.data_dir, snapshot, seed=workers)
        b.env["MQ9FAST_BOOT_ID"] = "boot-2"
        b.start()
        nc = await nats.connect(b.url, allow_reconnect=False)
        try:
            everything = await fetch(nc, box, deliver="earliest", config={"num_msgs": 1000})
            assert sorted(ids(everything)) == sorted(set(got) - {7})
            assert all(data(m) == sent[m["msg_id"]] for m in everything)
            assert await send(nc, box, b"after") == n
            rest = await fetch(nc, box, group_name="g", config={"num_msgs": 1000})
            assert set(ids(rest)) == set(got) - {7} - set(ids(batch)) | {n}
        finally:
            await nc.close()
        ck2 = wait_checkpoint(b.data_dir)
        assert ck2["boot"] == "boot-2" and ck2["gen"] == ck["gen"] + 1
        # a restart in the same boot replays nothing and keeps everything
        b.kill()
        b.start()
        nc = await nats.connect(b.url, allow_reconnect=False)
        try:
            assert len(await fetch(nc, box, deliver="earliest", config={"num_msgs": 1000})) == n
        finally:
            await nc.close()
    finally:
        b.stop()


async def test_without_the_log_the_simulated_power_cut_loses_data(tmp_path):
    """The simulation above really takes the writes away: with the log removed, the restart
    comes back at the checkpoint, without the mailbox."""
    b = BrokerProcess(tmp_path / "data", {"checkpoint_interval": 3600},
                      env={"MQ9FAST_BOOT_ID": "boot-1"})
    b.start()
    try:
        wait_checkpoint(b.data_dir)
        snapshot = (b.data_dir / "data.mdb").read_bytes()
        nc = await nats.connect(b.url, allow_reconnect=False)
        box = await create(nc, "gone.box", ttl=0)
        assert await send(nc, box, b"x") == 0
        await nc.close()
        b.kill()
        lose_page_cache(b.data_dir, snapshot, seed=3)
        shutil.rmtree(b.data_dir / "wal")
        b.env["MQ9FAST_BOOT_ID"] = "boot-2"
        b.start()
        nc = await nats.connect(b.url, allow_reconnect=False)
        try:
            reply = await nc.request(f"$mq9.AI.MSG.SEND.{box}", b"y", timeout=5)
            assert json.loads(reply.data)["error"] == f"mailbox {box} does not exist"
        finally:
            await nc.close()
    finally:
        b.stop()
