"""NATS core through raw sockets: handshake, verbose mode, bad input, limits, slow and stale clients."""
from __future__ import annotations

import json
import re
import socket
import time

import pytest


class Raw:
    """A minimal blocking NATS connection for byte-exact checks."""

    def __init__(self, broker, connect: dict | None = None, handshake: bool = True):
        self.sock = socket.create_connection(("127.0.0.1", broker.port), timeout=5)
        self.buf = b""
        line = self.line()
        assert line.startswith(b"INFO ")
        self.info = json.loads(line[5:])
        if handshake:
            opts = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True}
            opts.update(connect or {})
            self.send(b"CONNECT " + json.dumps(opts).encode() + b"\r\nPING\r\n")
            reply = self.line()
            if opts.get("verbose"):
                assert reply == b"+OK"
                reply = self.line()
            assert reply == b"PONG", reply

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise EOFError("connection closed")
        self.buf += chunk
        return True

    def line(self, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buf:
            if not self._fill(max(0.01, deadline - time.monotonic())) and time.monotonic() > deadline:
                raise TimeoutError(f"no line; have {self.buf!r}")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read(self, n: int, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            if not self._fill(max(0.01, deadline - time.monotonic())) and time.monotonic() > deadline:
                raise TimeoutError
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def msg(self):
        """Read one MSG/HMSG; returns (verb, args, payload)."""
        line = self.line()
        parts = line.split()
        if parts[0] == b"MSG":
            size = int(parts[-1])
            data = self.read(size + 2)[:-2]
            return b"MSG", parts[1:], data
        if parts[0] == b"HMSG":
            size = int(parts[-1])
            data = self.read(size + 2)[:-2]
            return b"HMSG", parts[1:], data
        raise AssertionError(f"expected MSG, got {line!r}")

    def closed(self, timeout: float = 3.0) -> bool:
        """True once the server has closed the connection (data before that is kept in buf)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._fill(0.1)
            except EOFError:
                return True
            except OSError:
                return True
        return False

    def close(self):
        self.sock.close()


def alive(broker) -> bool:
    r = Raw(broker)
    r.send(b"PING\r\n")
    ok = r.line() == b"PONG"
    r.close()
    return ok


def test_info_fields(core_broker):
    r = Raw(core_broker, handshake=False)
    info = r.info
    assert info["headers"] is True
    assert info["proto"] == 1
    assert re.match(r"^\d+\.\d+\.\d+$", info["version"]) and tuple(map(int, info["version"].split("."))) >= (2, 2, 0)
    assert info["max_payload"] == 1048576
    assert isinstance(info["client_id"], int)
    assert info["client_ip"] == "127.0.0.1"
    assert info["server_name"] == "mq9fast"
    assert len(info["server_id"]) >= 16
    for absent in ("connect_urls", "ws_connect_urls", "nonce", "tls_available"):
        assert absent not in info
    assert not info.get("auth_required", False)
    assert info["tls_required"] is False
    r2 = Raw(core_broker, handshake=False)
    assert r2.info["client_id"] != info["client_id"]
    r.close()
    r2.close()


def test_handshake_sends_nothing_but_pong(core_broker):
    r = Raw(core_broker, handshake=False)
    r.send(b'CONNECT {"lang":"raw"}\r\nPING\r\n')
    assert r.line() == b"PONG"
    assert r.buf == b""
    r.close()


def test_connect_with_only_unknown_and_missing_fields(core_broker):
    r = Raw(core_broker, handshake=False)
    r.send(b'CONNECT {"whatever":1,"tls_required":false}\r\nPING\r\n')
    assert r.line() == b"PONG"
    r.close()


def test_ops_before_connect_are_lenient(core_broker):
    r = Raw(core_broker, handshake=False)
    r.send(b"SUB pre 1\r\nPUB pre 2\r\nhi\r\n")
    verb, args, data = r.msg()
    assert (verb, args, data) == (b"MSG", [b"pre", b"1", b"2"], b"hi")
    r.close()


def test_verbose_ok(core_broker):
    r = Raw(core_broker, connect={"verbose": True})
    r.send(b"SUB v 1\r\n")
    assert r.line() == b"+OK"
    r.send(b"PUB v 1\r\nx\r\n")
    assert r.line() == b"+OK"
    assert r.msg() == (b"MSG", [b"v", b"1", b"1"], b"x")
    r.send(b"UNSUB 1\r\n")
    assert r.line() == b"+OK"
    r.close()


def test_msg_format_with_reply_and_sid_verbatim(core_broker):
    r = Raw(core_broker)
    r.send(b"SUB fmt.* sid-abc\r\nPUB fmt.a inbox.1 3\r\nabc\r\n")
    assert r.msg() == (b"MSG", [b"fmt.a", b"sid-abc", b"inbox.1", b"3"], b"abc")
    r.close()


def test_headers_stripped_for_clients_without_header_support(core_broker):
    plain = Raw(core_broker, connect={"headers": False, "no_responders": False})
    plain.send(b"SUB strip 1\r\n")
    hdr = Raw(core_broker)
    hdr.send(b"SUB strip 9\r\n")
    plain.send(b"PING\r\n")
    assert plain.line() == b"PONG"
    hdr.send(b"PING\r\n")
    assert hdr.line() == b"PONG"
    block = b"NATS/1.0\r\nA: b\r\n\r\n"
    pubber = Raw(core_broker)
    pubber.send(b"HPUB strip %d %d\r\n" % (len(block), len(block) + 4) + block + b"body\r\n")
    assert plain.msg() == (b"MSG", [b"strip", b"1", b"4"], b"body")
    verb, args, data = hdr.msg()
    assert verb == b"HMSG" and args == [b"strip", b"9", b"%d" % len(block), b"%d" % (len(block) + 4)]
    assert data == block + b"body"
    for c in (plain, hdr, pubber):
        c.close()


def test_no_responders_status_message(core_broker):
    r = Raw(core_broker)
    r.send(b"SUB _INBOX.x.* 7\r\nPUB nobody.listens _INBOX.x.1 2\r\nhi\r\n")
    verb, args, data = r.msg()
    assert verb == b"HMSG"
    assert args == [b"_INBOX.x.1", b"7", b"16", b"16"]
    assert data == b"NATS/1.0 503\r\n\r\n"
    r.close()


def test_no_503_without_headers_or_no_responders(core_broker):
    r = Raw(core_broker, connect={"no_responders": False})
    r.send(b"SUB _INBOX.y.* 7\r\nPUB nobody.listens _INBOX.y.1 2\r\nhi\r\nPING\r\n")
    assert r.line() == b"PONG"
    r.close()


def test_split_frames_byte_by_byte(core_broker):
    sub = Raw(core_broker)
    sub.send(b"SUB split.t 1\r\nPING\r\n")
    assert sub.line() == b"PONG"
    pub = Raw(core_broker)
    block = b"NATS/1.0\r\nK: v\r\n\r\n"
    data = (b"PUB split.t 5\r\nhello\r\n" + b"HPUB split.t r %d %d\r\n" % (len(block), len(block) + 2)
            + block + b"yo\r\n")
    for i in range(len(data)):
        pub.send(data[i:i + 1])
        if i % 7 == 0:
            time.sleep(0.001)
    assert sub.msg() == (b"MSG", [b"split.t", b"1", b"5"], b"hello")
    verb, args, payload = sub.msg()
    assert verb == b"HMSG" and payload == block + b"yo"
    sub.close()
    pub.close()


@pytest.mark.parametrize("bad,err", [
    (b"BOGUS op\r\n", b"Unknown Protocol Operation"),
    (b"PUB a b c d\r\n", b"Parser Error"),
    (b"HPUB a 10 5\r\n", b"Parser Error"),
    (b"PUB a 3\r\nabcdef\r\n", b"Parser Error"),
    (b"CONNECT {not json\r\n", b"Parser Error"),
    (b"SUB " + b"a" * 5000 + b" 1\r\n", b"Maximum Control Line Exceeded"),
    (b"PUB big 2000000\r\n", b"Maximum Payload Violation"),
])
def test_fatal_errors_close_only_that_connection(core_broker, bad, err):
    bystander = Raw(core_broker)
    bystander.send(b"SUB by.* 1\r\nPING\r\n")
    assert bystander.line() == b"PONG"
    r = Raw(core_broker)
    r.send(bad)
    assert r.line() == b"-ERR '" + err + b"'"
    assert r.closed()
    bystander.send(b"PUB by.x 2\r\nok\r\n")
    assert bystander.msg() == (b"MSG", [b"by.x", b"1", b"2"], b"ok")
    bystander.close()


def test_control_line_limit_enforced_before_newline(core_broker):
    r = Raw(core_broker)
    r.send(b"PUB " + b"x" * 6000)  # no newline ever comes
    assert r.line() == b"-ERR 'Maximum Control Line Exceeded'"
    assert r.closed()


def test_invalid_subject_keeps_connection(core_broker):
    r = Raw(core_broker)
    for bad in (b"SUB a..b 1\r\n", b"SUB a.>.b 2\r\n", b"SUB .a 3\r\n"):
        r.send(bad)
        assert r.line() == b"-ERR 'Invalid Subject'"
    r.send(b"PING\r\n")
    assert r.line() == b"PONG"
    r.close()


def test_unsub_max_on_the_wire(core_broker):
    r = Raw(core_broker)
    r.send(b"SUB um 5\r\nUNSUB 5 2\r\n")
    for i in range(4):
        r.send(b"PUB um 1\r\n%d\r\n" % i)
    r.send(b"PING\r\n")
    assert r.msg()[2] == b"0"
    assert r.msg()[2] == b"1"
    assert r.line() == b"PONG"
    # UNSUB with a max already reached removes at once
    r.send(b"SUB um2 6\r\nPUB um2 1\r\na\r\nUNSUB 6 1\r\nPUB um2 1\r\nb\r\nPING\r\n")
    assert r.msg()[2] == b"a"
    assert r.line() == b"PONG"
    r.close()


def test_mq9_reply_only_to_requesting_connection(core_broker):
    snoop = Raw(core_broker)
    snoop.send(b"SUB _INBOX.> 1\r\nSUB > 2\r\nPING\r\n")
    assert snoop.line() == b"PONG"
    r = Raw(core_broker)
    r.send(b"SUB _INBOX.me.* 3\r\nPUB $mq9.AI.BOGUS _INBOX.me.1 2\r\n{}\r\n")
    verb, args, data = r.msg()
    assert args == [b"_INBOX.me.1", b"3", b"%d" % len(data)]
    assert json.loads(data) == {"error": "unrecognized mq9 subject: $mq9.AI.BOGUS"}
    snoop.send(b"PING\r\n")
    assert snoop.line() == b"PONG"  # saw neither the command nor the reply
    r.close()
    snoop.close()


def test_slow_consumer_is_cut_off_without_stalling_others(broker_factory):
    import threading

    b = broker_factory(max_pending=2 * 1024 * 1024)
    slow = Raw(b)
    slow.send(b"SUB flood 1\r\nPING\r\n")
    assert slow.line() == b"PONG"
    fast = Raw(b)
    fast.send(b"SUB flood 1\r\nPING\r\n")
    assert fast.line() == b"PONG"
    payload = b"z" * 8192
    frame = b"PUB flood %d\r\n" % len(payload) + payload + b"\r\n"
    n = 6000  # ~48 MiB: far more than the slow reader's socket buffers plus max_pending
    expect = n * len(b"MSG flood 1 8192\r\n" + payload + b"\r\n")
    received = [0]

    def drain():  # the fast consumer reads everything as it comes
        fast.sock.settimeout(20)
        while received[0] < expect:
            chunk = fast.sock.recv(1 << 20)
            if not chunk:
                return
            received[0] += len(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    pub = Raw(b)
    per_msg = expect // n
    for k in range(n // 100):
        pub.send(frame * 100)
        # pace the publisher to the fast reader (so only the slow one ever falls behind)
        deadline = time.monotonic() + 10
        while received[0] < (k + 1) * 100 * per_msg and time.monotonic() < deadline:
            time.sleep(0.0005)
    pub.send(b"PING\r\n")
    assert pub.line(timeout=20) == b"PONG"  # the publisher was never held back
    reader.join(30)
    assert received[0] == expect  # the fast consumer got every message
    # the slow one never read: it was cut off with -ERR 'Slow Consumer'
    assert slow.closed(timeout=10)
    assert slow.buf.endswith(b"-ERR 'Slow Consumer'\r\n") or len(slow.buf) < expect
    assert b"slow consumer" in b.log().encode()
    assert alive(b)


def test_stale_connection(broker_factory):
    b = broker_factory(ping_interval=0.2, ping_max=2)
    r = Raw(b)
    pings = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        line = r.line()
        if line == b"PING":
            pings += 1
            continue
        assert line == b"-ERR 'Stale Connection'"
        break
    assert pings == 2
    assert r.closed()
    # a client that answers stays connected
    r2 = Raw(b)
    for _ in range(4):
        assert r2.line() == b"PING"
        r2.send(b"PONG\r\n")
    r2.close()


@pytest.mark.parametrize("opts,connect_ok", [
    ({"auth_token": "s3cret"}, {"auth_token": "s3cret"}),
    ({"user": "alice", "password": "pw"}, {"user": "alice", "pass": "pw"}),
])
def test_auth(broker_factory, opts, connect_ok):
    b = broker_factory(**opts)
    good = Raw(b, handshake=False)
    assert good.info["auth_required"] is True
    good.send(b"CONNECT " + json.dumps(connect_ok).encode() + b"\r\nPING\r\n")
    assert good.line() == b"PONG"
    bad = Raw(b, handshake=False)
    bad.send(b'CONNECT {"auth_token":"nope","user":"alice","pass":"wrong"}\r\nPING\r\n')
    assert bad.line() == b"-ERR 'Authorization Violation'"
    assert bad.closed()
    early = Raw(b, handshake=False)
    early.send(b"SUB x 1\r\n")
    assert early.line() == b"-ERR 'Authorization Violation'"
    assert early.closed()
    good.send(b"SUB ok 1\r\nPUB ok 1\r\n!\r\n")
    assert good.msg()[2] == b"!"


async def test_auth_with_nats_py(broker_factory):
    import nats

    b = broker_factory(auth_token="tok")
    nc = await nats.connect(b.url, token="tok", allow_reconnect=False)
    sub = await nc.subscribe("a")
    await nc.publish("a", b"1")
    assert (await sub.next_msg(timeout=2)).data == b"1"
    await nc.close()
    with pytest.raises(Exception):
        await nats.connect(b.url, token="bad", allow_reconnect=False, max_reconnect_attempts=0,
                           connect_timeout=2)
