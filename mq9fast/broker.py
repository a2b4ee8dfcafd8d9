"""The broker process: storage, the mq9 services, the NATS server and the HTTP side port.

``Broker(config).run()`` is what ``mq9fast serve`` runs.  Start order: LMDB store -> services
(mailbox, registry) -> control layer -> NATS listener -> HTTP side port.  SIGTERM/SIGINT: stop
accepting, let in-flight group commits finish, flush pending output, close clients, close the
services and the store; exit status 0.
"""
from __future__ import annotations

import asyncio
import gc
import importlib
import json
import logging
import os
import signal
from typing import Any

from .config import Config
from .control import Control
from .server import Server
from .storage import Store

log = logging.getLogger("mq9fast")


def _service(module: str, cls: str) -> Any:
    """The service class, or None while that part of the broker is not built yet."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise
    return getattr(mod, cls, None)


class Broker:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store: Store | None = None
        self.mailbox: Any = None
        self.registry: Any = None
        self.control: Control | None = None
        self.server: Server | None = None
        self.http: Any = None
        self.cluster: Any = None
        self.worker_id = int(os.environ.get("MQ9FAST_WORKER_ID", "0"))
        self.worker_count = int(os.environ.get("MQ9FAST_WORKER_COUNT", "1"))
        self._stop = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        self.store = Store(os.path.abspath(cfg.data_dir), map_size=cfg.map_size, fsync=cfg.fsync,
                           fsync_interval_ms=cfg.fsync_interval_ms, worker=self.worker_id,
                           checkpoint_interval=cfg.checkpoint_interval)
        self.store.start(loop)
        self.server = Server(cfg)
        if self.worker_count > 1:
            from .cluster import Cluster

            self.cluster = Cluster(self.server, self.worker_id, self.worker_count,
                                   os.environ["MQ9FAST_CLUSTER_KEY"])
            self.server.attach_cluster(self.cluster)
            self.cluster.serve("varz", lambda _req: json.dumps(self.worker_varz()).encode())
            self.cluster.serve("figures", lambda _req: json.dumps(self.local_figures()).encode())
            await self.cluster.start()
        mailbox_cls = _service("mq9fast.mailbox", "MailboxService")
        registry_cls = _service("mq9fast.registry", "Registry")
        if mailbox_cls is not None:
            self.mailbox = mailbox_cls(self.store, cfg)
        if registry_cls is not None:
            self.registry = registry_cls(self.store, cfg)
        for svc in (self.mailbox, self.registry):
            if svc is not None:
                if self.cluster is not None and hasattr(svc, "attach_cluster"):
                    svc.attach_cluster(self.cluster)
                await svc.start()
        self.control = Control(self.mailbox, self.registry)
        self.server.control = self.control
        if self.cluster is not None:
            await self.cluster.wait_linked(timeout=15.0)
        await self.server.start()
        if cfg.http_port and self.worker_id == 0:
            http_cls = _service("mq9fast.http", "HttpSidePort")
            if http_cls is not None:
                self.http = http_cls(self)
                await self.http.start()
        tune_gc()

    def worker_varz(self) -> dict:
        """This process's ``/varz`` entry: ``Server.varz()`` plus, with a registry, its vector
        index state (``registry_index``: the owner's published version, a view's version)."""
        out = self.server.varz()
        info = getattr(self.registry, "index_info", None)
        if info is not None:
            out["registry_index"] = info()
        return out

    async def workers_varz(self) -> list[dict]:
        """This worker's ``worker_varz()`` and every other worker's (``--workers N``)."""
        own = self.worker_varz()
        if self.cluster is None:
            return [own]
        answers = await self.cluster.gather("varz", timeout=1.0)
        return [own] + [json.loads(answers[w]) for w in sorted(answers)]

    def local_figures(self) -> dict:
        """This process's own figures, which worker 0's ``/metrics`` adds up over the workers:
        ``Server.varz()``, the mq9 command counts and the long-poll FETCHes parked here."""
        counts = dict(self.control.counts) if self.control is not None else {}
        return {"varz": self.server.varz(),
                "commands": [[c, o, n] for (c, o), n in counts.items()],
                "waiting_fetches": int(getattr(self.mailbox, "parked", 0) or 0)}

    async def workers_figures(self) -> dict[int, dict]:
        """``local_figures()`` of every other worker that answered within a second (``--workers N``)."""
        if self.cluster is None:
            return {}
        answers = await self.cluster.gather("figures", timeout=1.0)
        return {w: json.loads(a) for w, a in answers.items()}

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        log.info("shutting down")
        if self.http is not None:
            await self.http.stop()
        if self.server is not None:
            await self.server.stop_accepting()
        if self.store is not None:
            await self.store.drain()
        if self.server is not None:
            await self.server.close_clients()
        if self.cluster is not None:
            await self.cluster.stop()
        for svc in (self.registry, self.mailbox):
            if svc is not None:
                await svc.close()
        if self.store is not None:
            await self.store.drain()
            self.store.close()

    async def run(self) -> int:
        if "MQ9FAST_WORKER_ID" in os.environ:
            _die_with_parent()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
        except BaseException:
            await self.stop()  # release what did start (LMDB, listeners, threads) before exiting
            raise
        log.info("mq9fast ready: nats://%s:%d (data in %s, fsync=%s)", self.config.host,
                 self.server.port, self.config.data_dir, self.config.fsync)
        await self._stop.wait()
        await self.stop()
        return 0


def _die_with_parent() -> None:
    """A worker gets SIGTERM when its supervisor dies, even by SIGKILL (Linux prctl)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() == 1:  # the supervisor is already gone
        os.kill(os.getpid(), signal.SIGTERM)


def tune_gc() -> None:
    """After start-up: move everything allocated so far (modules, the model, indexes) out of the
    collector's sight (``gc.freeze``) and collect the young generation less often.  The command
    paths allocate many short-lived objects that never form cycles; with
    the default threshold (700) the cyclic collector took about a tenth of the broker's CPU under
    durable SEND load (perf), and ≈ 9% less CPU per SEND was measured with these settings."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20000, 50, 100)


def run(config: Config) -> int:
    if "MQ9FAST_WORKER_ID" not in os.environ:
        from .supervisor import Supervisor, worker_count

        count = worker_count(config)
        if count > 1:
            return Supervisor(config, count).run()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(Broker(config).run())
    return uvloop.run(Broker(config).run())
