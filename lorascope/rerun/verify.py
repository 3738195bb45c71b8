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


def findings_in_window(out_dir: Path, start: int, end: int) -> tuple[list[Finding], Any]:
    """Run lorascope's analysis on a replay's output; keep findings whose step lies in
    (start, end] (findings without a step are about settings, not the replayed curve)."""
    from lorascope.analyze import analyze
    from lorascope.build import Unreadable
    try:
        a = analyze(out_dir)
    except Unreadable:
        return [], None
    keep = [f for f in a.findings if f.step is not None and start < f.step <= end]
    return keep, a


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
