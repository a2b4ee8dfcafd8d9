"""Subject routing: the compiled trie and its pure-Python twin, side by side."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mq9fast import router_py
from twins import twin_params

try:
    from mq9fast import _router
except ImportError:  # pragma: no cover
    _router = None

IMPLS = twin_params(router_py, _router, "mq9fast._router", "cython")


class Sub:
    def __init__(self, subject: bytes, queue: bytes | None = None, name: str = ""):
        self.subject = subject
        self.queue = queue
        self.name = name or subject.decode()

    def __repr__(self):
        return f"Sub({self.subject!r}, {self.queue!r})"


@pytest.fixture(params=IMPLS)
def mod(request):
    return request.param


def names(subs):
    return sorted(s.name for s in subs)


def test_literal_and_wildcards(mod):
    r = mod.Router()
    subs = {n: Sub(s.encode(), name=n) for n, s in
            [("lit", "a.b.c"), ("star", "a.*.c"), ("gt", "a.>"), ("all", ">"), ("other", "x.y"),
             ("star2", "*.*"), ("short", "a")]}
    for s in subs.values():
        r.insert(s)
    assert names(r.match(b"a.b.c").psubs) == ["all", "gt", "lit", "star"]
    assert names(r.match(b"a.b").psubs) == ["all", "gt", "star2"]
    assert names(r.match(b"a").psubs) == ["all", "short"]
    assert names(r.match(b"x.y").psubs) == ["all", "other", "star2"]
    assert names(r.match(b"q").psubs) == ["all"]
    assert r.count == 7


def test_gt_needs_at_least_one_token(mod):
    r = mod.Router()
    r.insert(Sub(b"a.>"))
    assert not r.match(b"a")
    assert r.match(b"a.b.c.d")


def test_star_is_a_whole_token_only(mod):
    r = mod.Router()
    r.insert(Sub(b"a*.b"))
    assert not r.match(b"ax.b")
    assert r.match(b"a*.b")


def test_queue_groups_grouped_across_patterns(mod):
    r = mod.Router()
    q1 = [Sub(b"job.*", b"w", "w1"), Sub(b"job.>", b"w", "w2"), Sub(b"job.a", b"v", "v1")]
    for s in q1:
        r.insert(s)
    m = r.match(b"job.a")
    assert m.psubs == []
    assert sorted(names(g) for g in m.qgroups) == [["v1"], ["w1", "w2"]]
    picks = {r.pick(m.qgroups[0]).name for _ in range(10)}
    assert len(picks) == len(m.qgroups[0])  # round-robin reaches every member


def test_cache_is_invalidated(mod):
    r = mod.Router()
    a = Sub(b"a.b")
    assert not r.match(b"a.b")  # cached empty result
    r.insert(a)
    assert r.match(b"a.b").psubs == [a]
    b = Sub(b"a.*")
    r.insert(b)
    assert names(r.match(b"a.b").psubs) == ["a.*", "a.b"]
    assert r.remove(a)
    assert r.match(b"a.b").psubs == [b]
    assert not r.remove(a)
    assert r.remove(b)
    assert not r.match(b"a.b")
    assert r.count == 0


def test_remove_is_by_identity(mod):
    r = mod.Router()
    s1, s2 = Sub(b"a"), Sub(b"a")
    r.insert(s1)
    r.insert(s2)
    r.remove(s1)
    assert r.match(b"a").psubs == [s2]


@pytest.mark.parametrize("subject,wild,ok", [
    (b"a", True, True), (b"a.b.c", True, True), (b"a.*.c", True, True), (b"a.>", True, True),
    (b">", True, True), (b"*", True, True), (b"", True, False), (b"a..b", True, False),
    (b".a", True, False), (b"a.", True, False), (b"a.>.b", True, False), (b"a b", True, False),
    (b"a\tb", True, False), (b"a.*", False, False), (b"a.>", False, False), (b"q1", False, True),
])
def test_valid_subject(mod, subject, wild, ok):
    assert bool(mod.valid_subject(subject, wild)) is ok


_tok = st.sampled_from([b"a", b"b", b"c", b"*"])


@settings(max_examples=200, deadline=None)
@given(patterns=st.lists(st.tuples(st.lists(_tok, min_size=1, max_size=3), st.booleans()), max_size=12),
       subjects=st.lists(st.lists(st.sampled_from([b"a", b"b", b"c"]), min_size=1, max_size=4), max_size=8),
       removals=st.lists(st.integers(0, 20), max_size=5))
def test_twins_agree_with_brute_force(patterns, subjects, removals):
    assert _router is not None
    subs = []
    for toks, gt in patterns:
        subs.append(Sub(b".".join(toks + ([b">"] if gt else []))))
    routers = [router_py.Router(), _router.Router()]
    for r in routers:
        for s in subs:
            r.insert(s)
    live = list(subs)
    for i in removals:
        if live:
            victim = live.pop(i % len(live))
            for r in routers:
                assert r.remove(victim)
    for toks in subjects:
        subject = b".".join(toks)
        expect = sorted(id(s) for s in live if router_py.subject_matches(s.subject, subject))
        for r in routers:
            assert sorted(id(s) for s in r.match(subject).psubs) == expect
        assert bool(_router.subject_matches(b"a.>", subject)) == bool(router_py.subject_matches(b"a.>", subject))
