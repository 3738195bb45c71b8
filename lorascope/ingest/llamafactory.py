"""LLaMA-Factory ``trainer_log.jsonl`` and the HF ``*_results.json`` summaries.

``trainer_log.jsonl`` is written by LLaMA-Factory's ``LogCallback``: one JSON object per
logging step with ``current_steps``, ``total_steps``, ``loss``, ``lr`` (older versions
``learning_rate``), ``epoch``, ``percentage``, ``elapsed_time``, ``remaining_time`` and,
depending on the stage, ``eval_loss``, ``predict_loss``, ``reward``, ``accuracy``,
``throughput``, ``total_tokens``.  Prediction-only runs log only the progress fields.
"""
from __future__ import annotations

import re
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from lorascope.ingest._lines import MAX_LINE, LineTail, ProblemLog, ReadStats, read_bounded
from lorascope.ingest._lines import json_int as _int
from lorascope.ingest._lines import json_number as _num
from lorascope.ingest import _json
from lorascope.model import Parsed, RawSeries, Source

# progress and bookkeeping fields: not curves
SKIP_KEYS = {"current_steps", "total_steps", "percentage", "elapsed_time", "remaining_time",
             "throughput", "total_tokens"}
MAX_RESULTS_BYTES = 16 * 1024 * 1024
MAX_RESULT_KEYS = 200
_TIME_RE = re.compile(r"^\s*(?:(\d+) days?, )?(\d+):(\d{1,2}):(\d{1,2})(?:\.\d+)?\s*$")


def duration_seconds(text: Any) -> float | None:
    """``"9 days, 21:39:23"`` / ``"0:03:29"`` (str(timedelta)) -> seconds."""
    if not isinstance(text, str):
        return None
    m = _TIME_RE.match(text)
    if not m:
        return None
    d, h, mi, s = m.groups()
    return float(int(d or 0) * 86400 + int(h) * 3600 + int(mi) * 60 + int(s))


def _changes(points: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """(position, planned) at each change of the planned total, bounded."""
    out: list[tuple[float, int]] = []
    for pos, v in points:
        if not out or out[-1][1] != v:
            out.append((pos, v))
    return out[:1000]


def parse(path: Path, rel: str) -> Parsed:
    """``trainer_log.jsonl`` -> RawSeries ``loss``, ``eval_loss``, ``learning_rate``,
    ``epoch`` and any other numeric field under its own name."""
    r = Reader(rel)
    r.read(path, final=True)
    return r.parsed()


class Reader:
    """``trainer_log.jsonl`` read incrementally: each :meth:`read` parses the lines
    appended since the last one (a line still being written waits for the next read),
    :meth:`parsed` gives what was read so far (``lorascope watch``)."""

    def __init__(self, rel: str) -> None:
        self.rel = rel
        self.bad = ProblemLog()
        self.points: dict[str, tuple[array, array, array]] = {}    # compact: 24 bytes a point
        self.total_steps: list[int] = []
        self.planned_at: list[tuple[float, int]] = []
        self.last_step: int | None = None
        self.decreases = 0
        self.elapsed = None
        self.stats = ReadStats()
        self.tail = LineTail(MAX_LINE, stats=self.stats)
        self.epoch_seen: set[int] = set()
        self.records = 0
        self.error: str | None = None

    def read(self, path: Path, final: bool = False) -> bool:
        """Parse the lines appended since the last read; True when records were added."""
        before = self.records
        try:
            for lineno, line, cut in self.tail.read(path, final=final):
                self._line(lineno, line, cut)
        except OSError as e:
            self.error = f"cannot read ({e.strerror or e})"
        return self.records > before

    def _line(self, lineno: int, line: str, cut: bool) -> None:
        bad = self.bad
        if not line.strip():
            return
        if cut:
            bad.add(f"line {lineno}: longer than {MAX_LINE} characters, skipped")
            return
        try:
            obj = _json.loads(line)
        except _json.NestedTooDeep as e:
            bad.add(f"line {lineno}: {e}")
            return
        except ValueError:
            bad.add(f"line {lineno}: not a JSON object (truncated or garbage)")
            return
        if not isinstance(obj, dict):
            bad.add(f"line {lineno}: JSON {type(obj).__name__}, not an object")
            return
        step = _int(obj.get("current_steps"))
        if step is None or step < 0:
            bad.add(f"line {lineno}: no valid current_steps")
            return
        self.records += 1
        if self.last_step is not None and step < self.last_step:
            self.decreases += 1
            self.epoch_seen = set()            # a training appended after another
        self.last_step = step
        ts = _int(obj.get("total_steps"))
        if ts is not None and ts > 0:
            if not self.total_steps or self.total_steps[-1] != ts:
                self.total_steps.append(ts)
            # per line, for a file two trainings appended to (build cuts it by line)
            self.planned_at.append((float(lineno), ts))
        el = duration_seconds(obj.get("elapsed_time"))
        if el is not None:
            self.elapsed = el
        has_lr = "learning_rate" in obj
        for k, val in obj.items():
            if k in SKIP_KEYS:
                continue
            v = _num(val)
            if v is None:
                if val is not None and not isinstance(val, str):
                    bad.add(f"line {lineno}: {k} is {type(val).__name__}, not a number")
                continue
            tag = "learning_rate" if (k == "lr" and not has_lr) else k
            if tag == "epoch":
                if step in self.epoch_seen:
                    continue      # the closing line repeats the last step's epoch
                self.epoch_seen.add(step)
            cols = self.points.get(tag)
            if cols is None:
                cols = self.points[tag] = (array("q"), array("d"), array("q"))
            s, vs, ls = cols
            s.append(step)
            vs.append(v)
            ls.append(lineno)

    def parsed(self) -> Parsed:
        """What was read so far (copies: reading may go on)."""
        rel, stats, records = self.rel, self.stats, self.records
        src = Source(path=rel, kind="trainer_log")
        parsed = Parsed(source=src)
        parsed.facts["trainer"] = "llamafactory"
        parsed.facts["task"] = "llm"
        if self.error:
            src.problems.append(self.error)
        if stats.stopped_at_bytes:
            src.problems.append(f"only the first {stats.stopped_at_bytes} bytes were read")
        if stats.lines == 0 or (records == 0 and not self.bad.kept):
            src.problems.append("empty file")
        src.records = records
        src.problems.extend(self.bad.out())
        f = parsed.facts
        total_steps = self.total_steps
        if total_steps:
            f["planned_steps"] = total_steps[-1]
            if len(set(total_steps)) > 1:
                f["total_steps_values"] = total_steps[:20]
                f["planned_at"] = _changes(self.planned_at)
        if self.last_step is not None:
            f["last_logged_step"] = self.last_step
        if self.decreases:
            f["step_decreases"] = self.decreases      # interleaved writers or a restarted run
        if self.elapsed is not None:
            f["elapsed_seconds"] = self.elapsed
        if records and "loss" not in self.points and "eval_loss" not in self.points:
            f["no_loss_logged"] = True
        for tag, (s, v, ln) in self.points.items():
            # copies (np.array), never views: the arrays grow on with the next read
            parsed.series.append(RawSeries(tag=tag, steps=np.array(s, dtype=np.int64),
                                           values=np.array(v, dtype=np.float64), source=rel,
                                           positions=np.array(ln, dtype=np.float64)))
        return parsed


def parse_results(path: Path, rel: str) -> Parsed:
    """``all_results.json`` / ``train_results.json`` / ``eval_results.json`` /
    ``predict_results.json``: end-of-run numbers, no series.

    Facts: ``final_train_loss``, ``final_eval_loss``, ``epoch``, ``train_runtime``,
    ``predict_only`` (only ``predict_*`` keys), ``results`` (every numeric key)."""
    src = Source(path=rel, kind="results")
    parsed = Parsed(source=src)
    raw = read_bounded(path, src.problems, MAX_RESULTS_BYTES)
    if raw is None:
        return parsed
    try:
        obj = _json.loads(raw.decode("utf-8-sig", errors="replace"))
    except _json.NestedTooDeep as e:
        src.problems.append(f"{e}: not read")
        return parsed
    except ValueError as e:
        src.problems.append(f"not valid JSON ({str(e)[:120]})")
        return parsed
    if not isinstance(obj, dict):
        src.problems.append(f"top level is {type(obj).__name__}, not an object")
        return parsed
    results: dict[str, float] = {}
    wrong = ProblemLog()
    for k, val in obj.items():
        v = _num(val)
        if v is None:
            if val is not None and not isinstance(val, str):
                wrong.add(f"{k} is {type(val).__name__}, not a number")
            continue
        if len(results) < MAX_RESULT_KEYS:
            results[str(k)] = v
    src.problems.extend(wrong.out())
    src.records = len(results)
    f = parsed.facts
    f["results"] = results
    for key, fact in (("train_loss", "final_train_loss"), ("eval_loss", "final_eval_loss"),
                      ("epoch", "epoch"), ("train_runtime", "train_runtime"),
                      ("predict_loss", "final_predict_loss")):
        if key in results:
            f[fact] = results[key]
    if results and all(k.startswith("predict_") for k in results):
        f["predict_only"] = True
    return parsed
