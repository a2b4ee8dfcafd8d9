"""Paired A/B of two mq9fast builds or settings on one load-generator scenario, rounds alternated.

The host's speed drifts by tens of percent over minutes, so a change is judged by alternating
A and B in the same sitting (A, B, A, B, ...), each on a fresh broker and data directory, with the
broker pinned to CPU 0 and the generator to CPU 1 (as ``run.py`` pins them).  A and B differ by
environment variables (``--a-env``/``--b-env``, e.g. ``MQ9FAST_WAL_DIRECT=0``; every ``serve``
option is also an ``MQ9FAST_*`` variable) and/or by source tree (``--a-tree``/``--b-tree``: a
checkout with its extensions built, e.g. a ``git worktree`` of the previous commit).

    python benchmarks/ab.py send --a-env MQ9FAST_WAL_DIRECT=0 --b-env MQ9FAST_WAL_DIRECT=1
    python benchmarks/ab.py fetch --a-env MQ9FAST_FSYNC=always --b-env MQ9FAST_FSYNC=never
    python benchmarks/ab.py send --a-tree /tmp/base --b-tree . --http   # HTTP side port on

Scenarios: ``send`` = ``loadgen mq9send --inflight 256`` (acknowledged SENDs/s and broker CPU
per SEND), ``fetch`` = ``loadgen mq9fetch --count 100000 --batch 100`` (drained msgs/s and the
round p50).  Prints one line per round and the min-max of each side.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import build_loadgen, free_port  # noqa: E402


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--a-env/--b-env take KEY=VALUE, not {item!r}")
        env[key] = value
    return env


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"broker exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("broker did not start")


def one_round(args, tree: Path, extra_env: dict[str, str], loadgen: Path) -> dict:
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="mq9ab-"))
    env = dict(os.environ, **extra_env)
    env["PYTHONPATH"] = str(tree)
    argv = ["taskset", "-c", "0", args.python, "-m", "mq9fast", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--data-dir", str(data), "--log-level", "warning",
            "--http-port", "0" if not args.http else str(free_port())]
    proc = subprocess.Popen(argv, cwd=tree, env=env)
    try:
        wait_port(port, proc)
        url = f"nats://127.0.0.1:{port}"
        if args.scenario == "send":
            cmd = [str(loadgen), "mq9send", "--url", url, "--inflight", str(args.inflight),
                   "--seconds", str(args.seconds), "--warmup", "1", "--engine", "raw",
                   "--mailbox", "ab.s", "--broker-pid", str(proc.pid)]
        else:
            cmd = [str(loadgen), "mq9fetch", "--url", url, "--count", str(args.count),
                   "--batch", "100", "--mailbox", "ab.f", "--broker-pid", str(proc.pid)]
        out = subprocess.run(["taskset", "-c", "1"] + cmd, capture_output=True, text=True, check=False)
        return json.loads(out.stdout)
    finally:
        stop(proc, data)


def stop(proc: subprocess.Popen, data: Path) -> None:
    """SIGTERM the broker (SIGKILL after 30 s) and remove its data directory."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(data, ignore_errors=True)


def summary(r: dict, scenario: str) -> str:
    rate = r.get("rate") or 0
    if scenario == "send":
        cpu = r.get("broker_cpu") or 0
        return f"{rate:9.0f}/s  {1e6 * cpu / max(rate, 1):5.2f} µs CPU/SEND  p50 {r.get('p50_us', 0):6.0f} µs"
    return f"{rate:9.0f}/s  round p50 {r.get('round_p50_us', 0):6.0f} µs  broker CPU {r.get('broker_cpu', 0):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=("send", "fetch"))
    p.add_argument("--a-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--a-tree", default=".", help="source tree of A (extensions built)")
    p.add_argument("--b-tree", default=".", help="source tree of B (extensions built)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0, help="send: measured window")
    p.add_argument("--inflight", type=int, default=256, help="send: requests in flight")
    p.add_argument("--count", type=int, default=100000, help="fetch: messages pre-filled and drained")
    p.add_argument("--http", action="store_true", help="run the brokers with the HTTP side port on")
    p.add_argument("--python", default=sys.executable)
    args = p.parse_args()
    if not shutil.which("taskset"):
        raise SystemExit("taskset is needed (util-linux)")
    loadgen = build_loadgen()
    sides = {"A": (Path(args.a_tree).resolve(), parse_env(args.a_env)),
             "B": (Path(args.b_tree).resolve(), parse_env(args.b_env))}
    rates: dict[str, list[float]] = {"A": [], "B": []}
    for n in range(1, args.rounds + 1):
        for side, (tree, env) in sides.items():
            r = one_round(args, tree, env, loadgen)
            if not r.get("ok", True) or r.get("errors"):
                raise SystemExit(f"round {n} {side}: {r}")
            rates[side].append(r.get("rate") or 0)
            print(f"round {n} {side}  {summary(r, args.scenario)}", flush=True)
    for side, (tree, env) in sides.items():
        label = " ".join(f"{k}={v}" for k, v in env.items()) or "-"
        print(f"{side}: {min(rates[side]):.0f}-{max(rates[side]):.0f}/s  (tree {tree}, env {label})")


if __name__ == "__main__":
    main()
