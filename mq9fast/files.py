"""Small helpers for files that must survive a crash."""
from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    """fsync the directory holding ``path`` (after a rename into it, so the new name is durable)."""
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
