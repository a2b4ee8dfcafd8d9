"""The persistent mailbox engine: ``MAILBOX.CREATE`` and ``MSG.SEND/FETCH/ACK/QUERY/DELETE``.

``MailboxService(store, config)`` implements PROTOCOL.md §3-§6 with the decisions of DESIGN.md §3
(binary-safe base64 payloads, leases for competing consumers, true long-poll, durable replies,
exact expiry, exact limits).  The broker constructs it after ``Store.start()``, awaits ``start()``,
and awaits ``close()`` before ``Store.close()``.

Modules: ``service`` (commands, timers), ``layout`` (every key/value format), ``requests``
(validation and the exact error texts), ``encode`` (message objects from zero-copy buffers),
``volatile`` (the lease environment), ``stats`` (``stats()``/``list_mailboxes()`` for the HTTP
side port, and the stored-message counters), ``_scan`` (compiled FETCH/ACK loops: lane walk + JSON/base64
encoding of option-less messages, leases, watermark walk) with its pure-Python twin ``scan_py``,
and ``_send`` (compiled bulk SEND loops: SEND frames -> writer items, the LMDB writes of a run of
SENDs, the replies) with its twin ``send_py``, both selected by ``hot`` (``MQ9FAST_PURE_PYTHON``
forces the twins).

State of record: LMDB
=====================

All durable state is in the shared LMDB environment (``Store``), in named DBs prefixed ``mb.``.
Keys are big-endian so that LMDB order is numeric order.  ``mbid`` is a u64 allocated per mailbox
*incarnation* (re-creating an expired name gets a new one, so stale data of the old incarnation is
unreachable at once, before the sweeper deletes it); ``gid`` is a u64 per (mailbox, group).

=============  ==========================================  =============================================
DB             key                                         value
=============  ==========================================  =============================================
mb.meta        ``b"mbid"``, ``b"gid"``, ``b"delay_seq"``   next value of each counter (u64be)
mb.boxes       mailbox name (UTF-8)                        mbid, create_ms, expire_ms (0 = never), ttl,
                                                           **next_id**, last_sec (u64le each) + desc
mb.msgs        mbid(8) | lane(1) | msg_id(8)               flags, create_time u32, [expire_ms],
               -- the lane index *is* the message table    [header block], [key], [tags JSON], payload
mb.keys        mbid(8) | mq9-key                           lane(1) | msg_id(8) of the live keyed message
mb.tags        mbid(8) | len(2) | tag | msg_id(8)          lane(1)
mb.time        mbid(8) | second(8)                         first msg_id stored in that second
mb.groups      mbid(8) | group name                        gid, committed next position of the critical,
                                                           urgent and normal lanes (u64le each)
mb.gacks       gid(8) | msg_id(8)                          empty: ACKed above the lane watermark
mb.delayed     due_ms(8) | seq(8)   (ordered by due time)  mbid, lane, name, message value
mb.mbexp       expire_ms(8) | mbid(8)                      mailbox name (expiry index of mailboxes)
mb.msgexp      expire_ms(8) | mbid(8) | lane(1) | msg_id   empty (expiry index of messages with a TTL)
mb.depth       mbid(8); ``u64(0)`` = all mailboxes         messages stored per lane (i64le x 3), kept in
                                                           the transaction that stores/deletes them
=============  ==========================================  =============================================

Lanes are 0 = critical, 1 = urgent, 2 = normal, so one cursor walks a mailbox's lanes in FETCH order.
A message without options costs 5 bytes over its payload in its value.  User strings longer than
400 bytes (keys, tags, group names) appear in keys as ``0xff + sha256`` (0xff is never UTF-8).
``mb.time`` answers ``from_time``/``since`` with one ``set_range``: ``create_time`` is kept monotonic
per mailbox, so every id at or after that entry was created at or after that second.

Volatile state: leases (``volatile.py``)
========================================

Leases and FETCH batches live in a second LMDB environment, ``<data-dir>/mailbox-volatile``, opened
without fsync and emptied at start-up (DESIGN.md §3.3: leases need not survive a restart):
``leases: gid|msg_id -> expiry_ms, batch_id, deliveries, lane``,
``batches: gid|batch_id -> expiry_ms + [(lane, msg_id)...]`` in FETCH order, the batches by expiry
``lexp: expiry_ms|gid|batch_id`` (to count outstanding leases) and the redelivery counter.

Groups, leases, ACK
-------------------
* A group's durable state is a watermark per lane (``committed``) plus the set ``mb.gacks`` of ids
  ACKed above it.  A group FETCH walks each lane from its watermark and skips ACKed ids and ids
  with an unexpired lease; what it returns is leased for ``ack_wait`` (or ``config.ack_wait_ms``) and
  recorded as one batch.  The walk, the lease writes and the batch write happen in one write
  transaction of the volatile environment, so concurrent FETCHes of a group - in this process or in
  another worker process sharing the data directory - never get the same message.
* The first FETCH of a group stores its start position S (``deliver``) in all three watermarks
  before answering; ``force_deliver`` resets the watermarks to S, clears its ACK set and its leases.
* ACK of id N: if N is leased, every entry of N's batch up to and including N is confirmed
  (PROTOCOL.md §5.5 batch-aware lane ACK); otherwise N alone (DESIGN.md §3.3); a group that never
  fetched is created with every lane at N+1 (RobustMQ's rule).  The touched lanes' watermarks
  advance over contiguous confirmed messages (this ACK's ids and older ``mb.gacks`` entries, which
  are deleted as they are passed); only confirmed ids left above a watermark are written to
  ``mb.gacks``; all in one durable write.  The leases are released after the commit (on the fast
  path after the reply has been queued, while it travels).
* An expired lease makes the message deliverable again; its record is kept (with the delivery
  count, reported as ``redelivered``) until the message is delivered again or the sweeper drops it.

Durability and concurrency
==========================
* Every change goes through the group-commit writer (``storage.Store``) and runs in its transaction
  on the storage writer thread; the reply is sent after the commit is durable (``--fsync``).  SENDs
  and ACKs arriving together share one transaction and one fsync.  SENDs take the bulk path
  (``take_sends``/``send_nowait`` -> ``Store.submit_many``): a run of consecutive SENDs is applied
  by one call (``send.write_sends``: each mailbox record read and written once per run, no child
  transaction per message) and answered by one completion (``send.answer_sends``) without futures; the other commands use
  ``Store.write``/``write_cb`` with a child transaction each.  Ids are taken from ``next_id`` inside
  that transaction, so they are unique and gap-free in commit order even with several writer
  processes (LMDB serialises writers).  kill -9 loses nothing that was answered.
* Reads run on the event loop in short ``buffers=True`` transactions; option-less payloads are
  base64-encoded from the mmap straight into the reply buffer (``_scan.collect``), others go
  through ``binascii.b2a_base64`` without a copy.
* No correctness depends on process memory: the only in-memory structures are the long-poll waiter
  lists, timers and a memo of encoded header blocks.  Long-poll FETCHes wait on a per-mailbox
  future list that is woken by SEND commits, the delayed-message timer and (via a timeout) the
  earliest lease expiry they skipped.
* ``--workers N`` (``attach_cluster``): every worker opens the same LMDB environments, so mailboxes,
  ids, groups and leases are shared as they are.  A worker that stored messages announces the
  mailboxes on the cluster event bus (``mailbox.visible``, coalesced per loop tick) and the other
  workers wake their long-polls; lease expiry needs no event (leases are in shared LMDB).  Only the
  leader (worker 0) runs the delayed-message timer (it re-reads LMDB at least every second, so
  delayed messages sent through any worker move on time) and the sweeper.  Leases start empty with
  each new broker run (``Volatile.open_for_run`` recreates their files), never for a worker
  restarted within the run.
* Expiry is checked on every access (``now >= expire``); a sweeper, scheduled at the earliest entry
  of ``mb.mbexp``/``mb.msgexp`` and at least every 30 s, deletes expired mailboxes (all their keys,
  in bounded transactions) and expired messages with their index entries.  Pending delayed messages
  of a dead mailbox are dropped when due.

Decision: LMDB range scans instead of in-memory priority lanes
==============================================================
Measured (``benchmarks/mailbox_disk.py lanes``; 100 000 messages, 10 % critical / 20 % urgent,
py-lmdb 1.x, Python 3.11, shared 2-core VM): collecting a 100-message FETCH page by a cursor range
scan took 70-116 us, against 105-126 us for sorted per-lane id arrays (a compiled Cython prototype
and a pure-Python one gave the same) plus one LMDB ``get`` per message; a 1-message page 2.2-3.3 us
vs 1.6-3.9 us; only an empty poll was faster in memory (1-2.6 us vs 3.7-6.1 us).  The payload
has to come from LMDB anyway, and a cursor walk reads neighbouring entries far cheaper than point
lookups, so the in-memory structure only wins where the absolute cost is a few microseconds, and
it would have to be rebuilt at start (18-70 ms per 100 k messages), kept coherent with other worker
processes and held in RAM.  So lanes are key ranges of ``mb.msgs`` and there is no ``_lanes.pyx``.
"""
from .service import MailboxService

__all__ = ["MailboxService"]
