"""What of an agent card is searchable, how it is tokenised, and the BM25 keyword index.

``card_text(body)`` walks a registered body and returns its *descriptive* strings (name,
description, a text ``payload`` or the strings of a JSON ``payload``, skill names, descriptions,
tags, examples, ...) joined as sentences, leaving out identifiers: mailbox addresses, versions,
ids, URLs, MIME types and similar (DESIGN.md §4).  The same text feeds BM25 and the embedder.

``tokens(text)`` = lower-cased alphanumeric words (CJK ideographs one per token), English
stop-words dropped, a light suffix stemmer applied so "payments"/"payment" and
"scheduling"/"schedule" meet.

``TextIndex`` is an in-memory BM25 (k1 = 1.2, b = 0.75) inverted index: a posting list per term
(Python lists for cheap appends, materialised as numpy arrays on first use after a change),
document lengths and a live mask in numpy arrays.  Removal tombstones a slot and fixes the
document frequencies at once; tombstoned slots are compacted away when they outnumber live ones.
Each term's BM25 contribution array is cached until the next upsert/remove (``gen``), so a query
costs one scatter-add per term - or, for a term in at least 1/32 of the documents, one add of a
cached dense array (``DENSE_FRACTION``).  ``search`` then pre-selects the documents scoring at
least ``PRESELECT`` (0.7) of the best score, which is exact whenever that leaves ``need`` or more
(the need-th best score is then above the threshold), and ``top_named`` selects exactly ``need``
of them with a partition, breaking ties at the cut by name without materialising every tied
document.  At 10 k benchmark cards (~2.6 k matches per 1-3 keyword query) a search costs ~40 us
instead of ~130 us.
"""
from __future__ import annotations

import heapq
import json
import math
import re
from typing import Any, Callable, Iterable, Iterator

import numpy as np

# --------------------------------------------------------------------------------------------
# Searchable text of a card
# --------------------------------------------------------------------------------------------

#: keys (compared lower-case without ``_``/``-``) whose values are identifiers, never text
IDENTIFIER_KEYS = frozenset(
    """mailbox mailaddress address addr inbox replyto url uri urls iconurl documentationurl
    homepage website href link links endpoint endpoints path version versions protocolversion
    id ids agentid skillid uuid guid key apikey token secret password email mail
    preferredtransport transport transports additionalinterfaces inputmodes outputmodes
    defaultinputmodes defaultoutputmodes mimetype mimetypes mediatype contenttype
    securityschemes security signatures signature jwks publickey created updated
    createdat updatedat timestamp time ttl""".split()
)

#: keys whose text is most descriptive, emitted first (the embedder truncates long cards)
_FIRST_KEYS = ("name", "title", "display_name", "displayName", "description", "summary",
               "payload", "agent_info", "capabilities_text")

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_VERSION = re.compile(r"^[vV]?\d+(\.\d+)+([-+][\w.]+)?$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_HEX = re.compile(r"^[0-9a-fA-F]{16,}$")
_MIME = re.compile(r"^[a-z]+/[a-z0-9.+*-]+(;.*)?$")
# dotted/colon/slash paths with three or more segments and no spaces: "org.acme.pay.inbox"
_PATHLIKE = re.compile(r"^[\w-]+(?:[.:/@#][\w-]+){2,}$")


def _norm_key(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def is_identifier(value: str) -> bool:
    """True for strings that name or address something rather than describe it."""
    v = value.strip()
    if not v:
        return True
    if " " in v:
        return bool(_URL.match(v))
    return bool(_URL.match(v) or _EMAIL.match(v) or _VERSION.match(v) or _UUID.match(v)
                or _HEX.match(v) or _MIME.match(v) or _PATHLIKE.match(v))


def _maybe_json(s: str) -> Any:
    t = s.strip()
    if len(t) >= 2 and t[0] in "{[" and t[-1] in "}]":
        try:
            return json.loads(t)
        except (ValueError, RecursionError):  # (not JSON after all, or nested too deeply)
            return None
    return None


def _walk(value: Any, out: list[str], seen: set[str], depth: int, group: bool = False) -> None:
    """Append the descriptive strings of ``value`` to ``out``; with ``group``, the strings of an
    object inside a list (a skill) go in as one, joined as sentences."""
    if depth > 32:
        return
    if isinstance(value, str):
        doc = _maybe_json(value)
        if doc is not None:
            _walk(doc, out, seen, depth + 1, group)
            return
        text = " ".join(value.split())
        if text and text not in seen and not is_identifier(text):
            seen.add(text)
            out.append(text)
        return
    if isinstance(value, dict):
        keys = [k for k in _FIRST_KEYS if k in value]
        keys += [k for k in value if k not in _FIRST_KEYS]
        for k in keys:
            if not isinstance(k, str) or _norm_key(k) in IDENTIFIER_KEYS:
                continue
            v = value[k]
            if k == "name" and isinstance(v, str):
                # an agent/skill name is descriptive even when it looks like an address
                # ("agent.translator"): keep its words, not its punctuation
                words = " ".join(re.split(r"[\W_]+", v)).strip()
                if words and words not in seen and not _URL.match(v):
                    seen.add(words)
                    out.append(words)
                continue
            _walk(v, out, seen, depth + 1, group)
        return
    if isinstance(value, list):
        for v in value:
            if group and isinstance(v, dict):
                text = _sentences(card_parts(v))
                if text and text not in seen:
                    seen.add(text)
                    out.append(text)
            else:
                _walk(v, out, seen, depth + 1, group)
    # numbers, booleans, null: not text


def card_parts(body: Any, group: bool = False) -> list[str]:
    """The descriptive strings of ``body``, most descriptive first, de-duplicated; with
    ``group``, one string per object inside a list (each skill: its name, description, tags
    and examples as sentences)."""
    out: list[str] = []
    _walk(body, out, set(), 0, group)
    return out


def _sentences(parts: list[str]) -> str:
    return ". ".join(p.rstrip(".;: ") for p in parts if p.rstrip(".;: "))


def card_text(body: Any, parts: list[str] | None = None) -> str:
    """The searchable text of a card: its descriptive strings as sentences."""
    if parts is None:
        parts = card_parts(body)
    return _sentences(parts)


MAX_PARTS = 32


def embed_texts(body: Any) -> list[str]:
    """What is embedded for a card: the whole card text first, then its parts - each skill
    (an object in a list: name, description, tags, examples as one text) and each other
    descriptive string of two or more words (at most ``MAX_PARTS``; none when there is only
    one).  A card scores ``(1 - PART_WEIGHT) * cos(query, card) + PART_WEIGHT * max cos(query,
    part)``, so a query that matches one skill of a many-skill card is not drowned by the rest
    of the card.

    One part per skill rather than one per string: on tests/data/registry_eval.json the same
    recall (R@1 0.880, MRR 0.921 -> 0.922) from 113 parts instead of 158, so the exact scan has
    fewer rows, and a card of up to ~30 skills has all of them as parts (one string each, its
    skills past the ~15th had none and the card text is cut at 256 tokens)."""
    full = card_text(body)
    # single words (tags, one-word names) are not sentences: as parts they only add noise
    parts = [p for p in card_parts(body, group=True) if len(p.split()) >= 2]
    if len(parts) <= 1:
        return [full]
    return [full] + parts[:MAX_PARTS]


#: a part with at least this share of the card text's words is "most of the card"
ALIAS_SHARE = 0.75


def embed_sources(texts: list[str]) -> list[int]:
    """For each row of ``embed_texts``: the row whose vector it gets - itself, or 0 (the card)
    for a part that is most of the card text (at least ``ALIAS_SHARE`` of its words).

    Such a part is the card minus a short name ("agent 7. <the description>" vs "<the
    description>"); its vector is nearly the card's (cosine > 0.8 on the evaluation set), so
    embedding it again would double the model time of every single-description card for no
    gain (retrieval on tests/data/registry_eval.json is identical either way)."""
    if len(texts) <= 1:
        return [0] * len(texts)
    limit = ALIAS_SHARE * len(texts[0].split())
    return [0] + [0 if len(t.split()) >= limit else i for i, t in enumerate(texts[1:], 1)]


# --------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------

STOP_WORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing done down during each either
    else etc ever every few for from further get gets got had has have having he her here hers
    herself him himself his how i if in into is it its itself just let like may me might more
    most much must my myself need needs no nor not now of off on once one only or other our
    ours ourselves out over own per please same shall she should so some such than that the
    their theirs them themselves then there these they this those through thus to too under
    until up upon us use used uses using very via want wants was we were what when where which
    while who whom whose why will with within without would yet you your yours yourself
    yourselves""".split()
)

_WORD = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]|[^\W_]+", re.UNICODE
)

_SUFFIXES = ("ational", "ations", "ation", "ators", "ator", "ings", "ing", "ions", "ion",
             "ers", "er", "ed", "ies", "es", "s", "e", "y")


def stem(word: str) -> str:
    """A deliberately light suffix stripper (only for ASCII letter words longer than 4)."""
    if len(word) <= 4 or not word.isascii() or not word.isalpha():
        return word
    if word.endswith("ss"):
        return word
    for suf in _SUFFIXES:
        if word.endswith(suf) and len(word) - len(suf) >= 4:
            word = word[: -len(suf)]
            break
    if len(word) > 4 and word[-1] == word[-2] and word[-1] not in "aeiouls":
        word = word[:-1]  # "planning" -> "plann" -> "plan"
    return word


_stem_cache: dict[str, str] = {}


def tokens(text: str) -> list[str]:
    """Lower-cased, stop-word-free, stemmed tokens of ``text``."""
    out = []
    cache = _stem_cache
    for w in _WORD.findall(text.lower()):
        if w in STOP_WORDS:
            continue
        s = cache.get(w)
        if s is None:
            s = stem(w)
            if len(cache) < 200_000:
                cache[w] = s
        out.append(s)
    return out


# --------------------------------------------------------------------------------------------
# BM25
# --------------------------------------------------------------------------------------------

K1 = 1.2
B = 0.75
#: a term whose posting list covers at least 1/DENSE_FRACTION of the slots is added as a dense
#: array (cached until the index changes, at most DENSE_CACHE_BYTES in all)
DENSE_FRACTION = 32
DENSE_CACHE_BYTES = 64 << 20
#: ``search`` first looks only at documents scoring at least this fraction of the best score
#: (exact whenever that leaves ``need`` or more; otherwise it takes every match)
PRESELECT = 0.7


def _idf(n: int, df: int) -> float:
    """BM25's idf of a term in ``df`` of ``n`` documents (> 0, also for df = 0)."""
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


class _Postings:
    __slots__ = ("slots", "tfs", "a_slots", "a_tfs")

    def __init__(self) -> None:
        self.slots: list[int] = []
        self.tfs: list[float] = []
        self.a_slots: np.ndarray | None = None
        self.a_tfs: np.ndarray | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self.a_slots is None or len(self.a_slots) != len(self.slots):
            self.a_slots = np.array(self.slots, dtype=np.int64)
            self.a_tfs = np.array(self.tfs, dtype=np.float32)
        return self.a_slots, self.a_tfs


class TextIndex:
    """BM25 over named documents; ``upsert``/``remove``/``search``."""

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.slot_of: dict[str, int] = {}
        self.names: list[str | None] = []
        self.doc_terms: list[dict[str, int] | None] = []
        self.doc_len = np.zeros(64, dtype=np.float32)
        self.alive = np.zeros(64, dtype=bool)
        self.postings: dict[str, _Postings] = {}
        self.df: dict[str, int] = {}
        self.total_len = 0
        self.n_dead = 0
        # BM25 contributions per term, valid while ``gen`` is unchanged (any upsert/remove
        # changes N, avgdl or a df, hence every contribution)
        self.gen = getattr(self, "gen", 0) + 1
        self._contrib: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._contrib_gen = self.gen
        # dense (one float per slot) copies of the contributions of frequent terms: adding a
        # dense array costs ~1 us per 10 k slots, a scatter-add ~1.5 us per 1 k postings
        self._dense: dict[str, np.ndarray] = {}
        self._dense_bytes = 0

    def __len__(self) -> int:
        return len(self.slot_of)

    def __contains__(self, name: str) -> bool:
        return name in self.slot_of

    def upsert(self, name: str, toks: Iterable[str]) -> None:
        if name in self.slot_of:
            self.remove(name)
        tf: dict[str, int] = {}
        n = 0
        for t in toks:
            tf[t] = tf.get(t, 0) + 1
            n += 1
        slot = len(self.names)
        if slot >= len(self.doc_len):
            cap = len(self.doc_len) * 2
            self.doc_len = np.resize(self.doc_len, cap)
            alive = np.zeros(cap, dtype=bool)
            alive[:slot] = self.alive[:slot]
            self.alive = alive
        self.gen += 1
        self.names.append(name)
        self.doc_terms.append(tf)
        self.doc_len[slot] = n
        self.alive[slot] = True
        self.slot_of[name] = slot
        self.total_len += n
        postings, df = self.postings, self.df
        for t, c in tf.items():
            p = postings.get(t)
            if p is None:
                p = postings[t] = _Postings()
            p.slots.append(slot)
            p.tfs.append(float(c))
            df[t] = df.get(t, 0) + 1

    def remove(self, name: str) -> bool:
        slot = self.slot_of.pop(name, None)
        if slot is None:
            return False
        tf = self.doc_terms[slot]
        self.gen += 1
        self.alive[slot] = False
        self.total_len -= int(self.doc_len[slot])
        self.doc_terms[slot] = None
        self.names[slot] = None
        df = self.df
        for t in tf or ():
            c = df[t] - 1
            if c <= 0:
                del df[t]
                del self.postings[t]
            else:
                df[t] = c
        self.n_dead += 1
        if self.n_dead > 1024 and self.n_dead > len(self.slot_of):
            self._compact()
        return True

    def _compact(self) -> None:
        live = [(self.names[s], self.doc_terms[s]) for s in self.slot_of.values()]
        self._clear()
        for name, tf in live:
            self.upsert(name, (t for t, c in tf.items() for _ in range(c)))

    def _term(self, t: str, n: int, avgdl: float) -> tuple[np.ndarray, np.ndarray] | None:
        """(slots, BM25 contribution) of term ``t``; cached until the index changes."""
        if self._contrib_gen != self.gen:
            self._contrib.clear()
            self._dense.clear()
            self._dense_bytes = 0
            self._contrib_gen = self.gen
        hit = self._contrib.get(t)
        if hit is not None:
            return hit
        p = self.postings.get(t)
        if p is None:
            return None
        idf = _idf(n, self.df[t])
        s, tf = p.arrays()
        norm = tf + K1 * (1.0 - B + B * (self.doc_len[s] / avgdl))
        contrib = (idf * (K1 + 1.0)) * tf / norm
        if len(self._contrib) >= 4096:
            self._contrib.clear()
        self._contrib[t] = hit = (s, contrib)
        return hit

    def _accumulate(self, query_tokens: Iterable[str]):
        """BM25 of the query: ``(slots, scores)`` of the live matches for a one-term query,
        ``(None, acc)`` with a dense score per slot (0 = no match or dead) otherwise, or None."""
        n = len(self.slot_of)
        if not n:
            return None
        avgdl = max(self.total_len / n, 1e-9)
        terms = []
        for t in set(query_tokens):
            hit = self._term(t, n, avgdl)
            if hit is not None:
                terms.append((t, hit))
        if not terms:
            return None
        if len(terms) == 1:
            cand, sc = terms[0][1]
            if self.n_dead:
                keep = self.alive[cand]
                cand, sc = cand[keep], sc[keep]
            return cand, sc
        size = len(self.names)
        acc = None
        sparse = []
        for t, (s, contrib) in terms:
            if len(s) * DENSE_FRACTION < size:
                sparse.append((s, contrib))
                continue
            d = self._dense.get(t)
            if d is None:
                d = self._dense_term(t, s, contrib, size)
            if acc is None:
                acc = d.copy()
            else:
                acc += d
        if acc is None:
            acc = np.zeros(size, dtype=np.float32)
        for s, contrib in sparse:
            np.add.at(acc, s, contrib)
        if self.n_dead:
            acc *= self.alive[:size]
        return None, acc

    def _dense_term(self, t: str, s: np.ndarray, contrib: np.ndarray, size: int) -> np.ndarray:
        d = np.zeros(size, dtype=np.float32)
        d[s] = contrib
        if self._dense_bytes + d.nbytes > DENSE_CACHE_BYTES:
            self._dense.clear()
            self._dense_bytes = 0
        self._dense[t] = d
        self._dense_bytes += d.nbytes
        return d

    def scores(self, query_tokens: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """(slots, scores) of every live document sharing a term with the query (unsorted)."""
        got = self._accumulate(query_tokens)
        if got is None:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        cand, sc = got
        if cand is None:
            # every BM25 contribution is > 0 (idf > 0, tf >= 1), so "matched" is "> 0"; a bool
            # mask's nonzero is several times faster than a float array's
            cand = np.flatnonzero(sc > 0)
            sc = sc[cand]
        return cand, sc

    def keyword_bonus(self, query_tokens: Iterable[str], weight: float
                      ) -> Callable[[list[str]], np.ndarray] | None:
        """For hybrid ranking: a function giving, for a list of names, ``weight`` times the
        share of the query's keyword weight that each document holds, ``min(1, BM25 / w(q))``
        (0 for a name not indexed or matching nothing); None when no document matches.

        ``w(q)`` is the sum of the idf of the query's distinct terms, known or not - the BM25
        score of an average-length document holding each term once - so a paraphrase that
        shares one common word with a card earns it a small bonus, and a query whose rare words
        a card holds earns it nearly ``weight``.  The bonus is never above ``weight``: that is
        what lets the vector search add it exactly to a few candidates (``VectorIndex.search``).
        """
        qt = set(query_tokens)
        got = self._accumulate(qt)
        if got is None:
            return None
        n = len(self.slot_of)
        norm = sum(_idf(n, self.df.get(t, 0)) for t in qt)
        cand, sc = got
        if cand is None:
            acc = sc
        else:
            acc = np.zeros(len(self.names), dtype=np.float32)
            acc[cand] = sc
        scale = weight / max(norm, 1e-9)
        slot_of = self.slot_of

        def bonus(names: list[str]) -> np.ndarray:
            # (a name indexed after this pass has a slot past ``acc``: no bonus)
            slots = np.array([slot_of.get(nm, -1) for nm in names], dtype=np.int64)
            known = (slots >= 0) & (slots < len(acc))
            out = np.where(known, acc[np.where(known, slots, 0)], 0.0) * scale
            return np.minimum(out, weight).astype(np.float32)

        return bonus

    def search(self, query_tokens: Iterable[str], need: int) -> tuple[list[tuple[str, float]], int]:
        """Top ``need`` as [(name, score)] by score desc then name; and the total."""
        got = self._accumulate(query_tokens)
        if got is None:
            return [], 0
        cand, sc = got
        if cand is None:
            acc = sc
            matched = acc > 0  # every BM25 contribution is > 0
            total = int(np.count_nonzero(matched))
            cand = None
            if 0 < need < total:
                # Pre-select with a threshold: if at least ``need`` documents score >= thr, the
                # need-th best score is >= thr, so every document of the exact top ``need``
                # (ties at the cut included) is among them.  A high fraction of the best score
                # keeps the documents matching most query terms: tens instead of thousands.
                pre = np.flatnonzero(acc >= float(acc.max()) * PRESELECT)
                if len(pre) >= need:
                    cand = pre
            if cand is None:
                cand = np.flatnonzero(matched)
            return top_named(cand, acc[cand], need, self.names), total
        total = len(cand)
        if 0 < need and 8 * need < total:
            pre = np.flatnonzero(sc >= float(sc.max()) * PRESELECT)
            if len(pre) >= need:
                cand, sc = cand[pre], sc[pre]
        return top_named(cand, sc, need, self.names), total


def top_named(slots: np.ndarray, scores: np.ndarray, need: int, names: list
              ) -> list[tuple[str, float]]:
    """Rank (slot, score) pairs: the best ``need`` by score descending then name (exactly
    ``need`` when there are that many), sorted."""
    m = len(slots)
    if m == 0 or need <= 0:
        return []
    if need < m:
        cut = np.partition(scores, m - need)[m - need]  # the need-th best score
        above = np.flatnonzero(scores > cut)
        rest = need - len(above)
        tied = np.flatnonzero(scores == cut)
        if len(tied) > rest:
            # ties at the cut: the alphabetically first names win
            tl = tied.tolist()
            tn = [names[s] for s in slots[tied].tolist()]
            chosen = set(heapq.nsmallest(rest, tn) if rest < 64 else sorted(tn)[:rest])
            tied = [i for i, nm in zip(tl, tn) if nm in chosen]
        else:
            tied = tied.tolist()
        idx = above.tolist() + tied
        sel_slots = slots[idx].tolist()
        sel_scores = scores[idx].tolist()
    else:
        sel_slots = slots.tolist()
        sel_scores = scores.tolist()
    out = [(names[s], v) for s, v in zip(sel_slots, sel_scores)]
    out.sort(key=lambda x: (-x[1], x[0]))
    return out


def iter_words(text: str) -> Iterator[str]:
    """Lower-cased words without stop-words and without stemming (for the hash embedder)."""
    for w in _WORD.findall(text.lower()):
        if w not in STOP_WORDS:
            yield w
