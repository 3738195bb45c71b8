"""Where reports go, and writing them without harming the run.

Report file names come from run folder names, which are data: :func:`report_names`
makes them safe for any file system (no separators, control characters or leading
dots; at most :data:`NAME_BYTES` bytes of UTF-8, a hash of the full name keeping
truncated names apart), unique within a batch even across letter case (``a/run`` and
``b/run`` become ``a_run`` and ``b_run``; then ``-2``, ``-3`` in argument order), and
never ``index`` when an index page is written beside them.  The same arguments always
give the same names.

:func:`write_report` refuses a target that resolves into the run directory or is the
same file (device and inode, i.e. a hard link) as one of the run's files, and writes
through a temporary file renamed into place, so an existing link is replaced, never
written through.  Every refusal or OS error is a :class:`ReportWriteError` with a
one-line reason.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

NAME_BYTES = 120             # bytes of UTF-8 in a generated report name (NAME_MAX is 255)
RESERVED = {"index"}         # the batch index page
_BAD = re.compile(r"[^\w.\-+=@,]+")   # \w: Unicode letters, digits and _


class ReportWriteError(Exception):
    """The report could not be written where asked (one-line reason)."""


def safe_name(name: str) -> str:
    """A run folder name as a file name: runs of characters other than letters, digits
    and ``_.-+=@,`` become ``_``; no leading dot; at most NAME_BYTES bytes."""
    s = _BAD.sub("_", name.encode("utf-8", "replace").decode("utf-8")).strip("_")
    s = s.lstrip(".") or "run"
    if len(s.encode("utf-8")) > NAME_BYTES:
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:10]
        cut = s.encode("utf-8")[:NAME_BYTES - 11].decode("utf-8", "ignore")
        s = f"{cut}-{digest}"
    return s


def _components(run_dir: str | os.PathLike) -> list[str]:
    try:
        p = Path(run_dir).resolve()
    except (OSError, RuntimeError):
        p = Path(os.path.abspath(run_dir))
    return [c for c in p.parts if c not in ("/", "")] or ["run"]


def report_names(run_dirs: list, *, index: bool = False) -> list[str]:
    """One report name (without ``.html``) per run directory, in order: unique, safe,
    deterministic; with ``index`` the name ``index`` is left for the index page."""
    comps = [_components(d) for d in run_dirs]
    names = [safe_name(c[-1]) for c in comps]
    clash = _clashes(names, index)
    for i in range(len(names)):
        if names[i].casefold() in clash and len(comps[i]) > 1:
            names[i] = safe_name(f"{comps[i][-2]}_{comps[i][-1]}")
    taken: set[str] = set(RESERVED) if index else set()
    out = []
    for n in names:
        cand, k = n, 1
        while cand.casefold() in taken:
            k += 1
            cand = f"{n}-{k}"
        taken.add(cand.casefold())
        out.append(cand)
    return out


def _clashes(names: list[str], index: bool) -> set[str]:
    seen: dict[str, int] = {}
    for n in names:
        seen[n.casefold()] = seen.get(n.casefold(), 0) + 1
    out = {k for k, v in seen.items() if v > 1}
    if index:
        out |= {k for k in seen if k in RESERVED}
    return out


def _run_inodes(run_dir: Path) -> set[tuple[int, int]]:
    from lorascope import discover
    files, _ = discover.walk(run_dir)
    out = set()
    for f in files:
        try:
            st = os.stat(f.path)
        except OSError:
            continue
        out.add((st.st_dev, st.st_ino))
    return out


def check_target(target: Path, run_dirs: list) -> None:
    """Raise ReportWriteError when writing ``target`` could touch one of the runs: it
    resolves into a run directory, or it is (a link to) one of a run's files."""
    try:
        real = target.resolve()
    except (OSError, RuntimeError, ValueError) as e:    # a link loop, a NUL
        raise ReportWriteError(f"cannot write the report to {target}: {e}") from None
    for rd in run_dirs:
        try:
            rd_real = Path(rd).resolve()
        except (OSError, ValueError, RuntimeError):      # not a path that can exist
            continue
        if real == rd_real or rd_real in real.parents:
            raise ReportWriteError(f"refusing to write the report inside the run directory: {target}")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ReportWriteError(f"cannot write the report to {target}: {e.strerror}") from None
    if os.path.isdir(real):
        raise ReportWriteError(f"cannot write the report to {target}: it is a directory")
    if st.st_nlink > 1:                         # a hard link: to a file of a run?
        key = (st.st_dev, st.st_ino)
        for rd in run_dirs:
            if key in _run_inodes(Path(rd)):
                raise ReportWriteError(f"refusing to write the report to {target}: "
                                       f"it is the same file as one in the run directory {rd}")


def write_report(target: Path, text: str, run_dirs: list) -> Path:
    """Write ``text`` (UTF-8) to ``target`` through a temporary file in the same folder,
    renamed into place; refuses targets that could touch a run (see check_target)."""
    target = Path(target)
    check_target(target, run_dirs)
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        check_target(target, run_dirs)          # the folder may be a link made meanwhile
        tmp = folder / f".{target.name[:200]}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as fh:
                fh.write(text)                   # errors=replace: lone surrogates (non-UTF-8 names)
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as e:
        why = e.strerror or str(e)
        raise ReportWriteError(f"cannot write the report to {target}: {why}") from None
    return target
