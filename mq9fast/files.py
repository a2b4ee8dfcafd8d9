"""Small helpers for files that must survive a crash, or a disk that another program fills."""
from __future__ import annotations

import ctypes
import errno
import os

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = getattr(_libc, "fallocate64", None) or getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_renameat2 = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
FALLOC_FL_KEEP_SIZE = 1
RENAME_EXCHANGE = 2
AT_FDCWD = -100
#: what a filesystem (or an old kernel) answers to an operation it does not have
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENOTTY)


def fsync_dir(path: str) -> None:
    """fsync the directory holding ``path`` (after a rename into it, so the new name is durable)."""
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def reserve_blocks(fd: int, offset: int, length: int) -> bool:
    """Give ``[offset, offset + length)`` of ``fd`` disk blocks without changing the file's size
    (``fallocate`` with ``FALLOC_FL_KEEP_SIZE``), so that writes there later need no free space.
    False where the filesystem cannot (nothing done); ``OSError`` (ENOSPC...) when the disk has
    no room.  Safe while another process writes the same range: it only allocates blocks that
    have none, never touches data."""
    if _fallocate is None:
        return False
    if _fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err))


def exchange(a: str, b: str) -> bool:
    """Swap the names ``a`` and ``b`` atomically (``renameat2`` with ``RENAME_EXCHANGE``): ``b``
    gets ``a``'s file and ``a`` keeps ``b``'s old one, whose blocks can be written again without
    new room.  False where the filesystem or kernel cannot (nothing done)."""
    if _renameat2 is None:
        return False
    if _renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), a)


def replace_from_spare(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably, writing through ``path + ".spare"``.

    The spare is overwritten in place, fsynced and swapped with ``path`` (``exchange``): the old
    ``path`` becomes the next spare, so a file of the same size is replaced over and over with
    no new disk blocks - it still works when another program has filled the disk.  Where names
    cannot be swapped, the spare is renamed over ``path`` (a plain ``os.replace``)."""
    spare = path + ".spare"
    fd = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.pwrite(fd, view, len(data) - len(view)):]
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)
    first = not os.path.exists(path)
    if first or not exchange(spare, path):
        os.replace(spare, path)
    fsync_dir(path)
    if first:  # make the next spare now, while the disk has room for it
        try:
            with open(spare, "wb") as fh:
                fh.write(data)
        except OSError:
            pass
