"""MLflow file stores (``mlruns/<experiment id>/<run id>/``), the store HF Trainer's
``MLflowCallback`` fills when the tracking URI is a local path (``file:./mlruns``, or
no URI with MLflow < 3.7).

A run folder, as ``mlflow.store.tracking.file_store.FileStore`` writes it::

    meta.yaml            run_id, run_name, status (1 RUNNING, 3 FINISHED, 4 FAILED,
                         5 KILLED), start_time / end_time (ms), lifecycle_stage
    metrics/<key>        one line per logged value: "<timestamp ms> <value> <step>"
                         (MLflow < 1.0: "<timestamp> <value>", step 0); a key holding
                         "/" is a nested path
    params/<key>         the value as str(value) (HF: TrainingArguments.to_dict() merged
                         with the model config)
    tags/<key>           mlflow.runName, mlflow.user, ...
    artifacts/           logged files (checkpoints when HF_MLFLOW_LOG_ARTIFACTS is set)

``MLflowCallback.on_log`` logs every number of HF's log dict under its own name with
``step=state.global_step``, after replacing characters MLflow refuses
(``re.sub(r"[^0-9A-Za-z_\\-\\.\\ :/]", "_", key)``): ``loss``, ``grad_norm``,
``learning_rate``, ``epoch``, ``eval_loss``, ... and, once at the end,
``train_runtime``, ``train_loss``, ... (HF's summary; left out here, as TensorBoard's
``train/train_loss`` is not a curve either).

The run is read as one source (its ``meta.yaml``): each metric file is parsed by numpy in
one call (a file whose lines are not all three numbers falls back to a line-by-line
read that reports the bad lines).  Params are read with the trainer layouts like any
config (:mod:`lorascope.ingest._tracker`).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import yaml

from lorascope.ingest import _tracker
from lorascope.ingest._lines import ProblemLog
from lorascope.safe_open import read_bytes, read_text
from lorascope.model import Parsed, RawSeries, Source

KIND = "mlflow_run"
MAX_METRIC_FILES = 10_000
MAX_PARAM_FILES = 10_000
MAX_METRIC_BYTES = 1 << 30
MAX_PARAM_BYTES = 64 * 1024
MAX_META_BYTES = 1 << 20
MAX_DEPTH = 16
STATUS = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}


def _files(root: Path, limit: int, problems: list[str], what: str) -> list[tuple[str, Path]]:
    """(key, path) of every file under root (keys with "/" are nested folders)."""
    out: list[tuple[str, Path]] = []
    stack = [(root, "", 0)]
    seen: set[tuple[int, int]] = set()
    while stack:
        d, prefix, depth = stack.pop()
        try:
            st = d.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            key = f"{prefix}/{e.name}" if prefix else e.name
            try:
                if e.is_dir():
                    if depth < MAX_DEPTH:
                        stack.append((Path(e.path), key, depth + 1))
                elif e.is_file():
                    if len(out) >= limit:
                        problems.append(f"more than {limit} {what} files: the rest were not read")
                        return out
                    out.append((key, Path(e.path)))
            except OSError:
                continue
    return sorted(out)


def _meta(path: Path, problems: list[str]) -> dict:
    try:
        if path.stat().st_size > MAX_META_BYTES:
            problems.append("meta.yaml larger than 1 MB, not read")
            return {}
        doc = yaml.safe_load(read_text(path, MAX_META_BYTES, encoding="utf-8"))
    except (OSError, yaml.YAMLError, RecursionError, ValueError) as e:
        problems.append(f"meta.yaml not readable: {type(e).__name__}")
        return {}
    return doc if isinstance(doc, dict) else {}


def read_metric(path: Path, problems: ProblemLog) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps int64, values float64, timestamps in seconds) of one metric file."""
    empty = np.empty(0, np.int64), np.empty(0), np.empty(0)
    try:
        size = path.stat().st_size
        if size > MAX_METRIC_BYTES:
            problems.add(f"{path.name}: {size} bytes, larger than {MAX_METRIC_BYTES}: not read")
            return empty
        data = read_bytes(path, MAX_METRIC_BYTES)
    except OSError as e:
        problems.add(f"{path.name}: cannot read ({e.strerror or e})")
        return empty
    if not data.strip():
        return empty
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    arr = None
    if data.isascii():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                arr = np.fromstring(data, dtype=np.float64, sep=" ")
            except (ValueError, DeprecationWarning, OverflowError):
                arr = None
    if arr is not None and len(arr) == 3 * lines:
        arr = arr.reshape(-1, 3)
        ts, vals, steps = arr[:, 0], arr[:, 1], arr[:, 2]
        ok = np.isfinite(steps) & (steps == np.floor(steps)) & (np.abs(steps) < 2.0 ** 62)
        if ok.all():
            return steps.astype(np.int64), vals.copy(), ts / 1000.0
    return _slow_metric(data, path.name, problems)


def _slow_metric(data: bytes, name: str, problems: ProblemLog):
    steps: list[int] = []
    vals: list[float] = []
    ts: list[float] = []
    bad = 0
    for line in data.split(b"\n"):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) == 3:
                t, v, s = float(parts[0]), float(parts[1]), int(parts[2])
            elif len(parts) == 2:          # MLflow before 1.0: no step
                t, v, s = float(parts[0]), float(parts[1]), 0
            else:
                raise ValueError
            if abs(s) >= 2 ** 62:
                raise ValueError
        except (ValueError, OverflowError):
            bad += 1
            continue
        steps.append(s)
        vals.append(v)
        ts.append(t / 1000.0)
    if bad:
        problems.add(f"metrics/{name}: {bad} lines are not '<timestamp> <value> <step>'")
    return np.asarray(steps, np.int64), np.asarray(vals, np.float64), np.asarray(ts, np.float64)


def _params(root: Path, problems: list[str]) -> dict:
    doc: dict = {}
    for key, p in _files(root, MAX_PARAM_FILES, problems, "param"):
        try:
            if p.stat().st_size > MAX_PARAM_BYTES:
                continue
            text = read_bytes(p, MAX_PARAM_BYTES).decode("utf-8", errors="replace")
        except OSError:
            continue
        doc[key] = _tracker.literal(text)
    return doc


def parse(path: Path, rel: str) -> Parsed:
    """One MLflow run (``path`` is its ``meta.yaml``): metrics as curves, params as config."""
    src = Source(path=rel, kind=KIND)
    parsed = Parsed(source=src)
    path = Path(path)
    run_dir = path.parent
    run_rel = rel.rsplit("/", 1)[0] if "/" in rel else ""
    try:
        meta = _meta(path, src.problems)
        probs = ProblemLog()
        metrics = _files(run_dir / "metrics", MAX_METRIC_FILES, src.problems, "metric")
        series: list[RawSeries] = []
        points = 0
        for key, p in metrics:
            steps, vals, ts = read_metric(p, probs)
            if len(steps):
                series.append(RawSeries(tag=key, steps=steps, values=vals,
                                        source=rel, wall_times=ts))
                points += len(steps)
        src.problems.extend(probs.out())
        names = {r.tag for r in series}
        if "train_runtime" in names:      # HF's end-of-training summary, not curves
            series = [r for r in series if not (r.tag in _tracker.HF_SUMMARY_KEYS and len(r.steps) <= 1)]
        parsed.series = series
        params = _params(run_dir / "params", src.problems)
        if params:
            values, facts = _tracker.config_values(params, path, rel)
            parsed.config = values
            parsed.facts.update(facts)
        st = meta.get("start_time")
        if isinstance(st, (int, float)) and not isinstance(st, bool) and st > 0:
            parsed.facts["started_at"] = float(st) / 1000.0
        status = meta.get("status")
        if isinstance(status, int) and status in STATUS:
            parsed.facts["run_status"] = STATUS[status]
        if meta.get("lifecycle_stage") == "deleted":
            src.problems.append("the run was deleted in MLflow (lifecycle_stage: deleted)")
        if not metrics and not params:
            src.problems.append(f"no metrics or params under {run_rel or '.'}")
        src.records = points + len(params)
    except Exception as e:  # noqa: BLE001 - a parser never raises on content
        src.problems.append(f"run not understood: {type(e).__name__}: {str(e)[:200]}")
    return parsed
