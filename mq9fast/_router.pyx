# cython: language_level=3
"""Subject routing, compiled.  Same API and results as ``mq9fast.router_py`` (read its docstring).

Invariants:
* a subscription is stored at exactly one trie node: the node reached by its pattern's tokens
  (``*`` -> ``pwc``, ``>`` -> ``fwc``), in ``psubs`` or in ``qsubs[queue]``;
* ``_cache`` only ever holds Match results computed since the last insert/remove (both clear it)
  and at most CACHE_MAX entries;
* empty nodes are pruned on remove, so the trie size is bounded by the live subscriptions;
* a node's containers (``children``, ``psubs``, ``qsubs``) are None until first needed and go back
  to None when emptied: most nodes hold one child or one subscription (an inbox per connection),
  and three empty containers per node would cost more than the node itself (memory per idle
  connection is a target).
"""

DEF CACHE_MAX = 8192


def valid_subject(bytes subject, bint wildcards=True):
    """Non-empty tokens without whitespace; with ``wildcards`` a ``>`` token only at the end."""
    cdef Py_ssize_t n = len(subject), i, tok_start = 0
    cdef const unsigned char* p = subject
    cdef unsigned char c
    if n == 0:
        return False
    for i in range(n + 1):
        if i == n or p[i] == 46:  # '.'
            if i == tok_start:
                return False
            if i - tok_start == 1 and p[tok_start] == 62:  # '>'
                if not wildcards or i != n:
                    return False
            if i - tok_start == 1 and p[tok_start] == 42 and not wildcards:  # '*'
                return False
            tok_start = i + 1
        else:
            c = p[i]
            if c <= 32 or c == 127:
                return False
    return True


def subject_matches(bytes pattern, bytes subject):
    """Does SUB pattern ``pattern`` match literal ``subject``?"""
    cdef list pt = pattern.split(b".")
    cdef list st = subject.split(b".")
    cdef Py_ssize_t i
    for i in range(len(pt)):
        tok = pt[i]
        if tok == b">":
            return len(st) > i
        if i >= len(st):
            return False
        if tok != b"*" and tok != st[i]:
            return False
    return len(pt) == len(st)


cdef class Match:
    def __init__(self, list psubs, list qgroups):
        self.psubs = psubs
        self.qgroups = qgroups

    def __bool__(self):
        return bool(self.psubs) or bool(self.qgroups)


cdef class _Node:
    def __cinit__(self):
        self.children = None
        self.pwc = None
        self.fwc = None
        self.psubs = None
        self.qsubs = None

    cdef bint empty(self):
        return not (self.children or self.pwc is not None or self.fwc is not None
                    or self.psubs or self.qsubs)


cdef class Router:
    def __cinit__(self):
        self._root = _Node()
        self._cache = {}
        self._rr = 0
        self.count = 0

    def insert(self, sub):
        cdef _Node node = self._root
        cdef _Node child
        cdef bytes tok
        cdef object queue = sub.queue
        for tok in (<bytes>sub.subject).split(b"."):
            if tok == b"*":
                if node.pwc is None:
                    node.pwc = _Node()
                node = node.pwc
            elif tok == b">":
                if node.fwc is None:
                    node.fwc = _Node()
                node = node.fwc
            else:
                if node.children is None:
                    node.children = {}
                child = node.children.get(tok)
                if child is None:
                    child = _Node()
                    node.children[tok] = child
                node = child
        if queue is None:
            if node.psubs is None:
                node.psubs = [sub]
            else:
                node.psubs.append(sub)
        else:
            if node.qsubs is None:
                node.qsubs = {}
            members = node.qsubs.get(queue)
            if members is None:
                node.qsubs[queue] = [sub]
            else:
                (<list>members).append(sub)
        self.count += 1
        self._cache.clear()

    def remove(self, sub):
        cdef list path = []
        cdef _Node node = self._root
        cdef _Node nxt, parent, child
        cdef bytes tok
        cdef object queue = sub.queue
        for tok in (<bytes>sub.subject).split(b"."):
            if tok == b"*":
                nxt = node.pwc
            elif tok == b">":
                nxt = node.fwc
            else:
                nxt = node.children.get(tok) if node.children is not None else None
            if nxt is None:
                return False
            path.append((node, tok))
            node = nxt
        if queue is None:
            if node.psubs is None or not _remove_identity(node.psubs, sub):
                return False
            if not node.psubs:
                node.psubs = None
        else:
            members = node.qsubs.get(queue) if node.qsubs is not None else None
            if members is None or not _remove_identity(<list>members, sub):
                return False
            if not members:
                del node.qsubs[queue]
                if not node.qsubs:
                    node.qsubs = None
        self.count -= 1
        self._cache.clear()
        for parent, tok in reversed(path):
            if tok == b"*":
                child = parent.pwc
            elif tok == b">":
                child = parent.fwc
            else:
                child = parent.children[tok]
            if not child.empty():
                break
            if tok == b"*":
                parent.pwc = None
            elif tok == b">":
                parent.fwc = None
            else:
                del parent.children[tok]
                if not parent.children:
                    parent.children = None
        return True

    cpdef Match match(self, bytes subject):
        cdef Match m = self._cache.get(subject)
        cdef list psubs
        cdef dict qmap
        if m is not None:
            return m
        psubs = []
        qmap = {}
        _collect(self._root, subject.split(b"."), 0, psubs, qmap)
        m = Match(psubs, list(qmap.values()))
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[subject] = m
        return m

    cpdef object pick(self, list group):
        """Round-robin over the members of one queue group."""
        self._rr += 1
        return group[self._rr % len(group)]


cdef bint _remove_identity(list items, object sub):
    cdef Py_ssize_t i
    for i in range(len(items)):
        if items[i] is sub:
            del items[i]
            return True
    return False


cdef int _add(_Node node, list psubs, dict qmap) except -1:
    if node.psubs is not None:
        psubs.extend(node.psubs)
    if node.qsubs is None:
        return 0
    for q, members in node.qsubs.items():
        acc = qmap.get(q)
        if acc is None:
            qmap[q] = list(<list>members)
        else:
            (<list>acc).extend(<list>members)
    return 0


cdef int _collect(_Node node, list tokens, Py_ssize_t i, list psubs, dict qmap) except -1:
    cdef _Node child
    cdef Py_ssize_t n = len(tokens)
    if node.fwc is not None and i < n:
        _add(node.fwc, psubs, qmap)
    if i == n:
        _add(node, psubs, qmap)
        return 0
    child = node.children.get(tokens[i]) if node.children is not None else None
    if child is not None:
        _collect(child, tokens, i + 1, psubs, qmap)
    if node.pwc is not None:
        _collect(node.pwc, tokens, i + 1, psubs, qmap)
    return 0
