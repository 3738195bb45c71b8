"""Following a run directory as its trainer writes it, reading only what is new.

One follower per file the builder reads (:data:`lorascope.build.PARSERS`), kept across
scans:

* event files, ``trainer_log.jsonl`` and text logs are read incrementally by their
  parsers' readers (:class:`lorascope.ingest.tfevents.Reader` resumes at the end of the
  last complete record, the log readers at the byte after the last ended line), with
  their columns and counters: a 1 GB event file is never read twice;
* every other file (``trainer_state.json``, rewritten whole at each save; configs,
  checkpoints, results) is parsed again only when its size, modification time or inode
  changed.  A file that a parser finds damaged while it is still fresh (modified less
  than :data:`FRESH` seconds ago: a checkpoint or a state being written) is tried again
  later instead of being reported.

A file that shrinks or is replaced (another inode) is read again from its start.  The
walk that finds new files is :func:`lorascope.discover.walk`, the same as ``analyze``'s;
every file is opened through :mod:`lorascope.safe_open` by its parser.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from lorascope import build, discover
from lorascope.ingest import llamafactory, textlog, tfevents
from lorascope.model import Parsed, Source

FRESH = 5.0            # seconds: a damaged file modified more recently is being written
REPARSE_FACTOR = 4     # a whole-file parse of a curve file costs at most 1/4 of the time


def _stat(path: Path):
    try:
        return os.stat(path)
    except OSError:
        return None


class _Follower:
    """One file of the run."""

    def __init__(self, found: discover.Found, outside: str | None) -> None:
        self.found = found
        self.rel, self.kind, self.path = found.rel, found.kind, found.path
        self.outside = outside          # the real path, when a link leads outside the run
        self.sig = None                 # (inode, size, mtime) at the last read
        self.snap: Parsed | None = None  # the last Parsed handed out, while nothing changed
        self.snap_final = False

    def _note(self, p: Parsed) -> Parsed:
        if self.outside:
            p.source.problems.append(f"read through a link to outside the run directory: {self.outside}")
        return p

    def _failed(self, e: BaseException) -> Parsed:
        if isinstance(e, MemoryError):
            why = "out of memory while reading this file: not read"
        else:
            why = f"parser failed: {type(e).__name__}: {str(e)[:120]}"
        return Parsed(Source(self.rel, self.kind, 0, [why]))

    def poll(self, final: bool) -> bool:
        """Read what changed; True when this file's Parsed changed."""
        raise NotImplementedError

    def parsed(self, final: bool) -> Parsed | None:
        raise NotImplementedError


class _Incremental(_Follower):
    """Event files and logs: their parser's reader, resumed at each poll."""

    def __init__(self, found: discover.Found, outside: str | None) -> None:
        super().__init__(found, outside)
        self.reader = self._new_reader()
        self.error: Parsed | None = None

    def _new_reader(self):
        if self.kind == "tfevents":
            return tfevents.Reader(self.rel)
        if self.kind == "trainer_log":
            return llamafactory.Reader(self.rel)
        return textlog.Reader(self.rel)

    def poll(self, final: bool) -> bool:
        st = _stat(self.path)
        if st is None:
            return False
        sig = (st.st_dev, st.st_ino, st.st_size)
        if self.sig is not None and (sig[:2] != self.sig[:2] or st.st_size < self.sig[2]):
            self.reader = self._new_reader()         # replaced or cut: read it anew
            self.snap = None
        if sig == self.sig and not (final and not self.snap_final):
            return False
        self.sig = sig
        try:
            if self.kind == "tfevents":
                grew = self.reader.read(self.path)
            else:
                grew = self.reader.read(self.path, final=final)
        except Exception as e:          # a parser bug must not end the watch
            if os.environ.get("LORASCOPE_STRICT"):
                raise
            self.error = self._failed(e)
            return True
        if grew or final:
            self.snap = None
        return grew or final

    def parsed(self, final: bool) -> Parsed | None:
        if self.error is not None:
            return self.error
        if self.snap is not None and self.snap_final == final:
            return self.snap
        try:
            if self.kind == "tfevents":
                p = self.reader.parsed(final=final)
            elif self.kind == "trainer_log":
                p = self.reader.parsed()
            else:
                p = self.reader.parsed(final=final)
        except Exception as e:
            if os.environ.get("LORASCOPE_STRICT"):
                raise
            p = self._failed(e)
        self.snap, self.snap_final = self._note(p), final
        return self.snap


class _Whole(_Follower):
    """Any other file: parsed again, whole, when it changed."""

    def __init__(self, found: discover.Found, outside: str | None, deps=()) -> None:
        super().__init__(found, outside)
        self.fn = build._parser_for(found.kind)
        self.deps: tuple[Path, ...] = tuple(deps)    # files whose change means re-reading this one
        self.retry = False
        self.cost = 0.0
        self.last = 0.0

    def signature(self):
        out = []
        for p in (self.path,) + self.deps:
            st = _stat(p)
            out.append(None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def poll(self, final: bool) -> bool:
        if self.fn is None:
            return False
        sig = self.signature()
        if sig == self.sig and not self.retry and not (final and not self.snap_final):
            return False
        now = time.monotonic()
        if not final and self.cost > 0.05 and self.kind in build.CURVE_KINDS \
                and now - self.last < REPARSE_FACTOR * self.cost:
            self.retry = True                         # a large curve file: not too often
            return False
        t0 = time.monotonic()
        try:
            p = self.fn(self.path, self.rel)
        except Exception as e:
            if os.environ.get("LORASCOPE_STRICT") and not isinstance(e, MemoryError):
                raise
            p = self._failed(e)
        self.last = time.monotonic()
        self.cost = self.last - t0
        st = _stat(self.path)
        fresh = st is not None and time.time() - st.st_mtime < FRESH
        if not final and fresh and (p.source.problems or any(c.problems or c.truncated
                                                            for c in p.checkpoints)):
            self.retry = True                         # being written: look again later
            return False
        self.retry = False
        self.sig = sig
        self.snap, self.snap_final = self._note(p), final
        return True

    def parsed(self, final: bool) -> Parsed | None:
        return self.snap


INCREMENTAL = ("tfevents", "trainer_log", "text_log")


class RunFollower:
    """Every file of a run directory the builder reads, followed."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.files: list[discover.Found] = []
        self.walk_problems: list[str] = []
        self.followers: dict[str, _Follower] = {}
        self.walk_cost = 0.0
        self.walked_at = 0.0

    def walk(self) -> bool:
        """List the folder again; True when files appeared or went."""
        t0 = time.monotonic()
        files, problems = discover.walk(self.run_dir)
        self.walked_at = time.monotonic()
        self.walk_cost = self.walked_at - t0
        root_real = os.path.realpath(self.run_dir)
        old = self.followers
        new: dict[str, _Follower] = {}
        by_dir: dict[str, list[Path]] = {}
        for f in files:
            by_dir.setdefault(f.rel.rsplit("/", 1)[0] if "/" in f.rel else "", []).append(f.path)
        for f in files:
            if f.kind not in build.PARSERS:
                continue
            fol = old.get(f.rel)
            if fol is None or fol.kind != f.kind:
                real = os.path.realpath(f.path)
                outside = real if os.path.commonpath([root_real, real]) != root_real else None
                if f.kind in INCREMENTAL:
                    fol = _Incremental(f, outside)
                else:
                    fol = _Whole(f, outside, self._deps(f, files, by_dir))
            new[f.rel] = fol
        changed = list(new) != list(old) or [f.rel for f in files] != [f.rel for f in self.files]
        self.followers, self.files, self.walk_problems = new, files, problems
        return changed

    @staticmethod
    def _deps(f: discover.Found, files: list[discover.Found], by_dir: dict) -> list[Path]:
        """Files read with this one: an MLflow run's metric and param files, a SQLite
        database's journal."""
        d = f.rel.rsplit("/", 1)[0] if "/" in f.rel else ""
        if f.kind == "mlflow_run":
            return [x.path for x in files if x.kind == "mlflow_item" and x.rel.startswith(d + "/")]
        if f.kind == "aitk_loss_log":
            return [p for p in by_dir.get(d, []) if p.name.startswith(f.path.name) and p != f.path]
        return []

    def poll(self, final: bool = False) -> bool:
        """Read what is new in every file; True when anything changed."""
        changed = False
        for fol in self.followers.values():
            changed |= fol.poll(final)
        return changed

    def pieces(self, final: bool = False) -> tuple[list[Parsed], list[str], list[discover.Found]]:
        """What :func:`lorascope.build.parse_all` would give for the folder now."""
        parsed = [p for p in (fol.parsed(final) for fol in self.followers.values()) if p is not None]
        return parsed, list(self.walk_problems), list(self.files)

    def size(self) -> int:
        """Bytes of the followed files (for the status line)."""
        return sum(f.sig[2] for f in self.followers.values()
                   if isinstance(f, _Incremental) and f.sig is not None)
