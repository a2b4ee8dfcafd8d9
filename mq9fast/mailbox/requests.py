"""Parsing and validation of mailbox requests: JSON bodies, SEND headers, names, ids.

Everything here is pure and raises ``Mq9Error`` with the PROTOCOL.md §11 texts; nothing is written
before a request has passed these checks.
"""
from __future__ import annotations

import re

from .. import jsonbody
from ..control import Mq9Error
from .layout import LANE_BY_NAME, NORMAL, SAFE_MAX, U32_MAX, U64_MAX

CREATE_ERR = "invalid MAILBOX.CREATE payload: "
FETCH_ERR = "invalid MSG.FETCH payload: "
ACK_ERR = "invalid MSG.ACK payload: "
QUERY_ERR = "invalid query request: "

DELIVER_POLICIES = ("earliest", "latest", "from_time", "from_id")
ENCODINGS = ("raw", "base64")

DEFAULT_NUM_MSGS = 100
MAX_NUM_MSGS = 10000
DEFAULT_MAX_WAIT_MS = 500
QUERY_LIMIT = 100

_NAME_CHARS = re.compile(r"[a-z0-9.]*\Z")
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


# -- JSON bodies -----------------------------------------------------------------------------------
def parse_object(payload, prefix: str) -> dict:
    """The body as a JSON object; an empty body is ``{}``."""
    if not payload:
        return {}
    try:
        obj = jsonbody.loads(bytes(payload))
    except ValueError as exc:  # (UnicodeDecodeError is one)
        raise Mq9Error(prefix + str(exc)) from None
    if not isinstance(obj, dict):
        raise Mq9Error(prefix + f"expected a JSON object, got {_type_name(obj)}")
    return obj


def _type_name(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a floating point number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


def opt_uint(obj: dict, name: str, prefix: str, maximum: int = U64_MAX) -> int | None:
    """Optional unsigned integer field (null = absent); rejects bools, floats, strings, negatives."""
    v = obj.get(name)
    if v is None:
        return None
    if type(v) is not int:
        raise Mq9Error(prefix + f"invalid type for `{name}`: {_type_name(v)}, expected an unsigned integer")
    if v < 0 or v > maximum:
        raise Mq9Error(prefix + f"invalid value for `{name}`: {v} is out of range")
    return v


def req_uint(obj: dict, name: str, prefix: str) -> int:
    v = opt_uint(obj, name, prefix)
    if v is None:
        raise Mq9Error(prefix + f"missing field `{name}`")
    return v


def opt_str(obj: dict, name: str, prefix: str) -> str | None:
    v = obj.get(name)
    if v is None or isinstance(v, str):
        return v
    raise Mq9Error(prefix + f"invalid type for `{name}`: {_type_name(v)}, expected a string")


def opt_bool(obj: dict, name: str, prefix: str) -> bool | None:
    v = obj.get(name)
    if v is None or isinstance(v, bool):
        return v
    raise Mq9Error(prefix + f"invalid type for `{name}`: {_type_name(v)}, expected a boolean")


def opt_encoding(obj: dict, prefix: str) -> str | None:
    v = opt_str(obj, "payload_encoding", prefix)
    if v is not None and v not in ENCODINGS:
        raise Mq9Error(prefix + f"unknown payload_encoding `{v}`, expected `raw` or `base64`")
    return v


# -- names -----------------------------------------------------------------------------------------
def check_name(name: str) -> None:
    """PROTOCOL.md §3.1, in order, with the exact texts."""
    if not name:
        raise Mq9Error("prefix must not be empty")
    if not _NAME_CHARS.match(name):
        raise Mq9Error("name may only contain lowercase letters, digits, and dots")
    if name[0] not in _ALNUM or name[-1] not in _ALNUM:
        raise Mq9Error("prefix must start and end with a lowercase letter or digit")
    if ".." in name:
        raise Mq9Error("name must not contain consecutive dots")
    if len(name) > 128:
        raise Mq9Error("name must be at most 128 characters")


class CreateRequest:
    __slots__ = ("name", "ttl", "desc")

    def __init__(self, payload) -> None:
        obj = parse_object(payload, CREATE_ERR)
        name = opt_str(obj, "name", CREATE_ERR)
        if name is not None:
            check_name(name)
        self.name = name
        self.ttl = opt_uint(obj, "ttl", CREATE_ERR)
        self.desc = opt_str(obj, "desc", CREATE_ERR) or ""


class FetchRequest:
    __slots__ = ("group", "deliver", "from_time", "from_id", "force", "num_msgs", "max_wait_ms",
                 "ack_wait_ms", "encoding")

    def __init__(self, payload, max_wait_cap_ms: int) -> None:
        obj = parse_object(payload, FETCH_ERR)
        self.group = opt_str(obj, "group_name", FETCH_ERR)
        deliver = opt_str(obj, "deliver", FETCH_ERR)
        if deliver is None:
            deliver = "latest"
        elif deliver not in DELIVER_POLICIES:
            raise Mq9Error(FETCH_ERR + f"unknown variant `{deliver}`, expected one of "
                           "`earliest`, `latest`, `from_time`, `from_id`")
        self.deliver = deliver
        self.from_time = opt_uint(obj, "from_time", FETCH_ERR) or 0
        self.from_id = opt_uint(obj, "from_id", FETCH_ERR) or 0
        self.force = bool(opt_bool(obj, "force_deliver", FETCH_ERR))
        self.encoding = opt_encoding(obj, FETCH_ERR)
        cfg = obj.get("config")
        if cfg is None:
            cfg = {}
        elif not isinstance(cfg, dict):
            raise Mq9Error(FETCH_ERR + f"invalid type for `config`: {_type_name(cfg)}, expected an object")
        n = opt_uint(cfg, "num_msgs", FETCH_ERR, U32_MAX)
        self.num_msgs = DEFAULT_NUM_MSGS if n is None else min(n, MAX_NUM_MSGS)
        w = opt_uint(cfg, "max_wait_ms", FETCH_ERR)
        self.max_wait_ms = min(DEFAULT_MAX_WAIT_MS if w is None else w, max_wait_cap_ms)
        a = opt_uint(cfg, "ack_wait_ms", FETCH_ERR)
        self.ack_wait_ms = a or None  # 0 / absent: the server's ack_wait


class AckRequest:
    __slots__ = ("group", "mail_address", "msg_id")

    def __init__(self, payload) -> None:
        obj = parse_object(payload, ACK_ERR)
        group = opt_str(obj, "group_name", ACK_ERR)
        if group is None:
            raise Mq9Error(ACK_ERR + "missing field `group_name`")
        self.group = group
        self.mail_address = opt_str(obj, "mail_address", ACK_ERR) or ""
        self.msg_id = req_uint(obj, "msg_id", ACK_ERR)


class QueryRequest:
    __slots__ = ("key", "tags", "since", "limit", "encoding")

    def __init__(self, payload) -> None:
        obj = parse_object(payload, QUERY_ERR)
        self.key = opt_str(obj, "key", QUERY_ERR)
        tags = obj.get("tags")
        if tags is not None:
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise Mq9Error(QUERY_ERR + "invalid type for `tags`: expected an array of strings")
        self.tags = tags
        self.since = opt_uint(obj, "since", QUERY_ERR)
        limit = opt_uint(obj, "limit", QUERY_ERR)
        self.limit = QUERY_LIMIT if limit is None else min(limit, QUERY_LIMIT)
        self.encoding = opt_encoding(obj, QUERY_ERR)


def parse_msg_id_token(token: str) -> int:
    if not token or not token.isascii() or not token.isdigit() or int(token) > U64_MAX:
        raise Mq9Error(f"invalid msg_id: {token}")
    return int(token)


# -- SEND headers ----------------------------------------------------------------------------------
def header_pairs(block) -> list[tuple[str, str]] | None:
    """``[(name, value), ...]`` of a NATS header block (status line skipped), None if not UTF-8."""
    try:
        text = bytes(block).decode("utf-8")
    except UnicodeDecodeError:
        return None
    out = []
    lines = text.split("\n")
    for line in lines[1:]:
        line = line.rstrip("\r")
        if not line:
            break
        i = line.find(":")
        if i < 0:
            continue
        out.append((line[:i].strip(" \t"), line[i + 1:].strip(" \t")))
    return out


def _u64_header(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        return None
    v = int(text)
    return v if v <= U64_MAX else None


class SendOptions:
    """The mq9-* options of a SEND (PROTOCOL.md §4.1)."""
    __slots__ = ("lane", "key", "delay", "ttl", "tags")

    def __init__(self, headers) -> None:
        self.lane = NORMAL
        self.key: str | None = None
        self.delay = 0
        self.ttl = 0
        self.tags: list[str] = []
        if not headers:
            return
        pairs = header_pairs(headers)
        if not pairs:
            return
        opts: dict[str, str] = {}
        for name, value in pairs:
            lname = name.lower()
            if lname.startswith("mq9-"):
                opts[lname] = value  # the last occurrence wins
        if not opts:
            return
        prio = opts.get("mq9-priority")
        if prio is not None:
            self.lane = LANE_BY_NAME.get(prio.strip().lower(), NORMAL)
        key = opts.get("mq9-key")
        if key is not None and key.strip():
            self.key = key.strip()
        self.delay = min(_u64_header(opts.get("mq9-delay")) or 0, SAFE_MAX // 1000)
        self.ttl = min(_u64_header(opts.get("mq9-ttl")) or 0, SAFE_MAX // 1000)
        tags = opts.get("mq9-tags")
        if tags:
            seen: list[str] = []
            for t in tags.split(","):
                t = t.strip()
                if t and t not in seen:
                    seen.append(t)
            self.tags = seen
