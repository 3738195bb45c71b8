"""Did the fix work? Analyze each replay with the same detectors and decide.

verdict
  fixed         the baseline reproduced the symptom (or no baseline was asked for) and the
                diagnosed rule does not fire in the fixed replay's window
  not_fixed     the diagnosed rule still fires with the fix applied
  inconclusive  the baseline was asked for but did not reproduce, or a training failed
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lorascope.model import Finding, _jsonable
from lorascope.rerun.backend_hf import ReplayResult
from lorascope.rerun.plan import Plan


def findings_in_window(out_dir: Path, start: int, end: int,
                       original=None) -> tuple[list[Finding], Any]:
    """Run lorascope's detectors on a replay's output, its curves prefixed with the
    original run's points up to the checkpoint step (the detectors judge a curve against
    what came before: a divergence needs the decrease that preceded it). Keep findings
    tied to the replayed window: onset in (start, end], or a step range reaching into it
    (findings without a step are about settings, not the replayed curve)."""
    import numpy as np

    from lorascope.analyze import Analysis, run_rules
    from lorascope.build import Unreadable, build_run
    from lorascope.diagnose import diagnose
    from lorascope.rules.registry import load_catalog
    try:
        run = build_run(out_dir)
    except Unreadable:
        return [], None
    if original is not None and start > 0:
        for s in run.series:
            if s.role == "other":
                continue
            o = original.primary(s.role)
            if o is None:
                continue
            keep = o.steps <= start
            if keep.any() and (not len(s.steps) or s.steps[0] > start):
                s.steps = np.concatenate([o.steps[keep], s.steps]).astype(np.int64)
                s.values = np.concatenate([o.values[keep], s.values]).astype(float)
        firsts = [int(s.steps[0]) for s in run.series if len(s.steps) and s.role != "other"]
        if firsts:
            run.steps.first = min(firsts)
        run.epoch_boundaries = list(original.epoch_boundaries)
    catalog = load_catalog(None)
    found, errors = run_rules(run, catalog)
    found = diagnose(run, found, catalog)
    keep_f = [f for f in found if f.step is not None and f.step <= end and (
        f.step > start or (f.step_range and f.step_range[1] > start))]
    return keep_f, Analysis(run, found, catalog, errors)


def decide(rule: str, baseline: list[str] | None, fixed: list[str] | None,
           failed: bool) -> str:
    if failed or fixed is None:
        return "inconclusive"
    if baseline is not None and rule not in baseline:
        return "inconclusive"
    return "not_fixed" if rule in fixed else "fixed"


def rerun_document(plan: Plan, device: str, baseline: ReplayResult | None,
                   baseline_rules: list[str] | None, fixed: ReplayResult,
                   fixed_rules: list[str] | None, verdict: str, run_path: str) -> dict:
    """The CONTRACT §5 document (exactly its keys)."""
    return {
        "schema": "lorascope.rerun/1",
        "run": run_path,
        "diagnosis": {"rule": plan.rule, "step": plan.onset},
        "resumed_from": {
            "checkpoint": None if plan.checkpoint is None else _display(plan.checkpoint.path, plan, run_path),
            "step": plan.start,
        },
        "applied_fix": _jsonable(dict(plan.fix)),
        "device": device,
        "baseline": None if baseline is None else {
            "reproduced": bool(baseline_rules is not None and plan.rule in baseline_rules),
            "findings": list(baseline_rules or []),
        },
        "fixed": {"out": str(fixed.out_dir), "findings": list(fixed_rules or []),
                  "steps": [plan.start, fixed.last_step if fixed.last_step is not None else plan.end]},
        "verdict": verdict,
    }


def _display(p: Path, plan: Plan, run_path: str) -> str:
    """The checkpoint path as the user named the run: <run>/checkpoint-N."""
    try:
        rel = Path(p).resolve().relative_to(plan.run_dir.resolve())
        return str(Path(run_path) / rel)
    except ValueError:
        return str(p)


def unique_rules(findings: list[Finding]) -> list[str]:
    out: list[str] = []
    for f in findings:
        if f.rule not in out:
            out.append(f.rule)
    return out
