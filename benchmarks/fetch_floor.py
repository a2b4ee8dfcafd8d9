"""How fast can a durable FETCH + ACK round be on this machine?  The floor against JetStream.

A ``fetch_ack`` round (``loadgen mq9fetch``) is two requests one after the other: the FETCH of 100
messages, then the ACK of the last, whose reply waits for the ACK's log record to be on the disk.
So no round can take less than

    floor = 2 x (the cheapest mq9 request's round trip) + (what the flush adds to a round)

where the cheapest request is ``ping``: a MSG.QUERY of a mailbox that does not exist (parse,
one lookup, an error reply), sent through libnats exactly as the FETCH and ACK are; and the
flush is the round with ``--fsync always`` minus the round with ``--fsync never`` (same build).
The JetStream round (``loadgen jsfetch``: fetch 100 + ``AckSync``) needs no disk at all.  If
``floor`` is not below the JetStream round, fetch_ack cannot reach 1x JetStream here however little
the FETCH and the ACK themselves cost.

Every round starts fresh brokers (alternated: mq9fast always, mq9fast never, JetStream), the
broker pinned to ``--broker-cpu`` and the generator to ``--gen-cpu`` (run.py pins 0 and 1).

    python benchmarks/fetch_floor.py                      # 3 rounds, 50 000 messages each
    python benchmarks/fetch_floor.py --broker-cpu 1 --gen-cpu 0   # broker on the other core
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab import stop, wait_port  # noqa: E402
from run import REPO, build_loadgen, find_nats_server, free_port  # noqa: E402

PING_MQ9 = ("$mq9.AI.MSG.QUERY.floor.nosuch", "{}")
PING_JS = ("$JS.API.INFO", "")


def run_round(args, loadgen: Path, kind: str) -> dict:
    """kind: always | never (mq9fast --fsync) | js; -> {"ping": µs or None, "round": µs, "rate"}"""
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="mq9floor-"))
    env = dict(os.environ)
    if kind == "js":
        argv = [args.nats_server, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(data)]
        env["GOMAXPROCS"] = "1"
    else:
        argv = [args.python, "-m", "mq9fast", "serve", "--host", "127.0.0.1", "--port", str(port),
                "--data-dir", str(data), "--log-level", "warning", "--http-port", "0",
                "--fsync", kind]
        env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(["taskset", "-c", args.broker_cpu] + argv, cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        url = f"nats://127.0.0.1:{port}"

        def gen(*cmd: str) -> dict:
            out = subprocess.run(["taskset", "-c", args.gen_cpu, str(loadgen), *cmd, "--url", url],
                                 capture_output=True, text=True, check=False)
            r = json.loads(out.stdout)
            if not r.get("ok"):
                raise SystemExit(f"{kind} {cmd[0]}: {r}")
            return r

        ping = None
        if kind != "never":
            subj, body = PING_JS if kind == "js" else PING_MQ9
            ping = gen("ping", "--subject", subj, "--body", body, "--count", str(args.pings))["p50_us"]
        if kind == "js":
            r = gen("jsfetch", "--count", str(args.count), "--batch", "100", "--stream", "FLOOR")
        else:
            r = gen("mq9fetch", "--count", str(args.count), "--batch", "100", "--mailbox", "floor.f")
        return {"ping": ping, "round": r["round_p50_us"], "rate": r["rate"]}
    finally:
        stop(proc, data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--count", type=int, default=50000, help="messages pre-filled and drained per run")
    p.add_argument("--pings", type=int, default=20000, help="requests timed by each ping")
    p.add_argument("--broker-cpu", default="0")
    p.add_argument("--gen-cpu", default="1")
    p.add_argument("--nats-server", default=None)
    p.add_argument("--python", default=sys.executable)
    args = p.parse_args()
    if not shutil.which("taskset"):
        raise SystemExit("taskset is needed (util-linux)")
    args.nats_server = find_nats_server(args.nats_server)
    loadgen = build_loadgen()
    print("round  ping mq9/js µs  round always/never/js µs  flush µs  floor µs  "
          "rate always/js  floor vs js round", flush=True)
    floors = []
    for n in range(1, args.rounds + 1):
        a, nv, js = (run_round(args, loadgen, k) for k in ("always", "never", "js"))
        flush = a["round"] - nv["round"]
        floor = 2 * a["ping"] + flush
        floors.append(js["round"] / floor)
        print(f"{n:5d}  {a['ping']:6.0f} / {js['ping']:4.0f}   {a['round']:6.0f} / {nv['round']:4.0f} / "
              f"{js['round']:4.0f}        {flush:5.0f}   {floor:6.0f}   "
              f"{a['rate'] / 1e3:6.1f}k / {js['rate'] / 1e3:5.1f}k  {js['round'] / floor:5.2f}x",
              flush=True)
    print(f"JetStream round / mq9fast floor: median {statistics.median(floors):.2f} "
          "(below 1: fetch_ack cannot reach 1x JetStream with a durable ACK on this machine)")


if __name__ == "__main__":
    main()
