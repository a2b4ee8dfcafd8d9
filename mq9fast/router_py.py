"""Subject routing - the pure-Python twin of ``mq9fast._router`` (same API, same results).

    r = Router()
    r.insert(sub)            # sub: any object with .subject (bytes) and .queue (bytes or None)
    r.remove(sub)            # True if it was there
    m = r.match(b"a.b.c")    # Match: m.psubs (list of plain subs), m.qgroups (list of lists)
    r.pick(group)            # one member of a queue group (round-robin)

A token trie: each node maps literal tokens to children and has optional ``*`` and ``>``
children; a node's subscriptions are those whose pattern ends there.  ``match`` results are
cached per subject; every insert/remove clears the cache (the cache is also bounded), so a cached
Match never includes a removed subscription nor misses an inserted one.  The lists inside a
Match must be treated as read-only by callers.
"""
from __future__ import annotations

CACHE_MAX = 8192


def valid_subject(subject: bytes, wildcards: bool = True) -> bool:
    """Non-empty tokens without whitespace; with ``wildcards`` a ``>`` token only at the end."""
    if not subject:
        return False
    tokens = subject.split(b".")
    last = len(tokens) - 1
    for i, tok in enumerate(tokens):
        if not tok:
            return False
        for c in tok:
            if c <= 32 or c == 127:
                return False
        if tok == b">" and (not wildcards or i != last):
            return False
        if tok == b"*" and not wildcards:
            return False
    return True


def subject_matches(pattern: bytes, subject: bytes) -> bool:
    """Does SUB pattern ``pattern`` match literal ``subject``?"""
    pt = pattern.split(b".")
    st = subject.split(b".")
    for i, tok in enumerate(pt):
        if tok == b">":
            return len(st) > i
        if i >= len(st):
            return False
        if tok != b"*" and tok != st[i]:
            return False
    return len(pt) == len(st)


class Match:
    __slots__ = ("psubs", "qgroups")

    def __init__(self, psubs: list, qgroups: list) -> None:
        self.psubs = psubs
        self.qgroups = qgroups

    def __bool__(self) -> bool:
        return bool(self.psubs) or bool(self.qgroups)


class _Node:
    __slots__ = ("children", "pwc", "fwc", "psubs", "qsubs")

    def __init__(self) -> None:
        self.children: dict[bytes, _Node] = {}
        self.pwc: _Node | None = None
        self.fwc: _Node | None = None
        self.psubs: list = []
        self.qsubs: dict[bytes, list] = {}

    def empty(self) -> bool:
        return not (self.children or self.pwc or self.fwc or self.psubs or self.qsubs)


class Router:
    def __init__(self) -> None:
        self._root = _Node()
        self._cache: dict[bytes, Match] = {}
        self._rr = 0
        self.count = 0

    def insert(self, sub) -> None:
        node = self._root
        for tok in sub.subject.split(b"."):
            if tok == b"*":
                if node.pwc is None:
                    node.pwc = _Node()
                node = node.pwc
            elif tok == b">":
                if node.fwc is None:
                    node.fwc = _Node()
                node = node.fwc
            else:
                child = node.children.get(tok)
                if child is None:
                    child = node.children[tok] = _Node()
                node = child
        if sub.queue is None:
            node.psubs.append(sub)
        else:
            node.qsubs.setdefault(sub.queue, []).append(sub)
        self.count += 1
        self._cache.clear()

    def remove(self, sub) -> bool:
        path: list[tuple[_Node, bytes]] = []
        node = self._root
        for tok in sub.subject.split(b"."):
            if tok == b"*":
                nxt = node.pwc
            elif tok == b">":
                nxt = node.fwc
            else:
                nxt = node.children.get(tok)
            if nxt is None:
                return False
            path.append((node, tok))
            node = nxt
        if sub.queue is None:
            try:
                node.psubs.remove(sub)
            except ValueError:
                return False
        else:
            members = node.qsubs.get(sub.queue)
            if not members or sub not in members:
                return False
            members.remove(sub)
            if not members:
                del node.qsubs[sub.queue]
        self.count -= 1
        self._cache.clear()
        # prune empty nodes bottom-up
        for parent, tok in reversed(path):
            child = parent.pwc if tok == b"*" else parent.fwc if tok == b">" else parent.children[tok]
            if not child.empty():
                break
            if tok == b"*":
                parent.pwc = None
            elif tok == b">":
                parent.fwc = None
            else:
                del parent.children[tok]
        return True

    def match(self, subject: bytes) -> Match:
        m = self._cache.get(subject)
        if m is not None:
            return m
        psubs: list = []
        qmap: dict[bytes, list] = {}
        self._collect(self._root, subject.split(b"."), 0, psubs, qmap)
        m = Match(psubs, list(qmap.values()))
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[subject] = m
        return m

    def _collect(self, node: _Node, tokens: list, i: int, psubs: list, qmap: dict) -> None:
        if node.fwc is not None and i < len(tokens):
            self._add(node.fwc, psubs, qmap)
        if i == len(tokens):
            self._add(node, psubs, qmap)
            return
        child = node.children.get(tokens[i])
        if child is not None:
            self._collect(child, tokens, i + 1, psubs, qmap)
        if node.pwc is not None:
            self._collect(node.pwc, tokens, i + 1, psubs, qmap)

    @staticmethod
    def _add(node: _Node, psubs: list, qmap: dict) -> None:
        psubs.extend(node.psubs)
        for q, members in node.qsubs.items():
            qmap.setdefault(q, []).extend(members)

    def pick(self, group: list):
        """Round-robin over the members of one queue group."""
        self._rr += 1
        return group[self._rr % len(group)]
