"""ai-toolkit's UI logger: ``loss_log.db`` in the training folder (``toolkit/logging_aitk.py``,
``UILogger``; the web UI turns it on with ``logging: {log_every: 1, use_ui_logger: true}``).

A SQLite database (WAL journal) with three tables::

    steps(step INTEGER PRIMARY KEY, wall_time REAL)
    metric_keys(key TEXT PRIMARY KEY, first_seen_step INTEGER, last_seen_step INTEGER)
    metrics(step INTEGER, key TEXT, value_real REAL, value_text TEXT, PRIMARY KEY (step, key))

one row per logged key and step: ``loss/loss`` (one key per entry of the trainer's loss
dict), ``learning_rate``, and whatever the process adds.  A resumed run first deletes
the rows past the step it resumes from, so the table holds one value per step.  SQLite
stores a NaN as NULL: a row whose ``value_real`` and ``value_text`` are both NULL is the
trainer's NaN (``UILogger._coerce_value`` maps only ``None`` to NULL, and the loss is
never ``None``).

The database (and its ``-wal`` file, which holds what a killed run had not yet
checkpointed) is copied to a private temporary folder and read there: SQLite writes
beside a database it opens, and lorascope never writes into the run directory.
"""
from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path

import numpy as np

from lorascope.safe_open import open_file
from lorascope.model import Parsed, RawSeries, Source

KIND = "aitk_loss_log"
MAX_BYTES = 1 << 30
MAX_KEYS = 10_000


def parse(path: Path, rel: str) -> Parsed:
    src = Source(path=rel, kind=KIND)
    parsed = Parsed(source=src)
    path = Path(path)
    try:
        size = path.stat().st_size
        wal = path.with_name(path.name + "-wal")
        wal_size = wal.stat().st_size if wal.is_file() else 0
    except OSError as e:
        src.problems.append(f"cannot read ({e.strerror or e})")
        return parsed
    if size + wal_size > MAX_BYTES:
        src.problems.append(f"{size + wal_size} bytes: larger than {MAX_BYTES}, not read")
        return parsed
    if size == 0:
        src.problems.append("empty file")
        return parsed
    with tempfile.TemporaryDirectory(prefix="lorascope-aitk-") as td:
        copy = Path(td) / "loss_log.db"
        try:
            _copy(path, copy)
            if wal_size:
                _copy(wal, Path(td) / "loss_log.db-wal")
        except OSError as e:
            src.problems.append(f"cannot read ({e.strerror or e})")
            return parsed
        try:
            _read(copy, rel, parsed)
        except (sqlite3.Error, ValueError, OverflowError, MemoryError) as e:
            src.problems.append(f"not a readable ai-toolkit loss log: {type(e).__name__}: {str(e)[:160]}")
    parsed.facts["trainer"] = "ai-toolkit"
    parsed.facts["task"] = "sd"
    return parsed


def _copy(src: Path, dest: Path) -> None:
    """A private copy of a regular file (never a FIFO, device or link into /proc)."""
    with open_file(src) as fi, open(dest, "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)


def _read(db: Path, rel: str, parsed: Parsed) -> None:
    con = sqlite3.connect(str(db), timeout=1.0)
    try:
        con.execute("PRAGMA query_only = ON")
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "metrics" not in tables:
            parsed.source.problems.append("no metrics table (not an ai-toolkit loss log)")
            return
        walls = {}
        if "steps" in tables:
            walls = dict(con.execute("SELECT step, wall_time FROM steps WHERE typeof(step) = 'integer'"))
        keys = [r[0] for r in con.execute(
            "SELECT key FROM metrics GROUP BY key ORDER BY MIN(rowid) LIMIT ?", (MAX_KEYS + 1,))]
        if len(keys) > MAX_KEYS:
            parsed.source.problems.append(f"more than {MAX_KEYS} keys: the rest were not read")
            keys = keys[:MAX_KEYS]
        points = 0
        for key in keys:
            if not isinstance(key, str):
                continue
            rows = con.execute(
                "SELECT step, value_real, value_text FROM metrics WHERE key = ? "
                "AND typeof(step) = 'integer' ORDER BY step", (key,)).fetchall()
            steps, vals = [], []
            for step, real, text in rows:
                if not -(2 ** 62) < step < 2 ** 62:
                    continue
                if isinstance(real, (int, float)):
                    v = float(real)
                elif real is None and text is None:
                    v = float("nan")       # SQLite's NULL for the trainer's NaN
                else:
                    continue               # a text value: not a curve point
                steps.append(step)
                vals.append(v)
            if not steps:
                continue
            st = np.asarray(steps, np.int64)
            wt = np.asarray([float(walls.get(s, np.nan)) if isinstance(walls.get(s), (int, float))
                             else np.nan for s in steps], np.float64)
            parsed.series.append(RawSeries(tag=key, steps=st, values=np.asarray(vals, np.float64),
                                           source=rel, wall_times=wt if np.isfinite(wt).all() else None))
            points += len(steps)
        parsed.source.records = points
    finally:
        con.close()
