"""Prometheus metrics for ``/metrics`` (prometheus_client, names prefixed ``mq9fast_``, base units).

Two sources:

* ``BrokerCollector`` reads live broker state at scrape time: connections, traffic counters,
  mq9 command counts (``Control.counts``), group-commit statistics (``Store``), mailbox and
  registry statistics (``MailboxService.stats()`` / ``Registry.stats()``);
* histograms fed by hooks: command latency (``mq9fast_command_duration_seconds``, labelled by
  command, so SEND and FETCH each have theirs) and, when the store reports each batch, the
  group-commit batch size (``mq9fast_fsync_batch_size``).

``--workers N``: the side port runs in worker 0.  Before each scrape ``Metrics.refresh()`` asks
the other workers for their own figures (``Broker.workers_figures()``, the cluster's
serve/gather), and connections, messages/bytes in/out, slow consumers, command counts and parked
long-polls are reported as **sums over all workers** under the same names (a worker that does
not answer within a second counts with its last answer).  ``mq9fast_worker_connections{worker}``
shows the split and ``mq9fast_workers_answering`` how many workers the figures cover.  The
mailbox and registry figures come from the shared LMDB and are broker-wide anyway.  Not summed:
``mq9fast_subscriptions`` (worker 0's router) and the two histograms (worker 0's requests and
commits).

A failure while reading one source is logged once and skipped; a scrape never fails and never
touches the broker's state.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily, Metric,
)
from prometheus_client.utils import floatToGoString
from prometheus_client.registry import Collector

from .. import __version__
from . import services

log = logging.getLogger("mq9fast.http")

#: commands the latency histogram knows (anything else is counted as "unknown")
COMMANDS = ("MAILBOX.CREATE", "MSG.SEND", "MSG.FETCH", "MSG.ACK", "MSG.QUERY", "MSG.DELETE",
            "AGENT.REGISTER", "AGENT.UNREGISTER", "AGENT.REPORT", "AGENT.DISCOVER")

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


def command_name(subject: bytes | str) -> str:
    """``$mq9.AI.MSG.SEND.a.b`` -> ``MSG.SEND`` (one of COMMANDS, else ``unknown``)."""
    if isinstance(subject, (bytes, bytearray, memoryview)):
        subject = bytes(subject[:40]).decode("ascii", "replace")
    parts = subject.split(".", 4)
    if len(parts) >= 4:
        name = parts[2] + "." + parts[3]
        if name in COMMANDS:
            return name
    return "unknown"


def client_counters(client: Any) -> tuple[int, int, int, int]:
    """(msgs_in, msgs_out, bytes_in, bytes_out) of one connection, wherever the core keeps them
    (on the ``Client`` or on its compiled ``core`` object)."""
    core = getattr(client, "core", None)
    out = []
    for name in ("msgs_in", "msgs_out", "bytes_in", "bytes_out"):
        value = getattr(client, name, None)
        if value is None and core is not None:
            value = getattr(core, name, None)
        out.append(int(value or 0))
    return out[0], out[1], out[2], out[3]


class TrafficTotals:
    """Monotonic message/byte totals although ``Server.varz()`` only sums live connections.

    Uses ``server.closed_totals`` (msgs_in, msgs_out, bytes_in, bytes_out of connections that are
    gone) when the core offers it; otherwise remembers each connection's last-seen counters and
    keeps them when the connection disappears (traffic after the last scrape is then lost).
    """

    def __init__(self) -> None:
        self._last: dict[int, tuple[int, int, int, int]] = {}
        self._retired = [0, 0, 0, 0]

    def read(self, server: Any) -> tuple[int, int, int, int]:
        clients = dict(getattr(server, "clients", {}) or {})
        live = [0, 0, 0, 0]
        seen: dict[int, tuple[int, int, int, int]] = {}
        for cid, c in clients.items():
            row = client_counters(c)
            seen[cid] = row
            for i in range(4):
                live[i] += row[i]
        closed = getattr(server, "closed_totals", None)
        if closed is not None:
            base = [int(x) for x in (closed() if callable(closed) else closed)][:4]
        else:
            for cid, row in self._last.items():
                if cid not in seen:
                    for i in range(4):
                        self._retired[i] += row[i]
            base = self._retired
        self._last = seen
        return tuple(base[i] + live[i] for i in range(4))  # type: ignore[return-value]


class WorkerFigures:
    """The other workers' last answers to ``Broker.workers_figures()`` (``--workers N``)."""

    def __init__(self) -> None:
        self.last: dict[int, dict[str, Any]] = {}   # worker id -> its latest local_figures()
        self.answered = 0                           # workers that answered the latest refresh

    def update(self, answers: dict[int, dict[str, Any]]) -> None:
        self.answered = len(answers)
        self.last.update(answers)

    def varz_sum(self, key: str) -> int:
        return sum(int((f.get("varz") or {}).get(key, 0) or 0) for f in self.last.values())

    def commands(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for f in self.last.values():
            for command, outcome, n in f.get("commands") or ():
                out[(command, outcome)] = out.get((command, outcome), 0) + int(n)
        return out

    def waiting_fetches(self) -> int:
        return sum(int(f.get("waiting_fetches", 0) or 0) for f in self.last.values())


class BrokerCollector(Collector):
    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.traffic = TrafficTotals()
        self.workers = WorkerFigures()
        self._warned: set[str] = set()

    async def refresh(self) -> None:
        """Fetch the other workers' figures (no-op with one worker); never raises."""
        broker = self.broker
        if getattr(broker, "cluster", None) is None or not hasattr(broker, "workers_figures"):
            return
        try:
            self.workers.update(await broker.workers_figures())
        except Exception:  # noqa: BLE001 - a scrape must not fail
            if "workers" not in self._warned:
                self._warned.add("workers")
                log.exception("metrics: gathering the other workers' figures failed (reported once)")

    # -- totals over workers (worker 0's own figures plus the others' last answers) -------------
    def totals(self) -> dict[str, Any]:
        """Connections, traffic and slow consumers of the whole broker (see the module doc)."""
        server = self.broker.server
        w = self.workers
        m_in, m_out, b_in, b_out = self.traffic.read(server)
        return {
            "connections": len(getattr(server, "clients", {}) or {}) + w.varz_sum("connections"),
            "in_msgs": m_in + w.varz_sum("in_msgs"),
            "out_msgs": m_out + w.varz_sum("out_msgs"),
            "in_bytes": b_in + w.varz_sum("in_bytes"),
            "out_bytes": b_out + w.varz_sum("out_bytes"),
            "slow_consumers": int(getattr(server, "slow_consumers", 0)) + w.varz_sum("slow_consumers"),
        }

    def command_counts(self) -> dict[tuple[str, str], int]:
        counts = dict(self.broker.control.counts)
        for key, n in self.workers.commands().items():
            counts[key] = counts.get(key, 0) + n
        return counts

    def mailbox_stats(self) -> dict[str, Any]:
        stats = services.mailbox_stats(self.broker)
        if "waiting_fetches" in stats:
            stats["waiting_fetches"] = int(stats["waiting_fetches"]) + self.workers.waiting_fetches()
        return stats

    def _guard(self, what: str, fn: Callable[[], Iterable[Metric]]) -> list[Metric]:
        try:
            return list(fn())
        except Exception:  # noqa: BLE001 - a scrape must not fail
            if what not in self._warned:
                self._warned.add(what)
                log.exception("metrics: reading %s failed (reported once)", what)
            return []

    def collect(self) -> Iterable[Metric]:
        b = self.broker
        yield from self._guard("info", self._info)
        if b.server is not None:
            yield from self._guard("server", self._server)
        if b.control is not None:
            yield from self._guard("control", self._control)
        if b.store is not None:
            yield from self._guard("store", self._store)
        yield from self._guard("mailbox", self._mailbox)
        yield from self._guard("registry", self._registry)

    # -- sections -------------------------------------------------------------------------------
    def _info(self) -> Iterable[Metric]:
        cfg = self.broker.config
        info = InfoMetricFamily("mq9fast_build", "mq9fast version and the settings that matter for speed")
        info.add_metric([], {"version": __version__, "fsync": str(cfg.fsync),
                             "payload_encoding": str(cfg.payload_encoding), "workers": str(cfg.workers)})
        yield info
        server = self.broker.server
        started = getattr(server, "started", None) if server is not None else None
        if started:
            yield GaugeMetricFamily("mq9fast_start_time_seconds", "when the broker started (unix time)",
                                    value=float(started))
            yield GaugeMetricFamily("mq9fast_uptime_seconds", "seconds since the broker started",
                                    value=max(0.0, time.time() - float(started)))

    def _server(self) -> Iterable[Metric]:
        server = self.broker.server
        t = self.totals()
        yield GaugeMetricFamily("mq9fast_connections", "open client connections (all workers)",
                                value=t["connections"])
        if getattr(self.broker, "cluster", None) is not None:
            fam = GaugeMetricFamily("mq9fast_worker_connections", "open client connections, by worker "
                                    "(the other workers' latest answers)", labels=["worker"])
            fam.add_metric([str(getattr(server, "worker_id", 0))], len(getattr(server, "clients", {}) or {}))
            for wid, f in sorted(self.workers.last.items()):
                fam.add_metric([str(wid)], int((f.get("varz") or {}).get("connections", 0) or 0))
            yield fam
            yield GaugeMetricFamily("mq9fast_workers_answering", "workers whose figures the latest scrape "
                                    "covers (this one included)", value=1 + self.workers.answered)
        router = getattr(server, "router", None)
        if router is not None and hasattr(router, "count"):
            yield GaugeMetricFamily("mq9fast_subscriptions", "active subscriptions in the router of the "
                                    "worker serving this page", value=int(router.count))
        yield CounterMetricFamily("mq9fast_messages_in", "messages received from clients (PUB/HPUB)",
                                  value=t["in_msgs"])
        yield CounterMetricFamily("mq9fast_messages_out", "messages delivered to clients (MSG/HMSG)",
                                  value=t["out_msgs"])
        yield CounterMetricFamily("mq9fast_bytes_in", "payload bytes received from clients", value=t["in_bytes"])
        yield CounterMetricFamily("mq9fast_bytes_out", "payload bytes delivered to clients", value=t["out_bytes"])
        yield CounterMetricFamily("mq9fast_slow_consumers", "connections closed as slow consumers",
                                  value=t["slow_consumers"])

    def _control(self) -> Iterable[Metric]:
        fam = CounterMetricFamily("mq9fast_commands", "mq9 commands handled, by command and outcome",
                                  labels=["command", "outcome"])
        for (command, outcome), n in sorted(self.command_counts().items()):
            fam.add_metric([command, outcome], n)
        yield fam

    def _store(self) -> Iterable[Metric]:
        st = self.broker.store
        yield CounterMetricFamily("mq9fast_fsync_batches", "group-commit transactions (one fsync each under "
                                  "fsync=always)", value=int(st.batches))
        yield CounterMetricFamily("mq9fast_fsync_batched_writes", "write requests committed in those batches",
                                  value=int(st.batched_writes))
        yield GaugeMetricFamily("mq9fast_fsync_last_batch_size", "write requests in the last group commit",
                                value=int(st.last_batch_size))
        yield GaugeMetricFamily("mq9fast_fsync_max_batch_size", "largest group commit so far",
                                value=int(st.max_batch_size))
        yield GaugeMetricFamily("mq9fast_storage_room_bytes", "what the store can still hold (LMDB's "
                                "map and the disk, free pages included), at the last check",
                                value=int(st.room))
        yield GaugeMetricFamily("mq9fast_storage_full", "1 while SEND/CREATE/REGISTER are refused for "
                                "lack of room (less than the reserve left)", value=int(st.full))
        w = getattr(st, "wal", None)
        if w is not None:
            yield CounterMetricFamily("mq9fast_wal_records", "write-ahead log records (one fdatasync each)",
                                      value=int(w.appends))
            yield CounterMetricFamily("mq9fast_wal_bytes", "write-ahead log bytes written", value=int(w.bytes))
            yield CounterMetricFamily("mq9fast_wal_sync_seconds", "time in log write + fdatasync",
                                      value=float(w.seconds))
        ck = getattr(st, "checkpointer", None)
        if ck is not None:
            yield CounterMetricFamily("mq9fast_checkpoints", "LMDB checkpoints taken by this process",
                                      value=int(ck.taken))
            yield GaugeMetricFamily("mq9fast_checkpoint_last_seconds", "duration of the last checkpoint",
                                    value=float(ck.last_seconds))
            yield GaugeMetricFamily("mq9fast_checkpoint_locked_seconds",
                                    "part of the last checkpoint that held LMDB's writer lock (writes wait)",
                                    value=float(ck.locked_seconds))
            yield GaugeMetricFamily("mq9fast_checkpoint_txn", "LMDB transaction of the last checkpoint",
                                    value=int(ck.txnid))

    def _mailbox(self) -> Iterable[Metric]:
        stats = self.mailbox_stats()
        if not stats:
            return
        if "mailboxes" in stats:
            yield GaugeMetricFamily("mq9fast_mailboxes", "live mailboxes", value=stats["mailboxes"])
        by_prio = stats.get("messages_by_priority")
        if isinstance(by_prio, dict):
            fam = GaugeMetricFamily("mq9fast_stored_messages", "stored messages, by priority lane (one whose "
                                    "TTL passed counts until the sweeper removes it)", labels=["priority"])
            for prio in ("critical", "urgent", "normal"):
                fam.add_metric([prio], float(by_prio.get(prio, 0)))
            yield fam
        if "delayed" in stats:
            yield GaugeMetricFamily("mq9fast_delayed_messages", "delayed messages not yet visible",
                                    value=stats["delayed"])
        if "leases" in stats:
            yield GaugeMetricFamily("mq9fast_leases_outstanding", "messages leased to a consumer group: not "
                                    "acknowledged, lease not expired", value=stats["leases"])
        if "redeliveries" in stats:
            yield CounterMetricFamily("mq9fast_redeliveries", "messages a group FETCH handed out again after "
                                      "their lease expired (all workers, since the broker started)",
                                      value=stats["redeliveries"])
        if "groups" in stats:
            yield GaugeMetricFamily("mq9fast_consumer_groups", "consumer groups", value=stats["groups"])
        if "waiting_fetches" in stats:
            yield GaugeMetricFamily("mq9fast_waiting_fetches", "long-polling FETCH requests parked now "
                                    "(all workers)", value=stats["waiting_fetches"])

    def _registry(self) -> Iterable[Metric]:
        stats = services.registry_stats(self.broker)
        if "agents" in stats:
            yield GaugeMetricFamily("mq9fast_agents", "registered agents", value=stats["agents"])


class CommandLatency(Collector):
    """``mq9fast_command_duration_seconds``: a histogram by command, fed once per mq9 command.

    prometheus_client's ``Histogram.observe`` takes a lock and costs ≈ 1.3 µs; with the closure
    around it, the side port cost ≈ 3 µs per SEND (SEND at 256 in flight 109-116 k/s with the HTTP
    port vs 160-195 k/s without).  Commands are observed on the event-loop thread only, so plain
    lists suffice: one ``bisect`` and two additions per command; the cumulative buckets are made
    at scrape time."""

    NAME = "mq9fast_command_duration_seconds"
    DOC = ("mq9 command latency from dispatch to reply (FETCH includes its long-poll wait), by "
           "command")

    def __init__(self, buckets: tuple = LATENCY_BUCKETS) -> None:
        self.bounds = list(buckets)
        self.by_command: dict[str, list] = {c: self._new() for c in COMMANDS + ("unknown",)}

    def _new(self) -> list:
        return [[0] * (len(self.bounds) + 1), 0.0]   # per-bucket counts (last: +Inf), sum

    def observe_command(self, command: str, outcome: str, seconds: float) -> None:
        """One command's latency (``Control.observers`` calls the object itself: ``__call__``)."""
        h = self.by_command.get(command)
        if h is None:
            h = self.by_command["unknown"]
        h[0][bisect_left(self.bounds, seconds)] += 1
        h[1] += seconds

    __call__ = observe_command

    def many(self, command: str, outcome: str, seconds: list) -> None:
        """The latencies of many commands at once (the bulk SEND path: one call per commit)."""
        h = self.by_command.get(command)
        if h is None:
            h = self.by_command["unknown"]
        counts, bounds = h[0], self.bounds
        for s in seconds:
            counts[bisect_left(bounds, s)] += 1
        h[1] += sum(seconds)

    def collect(self) -> Iterable[Metric]:
        fam = HistogramMetricFamily(self.NAME, self.DOC, labels=["command"])
        for command, (counts, total) in self.by_command.items():
            cum, buckets = 0, []
            for bound, n in zip(self.bounds + [float("inf")], counts):
                cum += n
                buckets.append((floatToGoString(bound), cum))
            fam.add_metric([command], buckets, total)
        yield fam


class Metrics:
    """The per-broker prometheus registry plus the hooks that feed its histograms."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = BrokerCollector(broker)
        self.registry.register(self.collector)
        self.latency = CommandLatency()
        self.registry.register(self.latency)
        #: the hook for ``Control.observers`` (callable per command, ``many`` per batch)
        self.observe_command = self.latency
        self.batch_size = Histogram("mq9fast_fsync_batch_size", "write requests per group commit (fsync)",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.wal_sync = Histogram("mq9fast_wal_sync_duration_seconds",
                                  "write + fdatasync of one write-ahead log record (--fsync always)",
                                  buckets=LATENCY_BUCKETS, registry=self.registry)
        self._uninstall: list[Callable[[], None]] = []

    async def refresh(self) -> None:
        """Before a scrape: the other workers' figures (``--workers N``)."""
        await self.collector.refresh()

    # -- hooks ----------------------------------------------------------------------------------
    def observe_batch(self, size: int, *_: Any) -> None:
        self.batch_size.observe(size)

    def install(self) -> None:
        """Attach to the core's hooks; falls back to wrapping ``Control.dispatch`` on the instance."""
        control = self.broker.control
        if control is not None:
            observers = getattr(control, "observers", None)
            if isinstance(observers, list):
                observers.append(self.observe_command)
                self._uninstall.append(lambda: observers.remove(self.observe_command))
            else:
                self._wrap_dispatch(control)
        store = self.broker.store
        batch_observers = getattr(store, "batch_observers", None) if store is not None else None
        if isinstance(batch_observers, list):
            batch_observers.append(self.observe_batch)
            self._uninstall.append(lambda: batch_observers.remove(self.observe_batch))
        wal_observers = getattr(getattr(store, "wal", None), "observers", None)
        if isinstance(wal_observers, list):
            observe = self.wal_sync.observe  # (called on the writer thread; thread-safe)
            wal_observers.append(observe)
            self._uninstall.append(lambda: wal_observers.remove(observe))

    def _wrap_dispatch(self, control: Any) -> None:
        original = control.dispatch
        observe = self.observe_command
        clock = time.perf_counter

        def timed_dispatch(subject: bytes, headers: Any, payload: bytes, respond: Callable[[bytes], None]) -> None:
            t0 = clock()

            def timed_respond(body: bytes) -> None:
                try:
                    observe(command_name(subject), "", clock() - t0)
                except Exception:  # noqa: BLE001 - metrics never break a reply
                    pass
                respond(body)

            original(subject, headers, payload, timed_respond)

        control.dispatch = timed_dispatch

        def restore() -> None:
            if control.__dict__.get("dispatch") is timed_dispatch:
                del control.dispatch

        self._uninstall.append(restore)

    def uninstall(self) -> None:
        for fn in reversed(self._uninstall):
            try:
                fn()
            except Exception:  # noqa: BLE001
                pass
        self._uninstall.clear()
