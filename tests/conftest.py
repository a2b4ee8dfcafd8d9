"""Shared fixtures: real broker processes on free loopback ports, and nats-py clients.

``broker_factory(**options)`` starts ``python -m mq9fast serve`` as a subprocess with its own data
directory (options are config field names, e.g. ``fsync="never"``, ``payload_encoding="raw"``)
and returns a ``BrokerProcess``; ``broker`` is one per test, ``shared_broker`` one per module.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The wire-level suite runs against one worker process and against two (``--workers 2``):
# MQ9FAST_TEST_WORKERS=1 (or 2) narrows it to one of them.
WORKER_COUNTS = [int(w) for w in os.environ.get("MQ9FAST_TEST_WORKERS", "1,2").split(",")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrokerProcess:
    def __init__(self, data_dir: Path, options: dict, env: dict | None = None):
        self.data_dir = Path(data_dir)
        self.options = dict(options)
        self.env = dict(env or {})
        self.port = self.options.pop("port", None) or free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"broker-{self.port}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def args(self) -> list[str]:
        args = [sys.executable, "-m", "mq9fast", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--data-dir", str(self.data_dir)]
        opts = {"http_port": 0, "log_level": "warning"}
        opts.update(self.options)
        for key, value in opts.items():
            args += ["--" + key.replace("_", "-"), str(value)]
        return args

    def start(self, timeout: float = 30.0) -> "BrokerProcess":
        env = dict(os.environ)
        env.pop("MQ9FAST_CONFIG", None)
        env.update(self.env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args(), stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, cwd=str(self.data_dir.parent), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self._all_workers_up():
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"broker did not start:\n{self.log()}")

    def _all_workers_up(self) -> bool:
        """The port answers, and with several workers, INFO has come from each of them."""
        want = int(self.options.get("workers", 1))
        seen = set()
        for _ in range(50 if want > 1 else 1):
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.settimeout(2)
                data = b""
                while not data.endswith(b"\r\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        return False
                    data += chunk
                if not data.startswith(b"INFO "):
                    return False
                seen.add(json.loads(data[5:]).get("worker_id", 0))
            if len(seen) >= want:
                return True
        return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL to the broker and all its worker processes at once: the crash case."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the workers too
                try:
                    os.killpg(self.proc.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.02)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def restart(self, kill: bool = False) -> "BrokerProcess":
        self.kill() if kill else self.stop()
        return self.start()


@pytest.fixture(scope="session", params=WORKER_COUNTS, ids=lambda n: f"workers{n}")
def workers(request) -> int:
    """How many worker processes the brokers of this test run (see WORKER_COUNTS)."""
    return request.param


def make_factory(tmp_path, workers: int):
    """A ``make(**options)`` that starts brokers (default ``workers``) and a ``cleanup()``."""
    started: list[BrokerProcess] = []

    def make(**options) -> BrokerProcess:
        options.setdefault("workers", workers)
        b = BrokerProcess(tmp_path / f"data{len(started)}", options)
        started.append(b)
        return b.start()

    def cleanup() -> None:
        for b in started:
            b.stop()

    return make, cleanup


@pytest.fixture
def broker_factory(tmp_path, workers):
    make, cleanup = make_factory(tmp_path, workers)
    yield make
    cleanup()


@pytest.fixture
def broker(broker_factory) -> BrokerProcess:
    return broker_factory()


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory, workers):
    b = BrokerProcess(tmp_path_factory.mktemp("shared") / "data", {"workers": workers})
    b.start()
    yield b
    b.stop()


CORE_VARIANTS = [("compiled", n) for n in WORKER_COUNTS] + [("pure", 1)]


@pytest.fixture(scope="module", params=CORE_VARIANTS, ids=lambda v: f"{v[0]}-workers{v[1]}")
def core_broker(request, tmp_path_factory):
    """A module-wide broker on the compiled hot paths (one and two workers), then one on their
    pure-Python twins."""
    kind, nworkers = request.param
    env = {"MQ9FAST_PURE_PYTHON": "1"} if kind == "pure" else {}
    b = BrokerProcess(tmp_path_factory.mktemp("core") / "data", {"workers": nworkers}, env)
    b.start()
    yield b
    b.stop()


async def connect_to_worker(b, worker: int, timeout: float = 15.0):
    """Open connections until one lands on ``worker`` (SO_REUSEPORT spreads them)."""
    import nats

    spare = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            nc = await nats.connect(b.url, allow_reconnect=False)
            if nc._server_info.get("worker_id", 0) == worker:
                return nc
            spare.append(nc)
            if len(spare) > 20:
                await spare.pop(0).close()
        raise AssertionError(f"no connection landed on worker {worker}")
    finally:
        for nc in spare:
            await nc.close()


@pytest.fixture
async def nc(broker):
    import nats

    client = await nats.connect(broker.url, allow_reconnect=False)
    yield client
    await client.close()
