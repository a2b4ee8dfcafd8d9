"""Helpers shared by the ``test_mailbox_*`` modules (this module holds no tests).

Everything talks to a real broker through nats-py, like an SDK would.
"""
from __future__ import annotations

import base64
import contextlib
import inspect
import itertools
import json
import os

import pytest

from conftest import BrokerProcess

_seq = itertools.count()


def uniq(prefix: str = "mb") -> str:
    """A fresh mailbox name (unique per test run) for brokers shared by several tests."""
    return f"{prefix}.{os.getpid()}.{next(_seq)}"


async def req(nc, subject: str, data: bytes | str | dict = b"", headers: dict | None = None,
              timeout: float = 10.0) -> dict:
    if isinstance(data, dict):
        data = json.dumps(data).encode()
    elif isinstance(data, str):
        data = data.encode()
    msg = await nc.request(subject, data, timeout=timeout, headers=headers)
    return json.loads(msg.data)


async def ok(nc, subject: str, data=b"", headers=None, timeout: float = 10.0) -> dict:
    reply = await req(nc, subject, data, headers, timeout)
    assert reply.get("error") == "", reply
    return reply


async def err(nc, subject: str, data=b"", headers=None) -> str:
    reply = await req(nc, subject, data, headers)
    assert reply.get("error"), reply
    assert list(reply) == ["error"], reply  # failure replies carry only the error
    return reply["error"]


async def create(nc, name: str | None = None, ttl: int | None = 0) -> str:
    body: dict = {}
    if name is not None:
        body["name"] = name
    if ttl is not None:
        body["ttl"] = ttl
    return (await ok(nc, "$mq9.AI.MAILBOX.CREATE", body))["mail_address"]


def option_headers(priority=None, key=None, delay=None, ttl=None, tags=None, extra=None) -> dict | None:
    h = {}
    if priority is not None:
        h["mq9-priority"] = priority
    if key is not None:
        h["mq9-key"] = key
    if delay is not None:
        h["mq9-delay"] = str(delay)
    if ttl is not None:
        h["mq9-ttl"] = str(ttl)
    if tags is not None:
        h["mq9-tags"] = tags if isinstance(tags, str) else ",".join(tags)
    if extra:
        h.update(extra)
    return h or None


async def send(nc, addr: str, payload: bytes | str = b"", **opts) -> int:
    reply = await ok(nc, f"$mq9.AI.MSG.SEND.{addr}", payload, option_headers(**opts))
    return reply["msg_id"]


async def fetch(nc, addr: str, timeout: float = 15.0, **body) -> list[dict]:
    body.setdefault("config", {}).setdefault("max_wait_ms", 0)
    return (await ok(nc, f"$mq9.AI.MSG.FETCH.{addr}", body, timeout=timeout))["messages"]


async def ack(nc, addr: str, group: str, msg_id: int, mail_address: str | None = None) -> None:
    await ok(nc, f"$mq9.AI.MSG.ACK.{addr}",
             {"group_name": group, "mail_address": addr if mail_address is None else mail_address,
              "msg_id": msg_id})


async def query(nc, addr: str, **body) -> list[dict]:
    return (await ok(nc, f"$mq9.AI.MSG.QUERY.{addr}", body))["messages"]


def data(m: dict) -> bytes:
    """The payload bytes of a message object (base64 mode)."""
    return base64.b64decode(m["payload"], validate=True)


def ids(msgs: list[dict]) -> list[int]:
    return [m["msg_id"] for m in msgs]


def module_broker(tmp_path_factory, **options):
    """A broker shared by one module, with server options."""
    b = BrokerProcess(tmp_path_factory.mktemp("mbx") / "data", options)
    b.start()
    return b


@pytest.fixture
async def client(shared_broker):
    """A nats-py connection to the module's shared broker."""
    import nats

    c = await nats.connect(shared_broker.url, allow_reconnect=False)
    yield c
    await c.close()


# -- in-process engine (test_mailbox_engine / test_mailbox_stats) ---------------------------------
async def call(result):
    """A service method's reply, awaited if needed, JSON-decoded if encoded."""
    if inspect.isawaitable(result):
        result = await result
    return json.loads(result) if isinstance(result, (bytes, bytearray)) else result


@contextlib.asynccontextmanager
async def engine(path, **store_options):
    """A ``MailboxService`` on its own LMDB store under ``path`` (no broker, no network)."""
    from mq9fast.config import Config
    from mq9fast.mailbox import MailboxService
    from mq9fast.storage import Store

    store = Store(str(path), map_size=1 << 30, **store_options)
    store.start()
    svc = MailboxService(store, Config(data_dir=str(path)))
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()
        await store.drain()
        store.close()
