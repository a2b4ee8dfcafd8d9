"""``mq9fast serve`` command line: flags, nats-server spellings, env vars, TOML, signals."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import free_port
from mq9fast import __version__
from mq9fast import config as config_mod


# run from outside the source tree, so the installed (compiled) package is the one imported
OUTSIDE = tempfile.gettempdir()


def run_cli(*args, env=None, timeout=30):
    return subprocess.run([sys.executable, "-m", "mq9fast", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=OUTSIDE)


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"mq9fast {__version__}"


def test_serve_help_lists_every_option():
    r = run_cli("serve", "--help")
    assert r.returncode == 0
    for field in config_mod.FIELDS:
        assert "--" + field.replace("_", "-") in r.stdout, field
    for alias in ("-a", "-p", "-m", "--auth", "--pass", "--config"):
        assert alias in r.stdout


def test_bad_option_value_is_a_clear_error():
    r = run_cli("serve", "--fsync", "sometimes")
    assert r.returncode == 2
    assert "fsync must be one of" in r.stderr


def test_config_precedence(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('port = 1111\nserver_name = "from-toml"\nfsync = "never"\nmax-payload = 2048\n')
    env = {"MQ9FAST_PORT": "2222", "MQ9FAST_AUTH_TOKEN": "t"}
    cfg = config_mod.load(str(toml), env=env)
    assert (cfg.port, cfg.server_name, cfg.fsync, cfg.max_payload, cfg.auth_token) == \
        (2222, "from-toml", "never", 2048, "t")
    cfg = config_mod.load(str(toml), env=env, port=3333)
    assert cfg.port == 3333
    toml.write_text("nonsense = 1\n")
    with pytest.raises(ValueError, match="unknown configuration key"):
        config_mod.load(str(toml), env={})


def _wait_info(port, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(3)
                data = b""
                while not data.endswith(b"\r\n"):
                    data += s.recv(4096)
                return json.loads(data[5:])
        except OSError:
            time.sleep(0.05)
    raise AssertionError("broker did not start")


def test_env_vars_and_nats_server_spellings_then_sigterm(tmp_path):
    port = free_port()
    env = dict(os.environ, MQ9FAST_SERVER_NAME="envname", MQ9FAST_HTTP_PORT="0",
               MQ9FAST_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.Popen([sys.executable, "-m", "mq9fast", "serve", "-a", "127.0.0.1", "-p", str(port),
                             "--max_payload", "4096"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=OUTSIDE)
    try:
        info = _wait_info(port, proc)
        assert info["server_name"] == "envname"
        assert info["max_payload"] == 4096
        assert info["host"] == "127.0.0.1"
        assert (tmp_path / "data" / "data.mdb").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_sigint_exits_cleanly_and_flushes(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mq9fast", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--data-dir", str(tmp_path / "d"), "--http-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=OUTSIDE)
    _wait_info(port, proc)
    s = socket.create_connection(("127.0.0.1", port))
    s.recv(4096)
    s.sendall(b"CONNECT {}\r\nSUB x 1\r\nPING\r\n")
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0
    data = b""
    s.settimeout(3)
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    assert b"PONG" in data  # pending output went out before the close


def test_port_in_use_is_reported(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "d"),
                    "--http-port", "0")
    assert r.returncode == 1
    assert "address already in use" in r.stderr.lower() or "errno 98" in r.stderr.lower()


def test_serve_raises_its_open_files_limit(tmp_path):
    """Started with a soft RLIMIT_NOFILE of 256 (a common default), the broker still holds more
    connections than that: it raises the soft limit to the hard one, as nats-server (Go) does."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} is too low to show the difference")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # for this test's own sockets
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mq9fast", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(tmp_path / "d"), "--http-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=OUTSIDE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)))
    socks = []
    try:
        _wait_info(port, proc)
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(s)
            s.sendall(b"CONNECT {}\r\nPING\r\n")
        for s in socks:
            data = b""
            while b"PONG\r\n" not in data:
                chunk = s.recv(4096)
                assert chunk, "broker closed a connection"
                data += chunk
    finally:
        for s in socks:
            s.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
