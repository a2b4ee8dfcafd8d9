"""Which implementation of the FETCH/ACK hot loops is in use: the compiled ``_scan`` module, or its
pure-Python twin ``scan_py`` when ``MQ9FAST_PURE_PYTHON`` is set or the extension is not built."""
from __future__ import annotations

import os

if os.environ.get("MQ9FAST_PURE_PYTHON"):
    from . import scan_py as scan
else:
    try:
        from . import _scan as scan  # type: ignore[attr-defined,no-redef]
    except ImportError:  # not built (e.g. running from a plain source checkout)
        from . import scan_py as scan  # type: ignore[no-redef]

__all__ = ["scan"]
