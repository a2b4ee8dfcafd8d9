"""How the HTTP side port reads the broker: in-process mq9 commands and the services' listings.

* :func:`command` runs one ``$mq9.AI.*`` command through ``Control.dispatch`` - exactly what a
  NATS client gets (same validation, same counters, same reply) - without a network hop.
* :func:`mailbox_stats` / :func:`registry_stats` / :func:`list_mailboxes` / :func:`list_agents`
  use the services' public methods when they exist::

      mailbox.stats() -> dict            # mailboxes, messages_by_priority{critical,urgent,normal},
                                         # delayed, leases, redeliveries, groups, waiting_fetches
      mailbox.list_mailboxes(offset, limit, prefix=None) -> (total, [item...])
          item: address, ttl, create_time, expire_at, desc, depth{critical,urgent,normal}, groups[...]
      registry.stats() -> dict           # agents
      registry.list_agents(offset, limit, prefix=None) -> (total, [entry...])

  (each may be sync or async).  Agents fall back to the public DISCOVER list-all.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
from typing import Any

log = logging.getLogger("mq9fast.http")


class CommandError(Exception):
    """An mq9 command answered with a non-empty ``error`` (text verbatim)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class Unavailable(Exception):
    """The broker part needed for this answer is not running/built."""


async def _resolve(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


async def command(broker: Any, subject: str, body: bytes | str | dict | None = b"",
                  headers: bytes | None = None, timeout: float = 70.0) -> dict[str, Any]:
    """Run one mq9 command in-process; returns the reply object or raises CommandError."""
    control = getattr(broker, "control", None)
    if control is None:
        raise Unavailable("the broker is not running")
    if body is None:
        data = b""
    elif isinstance(body, dict):
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = bytes(body)
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[bytes] = loop.create_future()

    def respond(reply: bytes) -> None:
        if not fut.done():
            fut.set_result(bytes(reply))

    control.dispatch(subject.encode(), headers, data, respond)
    raw = await asyncio.wait_for(fut, timeout)
    try:
        reply = json.loads(raw)
    except ValueError:
        raise CommandError(f"invalid reply: {raw[:200]!r}") from None
    if not isinstance(reply, dict):
        raise CommandError(f"invalid reply: {raw[:200]!r}")
    if reply.get("error"):
        raise CommandError(str(reply["error"]))
    return reply


def header_block(headers: dict[str, str]) -> bytes | None:
    if not headers:
        return None
    lines = ["NATS/1.0"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- statistics ------------------------------------------------------------------------------------
def _stats(service: Any) -> dict[str, Any]:
    fn = getattr(service, "stats", None)
    if not callable(fn):
        return {}
    value = fn()
    if inspect.isawaitable(value):  # stats() must be cheap and synchronous for scrapes
        if hasattr(value, "close"):
            value.close()
        return {}
    return dict(value) if isinstance(value, dict) else {}


def mailbox_stats(broker: Any) -> dict[str, Any]:
    mb = getattr(broker, "mailbox", None)
    if mb is None:
        return {}
    stats = _stats(mb)
    if not stats:
        try:
            stats = _mailbox_stats_lmdb(mb, broker.store)
        except Exception as exc:  # noqa: BLE001 - not this engine's layout
            log.debug("mailbox statistics from LMDB failed: %s", exc)
    return stats


#: the LMDB fallback counts messages by lane only up to this many stored messages (a full scan)
LANE_SCAN_CAP = 50_000
LEASE_SCAN_CAP = 100_000


def _mailbox_stats_lmdb(mb: Any, store: Any) -> dict[str, Any]:
    """Fallback until ``MailboxService.stats()`` exists, from the documented layout
    (``mq9fast.mailbox`` docstring): counts of ``mb.boxes`` (expired-but-unswept included) and
    ``mb.groups``; messages per lane by a key scan of ``mb.msgs`` when it holds at most
    LANE_SCAN_CAP entries; unexpired leases in the volatile environment."""
    import struct
    import time as _time

    out: dict[str, Any] = {}
    with store.read() as txn:
        out["mailboxes"] = int(txn.stat(mb.d_boxes)["entries"])
        out["groups"] = int(txn.stat(mb.d_groups)["entries"])
        total = int(txn.stat(mb.d_msgs)["entries"])
        out["messages_stored"] = total
        if total <= LANE_SCAN_CAP:
            lanes = [0, 0, 0]
            cur = txn.cursor(db=mb.d_msgs)
            for key in cur.iternext(keys=True, values=False):
                lane = key[8]
                if lane < 3:
                    lanes[lane] += 1
            out["messages_by_priority"] = {"critical": lanes[0], "urgent": lanes[1], "normal": lanes[2]}
    vol = getattr(mb, "vol", None)
    if vol is not None:
        now_ms = int(_time.time() * 1000)
        unpack = struct.Struct("<Q").unpack_from
        n = seen = 0
        with vol.env.begin(buffers=True) as vtxn:
            for value in vtxn.cursor(db=vol.leases).iternext(keys=False, values=True):
                seen += 1
                if unpack(value, 0)[0] > now_ms:
                    n += 1
                if seen >= LEASE_SCAN_CAP:
                    break
        out["leases"] = n
    return out


def registry_stats(broker: Any) -> dict[str, Any]:
    reg = getattr(broker, "registry", None)
    if reg is None:
        return {}
    stats = _stats(reg)
    if "agents" not in stats:
        n = _count_agents_lmdb(broker)
        if n is not None:
            stats["agents"] = n
    return stats


def _count_agents_lmdb(broker: Any) -> int | None:
    """Number of agent records, from the registry's documented LMDB layout (records.py)."""
    try:
        from ..registry import records
    except Exception:  # noqa: BLE001
        return None
    store = getattr(broker, "store", None)
    if store is None:
        return None
    try:
        db = store.db(records.DB_AGENTS)
        with store.read() as txn:
            return int(txn.stat(db)["entries"])
    except Exception:  # noqa: BLE001
        return None


# -- listings --------------------------------------------------------------------------------------
def _split_listing(value: Any) -> tuple[int | None, list[dict[str, Any]]]:
    if isinstance(value, tuple) and len(value) == 2:
        total, items = value
        return (int(total) if total is not None else None), [dict(i) for i in items]
    if isinstance(value, dict):
        items = value.get("items") or value.get("mailboxes") or value.get("agents") or []
        total = value.get("total")
        return (int(total) if total is not None else None), [dict(i) for i in items]
    return None, [dict(i) for i in (value or [])]


def _call_listing(fn: Any, offset: int, limit: int, prefix: str | None) -> Any:
    if prefix and _accepts_prefix(fn):
        return fn(offset, limit, prefix=prefix)
    return fn(offset, limit)


def normalize_mailbox(item: dict[str, Any]) -> dict[str, Any]:
    out = dict(item)
    addr = out.get("address") or out.get("mail_address") or out.get("name")
    out["address"] = addr
    depth = out.get("depth")
    if not isinstance(depth, dict):
        depth = {}
    depth = {p: int(depth.get(p, 0) or 0) for p in ("critical", "urgent", "normal")}
    out["depth"] = depth
    out.setdefault("total", sum(depth.values()))
    groups = out.get("groups")
    out["groups"] = list(groups) if isinstance(groups, (list, tuple)) else []
    return out


async def list_mailboxes(broker: Any, offset: int, limit: int, prefix: str | None = None
                         ) -> tuple[int | None, list[dict[str, Any]]]:
    mb = getattr(broker, "mailbox", None)
    if mb is None:
        raise Unavailable("the mailbox service is not running")
    fn = getattr(mb, "list_mailboxes", None)
    if not callable(fn):
        try:
            return _list_mailboxes_lmdb(broker, offset, limit, prefix)
        except Exception as exc:  # noqa: BLE001 - layout changed or not built
            log.debug("mailbox listing from LMDB failed: %s", exc)
            raise Unavailable("this build's mailbox service cannot list mailboxes "
                              "(needs MailboxService.list_mailboxes)") from None
    total, items = _split_listing(await _resolve(_call_listing(fn, offset, limit, prefix)))
    items = [normalize_mailbox(i) for i in items]
    if prefix and not _accepts_prefix(fn):
        items = [i for i in items if str(i.get("address", "")).startswith(prefix)]
    return total, items


#: the LMDB fallback counts up to this many messages per lane exactly, then estimates from the id range
DEPTH_COUNT_CAP = 1_000


def _list_mailboxes_lmdb(broker: Any, offset: int, limit: int, prefix: str | None
                         ) -> tuple[int | None, list[dict[str, Any]]]:
    """Fallback until ``MailboxService.list_mailboxes`` exists: read the mailbox engine's LMDB
    layout (``mq9fast.mailbox.layout``) in one read transaction.  Expired-but-not-yet-swept
    mailboxes are skipped; depth counts stored messages (expired ones until they are purged)."""
    import time as _time

    from ..mailbox import layout as L

    mb = broker.mailbox
    store = broker.store
    now_ms = int(_time.time() * 1000)
    items: list[dict[str, Any]] = []
    total = 0
    pfx = prefix.encode() if prefix else b""
    with store.read() as txn:
        cur = txn.cursor(db=mb.d_boxes)
        ok = cur.set_range(pfx) if pfx else cur.first()
        while ok:
            name = bytes(cur.key())
            if pfx and not name.startswith(pfx):
                break
            box = L.Box.decode(name, cur.value())
            ok = cur.next()
            if not box.live(now_ms):
                continue
            total += 1
            if total <= offset or len(items) >= limit:
                continue
            depth = {}
            estimated = False
            mcur = txn.cursor(db=mb.d_msgs)
            for lane, lane_name in zip(L.LANES, L.LANE_NAMES):
                n, exact = _lane_depth(mcur, L, box.mbid, lane)
                depth[lane_name] = n
                estimated = estimated or not exact
            groups = []
            gp = L.u64(box.mbid)
            gcur = txn.cursor(db=mb.d_groups)
            found = gcur.set_range(gp)
            while found:
                k = bytes(gcur.key())
                if not k.startswith(gp):
                    break
                gname = k[len(gp):]
                entry: dict[str, Any] = {"name": gname.decode("utf-8", "replace")}
                try:
                    gid, c, u, n_ = L.GROUP.unpack_from(gcur.value(), 0)
                    entry["committed"] = {"critical": c, "urgent": u, "normal": n_}
                    entry["leased"] = _leased(mb, gid, now_ms)
                except Exception:  # noqa: BLE001
                    pass
                groups.append(entry)
                found = gcur.next()
            items.append(normalize_mailbox({
                "address": name.decode("utf-8", "replace"),
                "ttl": box.ttl,
                "create_time": box.create_ms // 1000,
                "expire_at": box.expire_ms // 1000 if box.expire_ms else None,
                "desc": box.desc.decode("utf-8", "replace"),
                "next_id": box.next_id,
                "depth": depth,
                "depth_estimated": estimated,
                "groups": groups,
            }))
    return total, items


def _lane_depth(cur: Any, L: Any, mbid: int, lane: int) -> tuple[int, bool]:
    """Messages stored in one lane: exact up to DEPTH_COUNT_CAP, else the id span (an upper
    bound: deleted and compacted ids leave holes).  Keys are mbid(8) | lane(1) | msg_id(8)."""
    lp = L.lane_prefix(mbid, lane)
    n = 0
    found = cur.set_range(lp)
    if not found or bytes(cur.key()[:9]) != lp:
        return 0, True
    first = int.from_bytes(bytes(cur.key()[9:17]), "big")
    while found and n < DEPTH_COUNT_CAP:
        if bytes(cur.key()[:9]) != lp:
            return n, True
        n += 1
        found = cur.next()
    if not found or bytes(cur.key()[:9]) != lp:
        return n, True
    # more than the cap: find the lane's last key (just before the next lane / mailbox)
    nxt = L.lane_prefix(mbid, lane + 1) if lane < 2 else (mbid + 1).to_bytes(8, "big")
    if cur.set_range(nxt):
        cur.prev()
    else:
        cur.last()
    last = int.from_bytes(bytes(cur.key()[9:17]), "big")
    return max(n, last - first + 1), False


def _leased(mb: Any, gid: int, now_ms: int) -> int:
    """Unexpired leases of one group (volatile environment, key gid | msg_id)."""
    vol = getattr(mb, "vol", None)
    if vol is None:
        return 0
    prefix = gid.to_bytes(8, "big")
    n = 0
    with vol.env.begin(buffers=True) as vtxn:
        cur = vtxn.cursor(db=vol.leases)
        found = cur.set_range(prefix)
        while found and bytes(cur.key()[:8]) == prefix and n < LEASE_SCAN_CAP:
            if int.from_bytes(bytes(cur.value()[:8]), "little") > now_ms:
                n += 1
            found = cur.next()
    return n


def _accepts_prefix(fn: Any) -> bool:
    try:
        return "prefix" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


_ENTRY_EXTRAS = ("agent_info", "agent_id", "score", "description", "last_report", "last_report_time")


def normalize_agent(entry: dict[str, Any]) -> dict[str, Any]:
    """A DISCOVER entry (card + registry keys) -> {name, mailbox, card, agent_info, last_report, ...}."""
    if "card" in entry and isinstance(entry["card"], dict):
        card = dict(entry["card"])
    else:
        card = {k: v for k, v in entry.items() if k not in _ENTRY_EXTRAS}
    desc = entry.get("description")
    if not isinstance(desc, str) or not desc:
        d = card.get("description") if isinstance(card.get("description"), str) else card.get("payload")
        desc = d if isinstance(d, str) else ""
    return {
        "name": entry.get("name") or card.get("name") or card.get("mailbox"),
        "mailbox": entry.get("mailbox") or card.get("mailbox"),
        "description": desc,
        "agent_info": entry.get("agent_info"),
        "card": card,
        "last_report": entry.get("last_report"),
        "last_report_time": entry.get("last_report_time"),
        "create_time": entry.get("create_time") or entry.get("register_time"),
    }


async def list_agents(broker: Any, offset: int, limit: int, prefix: str | None = None
                      ) -> tuple[int | None, list[dict[str, Any]]]:
    reg = getattr(broker, "registry", None)
    if reg is None:
        raise Unavailable("the agent registry is not running")
    fn = getattr(reg, "list_agents", None)
    if callable(fn):
        total, items = _split_listing(await _resolve(_call_listing(fn, offset, limit, prefix)))
        if prefix and not _accepts_prefix(fn):
            items = [i for i in items if str(i.get("name", "")).startswith(prefix)]
        return total, [normalize_agent(i) for i in items]
    # Fallback: the public DISCOVER list-all (sorted by name, paginated).
    total = registry_stats(broker).get("agents")
    if limit == 0:
        return total, []
    if offset % limit == 0:
        reply = await command(broker, "$mq9.AI.AGENT.DISCOVER", {"limit": limit, "page": offset // limit + 1})
        agents = reply.get("agents") or []
    else:
        reply = await command(broker, "$mq9.AI.AGENT.DISCOVER", {"limit": offset + limit, "page": 1})
        agents = (reply.get("agents") or [])[offset:]
    items = [normalize_agent(a) for a in agents if isinstance(a, dict)]
    if prefix:
        items = [i for i in items if str(i.get("name") or "").startswith(prefix)]
    return total, items
