"""Opening a file named by a run directory (or a user) without ever hanging on it.

A run directory may hold links to anything: ``train.log -> /proc/kmsg`` is a "regular
file" by ``stat`` whose read blocks forever (as root), ``/dev/zero`` never ends, a FIFO
blocks ``open`` itself.  Every file lorascope reads goes through :func:`open_regular`:

- nothing under ``/proc``, ``/sys`` or ``/dev`` is opened, whatever a link says: the
  resolved path is checked before opening, and the opened file's own path
  (``/proc/self/fd/N``) after, so a link swapped in between is caught too;
- the open is non-blocking (a FIFO or a terminal that slipped through returns at once),
  then ``fstat`` refuses anything but a regular file.

A refused file raises :class:`NotRegular`, an ``OSError`` whose ``strerror`` is the
one-line reason, so every ``except OSError`` of a parser turns it into a problem.
"""
from __future__ import annotations

import errno
import os
import stat
from typing import IO

SPECIAL_ROOTS = ("/proc", "/sys", "/dev")


class NotRegular(OSError):
    def __init__(self, why: str, path: str | os.PathLike = ""):
        super().__init__(errno.EINVAL, why, str(path))


def special(path: str | os.PathLike) -> str | None:
    """The special root ('/proc', '/sys', '/dev') that ``path`` resolves into, or None."""
    real = os.path.realpath(path)
    for root in SPECIAL_ROOTS:
        if real == root or real.startswith(root + "/"):
            return root
    return None


def open_regular(path: str | os.PathLike) -> int:
    """A read-only, non-blocking file descriptor on a regular file outside /proc, /sys
    and /dev; NotRegular (an OSError) otherwise."""
    root = special(path)
    if root is not None:
        raise NotRegular(f"resolves into {root}: never read", path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular("not a regular file (a device, FIFO, socket or folder): never read", path)
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            opened = None                  # no /proc (not Linux): the check before stands
        if opened is not None:
            for r in SPECIAL_ROOTS:
                if opened == r or opened.startswith(r + "/"):
                    raise NotRegular(f"resolves into {r}: never read", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(path: str | os.PathLike, mode: str = "rb", **kw) -> IO:
    """:func:`open_regular` as a file object (``mode`` 'rb' or 'r' with the usual
    ``encoding``/``errors``/``newline`` keywords)."""
    if any(c in mode for c in "wax+"):
        raise ValueError("open_file only reads")
    fd = open_regular(path)
    try:
        return os.fdopen(fd, mode, **kw)
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The file's bytes (at most ``limit``) through :func:`open_regular`."""
    with open_file(path) as fh:
        return fh.read() if limit is None else fh.read(limit)


def read_text(path: str | os.PathLike, limit: int | None = None, *, encoding: str = "utf-8-sig",
              errors: str = "replace") -> str:
    return read_bytes(path, limit).decode(encoding, errors)


def is_regular(path: str | os.PathLike) -> bool:
    """A regular file outside the special roots (by stat, without opening it)."""
    try:
        return special(path) is None and stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


__all__ = ["NotRegular", "SPECIAL_ROOTS", "is_regular", "open_file", "open_regular", "read_bytes",
           "read_text", "special"]
