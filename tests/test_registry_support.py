"""Helpers shared by the ``test_registry_*`` modules (this module holds no tests): AGENT commands
through the wire with nats-py."""
from __future__ import annotations

import json

SUBJ = "$mq9.AI.AGENT."


async def req(nc, cmd: str, body) -> dict:
    """``$mq9.AI.AGENT.<cmd>`` with ``body`` (bytes as they are, anything else as JSON)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await nc.request(SUBJ + cmd, data, timeout=30)
    return json.loads(msg.data)


async def ok(nc, cmd: str, body) -> dict:
    """Like ``req``, asserting an empty ``error``."""
    reply = await req(nc, cmd, body)
    assert reply["error"] == "", reply
    return reply


async def names(nc, body) -> list[str]:
    """The names DISCOVER returns for ``body``, in rank order."""
    return [e["name"] for e in (await ok(nc, "DISCOVER", body))["agents"]]
