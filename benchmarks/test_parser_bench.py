"""Micro-benchmarks of the NATS frame parser: compiled (Cython) vs the pure-Python twin.

Run with::

    python -m pytest benchmarks/test_parser_bench.py --benchmark-only
    python -m pytest benchmarks/test_parser_bench.py --benchmark-only --benchmark-group-by=func

Each benchmark feeds a fresh parser the same bytes and checks the frame count, so a parser that
silently drops frames cannot look fast.  These are measurements, never pass/fail timing
assertions (DESIGN.md §6).
"""
from __future__ import annotations

import importlib

import pytest

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is not installed (pip install -e '.[bench]')")


def _impl(module: str, impl_id: str, reason: str):
    """A parametrize entry (Parser class, OP_PUB, OP_HPUB), or a skipped one when the module
    is not built / not written yet."""
    try:
        mod = importlib.import_module(module)
        impl = (mod.Parser, getattr(mod, "OP_PUB", 1), getattr(mod, "OP_HPUB", 2))
        return pytest.param(impl, id=impl_id)
    except Exception as e:  # ImportError, or a half-written module during development
        return pytest.param(None, id=impl_id, marks=pytest.mark.skip(reason=f"{reason} ({e!r})"))


IMPLS = [
    _impl("mq9fast._parser", "cython",
          "compiled parser mq9fast._parser is not built yet: pip install -e . "
          "(or python setup.py build_ext --inplace)"),
    _impl("mq9fast.parser_py", "python", "pure-Python parser mq9fast.parser_py is not available yet"),
]

MAX_CONTROL_LINE = 4096
MAX_PAYLOAD = 1048576
BUF_SIZE = 64 * 1024
CHUNK = 1500  # one Ethernet MTU worth of bytes per read, as a worst-case read split


def _pub_buffer() -> tuple[bytes, int]:
    """About 64 KiB of `PUB foo.bar 128\\r\\n<128 bytes>\\r\\n` frames."""
    payload = bytes((i * 7 + 3) % 26 + 97 for i in range(128))
    frame = b"PUB foo.bar 128\r\n" + payload + b"\r\n"
    n = BUF_SIZE // len(frame)
    return frame * n, n


def _hpub_mix_buffer() -> tuple[bytes, int]:
    """About 64 KiB of mixed traffic, as an mq9 client produces it: plain PUBs, request PUBs
    with a reply inbox, HPUBs carrying mq9 headers, and an occasional PING."""
    frames = []
    i = 0
    size = 0
    while size < BUF_SIZE:
        body = (b'{"task":"t%06d","data":"' % i) + b"x" * (40 + i % 60) + b'"}'
        k = i % 4
        if k == 0:
            f = b"PUB agent.work.%d %d\r\n%s\r\n" % (i % 16, len(body), body)
        elif k == 1:
            f = b"PUB $mq9.AI.MSG.SEND.agent.inbox _INBOX.Xy7Qp2.%d %d\r\n%s\r\n" % (i, len(body), body)
        else:
            hdr = (b"NATS/1.0\r\nmq9-priority: urgent\r\nmq9-key: k%d\r\nmq9-tags: billing,eu\r\n\r\n"
                   % (i % 100))
            f = (b"HPUB $mq9.AI.MSG.SEND.agent.inbox _INBOX.Xy7Qp2.%d %d %d\r\n"
                 % (i, len(hdr), len(hdr) + len(body)) + hdr + body + b"\r\n")
        frames.append(f)
        size += len(f)
        i += 1
        if i % 50 == 0:
            frames.append(b"PING\r\n")
    data = b"".join(frames)
    return data, len(frames)


PUB_BUF, PUB_N = _pub_buffer()
MIX_BUF, MIX_N = _hpub_mix_buffer()


def _chunks(data: bytes, n: int) -> list[bytes]:
    return [data[i:i + n] for i in range(0, len(data), n)]


PUB_CHUNKS = _chunks(PUB_BUF, CHUNK)
MIX_CHUNKS = _chunks(MIX_BUF, CHUNK)


def _new(parser_cls):
    return parser_cls(max_control_line=MAX_CONTROL_LINE, max_payload=MAX_PAYLOAD)


def _feed_once(parser_cls, data: bytes) -> int:
    return len(_new(parser_cls).feed(data))


def _feed_chunks(parser_cls, chunks: list[bytes]) -> int:
    p = _new(parser_cls)
    n = 0
    for c in chunks:
        n += len(p.feed(c))
    return n


def _run(benchmark, impl, fn, data, expect: int, nbytes: int) -> None:
    parser_cls, _op_pub, _op_hpub = impl
    benchmark.extra_info["bytes"] = nbytes
    benchmark.extra_info["frames"] = expect
    got = benchmark(fn, parser_cls, data)
    assert got == expect
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None and stats.stats.mean:
        benchmark.extra_info["MB_per_s"] = round(nbytes / stats.stats.mean / 1e6, 1)
        benchmark.extra_info["frames_per_s"] = round(expect / stats.stats.mean)


@pytest.mark.parametrize("impl", IMPLS)
def test_pub128_one_feed(benchmark, impl):
    """64 KiB of 128-byte PUB frames in one feed() call."""
    benchmark.group = "pub128-64KiB-one-feed"
    _run(benchmark, impl, _feed_once, PUB_BUF, PUB_N, len(PUB_BUF))


@pytest.mark.parametrize("impl", IMPLS)
def test_pub128_chunked_1500(benchmark, impl):
    """The same 64 KiB fed in 1500-byte chunks (frames split across feeds)."""
    benchmark.group = "pub128-64KiB-1500B-chunks"
    _run(benchmark, impl, _feed_chunks, PUB_CHUNKS, PUB_N, len(PUB_BUF))


@pytest.mark.parametrize("impl", IMPLS)
def test_hpub_mix_one_feed(benchmark, impl):
    """64 KiB of mixed PUB / request PUB / HPUB-with-mq9-headers / PING, one feed() call."""
    benchmark.group = "hpub-mix-64KiB-one-feed"
    _run(benchmark, impl, _feed_once, MIX_BUF, MIX_N, len(MIX_BUF))


@pytest.mark.parametrize("impl", IMPLS)
def test_hpub_mix_chunked_1500(benchmark, impl):
    """The mixed traffic fed in 1500-byte chunks."""
    benchmark.group = "hpub-mix-64KiB-1500B-chunks"
    _run(benchmark, impl, _feed_chunks, MIX_CHUNKS, MIX_N, len(MIX_BUF))


@pytest.mark.parametrize("impl", IMPLS)
def test_frames_are_what_was_sent(impl):
    """Sanity (not timed): both parsers see the PUB and HPUB frames the buffers contain."""
    parser_cls, op_pub, op_hpub = impl
    frames = _new(parser_cls).feed(PUB_BUF)
    assert frames[0][0] == op_pub and frames[0][1] in (b"foo.bar", "foo.bar")
    mix = _new(parser_cls).feed(MIX_BUF)
    assert sum(1 for f in mix if f[0] == op_hpub) == sum(1 for f in MIX_BUF.split(b"\r\n") if f.startswith(b"HPUB "))
