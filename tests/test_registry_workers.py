"""Semantic DISCOVER on non-owner workers through the memory-mapped view of the published usearch
file: the view/merge logic in-process (``VectorIndex.search_view``), two ``Registry`` objects on
one LMDB environment (owner + reader), and the wire with ``--workers 2``."""
from __future__ import annotations

import asyncio
import json
import os
import time

import numpy as np
import pytest

from conftest import connect_to_worker, make_factory
from test_registry_support import ok as req  # an AGENT command, asserting no error

INDEX_FILE = "registry.usearch"
WORDS = ["apricot", "basalt", "cobalt", "dolphin", "ember", "falcon", "granite", "harbor",
         "indigo", "jasmine", "kestrel", "lantern", "meadow", "nebula", "obsidian", "pepper",
         "quartz", "raven", "saffron", "tundra", "umber", "velvet", "walnut", "xenon", "yarrow",
         "zephyr"]


def unit(rng, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def mappings(path, pid: str = "self") -> list[str]:
    """Lines of /proc/<pid>/maps that map ``path`` (also once it is renamed over: "(deleted)")."""
    try:
        with open(f"/proc/{pid}/maps") as fh:
            return [line for line in fh if str(path) in line]
    except OSError:
        return []


def open_fds(path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(path)):
                n += 1
        except OSError:
            pass
    return n


# ------------------------------------------------------------------------------------------------
# VectorIndex: view + exact delta, deleted entries filtered, re-opened views released
# ------------------------------------------------------------------------------------------------
def test_view_merges_newer_vectors_and_hides_deleted(tmp_path):
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs procfs")
    from mq9fast.registry.vectors import (VectorIndex, _new_usearch, open_index_file,
                                          write_index_file)

    rng = np.random.default_rng(3)
    dim, n = 64, 400
    cards = unit(rng, n + 100, dim)
    path = str(tmp_path / INDEX_FILE)

    owner = _new_usearch(dim)
    reader = VectorIndex(dim, "t")
    for i in range(n):
        reader.add(i + 1, f"a{i}", cards[i:i + 1])
    owner.add(np.arange(1, n + 1, dtype=np.uint64), cards[:n], threads=1)

    def publish() -> dict:
        size, crc = write_index_file(owner, path)
        return {"size": size, "crc32": crc, "ndim": dim, "tag": "t"}

    meta = publish()
    # a mismatched record (or a foreign embedder / dimension) is not opened
    assert open_index_file(path, dict(meta, crc32=meta["crc32"] ^ 1), dim, "t", True) is None
    assert open_index_file(path, dict(meta, tag="other"), dim, "t", True) is None
    assert open_index_file(path, meta, dim + 1, "t", True) is None
    assert mappings(path) == [] and open_fds(path) == 0
    view = open_index_file(path, meta, dim, "t", view=True)
    assert view is not None and len(view) == n
    reader.set_view(view, 1)
    assert reader.view_delta == set() and reader.view_dead == 0 and reader.view_usable()

    def both(q, need=10):
        got, exact = reader.search_view(q, need)[:need], reader.search(q, need)[:need]
        # the same agents in the same order, the same scores (up to float32 summation order)
        assert [x for x, _ in got] == [x for x, _ in exact]
        assert [v for _, v in got] == pytest.approx([v for _, v in exact], abs=1e-5)
        return got, exact

    for i in (0, 57, 399):
        got, exact = both(cards[i])
        assert got[0] == (f"a{i}", pytest.approx(1.0, abs=1e-5))
        

    # registered after the file was written: found at once (scanned exactly)
    for i in range(n, n + 20):
        reader.add(i + 1, f"a{i}", cards[i:i + 1])
    assert reader.view_delta == set(range(n + 1, n + 21))
    for i in (n, n + 19):
        got, exact = both(cards[i])
        assert got[0][0] == f"a{i}"

    # unregistered, and re-registered (same name, new vector id / vector): never the old entry
    for i in range(0, 40):
        reader.remove(i + 1)
    reader.remove(60 + 1)
    reader.add(n + 500, "a60", cards[n + 50:n + 51])
    assert reader.view_dead == 41 and n + 500 in reader.view_delta
    for i in (0, 39):
        got = reader.search_view(cards[i], 50)
        assert all(name != f"a{i}" for name, _ in got)
        both(cards[i])
    got, exact = both(cards[n + 50])
    assert got[0] == ("a60", pytest.approx(1.0, abs=1e-5))
    assert "a60" not in [name for name, _ in reader.search_view(cards[60], 10)[:1]]
    # the view's dead entries cannot crowd live ones out: ask for everything
    everything = reader.search_view(cards[5], 1000)
    assert sorted(name for name, _ in everything) == sorted(
        {f"a{i}" for i in range(40, n + 20)} | {"a60"})

    # new versions: the owner catches up and publishes, the reader re-opens; every old view is
    # unmapped and its descriptor closed (no leak over many bumps)
    owner.remove(np.arange(1, 41, dtype=np.uint64))
    owner.remove(61)
    owner.add(np.arange(n + 1, n + 21, dtype=np.uint64), cards[n:n + 20], threads=1)
    owner.add(n + 500, cards[n + 50], threads=1)
    fds_before = len(os.listdir("/proc/self/fd"))
    for version in range(2, 8):
        k = n + 500 + version
        reader.add(k, f"b{version}", cards[n + 60 + version:n + 61 + version])
        owner.add(k, cards[n + 60 + version], threads=1)
        meta = publish()
        view = open_index_file(path, meta, dim, "t", view=True)
        reader.set_view(view, version)
        assert reader.view_version == version
        assert reader.view_delta == set() and reader.view_dead == 0
        assert len(mappings(path)) == 1, mappings(path)  # the new file only, none "(deleted)"
        assert "(deleted)" not in mappings(path)[0]
        assert open_fds(path) == 1
        got, exact = both(cards[n + 60 + version])
        assert got[0][0] == f"b{version}"
    assert len(os.listdir("/proc/self/fd")) == fds_before
    reader.close_view()
    assert mappings(path) == [] and open_fds(path) == 0
    assert reader.view is None and reader.search(cards[7], 5)  # the exact scan still answers


def test_damaged_view_file_is_not_opened(tmp_path):
    from mq9fast.registry.vectors import _new_usearch, open_index_file, write_index_file

    rng = np.random.default_rng(5)
    index = _new_usearch(16)
    index.add(np.arange(1, 51, dtype=np.uint64), unit(rng, 50, 16), threads=1)
    path = tmp_path / INDEX_FILE
    size, crc = write_index_file(index, str(path))
    meta = {"size": size, "crc32": crc, "ndim": 16, "tag": "t"}
    good = path.read_bytes()
    mid = len(good) // 2
    path.write_bytes(good[:mid] + bytes(b ^ 0xFF for b in good[mid:mid + 64]) + good[mid + 64:])
    assert path.stat().st_size == size  # same size, different bytes
    assert open_index_file(str(path), meta, 16, "t", view=True) is None
    path.write_bytes(good[: len(good) // 2])
    assert open_index_file(str(path), meta, 16, "t", view=True) is None
    path.unlink()
    assert open_index_file(str(path), meta, 16, "t", view=True) is None
    path.write_bytes(good)
    view = open_index_file(str(path), meta, 16, "t", view=True)
    assert view is not None and len(view) == 50
    view.reset()
    assert mappings(path) == []


# ------------------------------------------------------------------------------------------------
# two Registry objects on one environment: owner publishes, the other one reads through the view
# ------------------------------------------------------------------------------------------------
def card(i: int) -> dict:
    w = WORDS[i % len(WORDS)]
    return {"name": f"v.{i}", "payload": f"{w} {i} specialist {w}{i} handler"}


async def wait_until(pred, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await pred() if asyncio.iscoroutinefunction(pred) else pred()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_reader_registry_uses_view_and_stays_exact(tmp_path):
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs procfs")
    from mq9fast.config import Config
    from mq9fast.registry import Registry
    from mq9fast.registry import records as R
    from mq9fast.registry.vectors import meta_loads
    from mq9fast.storage import Store

    store = Store(str(tmp_path), fsync="never")
    store.start()
    cfg = Config(data_dir=str(tmp_path), embedder="hash", vector_exact_max=20)
    owner = Registry(store, cfg)
    reader = Registry(store, cfg, owner=False)
    await owner.start()
    await reader.start()
    path = os.path.join(str(tmp_path), INDEX_FILE)
    try:
        await wait_until(lambda: owner.vec is not None and reader.vec is not None)
        for i in range(60):
            await owner.register(json.dumps(card(i)).encode())

        def published() -> dict:
            with store.read() as txn:
                return meta_loads(txn.get(R.META_INDEX, db=owner.db_meta)) or {}

        # (the owner may first publish the empty index it built at start)
        await wait_until(lambda: published().get("count") == 60)

        calls = {"view": 0, "exact": 0}
        vec = reader.vec
        orig_view, orig_exact = vec.search_view, vec.search

        def spy_view(*a):
            calls["view"] += 1
            return orig_view(*a)

        def spy_exact(*a):
            calls["exact"] += 1
            return orig_exact(*a)

        vec.search_view, vec.search = spy_view, spy_exact

        async def top(reg, query: str, limit: int = 5) -> list[str]:
            reply = json.loads(await reg.discover(json.dumps(
                {"semantic": query, "limit": limit}).encode()))
            return [e["name"] for e in reply["agents"]]

        async def view_open():
            await top(reader, card(3)["payload"])
            return vec.view is not None and vec.view_version == owner.index_version

        await wait_until(view_open)
        assert len(mappings(path)) == 1 and len(vec.view) == 60
        calls.update(view=0, exact=0)
        assert (await top(reader, card(7)["payload"]))[0] == "v.7"
        assert calls == {"view": 1, "exact": 0}

        # a REGISTER on either registry is found by the reader at once (not in the file yet)
        await owner.register(b'{"name":"v.new","payload":"zebra 999 specialist zebra999"}')
        await reader.register(b'{"name":"v.mine","payload":"yak 998 specialist yak998"}')
        for reg in (reader, owner):
            assert (await top(reg, "zebra 999 specialist zebra999"))[0] == "v.new"
            assert (await top(reg, "yak 998 specialist yak998"))[0] == "v.mine"
        # an UNREGISTER (of an agent in the file) is gone at once; so is a replaced vector
        await owner.unregister(b'{"name":"v.7"}')
        await owner.register(json.dumps({"name": "v.8", "payload": "gopher 8 burrows"}).encode())
        for reg in (reader, owner):
            assert "v.7" not in await top(reg, card(7)["payload"], 100)
            assert (await top(reg, "gopher 8 burrows"))[0] == "v.8"
            assert (await top(reg, card(9)["payload"]))[0] == "v.9"
        assert calls["view"] >= 5 and calls["exact"] == 0

        # the owner publishes again: the reader re-opens and releases the old mapping
        for _ in range(3):
            before = owner.index_version
            await owner.register(json.dumps(
                {"name": f"v.bump{before}", "payload": f"bump {before} otter"}).encode())
            await wait_until(lambda: owner.index_version > before)
            await wait_until(view_open)
            maps = mappings(path)
            assert len(maps) == 1 and "(deleted)" not in maps[0], maps
            assert open_fds(path) == 1
            assert vec.view_delta == set()
            assert (await top(reader, f"bump {before} otter"))[0] == f"v.bump{before}"
            assert "v.7" not in await top(reader, card(7)["payload"], 100)
    finally:
        await reader.close()
        await owner.close()
        store.close()
    assert mappings(path) == [] and open_fds(path) == 0


# ------------------------------------------------------------------------------------------------
# the wire: --workers 2
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def two_workers(tmp_path):
    make, cleanup = make_factory(tmp_path, 2)
    yield make
    cleanup()


async def semantic(nc, query: str, limit: int = 5) -> list[str]:
    reply = await req(nc, "DISCOVER", {"semantic": query, "limit": limit})
    return [e["name"] for e in reply["agents"]]


def readers_mapping(path) -> dict[str, list[str]]:
    """pid -> its mappings of ``path`` (the owner loads the file, only readers map it)."""
    out = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            maps = mappings(path, pid)
            if maps:
                out[pid] = maps
    return out


async def test_register_on_one_worker_found_through_view_on_another(two_workers):
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs procfs")
    b = two_workers(embedder="hash", vector_exact_max=20)
    path = b.data_dir / INDEX_FILE
    a = await connect_to_worker(b, 0)  # worker 0 owns the index
    o = await connect_to_worker(b, 1)
    try:
        for i in range(60):
            await req(a, "REGISTER", card(i))

        async def view_mapped():
            assert (await semantic(o, card(11)["payload"]))[0] == "v.11"
            got = readers_mapping(path)
            if not path.exists() or len(got) != 1:
                return False
            (maps,) = got.values()
            return len(maps) == 1 and f" {os.stat(path).st_ino} " in maps[0]

        await wait_until(view_mapped)  # worker 1 reads through a view of the current file
        for i in (0, 25, 59):
            assert (await semantic(o, card(i)["payload"]))[0] == f"v.{i}"

        # REGISTER on worker 0 -> at once on worker 1 (the file does not have it yet)
        await req(a, "REGISTER", {"name": "w.fresh", "payload": "narwhal tusk polishing"})
        assert (await semantic(o, "narwhal tusk polishing"))[0] == "w.fresh"
        # REGISTER on worker 1 -> at once on worker 0 and 1
        await req(o, "REGISTER", {"name": "w.local", "payload": "llama wool spinning"})
        for nc in (o, a):
            assert (await semantic(nc, "llama wool spinning"))[0] == "w.local"
        # UNREGISTER on worker 0 of an agent that the mapped file holds -> gone at once on 1
        await req(a, "UNREGISTER", {"name": "v.25"})
        assert "v.25" not in await semantic(o, card(25)["payload"], 100)
        # re-REGISTER with new text: the old vector in the file is not used
        await req(a, "REGISTER", {"name": "v.26", "payload": "marmot hibernation advice"})
        assert (await semantic(o, "marmot hibernation advice"))[0] == "v.26"
        assert "v.26" not in (await semantic(o, card(26)["payload"], 3))

        # the owner publishes a new version; worker 1 maps it and lets go of the old file
        ino = os.stat(path).st_ino

        def republished():
            return path.exists() and os.stat(path).st_ino != ino

        await wait_until(republished)
        await wait_until(view_mapped)
        for nc in (o, a):
            assert (await semantic(nc, "narwhal tusk polishing"))[0] == "w.fresh"
            assert "v.25" not in await semantic(nc, card(25)["payload"], 100)

        # the owner's own mirror, in sync and idle, does not have what worker 1 registers
        # next: the owner's DISCOVER must still show it at once
        for i, text in enumerate(["okapi grooming service", "yak butter churning",
                                  "quokka photography tours", "axolotl tank cleaning"]):
            await asyncio.sleep(1.5)  # the mirror takes in the last one and is idle again
            await req(o, "REGISTER", {"name": f"w.late.{i}", "payload": text})
            assert (await semantic(a, text))[0] == f"w.late.{i}"
    finally:
        await a.close()
        await o.close()
