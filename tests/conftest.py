"""Shared fixtures: real broker processes on free loopback ports, and nats-py clients.

``broker_factory(**options)`` starts ``python -m mq9fast serve`` as a subprocess with its own data
directory (options are config field names, e.g. ``fsync="never"``, ``payload_encoding="raw"``)
and returns a ``BrokerProcess``; ``broker`` is one per test, ``shared_broker`` one per module.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
                                     env=env, cwd=str(self.data_dir.parent))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.settimeout(2)
                    if s.recv(5) == b"INFO ":
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"broker did not start:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

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


@pytest.fixture
def broker_factory(tmp_path):
    started: list[BrokerProcess] = []

    def make(**options) -> BrokerProcess:
        b = BrokerProcess(tmp_path / f"data{len(started)}", options)
        started.append(b)
        return b.start()

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def broker(broker_factory) -> BrokerProcess:
    return broker_factory()


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory):
    b = BrokerProcess(tmp_path_factory.mktemp("shared") / "data", {})
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module", params=["compiled", "pure"])
def core_broker(request, tmp_path_factory):
    """A module-wide broker on the compiled hot paths, then one on their pure-Python twins."""
    env = {"MQ9FAST_PURE_PYTHON": "1"} if request.param == "pure" else {}
    b = BrokerProcess(tmp_path_factory.mktemp("core") / "data", {}, env)
    b.start()
    yield b
    b.stop()


@pytest.fixture
async def nc(broker):
    import nats

    client = await nats.connect(broker.url, allow_reconnect=False)
    yield client
    await client.close()
