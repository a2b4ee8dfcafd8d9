"""Command line: ``mq9fast serve [options]`` (also ``python -m mq9fast``) and ``--version``.

Every ``serve`` option comes from ``config.Config``: flag ``--<field-with-dashes>``, environment
variable ``MQ9FAST_<FIELD>``, TOML key ``<field>``.  nats-server spellings are accepted too where
the meaning is the same (``-a/--addr/--net``, ``-p``, ``-m/--http_port``, ``-c``, ``-n/--name``,
``--auth``, ``--pass``, ``--max_payload``, ``-D`` for debug logging).

Other subcommands (client tools for people) are registered by ``mq9fast.cli_tools`` if present.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

# One BLAS thread: the broker is one process per core, and OpenBLAS threads cost far more than
# they save on its small vector scans (set before numpy is imported anywhere).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from . import __version__
from . import config as config_mod

# field -> extra (nats-server style) spellings
ALIASES = {
    "host": ["-a", "--addr", "--net"],
    "port": ["-p"],
    "http_port": ["-m", "--http_port"],
    "auth_token": ["--auth"],
    "password": ["--pass"],
    "server_name": ["-n", "--name"],
    "max_payload": ["--max_payload"],
    "log_level": ["-l"],
}


def _add_serve(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve",
        help="run the broker",
        description="Run the mq9fast broker. Every option can also be set with an MQ9FAST_<NAME> "
                    "environment variable or a key in the --config TOML file; flags win over both.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-c", "--config", metavar="FILE", default=None, help="TOML configuration file")
    p.add_argument("-D", "--debug", action="store_true", help="same as --log-level debug")
    for f in dataclasses.fields(config_mod.Config):
        flag = "--" + f.name.replace("_", "-")
        names = [flag] + [a for a in ALIASES.get(f.name, []) if a != flag]
        kind = str(f.type)
        typ = int if kind.startswith("int") else float if kind.startswith("float") else str
        metavar = f.name.upper()
        help_text = f.metadata.get("help", "")
        if f.default is not None:
            help_text += f" (default: {f.default})"
        p.add_argument(*names, dest=f.name, type=typ, default=None, metavar=metavar,
                       help=help_text)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mq9fast",
        description="mq9fast: a fast, durable mq9 broker (agent registry + persistent mailboxes) "
                    "over the NATS protocol.",
    )
    parser.add_argument("--version", action="version", version=f"mq9fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve(sub)
    try:
        from . import cli_tools
    except ImportError:
        cli_tools = None
    if cli_tools is not None:
        cli_tools.register(sub)
    return parser


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as the Go runtime does for nats-server):
    every connection is a file descriptor, and the usual soft default of 1024 is far too low for
    a broker.  Returns the limit in effect."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def serve(args: argparse.Namespace) -> int:
    raise_open_files_limit()
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_mod.Config)}
    if args.debug:
        overrides["log_level"] = "debug"
    try:
        cfg = config_mod.load(args.config, **overrides)
    except (ValueError, OSError) as exc:
        print(f"mq9fast: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .broker import run

    try:
        return run(cfg)
    except OSError as exc:  # e.g. the port is taken
        print(f"mq9fast: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command is None:
        parser.print_help()
        return 2
    return args.func(args)
