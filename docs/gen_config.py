"""Generate the option table of docs/configuration.md from ``mq9fast.config.Config``.

    python docs/gen_config.py           # print the table
    python docs/gen_config.py --write   # replace the table in docs/configuration.md

Each field's flag is ``--<name-with-dashes>`` (plus nats-server spellings from ``mq9fast.cli``),
its environment variable ``MQ9FAST_<NAME>`` and its TOML key ``<name>``.  The test
``tests/test_cli_tools.py::test_configuration_doc_is_generated_output`` fails when the committed
doc no longer matches.
"""
from __future__ import annotations

import dataclasses
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from mq9fast.cli import ALIASES  # noqa: E402
from mq9fast.config import Config  # noqa: E402

BEGIN = "<!-- BEGIN GENERATED OPTIONS (docs/gen_config.py) -->"
END = "<!-- END GENERATED OPTIONS -->"


def _type(f: dataclasses.Field) -> str:
    t = str(f.type)
    for name in ("int", "float", "str"):
        if t.startswith(name):
            return name + (" (optional)" if "None" in t else "")
    return t


def _default(f: dataclasses.Field) -> str:
    if f.default is None:
        return "unset"
    if isinstance(f.default, int) and f.default >= 1024 ** 3 and f.default % (1024 ** 3) == 0:
        return f"`{f.default}` ({f.default // 1024 ** 3} GiB)"
    if isinstance(f.default, int) and f.default >= 1024 * 1024 and f.default % (1024 * 1024) == 0:
        return f"`{f.default}` ({f.default // (1024 * 1024)} MiB)"
    return f"`{f.default}`"


def render_table() -> str:
    rows = ["| TOML key | Flag | Environment variable | Type | Default | Meaning |",
            "|---|---|---|---|---|---|"]
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        flags = [f"`{flag}`"] + [f"`{a}`" for a in ALIASES.get(f.name, []) if a != flag]
        env = f"`MQ9FAST_{f.name.upper()}`"
        if f.name == "password":
            env += ", `MQ9FAST_PASS`"
        help_text = f.metadata.get("help", "").replace("|", "\\|")
        rows.append(f"| `{f.name}` | {', '.join(flags)} | {env} | {_type(f)} | {_default(f)} | {help_text} |")
    return "\n".join(rows)


def write(path: str) -> None:
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    text = text[:start] + "\n" + render_table() + "\n" + text[end:]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


if __name__ == "__main__":
    if "--write" in sys.argv:
        write(os.path.join(HERE, "configuration.md"))
    else:
        print(render_table())
