"""lorascope from Python: a run's curves, checkpoints and dataset as pandas frames, and
its post-mortem as an object that shows itself in Jupyter.

    >>> import lorascope
    >>> run = lorascope.load("output/my_lora")
    >>> loss = run.scalars[run.scalars.tag == "train/loss"]
    >>> loss.plot(x="step", y="value")
    >>> report = lorascope.analyze("output/my_lora")
    >>> report.verdict
    'failed'
    >>> report.findings[["severity", "rule", "step", "title"]]
    >>> report                      # in Jupyter: the post-mortem page, inline

Both read the folder exactly as ``lorascope analyze`` does (read-only, every file through
the same bounded parsers) and raise :class:`lorascope.build.Unreadable` for a folder with
nothing readable.  pandas is imported on first use, not by ``import lorascope``.
"""
from __future__ import annotations

import functools
import html as _html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:                    # pragma: no cover
    import pandas as pd

    from lorascope.pipeline import Analysis
    from lorascope.model import Run

SCALAR_COLUMNS = ("run", "source", "tag", "step", "wall_time", "value")
CHECKPOINT_COLUMNS = ("run", "path", "step", "format", "rank", "alpha", "dtype", "size_bytes", "modules",
                      "zero_modules", "nonfinite_modules", "norm", "truncated", "problems")
DATASET_COLUMNS = ("dataset", "kind", "file", "caption", "index", "exists", "width", "height", "error",
                   "degenerate", "length", "tokens")
FINDING_COLUMNS = ("severity", "rule", "step", "step_start", "step_end", "title", "evidence", "causes",
                   "fix", "files")


def _pd():
    import pandas as pd
    return pd


def scalars_frame(runs) -> "pd.DataFrame":
    """Every curve point of ``runs``, one row each: ``run`` (the run's id: ``run-1`` ...),
    ``source`` (the file, relative to the folder), ``tag`` (the series' name), ``step``,
    ``wall_time`` (seconds since the epoch, NaN where the file has none) and ``value``
    (NaN and inf kept)."""
    pd = _pd()
    parts = []
    for run in runs:
        for s in run.series:
            n = len(s.steps)
            if s.point_sources is not None and s.sources:
                src = np.asarray(s.sources, dtype=object)[s.point_sources]
            else:
                src = np.full(n, ", ".join(s.sources), dtype=object)
            wall = s.wall_times if s.wall_times is not None else np.full(n, np.nan)
            parts.append(pd.DataFrame({
                "run": np.full(n, run.id, dtype=object), "source": src,
                "tag": np.full(n, s.name, dtype=object), "step": np.asarray(s.steps, dtype=np.int64),
                "wall_time": np.asarray(wall, dtype=np.float64), "value": np.asarray(s.values, dtype=np.float64)}))
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            SCALAR_COLUMNS, (object, object, object, np.int64, np.float64, np.float64))})
    return pd.concat(parts, ignore_index=True)


def checkpoints_frame(runs) -> "pd.DataFrame":
    """One row per adapter checkpoint read: its run, file, step, format, rank, alpha, dtype,
    size, number of adapted modules, modules whose up weight is all zero or that hold
    non-finite values, total norm, and whether it was cut short."""
    pd = _pd()
    rows = []
    for run in runs:
        for c in run.checkpoints:
            norms = [m.norm for m in c.modules if m.norm is not None]
            rows.append({"run": run.id, "path": c.path, "step": c.step, "format": c.format, "rank": c.rank,
                         "alpha": c.alpha, "dtype": c.dtype, "size_bytes": c.size_bytes,
                         "modules": len(c.modules), "zero_modules": sum(1 for m in c.modules if m.zero),
                         "nonfinite_modules": sum(1 for m in c.modules if m.nonfinite),
                         "norm": float(np.sqrt(sum(x * x for x in norms))) if norms else None,
                         "truncated": c.truncated, "problems": list(c.problems)})
    return pd.DataFrame(rows, columns=list(CHECKPOINT_COLUMNS))


def dataset_frame(run) -> "pd.DataFrame":
    """One row per dataset item read (an image with its caption, or a text record):
    which dataset (its folder or file), the file, caption or text, size, and what is wrong
    with it (``error``: cannot be decoded; ``degenerate``: constant, black or white;
    ``exists``: False when the manifest names a missing file)."""
    pd = _pd()
    rows = [{"dataset": ds.root, "kind": ds.kind, "file": it.file, "caption": it.caption, "index": it.index,
             "exists": it.exists, "width": it.width, "height": it.height, "error": it.error,
             "degenerate": it.degenerate, "length": it.length, "tokens": it.tokens}
            for ds in run.datasets for it in ds.items]
    return pd.DataFrame(rows, columns=list(DATASET_COLUMNS))


class RunData:
    """A run folder as lorascope reads it (see :func:`load`)."""

    def __init__(self, path: str, runs: list["Run"], pick: int):
        self.path = path
        self.runs: tuple["Run", ...] = tuple(runs)      # oldest first
        self.run: "Run" = runs[pick]                     # the typed Run (lorascope.model.Run)

    @property
    def config(self) -> dict[str, Any]:
        """The run's normalized settings (``learning_rate``, ``lora_rank``, ...)."""
        return {k: v for k, v in self.run.config.values.items() if v is not None}

    @functools.cached_property
    def scalars(self) -> "pd.DataFrame":
        """Every logged scalar of every run of the folder, tidy (see :func:`scalars_frame`)."""
        return scalars_frame(self.runs)

    @functools.cached_property
    def checkpoints(self) -> "pd.DataFrame":
        return checkpoints_frame(self.runs)

    @functools.cached_property
    def dataset(self) -> "pd.DataFrame":
        return dataset_frame(self.run)

    def __repr__(self) -> str:
        r = self.run
        return (f"<lorascope run {r.path!r}: {r.trainer}, {len(r.series)} series, "
                f"{len(r.checkpoints)} checkpoints, steps {r.steps.first}-{r.steps.last}"
                + (f", {len(self.runs)} runs in the folder" if len(self.runs) > 1 else "") + ">")


def load(path: str | Path, *, run: str | None = None) -> RunData:
    """Read a run folder: ``.scalars`` (a tidy DataFrame: run, source, tag, step,
    wall_time, value), ``.checkpoints`` and ``.dataset`` (DataFrames), ``.config`` (the
    normalized settings) and ``.run`` (the typed :class:`lorascope.model.Run`).  A folder
    holding several runs has them all in ``.scalars`` and ``.checkpoints`` (column
    ``run``); ``.run`` is the latest, or the one ``run`` names (``"run-1"`` ...)."""
    from lorascope.pipeline import NoSuchRun
    from lorascope.build import build_folder
    folder = build_folder(path)
    runs = list(folder.runs)
    ids = [r.id for r in runs]
    if run is not None and run not in ids:
        raise NoSuchRun(f"{path}: no run {run!r} (runs: {', '.join(ids)})")
    return RunData(str(path), runs, ids.index(run) if run is not None else len(runs) - 1)


def findings_frame(findings: list[dict]) -> "pd.DataFrame":
    """Report findings (JSON form) as a frame: severity, rule, step, step_start,
    step_end, title, evidence, causes, fix, files."""
    pd = _pd()
    rows = []
    for f in findings:
        rng = f.get("step_range") or [None, None]
        rows.append({"severity": f["severity"], "rule": f["rule"], "step": f["step"],
                     "step_start": rng[0], "step_end": rng[1] if len(rng) > 1 else None,
                     "title": f["title"], "evidence": list(f["evidence"]), "causes": list(f["causes"]),
                     "fix": dict(f["fix"]), "files": list(f["files"])})
    frame = pd.DataFrame(rows, columns=list(FINDING_COLUMNS))
    for c in ("step", "step_start", "step_end"):
        frame[c] = frame[c].astype("Int64")
    return frame


class Report:
    """A run's post-mortem (see :func:`analyze`)."""

    def __init__(self, analysis: "Analysis"):
        from lorascope.pipeline import report_document
        self.analysis = analysis
        self.run: "Run" = analysis.run
        self.document: dict = report_document(analysis)     # the CONTRACT §2 JSON document

    @property
    def verdict(self) -> str:
        return self.document["verdict"]

    @functools.cached_property
    def findings(self) -> "pd.DataFrame":
        """One row per finding, most severe first (the report's order)."""
        return findings_frame(self.document["findings"])

    def to_json(self) -> str:
        """The report as ``lorascope analyze --format json`` prints it."""
        return json.dumps(self.document, indent=2, allow_nan=False, ensure_ascii=False)

    def to_html(self) -> str:
        """The self-contained HTML post-mortem page."""
        from lorascope.report.html import render_html
        return render_html(self.analysis, self.document)

    def save_html(self, target: str | Path) -> Path:
        """Write the page (never into the run's folder: see ``analyze --html``)."""
        from lorascope.report.html import write_html
        return write_html(self.analysis, self.document, Path(target))

    def __repr__(self) -> str:
        from lorascope.report.text import render_text
        return render_text(self.document, color=False)

    def _repr_html_(self) -> str:
        """Jupyter: the verdict and the story as plain HTML (shown even where a notebook
        is not trusted), then the interactive page in a sandboxed frame (its scripts run
        in an opaque origin, away from the notebook)."""
        from lorascope.report.html import story
        from lorascope.report.safe import visible
        colors = {"failed": "#dc2626", "warning": "#d97706", "healthy": "#059669"}
        head = (f'<div style="font:14px system-ui,sans-serif;margin:4px 0">'
                f'<b style="color:#fff;background:{colors.get(self.verdict, "#6b7280")};padding:2px 8px;'
                f'border-radius:4px">{_html.escape(self.verdict.upper())}</b> '
                f'<code>{_html.escape(visible(self.run.path))}</code>'
                f'<div>{_html.escape(visible(story(self.run, self.analysis.findings, self.verdict)))}</div></div>')
        page = _html.escape(self.to_html(), quote=True)
        return (head + f'<iframe sandbox="allow-scripts" srcdoc="{page}" title="lorascope report" '
                f'style="width:100%;height:760px;border:1px solid #e5e7eb;border-radius:6px"></iframe>')


def analyze(path: str | Path, *, rules: str | Path | None = None, run: str | None = None) -> Report:
    """Analyse a run folder as ``lorascope analyze`` does: ``.verdict``, ``.findings`` (a
    DataFrame), ``.document`` (the JSON report), ``.run``; ``to_html()`` / ``save_html()``;
    in Jupyter it shows the post-mortem inline.  ``rules``: a TOML file overriding rule
    severities and thresholds; ``run``: which run of a folder holding several."""
    from lorascope.pipeline import analyze as _analyze
    return Report(_analyze(path, Path(rules) if rules else None, run_id=run))
