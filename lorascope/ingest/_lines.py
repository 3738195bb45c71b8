"""Bounded reading of text files for the log parsers.

Real logs can be gigabytes, hold one enormous line (a tqdm bar that never printed a
newline, a dumped tensor) or binary garbage.  :func:`iter_lines` never holds more than
``max_line`` characters of one line nor reads past ``max_bytes``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from lorascope.safe_open import open_file

MAX_LINE = 10_000              # characters kept of one line
MAX_BYTES = 512 * 1024 * 1024  # bytes read of one file
CHUNK = 1 << 20
MAX_PROBLEMS = 5               # problem strings kept per file before summarising
MAX_INT = 2 ** 62              # larger counts are garbage; they would overflow int64 arrays


def json_number(v: Any) -> float | None:
    """A JSON number as float (bools and strings are not numbers)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return float(v)
    except OverflowError:   # an integer with hundreds of digits
        return None


def json_int(v: Any) -> int | None:
    """An integer, also from a float with no fractional part (10.0)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if abs(v) <= MAX_INT else None
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return int(v) if abs(v) <= MAX_INT else None
    return None


@dataclass
class ReadStats:
    lines: int = 0
    long_lines: int = 0        # lines cut at max_line
    stopped_at_bytes: int | None = None   # set when max_bytes was reached


def iter_lines(path: Path, max_line: int = MAX_LINE, max_bytes: int = MAX_BYTES,
               stats: ReadStats | None = None) -> Iterator[tuple[int, str, bool]]:
    """Yield ``(lineno, text, cut)`` for each line: 1-based number, the text without
    its line ending (decoded as UTF-8 with replacement, BOM dropped), and whether the
    line was longer than ``max_line`` and cut.  Raises OSError only on open/read."""
    yield from LineTail(max_line, max_bytes, stats).read(path, final=True)


class LineTail:
    """The lines of a text file read in pieces: each :meth:`read` goes on at the byte
    after the last one read before (``lorascope watch`` follows a log its trainer is
    still writing).  Only lines ended by a newline are yielded, unless ``final``: the
    bytes after the last newline wait for the next read (at most ``max_line`` characters
    of them are kept).  Line numbers, the BOM of the first line and the byte cap carry
    over from read to read, so the lines are those :func:`iter_lines` gives."""

    def __init__(self, max_line: int = MAX_LINE, max_bytes: int = MAX_BYTES,
                 stats: ReadStats | None = None) -> None:
        self.max_line, self.max_bytes = max_line, max_bytes
        self.stats = stats if stats is not None else ReadStats()
        self.offset = 0              # bytes read so far
        self.lineno = 0
        self.buf = bytearray()       # the start of a line not ended yet
        self.cut = False
        self.first = True
        self.byte_cap = max_line * 4 + 4   # a UTF-8 character is at most 4 bytes

    @property
    def pending(self) -> bool:
        """Bytes after the last newline (a line still being written)."""
        return bool(self.buf) or self.cut

    def _emit(self, b: bytes, was_cut: bool) -> tuple[int, str, bool]:
        self.lineno += 1
        st = self.stats
        st.lines = self.lineno
        if self.first:
            self.first = False
            if b.startswith(b"\xef\xbb\xbf"):
                b = b[3:]
        if b.endswith(b"\r"):
            b = b[:-1]
        text = b.decode("utf-8", errors="replace")
        if len(text) > self.max_line:
            text = text[:self.max_line]
            was_cut = True
        if was_cut:
            st.long_lines += 1
        return self.lineno, text, was_cut

    def read(self, path: Path, final: bool = False) -> Iterator[tuple[int, str, bool]]:
        """The lines completed since the last read (and with ``final`` the last line,
        ended or not)."""
        buf, cap = self.buf, self.byte_cap
        if self.stats.stopped_at_bytes is None:
            with open_file(path) as f:
                if self.offset:
                    f.seek(self.offset)
                while True:
                    chunk = f.read(CHUNK)
                    if not chunk:
                        break
                    self.offset += len(chunk)
                    start = 0
                    while True:
                        nl = chunk.find(b"\n", start)
                        if nl < 0:
                            room = cap - len(buf)
                            if room > 0:
                                buf += chunk[start:start + room]
                            if len(chunk) - start > max(room, 0):
                                self.cut = True
                            break
                        piece = chunk[start:nl]
                        room = cap - len(buf)
                        if room > 0:
                            buf += piece[:room]
                        if len(piece) > max(room, 0):
                            self.cut = True
                        yield self._emit(bytes(buf), self.cut)
                        buf.clear()
                        self.cut = False
                        start = nl + 1
                    if self.offset >= self.max_bytes:
                        self.stats.stopped_at_bytes = self.offset
                        break
        if final and (buf or self.cut):
            yield self._emit(bytes(buf), self.cut)
            buf.clear()
            self.cut = False


class ProblemLog:
    """Keeps the first few problem strings of a file and counts the rest."""

    def __init__(self, limit: int = MAX_PROBLEMS):
        self.limit = limit
        self.kept: list[str] = []
        self.more = 0

    def add(self, text: str) -> None:
        if len(self.kept) < self.limit:
            self.kept.append(text[:300])
        else:
            self.more += 1

    def out(self) -> list[str]:
        if self.more:
            return self.kept + [f"... and {self.more} more problems of this kind"]
        return list(self.kept)


def read_bounded(path: Path, problems: list[str], max_bytes: int) -> bytes | None:
    """The whole file, or None with a problem noted: larger than ``max_bytes``,
    unreadable, or empty. For small JSON documents read in one piece."""
    try:
        with open_file(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                problems.append(f"file is {size} bytes, larger than {max_bytes}: not read")
                return None
            raw = fh.read(max_bytes + 1)        # a file that grew meanwhile: still bounded
        if len(raw) > max_bytes:
            problems.append(f"file grew past {max_bytes} bytes while read: not read")
            return None
    except OSError as e:
        problems.append(f"cannot read ({e.strerror or e})")
        return None
    if not raw.strip():
        problems.append("empty file")
        return None
    return raw

