"""The analysis pipeline: build the Run, run the rules, diagnose, make the report."""
from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from lorascope import __version__
from lorascope.build import build_run
from lorascope.diagnose import diagnose, verdict
from lorascope.model import Finding, Run
from lorascope.rules.registry import REGISTRY, Context, load_catalog, load_rule_modules, params_for


@dataclass
class Analysis:
    run: Run
    findings: list[Finding]
    catalog: dict
    rule_errors: list[str] = field(default_factory=list)

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


def analyze(run_dir: Path | str, rules_file: Path | None = None, *, catalog: dict | None = None,
            jobs: int | None = None, progress: bool = False) -> Analysis:
    catalog = catalog if catalog is not None else load_catalog(rules_file)
    run = build_run(run_dir, jobs=jobs, progress=progress)
    findings, errors = run_rules(run, catalog)
    findings = diagnose(run, findings, catalog)
    return Analysis(run, findings, catalog, errors)


def report_document(a: Analysis) -> dict:
    """The CONTRACT §2 report document."""
    run = a.run
    return {
        "schema": "lorascope.report/1",
        "tool": {"name": "lorascope", "version": __version__},
        "run": {
            "path": run.path,
            "trainer": run.trainer,
            "task": run.task,
            "sources": [s.to_json() for s in run.sources],
            "config": run.config.to_json(),
            "steps": run.steps.to_json(),
        },
        "series": [s.to_json() for s in run.series],
        "verdict": a.verdict,
        "findings": [f.to_json() for f in a.findings],
    }
