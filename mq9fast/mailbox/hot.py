"""Which implementation of the hot loops is in use: the compiled modules (``_scan`` for FETCH/ACK,
``_send`` for the bulk SEND path), or their pure-Python twins (``scan_py``, ``send_py``) when
``MQ9FAST_PURE_PYTHON`` is set or the extensions are not built."""
from __future__ import annotations

import os

if os.environ.get("MQ9FAST_PURE_PYTHON"):
    from . import scan_py as scan
    from . import send_py as send
else:
    try:
        from . import _scan as scan  # type: ignore[attr-defined,no-redef]
        from . import _send as send  # type: ignore[attr-defined,no-redef]
    except ImportError:  # not built (e.g. running from a plain source checkout)
        from . import scan_py as scan  # type: ignore[no-redef]
        from . import send_py as send  # type: ignore[no-redef]

__all__ = ["scan", "send"]
