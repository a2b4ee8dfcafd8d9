"""NATS client-protocol frame parser - the pure-Python twin of ``mq9fast._parser``.

Both modules expose the same API and must behave identically (the tests run over both):

    p = Parser(max_control_line=4096, max_payload=1048576)
    frames = p.feed(data)      # any split of the byte stream yields the same frames

Frames are tuples whose first item is an op code:

    (OP_PUB,   subject, reply_or_None, payload)
    (OP_HPUB,  subject, reply_or_None, header_len, block)   # block = header block + payload
    (OP_SUB,   subject, queue_or_None, sid)
    (OP_UNSUB, sid, max_msgs_or_None)
    (OP_PING,) (OP_PONG,) (OP_OK,)
    (OP_CONNECT, json_bytes)  (OP_INFO, json_bytes)  (OP_ERR, text_bytes)   # -ERR from a client
    (OP_PROTO_ERROR, "<-ERR text>")                         # always the last frame; parser is dead

Every bytes item is an independent ``bytes`` object.  A protocol error ends the stream: the
error frame is appended after the frames parsed before it, and later ``feed`` calls return ``[]``.

Limits are enforced before anything is buffered: a control line longer than
``max_control_line`` (CONNECT/INFO lines: ``max_connect_line``) is refused as soon as that many
bytes have arrived without a newline, and a PUB/HPUB size above ``max_payload`` is refused at its
control line, before any payload byte is kept.
"""
from __future__ import annotations

OP_PUB = 1
OP_HPUB = 2
OP_SUB = 3
OP_UNSUB = 4
OP_PING = 5
OP_PONG = 6
OP_CONNECT = 7
OP_INFO = 8
OP_OK = 9
OP_ERR = 10
OP_PROTO_ERROR = 11
OP_MSG = 12
OP_HMSG = 13

#: message verbs -> (op, arguments before the optional reply, trailing size arguments)
_MSG_VERBS = {b"PUB": (OP_PUB, 1, 1), b"HPUB": (OP_HPUB, 1, 2),
              b"MSG": (OP_MSG, 2, 1), b"HMSG": (OP_HMSG, 2, 2)}

ERR_UNKNOWN_OP = "Unknown Protocol Operation"
ERR_PARSER = "Parser Error"
ERR_CONTROL_LINE = "Maximum Control Line Exceeded"
ERR_MAX_PAYLOAD = "Maximum Payload Violation"

MAX_CONNECT_LINE = 64 * 1024

_WS = b" \t"


def _split_args(line: bytes) -> list[bytes]:
    return line.split()  # splits on runs of spaces/tabs; no other whitespace is left in a line


def _parse_size(token: bytes) -> int:
    """A non-negative decimal byte count, or -1."""
    if not token or len(token) > 10 or not token.isdigit():
        return -1
    return int(token)


class Parser:
    __slots__ = ("max_control_line", "max_payload", "max_connect_line", "_line", "_need",
                 "_pending", "_body", "dead")

    def __init__(self, max_control_line: int = 4096, max_payload: int = 1048576,
                 max_connect_line: int = MAX_CONNECT_LINE) -> None:
        self.max_control_line = max_control_line
        self.max_payload = max_payload
        self.max_connect_line = max_connect_line
        self._line = b""          # a partial control line carried over from the previous feed
        self._pending = None      # head waiting for its payload: (op, subject, reply, hdr_len, sid)
        self._need = 0            # payload bytes + 2 (CRLF) still expected for _pending
        self._body = bytearray()  # payload bytes of _pending received so far
        self.dead = False

    def feed(self, data: bytes) -> list:
        frames: list = []
        if self.dead:
            return frames
        if self._line:
            data = self._line + data
            self._line = b""
        pos = 0
        n = len(data)
        while pos < n:
            if self._pending is not None:
                take = min(self._need - len(self._body), n - pos)
                if not self._body and take == self._need:
                    chunk = data[pos:pos + take]
                else:
                    self._body += data[pos:pos + take]
                    chunk = None
                pos += take
                if chunk is None and len(self._body) < self._need:
                    break
                body = bytes(self._body) if chunk is None else chunk
                self._body.clear()
                if body[-2:] != b"\r\n":
                    return self._fail(frames, ERR_PARSER)
                op, subject, reply, hdr_len, sid = self._pending
                self._pending = None
                if op == OP_PUB:
                    frames.append((OP_PUB, subject, reply, body[:-2]))
                elif op == OP_HPUB:
                    frames.append((OP_HPUB, subject, reply, hdr_len, body[:-2]))
                elif op == OP_MSG:
                    frames.append((OP_MSG, subject, sid, reply, body[:-2]))
                else:
                    frames.append((OP_HMSG, subject, sid, reply, hdr_len, body[:-2]))
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                rest = n - pos
                limit = self.max_connect_line if self._is_long_op(data, pos) else self.max_control_line
                if rest > limit + 1:  # +1: the CR of a line exactly at the limit
                    return self._fail(frames, ERR_CONTROL_LINE)
                self._line = data[pos:]
                break
            end = nl - 1 if nl > pos and data[nl - 1] == 13 else nl
            line = data[pos:end]
            pos = nl + 1
            err = self._control(line, frames)
            if err is not None:
                return self._fail(frames, err)
        return frames

    @staticmethod
    def _is_long_op(data: bytes, pos: int) -> bool:
        head = data[pos:pos + 64].lstrip(_WS)[:7].upper()
        return head.startswith(b"CONNECT") or head.startswith(b"INFO")

    def _fail(self, frames: list, text: str) -> list:
        self.dead = True
        self._line = b""
        self._pending = None
        self._body.clear()
        frames.append((OP_PROTO_ERROR, text))
        return frames

    def _control(self, line: bytes, frames: list):
        """Parse one control line (without CRLF); return an error text or None."""
        stripped = line.lstrip(_WS)
        sp = len(stripped)
        for i, c in enumerate(stripped):
            if c == 32 or c == 9:
                sp = i
                break
        verb = stripped[:sp].upper()
        rest = stripped[sp:]
        if verb in (b"CONNECT", b"INFO"):
            if len(line) > self.max_connect_line:
                return ERR_CONTROL_LINE
            frames.append((OP_CONNECT if verb == b"CONNECT" else OP_INFO, rest.strip(_WS)))
            return None
        if len(line) > self.max_control_line:
            return ERR_CONTROL_LINE
        if verb in _MSG_VERBS:
            # <subject> [<sid>] [<reply>] [<header size>] <total size>: MSG/HMSG carry a sid
            # after the subject, the H-forms a header size before the total
            op, base, nsizes = _MSG_VERBS[verb]
            args = _split_args(rest)
            if len(args) == base + nsizes:
                reply = None
            elif len(args) == base + nsizes + 1:
                reply = args[base]
            else:
                return ERR_PARSER
            size = _parse_size(args[-1])
            hdr = _parse_size(args[-2]) if nsizes == 2 else 0
            if hdr < 0 or size < 0 or hdr > size:
                return ERR_PARSER
            if size > self.max_payload:
                return ERR_MAX_PAYLOAD
            self._pending = (op, args[0], reply, hdr, args[1] if base == 2 else None)
            self._need = size + 2
            return None
        if verb == b"SUB":
            args = _split_args(rest)
            if len(args) == 2:
                frames.append((OP_SUB, args[0], None, args[1]))
            elif len(args) == 3:
                frames.append((OP_SUB, args[0], args[1], args[2]))
            else:
                return ERR_PARSER
            return None
        if verb == b"UNSUB":
            args = _split_args(rest)
            if len(args) == 1:
                frames.append((OP_UNSUB, args[0], None))
            elif len(args) == 2:
                m = _parse_size(args[1])
                if m < 0:
                    return ERR_PARSER
                frames.append((OP_UNSUB, args[0], m))
            else:
                return ERR_PARSER
            return None
        if verb == b"PING":
            frames.append((OP_PING,))
            return None
        if verb == b"PONG":
            frames.append((OP_PONG,))
            return None
        if verb == b"+OK":
            frames.append((OP_OK,))
            return None
        if verb == b"-ERR":
            frames.append((OP_ERR, rest.strip(_WS)))
            return None
        if not stripped:
            return None  # an empty line between frames is tolerated
        return ERR_UNKNOWN_OP
