"""How the HTTP side port reads the broker: in-process mq9 commands and the services' listings.

* :func:`command` runs one ``$mq9.AI.*`` command through ``Control.dispatch`` - exactly what a
  NATS client gets (same validation, same counters, same reply) - without a network hop.
* :func:`mailbox_stats` / :func:`registry_stats` / :func:`list_mailboxes` / :func:`list_agents`
  call the services' statistics and listing methods::

      mailbox.stats() -> dict            # mailboxes, messages_by_priority{critical,urgent,normal},
                                         # messages_stored, delayed, leases, redeliveries, groups,
                                         # waiting_fetches   (mq9fast.mailbox.stats)
      mailbox.list_mailboxes(offset, limit, prefix=None) -> (total, [item...])
          item: address, ttl, create_time, expire_at, desc, next_id,
                depth{critical,urgent,normal}, groups[{name, committed, leased}]
      registry.stats() -> dict           # agents
      registry.list_agents(offset, limit, prefix=None) -> (total, [DISCOVER entry + register_time])

  ``stats()`` must be synchronous (a scrape calls it); a listing may be sync or async.  A service
  that is not running gives empty statistics and a 503 for its listing.
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
    """``MailboxService.stats()`` ({} while the mailbox engine is not running)."""
    return _stats(getattr(broker, "mailbox", None))


def registry_stats(broker: Any) -> dict[str, Any]:
    """``Registry.stats()`` ({} while the registry is not running)."""
    return _stats(getattr(broker, "registry", None))


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


def _listing_method(service: Any, name: str, what: str) -> Any:
    if service is None:
        raise Unavailable(f"the {what} is not running")
    fn = getattr(service, name, None)
    if not callable(fn):
        raise Unavailable(f"this build's {what} cannot list (needs {name})")
    return fn


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
    """``MailboxService.list_mailboxes()``, normalised."""
    fn = _listing_method(getattr(broker, "mailbox", None), "list_mailboxes", "mailbox service")
    total, items = _split_listing(await _resolve(_call_listing(fn, offset, limit, prefix)))
    items = [normalize_mailbox(i) for i in items]
    if prefix and not _accepts_prefix(fn):
        items = [i for i in items if str(i.get("address", "")).startswith(prefix)]
    return total, items


def _accepts_prefix(fn: Any) -> bool:
    try:
        return "prefix" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


_ENTRY_EXTRAS = ("agent_info", "agent_id", "score", "description", "last_report", "last_report_time",
                 "register_time")


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
    """``Registry.list_agents()``, normalised."""
    fn = _listing_method(getattr(broker, "registry", None), "list_agents", "agent registry")
    total, items = _split_listing(await _resolve(_call_listing(fn, offset, limit, prefix)))
    if prefix and not _accepts_prefix(fn):
        items = [i for i in items if str(i.get("name", "")).startswith(prefix)]
    return total, [normalize_agent(i) for i in items]
