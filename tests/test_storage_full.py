"""A store that runs out of room, through the wire: new data is refused with a clear JSON error,
everything that reads or makes room goes on, and new data is taken again once there is room.
Also: an idle worker does not keep LMDB from reusing the pages the other worker frees.

The broker runs with a tiny ``--map-size`` (LMDB's map, the most the store may hold), so the
limit is reached in a second; a full disk takes the same path (``mq9fast.storage.is_full_error``).
"""
from __future__ import annotations

import asyncio
import os
import time

import nats
import pytest

from conftest import connect_to_worker, make_factory
from test_mailbox_support import req

MAP_SIZE = 4 * 1024 * 1024
BODY = b"m" * 2000  # one overflow page each


async def fill(nc, box: str) -> tuple[list[int], dict]:
    """SEND until the broker keeps refusing; -> (ids accepted, the refusal).

    The first refusal may come from pages that the last checkpoint still pins (each commit
    copies a few); a checkpoint later they are free again.  So go on until three refusals in a
    row, 0.3 s apart: then the map is full of live messages."""
    ids, refused = [], 0
    for _ in range(MAP_SIZE // len(BODY)):
        r = await req(nc, f"$mq9.AI.MSG.SEND.{box}", BODY)
        if not r["error"]:
            ids.append(r["msg_id"])
            refused = 0
            continue
        refused += 1
        if refused == 3:
            return ids, r
        await asyncio.sleep(0.3)
    raise AssertionError("the store never filled up")


async def test_a_full_store_refuses_new_data_and_keeps_serving(broker_factory):
    b = broker_factory(map_size=MAP_SIZE)
    nc = await nats.connect(b.url)
    try:
        assert (await req(nc, "$mq9.AI.MAILBOX.CREATE", {"name": "full.box", "ttl": 0}))["error"] == ""
        ids, refusal = await fill(nc, "full.box")
        assert len(ids) > 50
        assert refusal["error"].startswith("storage full: ")
        assert f"--map-size {MAP_SIZE}" in refusal["error"]
        # the connection is up; other writes that add data get the same answer
        await nc.flush(timeout=5)
        r = await req(nc, "$mq9.AI.MAILBOX.CREATE", {"name": "full.other"})
        assert r["error"].startswith("storage full: ")
        r = await req(nc, "$mq9.AI.AGENT.REGISTER", {"name": "full.agent", "mailbox": "full.box",
                                                      "payload": "an agent"})
        assert r["error"].startswith("storage full: ")
        for headers in ({"mq9-priority": "critical"}, {"mq9-delay": "5"}):  # the other SEND paths
            r = await req(nc, "$mq9.AI.MSG.SEND.full.box", b"h", headers)
            assert r["error"].startswith("storage full: "), headers
        # reads and the writes that make room still work
        r = await req(nc, "$mq9.AI.MSG.FETCH.full.box",
                       {"group_name": "g", "deliver": "earliest", "config": {"num_msgs": 10}})
        assert r["error"] == "" and [m["msg_id"] for m in r["messages"]] == ids[:10]
        assert (await req(nc, "$mq9.AI.MSG.ACK.full.box",
                           {"group_name": "g", "msg_id": ids[9]}))["error"] == ""
        r = await req(nc, "$mq9.AI.MSG.QUERY.full.box", {"limit": 5})
        assert r["error"] == "" and [m["msg_id"] for m in r["messages"]] == ids[:5]
        gone = ids[: len(ids) // 2]
        for mid in gone:
            r = await req(nc, f"$mq9.AI.MSG.DELETE.full.box.{mid}")
            assert r == {"error": "", "deleted": True}, (mid, r)
        # room again (at the latest once a checkpoint lets LMDB reuse the freed pages)
        deadline = time.monotonic() + 10
        while True:
            r = await req(nc, "$mq9.AI.MSG.SEND.full.box", b"after")
            if not r["error"] or time.monotonic() > deadline:
                break
            assert r["error"].startswith("storage full: ")
            await asyncio.sleep(0.1)
        assert r["error"] == "" and r["msg_id"] == ids[-1] + 1  # ids go on: none was taken
        # nothing acknowledged was lost: the messages not deleted are all there, then the new one
        r = await req(nc, "$mq9.AI.MSG.FETCH.full.box",
                       {"deliver": "earliest", "config": {"num_msgs": 1000}})
        assert [m["msg_id"] for m in r["messages"]] == ids[len(gone):] + [ids[-1] + 1]
    finally:
        await nc.close()
    # and the store is consistent after a restart
    b.restart()
    nc = await nats.connect(b.url)
    try:
        r = await req(nc, "$mq9.AI.MSG.QUERY.full.box", {"limit": 100})
        assert [m["msg_id"] for m in r["messages"]] == (ids[len(gone):] + [ids[-1] + 1])[:100]
    finally:
        await nc.close()


async def test_an_idle_worker_does_not_keep_freed_pages_from_reuse(tmp_path):
    """Each worker pins the snapshot of its last checkpoint; one that no longer writes used to
    keep it forever, so LMDB could reuse none of the pages freed after it and the file grew
    with every message the other worker stored and deleted.  (Always two workers: one idles.)"""
    make, cleanup = make_factory(tmp_path, 2)
    b = make(checkpoint_interval=0.2)
    nc = await connect_to_worker(b, 0)
    sizes = []
    try:
        assert (await req(nc, "$mq9.AI.MAILBOX.CREATE", {"name": "churn.box", "ttl": 0}))["error"] == ""
        for _ in range(8):
            replies = await asyncio.gather(*(req(nc, "$mq9.AI.MSG.SEND.churn.box", b"c" * 1000)
                                             for _ in range(2000)))
            ids = [r["msg_id"] for r in replies]
            replies = await asyncio.gather(*(req(nc, f"$mq9.AI.MSG.DELETE.churn.box.{i}")
                                             for i in ids))
            assert all(r == {"error": "", "deleted": True} for r in replies)
            await asyncio.sleep(0.5)  # a few checkpoints
            sizes.append(os.path.getsize(b.data_dir / "data.mdb"))
    finally:
        await nc.close()
        cleanup()
    # each round stores ~2 MB and frees it again: the file grows while LMDB's free list fills
    # (and by what a checkpoint interval pins), then stops (≈ 2× the first round's size here);
    # without the fix it grew by the first round's size every round (8× after 8 rounds)
    assert sizes[-1] < 3 * sizes[0], sizes


def fill_disk(filler) -> None:
    """Another program takes every byte left on the disk (writing ``filler`` until ENOSPC)."""
    with open(filler, "wb") as fh:
        while True:
            try:
                fh.write(bytes(1 << 20))
                fh.flush()
            except OSError:
                break
        fh.truncate(fh.tell())


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs to put a broker's data directory on (needs the right to mount)."""
    import subprocess

    where = tmp_path / "disk"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {r.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


async def test_a_full_disk_is_storage_full_too(tmp_path, small_disk, workers):
    from conftest import BrokerProcess

    b = BrokerProcess(small_disk / "data", {"workers": workers})
    b.start()
    nc = await nats.connect(b.url)
    try:
        assert (await req(nc, "$mq9.AI.MAILBOX.CREATE", {"name": "disk.box", "ttl": 0}))["error"] == ""
        ids, refusal = [], None
        while refusal is None:
            replies = await asyncio.gather(*(req(nc, "$mq9.AI.MSG.SEND.disk.box", BODY)
                                             for _ in range(200)))
            for r in replies:
                if r["error"]:
                    refusal = refusal or r
                else:
                    ids.append(r["msg_id"])
            assert len(ids) < 48 * 1024 * 1024 // len(BODY), "the disk never filled up"
        assert refusal["error"].startswith("storage full: the disk is full"), refusal
        assert len(ids) > 1000
        r = await req(nc, "$mq9.AI.MSG.FETCH.disk.box", {"deliver": "earliest", "config": {"num_msgs": 5}})
        assert [m["msg_id"] for m in r["messages"]] == sorted(ids)[:5]
        # deletes free LMDB pages (its file does not shrink; it reuses them): delete them all
        replies = await asyncio.gather(*(req(nc, f"$mq9.AI.MSG.DELETE.disk.box.{i}") for i in ids))
        assert all(r == {"error": "", "deleted": True} for r in replies)
        deadline = time.monotonic() + 10
        while True:
            r = await req(nc, "$mq9.AI.MSG.SEND.disk.box", b"after")
            if not r["error"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert r["error"] == "", r
    finally:
        await nc.close()
        b.stop()


async def test_group_fetch_on_a_disk_filled_by_another_program(tmp_path, small_disk, workers):
    """The lease store maps its file (LMDB ``writemap``); a page first touched while the disk is
    full used to kill the broker (SIGBUS).  Now a group FETCH that needs room the disk cannot
    give is refused with ``storage full`` and the broker goes on; once there is room again every
    group gets every message exactly once."""
    from conftest import BrokerProcess

    b = BrokerProcess(small_disk / "data", {"workers": workers})
    b.start()
    nc = await nats.connect(b.url)
    filler = small_disk / "filler"
    groups, count = 100, 500
    try:
        assert (await req(nc, "$mq9.AI.MAILBOX.CREATE", {"name": "lease.box", "ttl": 0}))["error"] == ""
        replies = await asyncio.gather(*(req(nc, "$mq9.AI.MSG.SEND.lease.box", BODY[:1000])
                                         for _ in range(count)))
        assert [r["msg_id"] for r in replies] == list(range(count))

        async def fetch(g: int, n: int) -> dict:
            return await req(nc, "$mq9.AI.MSG.FETCH.lease.box",
                             {"group_name": f"g{g}", "deliver": "earliest",
                              "config": {"num_msgs": n, "max_wait_ms": 0}})

        seen: dict[int, list[int]] = {g: [] for g in range(groups)}
        for g in range(groups):  # each group's start is stored while there is room
            r = await fetch(g, 1)
            assert r["error"] == "", r
            seen[g] += [m["msg_id"] for m in r["messages"]]
        fill_disk(filler)
        refused = 0
        for _ in range(count // 100 + 1):
            for g in range(groups):
                r = await fetch(g, 100)
                if r["error"]:
                    assert r["error"].startswith("storage full: the disk is full"), r
                    refused += 1
                else:
                    seen[g] += [m["msg_id"] for m in r["messages"]]
        assert refused > 0, "the leases never needed more disk than the margin"
        assert b.proc.poll() is None, b.log()
        filler.unlink()
        deadline = time.monotonic() + 20
        while any(len(ids) < count for ids in seen.values()):
            assert time.monotonic() < deadline, {g: len(ids) for g, ids in seen.items()}
            for g in range(groups):
                if len(seen[g]) < count:
                    r = await fetch(g, 100)
                    if r["error"]:  # room comes back on the next allocation attempt
                        assert r["error"].startswith("storage full"), r
                        await asyncio.sleep(0.1)
                        continue
                    seen[g] += [m["msg_id"] for m in r["messages"]]
        for g, ids in seen.items():
            assert sorted(ids) == list(range(count)), g  # each message once per group
    finally:
        await nc.close()
        b.stop()


async def test_a_disk_filled_by_another_program_still_takes_the_writes_that_make_room(
        tmp_path, small_disk, workers):
    """Another program takes every free byte of the disk.  New data is refused, and the writes
    that make room or need none go on for as long as they come: ACK, DELETE, REPORT (large
    ones, so the log has to move on to its other file), UNREGISTER, QUERY, FETCH.  The store
    keeps blocks of its own for them: ahead of LMDB's file, a spare checkpoint file swapped into
    place, and the log's two files taking turns.  Once the disk has room, new data is taken at
    once, and everything acknowledged survives a restart."""
    from conftest import BrokerProcess

    b = BrokerProcess(small_disk / "data", {"workers": workers})
    b.start()
    nc = await nats.connect(b.url)
    filler = small_disk / "filler"
    report = {"name": "agent0", "status": "x" * 20000}
    try:
        assert (await req(nc, "$mq9.AI.MAILBOX.CREATE", {"name": "room.box", "ttl": 0}))["error"] == ""
        for i in range(40):
            r = await req(nc, "$mq9.AI.AGENT.REGISTER", {"name": f"agent{i}", "mailbox": f"m{i}"})
            assert r["error"] == "", r
        replies = await asyncio.gather(*(req(nc, "$mq9.AI.MSG.SEND.room.box", BODY[:300])
                                         for _ in range(400)))
        assert [r["msg_id"] for r in replies] == list(range(400))
        await asyncio.sleep(1.5)  # a checkpoint or two
        fill_disk(filler)
        assert os.statvfs(small_disk).f_bavail < 64, "the disk is not full"
        extra: list[int] = []  # new data fits while LMDB has free pages; then it is refused
        while True:
            r = await req(nc, "$mq9.AI.MSG.SEND.room.box", b"new")
            if r["error"]:
                break
            extra.append(r["msg_id"])
            assert len(extra) < 5000, "SEND never refused"
        fetch = {"group_name": "g", "deliver": "earliest", "config": {"num_msgs": 2, "max_wait_ms": 0}}
        got: list[int] = []
        for i in range(150):
            r = await req(nc, "$mq9.AI.MSG.FETCH.room.box", fetch)
            assert r["error"] == "", (i, r)
            ids = [m["msg_id"] for m in r["messages"]]
            assert ids and ids[0] == (got[-1] + 1 if got else 0), (i, ids, got[-3:])
            got += ids
            r = await req(nc, "$mq9.AI.MSG.ACK.room.box",
                          {"group_name": "g", "mail_address": "room.box", "msg_id": ids[-1]})
            assert r["error"] == "", (i, r)
            if i < 100:
                assert await req(nc, f"$mq9.AI.MSG.DELETE.room.box.{300 + i}") == \
                    {"error": "", "deleted": True}, i
            assert (await req(nc, "$mq9.AI.AGENT.REPORT", report))["error"] == "", i
            if i < 30:
                assert (await req(nc, "$mq9.AI.AGENT.UNREGISTER", {"name": f"agent{10 + i}"}))["error"] == ""
            if i % 50 == 0:
                for subject, body in (("$mq9.AI.MSG.SEND.room.box", b"new"),
                                      ("$mq9.AI.MAILBOX.CREATE", {"name": f"new{i}"}),
                                      ("$mq9.AI.AGENT.REGISTER", {"name": f"new{i}", "mailbox": "n"})):
                    r = await req(nc, subject, body)
                    assert r["error"].startswith("storage full: the disk is full"), (subject, r)
        assert got == list(range(300))
        r = await req(nc, "$mq9.AI.MSG.QUERY.room.box", {"limit": 100})
        assert r["error"] == "" and r["messages"][0]["msg_id"] == 0
        assert b.proc.poll() is None, b.log()
        filler.unlink()
        r = await req(nc, "$mq9.AI.MSG.SEND.room.box", b"after")
        assert r == {"error": "", "msg_id": 400 + len(extra)}, r
        assert (await req(nc, "$mq9.AI.AGENT.REGISTER", {"name": "after", "mailbox": "a"}))["error"] == ""
    finally:
        await nc.close()
        b.stop()
    b.start()  # everything acknowledged is still there
    nc = await nats.connect(b.url)
    try:
        r = await req(nc, "$mq9.AI.MSG.FETCH.room.box", {**fetch, "config": {"num_msgs": 5000}})
        assert [m["msg_id"] for m in r["messages"]] == extra + [400 + len(extra)], r
        names = {a["name"] for a in (await req(nc, "$mq9.AI.AGENT.DISCOVER", {"limit": 100}))["agents"]}
        assert names == {f"agent{i}" for i in range(10)} | {"after"}, names
    finally:
        await nc.close()
        b.stop()


async def test_a_broker_killed_on_a_full_disk_starts_again_on_it(tmp_path, small_disk, workers):
    """kill -9 while another program holds every free byte; the broker restarts on that disk
    (it used to fail: the new lease store found no room), delivers every acknowledged SEND to
    a new group and takes its ACK."""
    from conftest import BrokerProcess

    b = BrokerProcess(small_disk / "data", {"workers": workers})
    b.start()
    nc = await nats.connect(b.url)
    try:
        assert (await req(nc, "$mq9.AI.MAILBOX.CREATE", {"name": "k.box", "ttl": 0}))["error"] == ""
        replies = await asyncio.gather(*(req(nc, "$mq9.AI.MSG.SEND.k.box", BODY[:300])
                                         for _ in range(300)))
        assert [r["msg_id"] for r in replies] == list(range(300))
        fill_disk(small_disk / "filler")
        assert os.statvfs(small_disk).f_bavail < 64, "the disk is not full"
    finally:
        await nc.close()
    b.kill()
    b.start()
    nc = await nats.connect(b.url)
    try:
        r = await req(nc, "$mq9.AI.MSG.FETCH.k.box",
                      {"group_name": "g", "deliver": "earliest", "config": {"num_msgs": 300, "max_wait_ms": 0}})
        assert [m["msg_id"] for m in r["messages"]] == list(range(300)), r.get("error")
        r = await req(nc, "$mq9.AI.MSG.ACK.k.box", {"group_name": "g", "mail_address": "k.box", "msg_id": 299})
        assert r == {"error": ""}, r
        r = await req(nc, "$mq9.AI.MSG.SEND.k.box", b"new")
        assert r["error"].startswith("storage full: the disk is full"), r
    finally:
        await nc.close()
        b.stop()


async def test_the_vector_index_is_saved_once_the_full_disk_has_room_again(tmp_path, small_disk, workers):
    """UNREGISTER on a disk another program filled: saving the vector index file fails, leaves
    no half-written file behind, and is tried again until it succeeds once there is room."""
    from conftest import BrokerProcess

    data = small_disk / "data"
    b = BrokerProcess(data, {"workers": workers})
    b.start()
    nc = await nats.connect(b.url)
    index = data / "registry.usearch"
    filler = small_disk / "filler"
    try:
        for i in range(20):
            r = await req(nc, "$mq9.AI.AGENT.REGISTER",
                          {"name": f"agent{i}", "mailbox": f"m{i}", "description": f"translates text {i}"})
            assert r["error"] == "", r
        deadline = time.monotonic() + 20
        while not index.exists():
            assert time.monotonic() < deadline, "the index file was never saved"
            await asyncio.sleep(0.1)
        fill_disk(filler)
        await asyncio.sleep(1.5)  # (a save still under way has finished or failed by now)
        saved = index.stat().st_mtime_ns
        for i in range(10):
            assert (await req(nc, "$mq9.AI.AGENT.UNREGISTER", {"name": f"agent{i}"}))["error"] == ""
        await asyncio.sleep(2.5)  # the save (1 s after the change) has failed by now
        assert b.proc.poll() is None
        assert index.stat().st_mtime_ns == saved
        assert not [p.name for p in data.iterdir() if ".tmp" in p.name]
        filler.unlink()
        deadline = time.monotonic() + 20
        while index.stat().st_mtime_ns == saved:
            assert time.monotonic() < deadline, "the index was not saved again once there was room"
            await asyncio.sleep(0.2)
        r = await req(nc, "$mq9.AI.AGENT.DISCOVER", {"semantic": "translate text", "limit": 100})
        assert sorted(a["name"] for a in r["agents"]) == sorted(f"agent{i}" for i in range(10, 20))
    finally:
        await nc.close()
        b.stop()


async def test_a_reboot_after_writes_on_a_full_disk_replays_them(tmp_path, small_disk, workers):
    """ACKs, DELETEs and large REPORTs acknowledged while another program held the rest of the
    disk (the log moving between its two files for want of room), then kill -9 and a restart
    under another boot id (the recovery path of a power cut: roll back to the checkpoint, replay
    the log): every acknowledged write is there."""
    from conftest import BrokerProcess

    b = BrokerProcess(small_disk / "data", {"workers": workers}, env={"MQ9FAST_BOOT_ID": "boot-1"})
    b.start()
    nc = await nats.connect(b.url)
    fetch = {"group_name": "g", "deliver": "earliest", "config": {"num_msgs": 2, "max_wait_ms": 0}}
    try:
        assert (await req(nc, "$mq9.AI.MAILBOX.CREATE", {"name": "pc.box", "ttl": 0}))["error"] == ""
        assert (await req(nc, "$mq9.AI.AGENT.REGISTER", {"name": "agent0", "mailbox": "m0"}))["error"] == ""
        replies = await asyncio.gather(*(req(nc, "$mq9.AI.MSG.SEND.pc.box", BODY[:300])
                                         for _ in range(400)))
        assert [r["msg_id"] for r in replies] == list(range(400))
        await asyncio.sleep(1.5)
        fill_disk(small_disk / "filler")
        acked = -1
        for i in range(120):
            r = await req(nc, "$mq9.AI.MSG.FETCH.pc.box", fetch)
            assert r["error"] == "", (i, r)
            last = r["messages"][-1]["msg_id"]
            r = await req(nc, "$mq9.AI.MSG.ACK.pc.box",
                          {"group_name": "g", "mail_address": "pc.box", "msg_id": last})
            assert r["error"] == "", (i, r)
            acked = last
            assert await req(nc, f"$mq9.AI.MSG.DELETE.pc.box.{399 - i}") == {"error": "", "deleted": True}
            r = await req(nc, "$mq9.AI.AGENT.REPORT", {"name": "agent0", "status": f"{i}:" + "x" * 20000})
            assert r["error"] == "", (i, r)
    finally:
        await nc.close()
    b.kill()
    b.env["MQ9FAST_BOOT_ID"] = "boot-2"
    (small_disk / "filler").unlink()  # (room for the restart's new log files)
    b.start()
    nc = await nats.connect(b.url)
    try:
        r = await req(nc, "$mq9.AI.MSG.FETCH.pc.box", {**fetch, "config": {"num_msgs": 1000}})
        assert [m["msg_id"] for m in r["messages"]] == list(range(acked + 1, 400 - 120)), r.get("error")
        r = await req(nc, "$mq9.AI.AGENT.DISCOVER", {"text": "agent0"})
        assert r["agents"][0]["last_report"]["status"].startswith("119:"), r["agents"][0]["last_report"]
    finally:
        await nc.close()
        b.stop()
