"""Findings while the run is live: which to hold back, which are provisional, and which
finding of one analysis is the same as one of the analysis before.

**Identity.** Two findings are the same when they come from the same rule and are about
the same moment: their steps differ by at most a tolerance (three logging intervals of
the curve they are about, at least 2% of the steps seen; an episode's onset moves a
little as points arrive), or both have no step (the closest files first).  A whole-run
judgment (the provisional rules below: one finding per rule, its onset a fit that moves
with every evaluation) is the same finding whatever its step.  The title may change (a blow-up's peak grows):
it is the same finding.

**Withdrawn.** A finding shown before and absent from two analyses in a row (or from the
final one) is withdrawn: a blip that recovered, a climb that turned out to be a wave.

**Live policy.** Some rules judge the run as a whole and say so while it is live:
``run.incomplete`` is held back until the run ends (a run being watched has not reached
its planned steps, by definition), and rules that compare the end of the run with what
came before (an eval loss rising to its last evaluation, late samples) are shown as
provisional: judged on the run so far.  Findings about the shape of the loss (a climb, a
spike, swings, a plateau) are provisional too while the loss has fewer than
:data:`YOUNG_POINTS` points: then firm, as the seed articles' habit has it (judge the run
in its first few hundred steps, not in its first few).  ``--on-finding`` acts on firm
findings only; a provisional one that becomes firm is *confirmed*.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lorascope.model import SEVERITY_ORDER, Finding, Run

# rule -> (policy, what it means while the run is live)
LIVE_POLICY: dict[str, tuple[str, str]] = {
    "run.incomplete": ("final", "a run still training has not reached its planned steps: "
                                "judged when the run ends"),
    "overfit": ("provisional", "judged on the evaluations so far: the eval loss may still turn"),
    "sample.collapse": ("provisional", "judged on the samples so far"),
    "sample.memorized": ("provisional", "judged on the samples so far"),
}
WITHDRAW_AFTER = 2          # analyses in a row without a finding before it is withdrawn
# rules that judge the shape of a curve: on a young curve (fewer than YOUNG_POINTS
# training-loss points) their findings are provisional - a few noisy points at the start
# of a diffusion loss can look like a climb that the next points take back
SHAPE_RULES = ("loss.divergence", "loss.spike", "loss.oscillation", "loss.epoch_jump",
               "loss.plateau", "grad.explosion")
YOUNG_POINTS = 50
YOUNG = "judged on fewer than {n} logged points: the next points may take it back"


def live_findings(findings: list[Finding], run: Run | None = None) -> tuple[list[Finding], dict[int, str]]:
    """The findings to show while the run is live, and why each provisional one is
    (by id)."""
    tl = run.primary("train_loss") if run is not None else None
    young = tl is not None and len(tl.steps) < YOUNG_POINTS
    out, prov = [], {}
    for f in findings:
        policy, why = LIVE_POLICY.get(f.rule, ("live", ""))
        if policy == "final":
            continue
        if policy == "provisional":
            prov[id(f)] = why
        elif young and f.rule in SHAPE_RULES:
            prov[id(f)] = YOUNG.format(n=YOUNG_POINTS)
        out.append(f)
    return out, prov


def tolerance(run: Run):
    """How far apart (in steps) two findings of one rule may be and still be one: three
    logging intervals of the curve the finding is about (an eval curve's are longer),
    at least 2% of the steps seen.  Returns a function of the finding."""
    last = run.steps.last or 0
    floor = max(int(0.02 * last), 1)
    by_name = {s.name: s for s in run.series}
    tl = run.primary("train_loss")

    def interval(s) -> int:
        if s is None or len(s.steps) < 2:
            return 1
        return int(max(1, np.median(np.diff(s.steps[-64:]))))

    default = interval(tl)

    def tol(f: Finding) -> int | None:
        if LIVE_POLICY.get(f.rule, ("live",))[0] == "provisional":
            return None         # a whole-run judgment: one per rule, its onset a fit that moves
        name = f.extra.get("series") if isinstance(f.extra, dict) else None
        iv = interval(by_name.get(name)) if name in by_name else default
        return max(3 * iv, floor)
    return tol


@dataclass
class Shown:
    """A finding as it was last shown."""

    rule: str
    severity: str
    step: int | None
    files: tuple[str, ...]
    doc: dict                      # its JSON (the latest analysis's wording)
    provisional: str = ""          # why it may still be withdrawn ("": it is firm)
    missing: int = 0               # analyses in a row without it


@dataclass
class Change:
    kind: str                      # "appeared" | "confirmed" (no longer provisional) | "withdrawn"
    item: Shown
    escalated_from: str | None = None


@dataclass
class Tracker:
    """The findings shown so far, matched against each new analysis."""

    shown: list[Shown] = field(default_factory=list)

    def update(self, findings: list[Finding], provisional: dict[int, str], tol,
               final: bool = False) -> list[Change]:
        changes: list[Change] = []
        taken: set[int] = set()
        for f in findings:
            i = self._match(f, tol(f), taken)
            doc = f.to_json()
            prov = provisional.get(id(f), "")
            if i is None:
                item = Shown(f.rule, f.severity, f.step, tuple(f.files), doc, prov)
                self.shown.append(item)
                taken.add(len(self.shown) - 1)
                changes.append(Change("appeared", item))
                continue
            taken.add(i)
            item = self.shown[i]
            before = item.severity
            item.severity, item.step, item.files, item.doc, item.missing = (
                f.severity, f.step, tuple(f.files), doc, 0)
            was = item.provisional
            item.provisional = prov
            if SEVERITY_ORDER[f.severity] > SEVERITY_ORDER[before]:
                changes.append(Change("appeared", item, escalated_from=before))
            elif was and not prov:
                changes.append(Change("confirmed", item))
        keep = []
        for i, item in enumerate(self.shown):
            if i not in taken:
                item.missing += 1
                if final or item.missing >= WITHDRAW_AFTER:
                    changes.append(Change("withdrawn", item))
                    continue
            keep.append(item)
        self.shown = keep
        return changes

    def _match(self, f: Finding, tol: int | None, taken: set[int]) -> int | None:
        best, best_d = None, None
        for i, s in enumerate(self.shown):
            if i in taken or s.rule != f.rule:
                continue
            if (f.step is None or s.step is None) and tol is not None:
                if f.step is None and s.step is None:
                    d = 0 if s.files == tuple(f.files) else 1
                else:
                    continue
            elif f.step is None or s.step is None:
                d = 0
            else:
                d = abs(int(f.step) - int(s.step))
                if tol is not None and d > tol:
                    continue
            if best_d is None or d < best_d:
                best, best_d = i, d
        return best
