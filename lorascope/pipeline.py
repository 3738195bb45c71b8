"""The analysis pipeline: build the Run, run the rules, diagnose, make the report.

For Python users the same is ``lorascope.analyze(path)`` (:func:`lorascope.api.analyze`)."""
from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from lorascope import __version__
from lorascope.build import Folder, build_folder
from lorascope.diagnose import diagnose, verdict
from lorascope.model import Finding, Run
from lorascope.rules.registry import REGISTRY, Context, load_catalog, load_rule_modules, params_for


class NoSuchRun(Exception):
    """--run names a run the folder does not hold (exit 2)."""


@dataclass
class Analysis:
    run: Run
    findings: list[Finding]
    catalog: dict
    rule_errors: list[str] = field(default_factory=list)
    # the other runs found in the same folder, each analysed on its own curves (oldest
    # first); empty when the folder holds one run
    others: list["Analysis"] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return verdict(self.findings)


def _needs_met(run: Run, needs: tuple[str, ...]) -> bool:
    for n in needs:
        if n in ("train_loss", "eval_loss", "lr", "grad_norm"):
            if run.primary(n) is None:
                return False
        elif n == "checkpoints" and not run.checkpoints:
            return False
        elif n == "datasets" and not run.datasets:
            return False
        elif n == "events" and not run.events:
            return False
        elif n == "samples" and not run.samples:
            return False
    return True


def run_rules(run: Run, catalog: dict) -> tuple[list[Finding], list[str]]:
    load_rule_modules()
    findings: list[Finding] = []
    errors: list[str] = []
    ctx = Context(catalog)
    for rid in sorted(REGISTRY):
        spec = REGISTRY[rid]
        p = params_for(rid, catalog, ctx)
        if p.entry.get("severity") == "off" or not _needs_met(run, spec.needs):
            continue
        try:
            out = spec.func(run, p) or []
        except Exception as e:  # one rule's bug must not hide the others' findings
            if os.environ.get("LORASCOPE_STRICT"):
                raise
            errors.append(f"{rid}: {type(e).__name__}: {e}")
            errors.append(traceback.format_exc(limit=3))
            continue
        findings.extend(out)
    return findings, errors


def _analyse(run: Run, catalog: dict) -> Analysis:
    findings, errors = run_rules(run, catalog)
    findings = diagnose(run, findings, catalog)
    return Analysis(run, findings, catalog, errors)


def analyze(run_dir: Path | str, rules_file: Path | None = None, *, catalog: dict | None = None,
            jobs: int | None = None, progress: bool = False, run_id: str | None = None) -> Analysis:
    """Analyse a folder's latest run (or the run ``run_id`` names); every other run of
    the folder is analysed on its own curves too (``Analysis.others``)."""
    catalog = catalog if catalog is not None else load_catalog(rules_file)
    folder = build_folder(run_dir, jobs=jobs, progress=progress)
    return analyse_folder(folder, catalog, run_dir, run_id)


def analyse_folder(folder: Folder, catalog: dict, run_dir: Path | str = "",
                   run_id: str | None = None, others: bool = True) -> Analysis:
    """The Analysis of a built folder's latest run (or of ``run_id``), the others in
    ``others`` (unless ``others`` is False)."""
    runs = list(folder.runs)
    pick = len(runs) - 1
    if run_id is not None:
        ids = [r.id for r in runs]
        if run_id not in ids:
            raise NoSuchRun(f"{run_dir}: no run {run_id!r} (runs: {', '.join(ids)})")
        pick = ids.index(run_id)
    main = _analyse(runs[pick], catalog)
    if others:
        main.others = [_analyse(r, catalog) for i, r in enumerate(runs) if i != pick]
    return main


def _run_entry(a: Analysis, analysed: bool) -> dict:
    r = a.run
    return {
        "id": r.id, "latest": r.latest, "analysed": analysed,
        "sources": [s.path for s in r.sources],
        "steps": r.steps.to_json(),
        "series": [s.to_json() for s in r.series],
        "verdict": a.verdict,
        "findings": [f.to_json() for f in a.findings],
    }


def report_document(a: Analysis) -> dict:
    """The CONTRACT §2 report document for the analysed run.  A folder holding several
    runs adds ``runs``: one entry per run, oldest first (``id``, ``latest``,
    ``analysed``, ``sources``, ``steps``, ``series``, ``verdict``, ``findings``); the
    analysed run's entry repeats the top-level numbers."""
    run = a.run
    doc = {
        "schema": "lorascope.report/1",
        "tool": {"name": "lorascope", "version": __version__},
        "run": {
            "path": run.path,
            "trainer": run.trainer,
            "task": run.task,
            # every file read in the folder; each run's own are in `runs`
            "sources": [s.to_json() for s in (run.folder_sources or run.sources)],
            "config": run.config.to_json(),
            "steps": run.steps.to_json(),
        },
        "series": [s.to_json() for s in run.series],
        "verdict": a.verdict,
        "findings": [f.to_json() for f in a.findings],
    }
    if a.others:
        entries = [_run_entry(a, True)] + [_run_entry(o, False) for o in a.others]
        doc["runs"] = sorted(entries, key=lambda e: _run_order(e["id"]))
    return doc


def _run_order(rid: str) -> int:
    try:
        return int(rid.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 1 << 30
