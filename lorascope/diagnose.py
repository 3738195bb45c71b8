"""Findings -> causes, fix and verdict.

A symptom (a curve, checkpoint or log finding) lists in the catalog which other
rules may explain it and with what base confidence.  Those that fired in this
run become its causes, ranked; timing evidence (an epoch boundary or a
checkpoint at the symptom's step) adjusts the ranking.  An entry's ``corroborates``
table names findings it agrees with (the sample images and the loss curve telling the
same story): when both fire, and for ``"step"`` when their step ranges meet, each gets a
line of evidence naming the other.  The symptom's fix is its
causes' fixes, most confident first, then its catalog default fix — the default
only when no cause was found or the most likely one is a setting.
"""
from __future__ import annotations

from typing import Any

from lorascope.model import SEVERITY_ORDER, Cause, Finding, Run


def _scaled(value: Any, key: str, run: Run) -> Any:
    """Catalog fix values may be relative: "*0.2" multiplies the run's own value."""
    if isinstance(value, str) and value.startswith("*"):
        cur = run.config.get(key)
        try:
            factor = float(value[1:])
        except ValueError:
            return None
        if isinstance(cur, (int, float)) and cur > 0:
            out = cur * factor
            return int(round(out)) if isinstance(cur, int) else float(f"{out:.3g}")
        return None
    return value


def _near_boundary(step: int | None, boundaries: list[int], tol: int) -> int | None:
    if step is None:
        return None
    for b in boundaries:
        if abs(step - b) <= tol:
            return b
    return None


def diagnose(run: Run, findings: list[Finding], catalog: dict[str, dict]) -> list[Finding]:
    by_rule: dict[str, list[Finding]] = {}
    for f in findings:
        by_rule.setdefault(f.rule, []).append(f)
    span = max(1, (run.steps.last or 0) - (run.steps.first or 0))
    tol = max(2, span // 100)
    for f in findings:
        entry = catalog.get(f.rule, {})
        cause_table: dict[str, float] = entry.get("causes", {}) or {}
        causes: list[Cause] = [c for c in f.causes]
        have = {c.rule for c in causes}
        for cause_id, base in cause_table.items():
            if cause_id in have or cause_id == f.rule:
                continue
            hits = by_rule.get(cause_id)
            if not hits:
                continue
            conf = float(base)
            cf = hits[0]
            text = cf.title
            # a data problem that can only bite when the bad sample is drawn: stronger
            # when the symptom starts at an epoch boundary or mid-epoch without warmup
            if cause_id.startswith("data.") and f.step is not None:
                b = _near_boundary(f.step, run.epoch_boundaries, tol)
                if b is not None:
                    conf = min(0.95, conf + 0.1)
                    text += f" (the symptom starts at step {f.step}, near the epoch boundary at {b})"
            causes.append(Cause(cause_id, conf, text))
            have.add(cause_id)
        causes.sort(key=lambda c: -c.confidence)
        f.causes = causes

        fix: dict[str, Any] = {}
        for c in causes:
            for cf in by_rule.get(c.rule, []):
                for k, v in cf.fix.items():
                    if isinstance(v, list) and isinstance(fix.get(k), list):
                        # list-valued fixes (exclude_files) of several causes add up
                        fix[k] = list(dict.fromkeys(fix[k] + v))
                    else:
                        fix.setdefault(k, v)
        # the fix follows the most likely cause: when that is a data, log or checkpoint
        # problem, the symptom's generic setting change (e.g. a lower learning rate) is
        # not what the evidence asks for
        top = causes[0].rule if causes else None
        default = entry.get("fix", {}) or {}
        if top is not None and not top.startswith("config."):
            default = {}
        for k, v in default.items():
            if k not in fix and k not in f.fix:
                v2 = _scaled(v, k, run)
                if v2 is not None:
                    fix[k] = v2
        for k, v in fix.items():
            f.fix.setdefault(k, v)
    _corroborate(findings, by_rule, catalog, tol)
    findings.sort(key=lambda f: (-SEVERITY_ORDER.get(f.severity, 0),
                                 f.step if f.step is not None else 1 << 60, f.rule))
    return findings


def _window(f: Finding) -> tuple[int, int] | None:
    if f.step_range and len(f.step_range) == 2:
        return int(min(f.step_range)), int(max(f.step_range))
    if f.step is not None:
        return int(f.step), int(f.step)
    return None


def _corroborate(findings: list[Finding], by_rule: dict[str, list[Finding]],
                 catalog: dict[str, dict], tol: int) -> None:
    for f in findings:
        table = catalog.get(f.rule, {}).get("corroborates", {}) or {}
        for other_id, mode in table.items():
            for g in by_rule.get(other_id, []):
                if g is f:
                    continue
                if mode == "step":
                    a, b = _window(f), _window(g)
                    if a is None or b is None or a[0] - tol > b[1] or b[0] - tol > a[1]:
                        continue
                line = f"agrees with {f.rule}: {f.title}"
                if line not in g.evidence:
                    g.evidence.append(line)
                back = f"agrees with {g.rule}: {g.title}"
                if back not in f.evidence:
                    f.evidence.append(back)


def verdict(findings: list[Finding]) -> str:
    sev = {f.severity for f in findings}
    if "critical" in sev:
        return "failed"
    if "warning" in sev:
        return "warning"
    return "healthy"
