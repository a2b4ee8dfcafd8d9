"""Strict JSON for request bodies: what strict clients (Go, JS, Java) could read back.

``json.loads`` is lenient in three ways that would let a request store something its replies
cannot carry, or fail later as an ``internal error``:

* ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON) and numbers beyond a double (``1e400``,
  valid JSON that Python reads as infinity) would be echoed back as ``Infinity`` in every reply
  that includes them - a body no strict parser accepts;
* a lone UTF-16 surrogate escape (``"\\ud800"``) decodes to a string that cannot be encoded as
  UTF-8, so storing or embedding it fails;
* nesting deeper than Python's recursion limit raises ``RecursionError``, not ``ValueError``.

``loads`` refuses all three with a ``ValueError`` whose text is the detail of the command's
``invalid <command> payload: <detail>`` error.  The surrogate check walks the value only when the
raw bytes hold a ``\\uD8..``-``\\uDF..`` escape, so ordinary bodies pay nothing for it.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

#: an escaped UTF-16 surrogate (paired ones decode to one character; lone ones stay surrogates)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _check_strings(value: Any) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError("a string holds a lone UTF-16 surrogate "
                                 f"(\\u{ord(v[exc.start]):04x})") from None
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def loads(data: bytes) -> Any:
    """Parse ``data`` (UTF-8 JSON); ValueError (or UnicodeDecodeError) on anything a strict
    parser would refuse."""
    try:
        value = json.loads(data, parse_constant=_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if _SURROGATE_ESCAPE.search(data):
        _check_strings(value)
    return value
