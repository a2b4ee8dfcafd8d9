"""``--workers N``: a supervisor process that runs N broker workers on one port.

The supervisor resolves the configuration once and hands it to each worker through
``MQ9FAST_*`` environment variables (plus the internal ``MQ9FAST_WORKER_ID``,
``MQ9FAST_WORKER_COUNT`` and ``MQ9FAST_CLUSTER_KEY``).  Each worker is a fresh interpreter
(``python -m mq9fast serve``): it opens LMDB and onnxruntime itself, accepts on the shared port
with SO_REUSEPORT, and links to the other workers (``cluster.py``).  Only worker 0 serves the HTTP
side port and runs the once-per-broker timers (``Cluster.is_leader``).

A worker that dies is restarted (after a short, growing delay if it keeps dying).  SIGTERM or
SIGINT: every worker gets SIGTERM and drains; the supervisor exits 0 when all have exited.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time

from .config import Config

log = logging.getLogger("mq9fast.supervisor")


def worker_count(config: Config) -> int:
    if config.workers == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return int(config.workers)


def _worker_env(config: Config, worker: int, count: int, key: str) -> dict[str, str]:
    # (MQ9FAST_BOOT_ID: wal.boot_id's stand-in for the machine's boot id, which tests change)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MQ9FAST_") or k == "MQ9FAST_BOOT_ID"}
    for f in dataclasses.fields(Config):
        value = getattr(config, f.name)
        if value is not None:
            env["MQ9FAST_" + f.name.upper()] = str(value)
    env["MQ9FAST_WORKER_ID"] = str(worker)
    env["MQ9FAST_WORKER_COUNT"] = str(count)
    env["MQ9FAST_CLUSTER_KEY"] = key
    return env


class Supervisor:
    def __init__(self, config: Config, count: int) -> None:
        self.config = config
        self.count = count
        self.key = secrets.token_hex(8)
        self.procs: dict[int, subprocess.Popen] = {}
        self.failures: dict[int, list[float]] = {i: [] for i in range(count)}
        self.stopping = False
        self._reserve: socket.socket | None = None

    def _resolve_port(self) -> None:
        """Port 0: pick one now (bound, not listening, SO_REUSEPORT) so all workers share it."""
        if self.config.port != 0:
            return
        s = socket.socket(socket.AF_INET6 if ":" in self.config.host else socket.AF_INET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((self.config.host, 0))
        self._reserve = s
        self.config = dataclasses.replace(self.config, port=s.getsockname()[1])

    def _spawn(self, worker: int) -> None:
        env = _worker_env(self.config, worker, self.count, self.key)
        self.procs[worker] = subprocess.Popen([sys.executable, "-m", "mq9fast", "serve"], env=env)
        log.info("worker %d started (pid %d)", worker, self.procs[worker].pid)

    def _on_signal(self, signum, _frame) -> None:
        if not self.stopping:
            log.info("supervisor: stopping %d workers", len(self.procs))
        self.stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        self._resolve_port()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for worker in range(self.count):
            self._spawn(worker)
        log.info("mq9fast supervisor: %d workers on %s:%d", self.count, self.config.host, self.config.port)
        pending_restart: dict[int, float] = {}
        while True:
            time.sleep(0.1)
            if self.stopping:
                if all(p.poll() is not None for p in self.procs.values()):
                    break
                continue
            now = time.monotonic()
            for worker, proc in list(self.procs.items()):
                if proc.poll() is None or worker in pending_restart:
                    continue
                recent = [t for t in self.failures[worker] if now - t < 30] + [now]
                self.failures[worker] = recent
                delay = min(0.1 * 2 ** (len(recent) - 1), 5.0)
                log.warning("worker %d exited with %s; restarting in %.1fs", worker, proc.returncode, delay)
                pending_restart[worker] = now + delay
            for worker, due in list(pending_restart.items()):
                if now >= due and not self.stopping:
                    del pending_restart[worker]
                    self._spawn(worker)
        if self._reserve is not None:
            self._reserve.close()
        log.info("supervisor: all workers stopped")
        return 0
