"""Did the fix work? Analyze each replay with the same detectors and decide.

verdict
  fixed         the baseline reproduced the symptom (or no baseline was asked for) and the
                diagnosed symptom does not appear in the fixed replay's window
  not_fixed     the diagnosed symptom still appears with the fix applied
  inconclusive  the baseline was asked for but did not reproduce, a training failed, or a
                replay does not reproduce the original run at its first replayed step
                (a baseline that did not reproduce comes with ``baseline_shortfall``: what
                it showed against the rules' ratios, where it left the original path, and
                what to try: --from-step 0 after a resumed replay's fresh optimizer)

A symptom is the diagnosed rule or any rule that can own the same curve episode
(lorascope.curves): loss.spike and loss.divergence both report a loss that rose above its
earlier level, and a replay may rise by the other shape (a fresh optimizer often jumps where
the original climbed).

The reproduction check
  A replay resumes from the checkpoint's adapter weights on the original data order, so
  the loss logged at the first replayed step is computed with the checkpoint's weights on
  the same batch the original run used there, before the fix (or the fresh optimizer) can
  change anything: it must equal the original run's loss at that step up to numerical
  noise. A larger gap means the replay trains something else (another data pipeline:
  prompt format, cutoff length, labels on the prompt; another base model or tokenizer),
  and neither replay says anything about the original run. Tolerance: REPRO_RTOL (10 %)
  of the original loss when the first common logged step is the first replayed one, plus
  REPRO_RTOL_PER_UPDATE (5 %) for each further update the logged value averages over
  (a trainer that logs every N steps logs the mean of N steps); the step is compared only
  when it lies within one logging interval of the checkpoint (else: not checked).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
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

    from lorascope.pipeline import Analysis, run_rules
    from lorascope.build import Unreadable, build_run
    from lorascope.diagnose import diagnose
    from lorascope.rules.registry import load_catalog
    try:
        run = build_run(out_dir)
    except Unreadable:
        return [], None
    if original is not None and start > 0:
        series = []
        for s in run.series:
            o = original.primary(s.role) if s.role != "other" else None
            keep = o.steps <= start if o is not None else None
            if keep is not None and keep.any() and (not len(s.steps) or s.steps[0] > start):
                s = replace(s, steps=np.concatenate([o.steps[keep], s.steps]).astype(np.int64),
                            values=np.concatenate([o.values[keep], s.values]).astype(float))
            series.append(s)
        firsts = [int(s.steps[0]) for s in series if len(s.steps) and s.role != "other"]
        steps = replace(run.steps, first=min(firsts)) if firsts else run.steps
        run = replace(run, series=tuple(series), steps=steps,
                      epoch_boundaries=tuple(original.epoch_boundaries))
    catalog = load_catalog(None)
    found, errors = run_rules(run, catalog)
    found = diagnose(run, found, catalog)
    keep_f = [f for f in found if f.step is not None and f.step <= end and (
        f.step > start or (f.step_range and f.step_range[1] > start))]
    return keep_f, Analysis(run, found, catalog, errors)


REPRO_RTOL = 0.10
REPRO_RTOL_PER_UPDATE = 0.05
REPRO_ATOL = 1e-3


@dataclass
class Reproduction:
    """Does a replay start where the original run was? `ok` None: could not be checked."""
    label: str
    ok: bool | None
    step: int | None = None
    original: float | None = None
    replayed: float | None = None
    tolerance: float | None = None          # relative
    note: str = ""

    @property
    def rel_diff(self) -> float | None:
        if self.original is None or self.replayed is None:
            return None
        if not (math.isfinite(self.original) and math.isfinite(self.replayed)):
            return 0.0 if self.original == self.replayed or (
                not math.isfinite(self.original) and not math.isfinite(self.replayed)) else math.inf
        return abs(self.replayed - self.original) / max(abs(self.original), REPRO_ATOL)

    def reason(self) -> str:
        if self.ok is False:
            return (f"the {self.label} replay does not reproduce the original run at step "
                    f"{self.step}: loss {self.replayed:.4g} vs {self.original:.4g} "
                    f"({self.rel_diff:.0%} off, tolerance {self.tolerance:.0%}) — the data "
                    f"pipeline or the base model differ; use --cmd with your own trainer")
        if self.ok:
            return (f"the {self.label} replay reproduces the original run at step {self.step}: "
                    f"loss {self.replayed:.4g} vs {self.original:.4g} ({self.rel_diff:.1%} off, "
                    f"tolerance {self.tolerance:.0%})")
        return f"the {self.label} replay's reproduction of the original run was not checked: {self.note}"


def _train_points(series) -> tuple[Any, Any]:
    import numpy as np
    if series is None or not len(series.steps):
        return np.zeros(0, np.int64), np.zeros(0)
    return np.asarray(series.steps, dtype=np.int64), np.asarray(series.values, dtype=float)


def check_reproduction(original, replay, start: int, label: str = "replay") -> Reproduction:
    """Compare the replay's first logged train loss after `start` with the original run's
    loss at the same step. `original` / `replay`: train-loss Series (or None)."""
    import numpy as np
    # From scratch (start 0) this holds too: a fresh LoRA adapter has B = 0, so the first
    # step's loss is the base model's on the first batch, whatever A's random draw.
    o_st, o_v = _train_points(original)
    r_st, r_v = _train_points(replay)
    r_after = r_st > start
    if not r_after.any():
        return Reproduction(label, None, note="the replay logged no train loss")
    o_after = o_st[o_st > start]
    if not len(o_after):
        return Reproduction(label, None, note=f"the original run logged no train loss after step {start}")
    common = np.intersect1d(o_after, r_st[r_after])
    if not len(common):
        return Reproduction(label, None, note="the replay and the original log train loss at "
                                              "different steps")
    step = int(common[0])
    every = int(np.median(np.diff(o_st))) if len(o_st) > 1 else 1
    every = max(1, every)
    n = step - start                     # updates between the checkpoint and the logged step
    if n > every:
        return Reproduction(label, None, step=step,
                            note=f"the first common logged step {step} is {n} steps after the "
                                 f"checkpoint (the original logs every {every})")
    orig = float(o_v[o_st == step][-1])
    rep = float(r_v[r_st == step][0])
    tol = REPRO_RTOL + REPRO_RTOL_PER_UPDATE * (min(n, every) - 1)
    if not (np.isfinite(orig) and np.isfinite(rep)):
        ok = not np.isfinite(orig) and not np.isfinite(rep)      # both NaN/inf: reproduced
    else:
        ok = abs(rep - orig) <= tol * max(abs(orig), REPRO_ATOL) + REPRO_ATOL
    return Reproduction(label, bool(ok), step=step, original=orig, replayed=rep, tolerance=tol)


def departure(original, replay, start: int) -> tuple[int, int, float, float] | None:
    """Where a replay leaves the original run's path: the first step after ``start`` that
    both log whose train loss is off the original's by more than REPRO_RTOL, as
    (last step still on the path, that step, original loss, replayed loss); ``start`` is
    the last step on the path when the first one is off already. None: it stays within
    REPRO_RTOL at every common step."""
    import numpy as np
    o_st, o_v = _train_points(original)
    r_st, r_v = _train_points(replay)
    prev = start
    for step in np.intersect1d(o_st[o_st > start], r_st[r_st > start]):
        o = float(o_v[o_st == step][-1])
        r = float(r_v[r_st == step][0])
        same = (o == r or (not math.isfinite(o) and not math.isfinite(r))) or (
            math.isfinite(o) and math.isfinite(r)
            and abs(r - o) <= REPRO_RTOL * max(abs(o), REPRO_ATOL) + REPRO_ATOL)
        if not same:
            return prev, int(step), o, r
        prev = int(step)
    return None


def _times(a: float | None, b: float | None) -> str:
    """a against b: 'x1.47' for positive levels, '+0.62' otherwise."""
    if a is None or b is None:
        return "?"
    return f"x{a / b:.2f}" if a > 0 and b > 0 else f"{a - b:+.3g}"


def _g(v: float | None) -> str:
    return "?" if v is None else f"{v:.3g}"


def _size(e) -> tuple[float | None, str]:
    """An episode's size as its owner judges it: the end level of a climb that stays up,
    else the peak."""
    if e.kind == "excursion" and e.recovered is False:
        return e.end_level, "at its end"
    return e.peak_level, f"at step {e.peak}"


def _criteria(rules: set[str], catalog: dict) -> list[str]:
    from lorascope.curves.params import Thresholds
    T = Thresholds(catalog)
    out = []
    if "loss.divergence" in rules and T.enabled("loss.divergence"):
        out.append(f"loss.divergence needs a climb that stays "
                   f"x{float(T.rule('loss.divergence', 'min_ratio')):g} up")
    if "loss.spike" in rules and T.enabled("loss.spike"):
        out.append(f"loss.spike a jump of x{float(T.rule('loss.spike', 'min_ratio')):g}")
    return out


def baseline_shortfall(plan: Plan, original_run, baseline_run, catalog: dict) -> str:
    """Why the baseline replay (the original settings, no fix) did not call the diagnosed
    symptom back, in the detectors' numbers, and what the user can do about it: one line
    for stderr, the text verdict and the HTML report. ``baseline_run``: the replay's run
    as ``findings_in_window`` analysed it (its curves prefixed with the original's)."""
    import numpy as np

    from lorascope.curves import analyze_curves
    rule = plan.rule
    parts: list[str] = []
    o_ca = analyze_curves(original_run, catalog)
    owned = [e for e in o_ca.episodes if e.owner == rule]
    head = next((e for e in owned if e.onset == plan.onset), owned[0] if owned else None)
    before = head.before if head is not None else None
    b_loss = baseline_run.primary("train_loss")
    steps, vals = _train_points(b_loss)
    tail = None
    if (steps > plan.start).any():
        # the level over the curve's last tenth, as the climb backstop reads it
        tail = float(np.median(vals[-max(3, len(vals) // 10):]))
    b_ca = analyze_curves(baseline_run, catalog)
    eps = [e for e in b_ca.episodes if e.kind in ("excursion", "spike") and e.onset is not None
           and e.onset > plan.start and (b_ca.train is None or e.series == b_ca.train)]
    ep = max(eps, key=lambda e: e.magnitude) if eps else None
    if ep is not None and ep.before is not None and ep.peak_level is not None and (
            ep.kind == "spike" or ep.recovered):
        said = (f"the baseline replay's loss rose {_times(ep.peak_level, ep.before)} above its "
                f"earlier level ({_g(ep.before)} to {_g(ep.peak_level)} at step {ep.peak})"
                + (f" but came back to {_g(ep.end_level)} by step {ep.end}" if ep.recovered
                   else " at its last logged point"))
        if tail is not None:
            said += (f"; its level over the run's last tenth was {_g(tail)} "
                     f"({_times(tail, ep.before)})")
    elif ep is not None and ep.before is not None and ep.end_level is not None:
        said = (f"the baseline replay's loss climbed from {_g(ep.before)} to {_g(ep.end_level)} "
                f"({_times(ep.end_level, ep.before)}) at its end")
    elif tail is not None and before is not None:
        said = (f"the baseline replay's level over the run's last tenth was {_g(tail)} "
                f"({_times(tail, before)} the level {_g(before)} before the symptom)")
    else:
        said = "the baseline replay's loss showed no rise"
    crit = _criteria(same_symptom(rule), catalog)
    if head is not None:
        size, where = _size(head)
        crit.append(f"the original run's {rule} was {_times(size, head.before)} {where}")
    parts.append(said + (" (" + "; ".join(crit) + ")" if crit else ""))
    dep = departure(original_run.primary("train_loss"), b_loss, plan.start)
    if dep is not None:
        prev, step, o, r = dep
        parts.append(f"it followed the original run to step {prev} and left it at step {step} "
                     f"(loss {r:.4g} where the original logged {o:.4g})")
    last = original_run.steps.last
    longer = last is not None and plan.end < int(last)
    if plan.checkpoint is not None:
        # left at once: at the first logged step after the one that reproduced the original
        at_once = dep is not None and int(np.sum((steps > plan.start) & (steps < dep[1]))) <= 1
        parts.append("a replay resumed from a checkpoint starts a fresh optimizer (lorascope "
                     "never unpickles optimizer.pt): at the original learning rate its first "
                     "updates are larger than the original run's"
                     + (", the likely reason it left the original path at once" if at_once else ""))
        parts.append(f"rerun with --from-step 0 to replay from the base model, where the "
                     f"original run's optimizer was fresh too ({plan.end} steps instead of "
                     f"{plan.steps})" + (f", or replay longer with --steps {int(last) - plan.start}"
                                         if longer else ""))
    else:
        parts.append("the replay started from the base model as the original run did; training "
                     "at these settings amplifies small numerical differences, so a replay can "
                     "land on either side of the rule's threshold")
        parts.append("compare the curves in the rerun report, or replay with your own trainer "
                     "(--cmd)" + (f", or replay longer with --steps {int(last) - plan.start}"
                                  if longer else ""))
    return "inconclusive because " + "; ".join(parts)


def same_symptom(rule: str) -> set[str]:
    """The rules that can report the same curve episode as ``rule`` (the arbiter picks one
    by the episode's shape: a loss that rose and stays up is a spike when it jumped and a
    divergence when it climbed; a replay that reproduces the failure may show either)."""
    from lorascope.curves.model import KINDS
    out = {rule}
    for owners in KINDS.values():
        if rule in owners:
            out |= set(owners)
    return out


def has_symptom(rule: str, rules: list[str] | None) -> bool:
    return rules is not None and bool(same_symptom(rule) & set(rules))


def decide(rule: str, baseline: list[str] | None, fixed: list[str] | None,
           failed: bool, reproduced: bool = True) -> str:
    """`reproduced` False: a replay does not start where the original run was."""
    if failed or fixed is None or not reproduced:
        return "inconclusive"
    if baseline is not None and not has_symptom(rule, baseline):
        return "inconclusive"
    return "not_fixed" if has_symptom(rule, fixed) else "fixed"


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
            "reproduced": has_symptom(plan.rule, baseline_rules),
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
