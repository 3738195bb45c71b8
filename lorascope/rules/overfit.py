"""overfit: eval loss rises while the train loss keeps falling."""
from __future__ import annotations

import math

import numpy as np

from lorascope import signals as sg
from lorascope.model import Finding, Run
from lorascope.rules.registry import Params, rule
from lorascope.signals import fmt


def _level_at(cur: sg.Curve, step: float, w: int) -> float:
    i = int(np.searchsorted(cur.steps, step))
    return sg.window_median(cur.y, i - w, i + w + 1)


@rule("overfit", needs=("train_loss", "eval_loss"))
def overfit(run: Run, p: Params) -> list[Finding]:
    """Eval loss rises while the train loss keeps falling.

    ## What it detects
    The eval loss reaches a minimum and then climbs: its final level is at least
    `min_rise` (relative) above its best and the climb is `min_z` times the scatter of the
    eval points, while the training loss over the same steps did not rise. The step is the
    onset of the climb, found by a two-piece linear fit of the eval curve.

    ## Why it matters
    From the onset on, the adapter memorises the training set instead of learning what
    generalises: later checkpoints are worse on new data even though the train loss looks
    better and better.

    ## Example
    `eval/loss` falls from 1.9 to 1.32 by step 1200 and climbs to 1.61 by step 3000 while
    `train/loss` falls from 1.1 to 0.4.

    ## Fix
    Keep the checkpoint nearest the onset (`load_best_model_at_end`), train fewer epochs,
    add data, lower the rank or raise `lora_dropout` / weight decay.
    """
    ev_s, tr_s = run.primary("eval_loss"), run.primary("train_loss")
    ec = sg.prepare(ev_s, run)
    tc = sg.prepare(tr_s, run)
    if ec is None or tc is None or ec.n < p["min_eval_points"] or tc.n < 3:
        return []
    x = ec.steps.astype(float)
    y = ec.y
    n = ec.n
    k = max(1, n // 20)
    sm = sg.rolling_median(y, 2 * k + 1) if n >= 7 else y
    imin = int(np.argmin(sm))
    if n - 1 - imin < p["min_points_after"]:
        return []
    wend = max(2, n // 10)
    lvl_end = float(np.median(y[-wend:]))
    lvl_min = float(np.median(y[max(0, imin - k):imin + k + 1]))
    rise = lvl_end - lvl_min
    thr = math.log1p(p["min_rise"]) if ec.mode == "log" else p["min_abs_rise"]
    # scatter of eval points around a smooth curve
    resid = y - sg.rolling_median(y, 5) if n >= 7 else y - np.median(y)
    scatter = max(1.4826 * float(np.median(np.abs(resid))), ec.sigma * 0.5, 1e-9)
    se = scatter * math.sqrt(1.0 / wend + 1.0 / (2 * k + 1))
    if rise < thr or rise < p["min_z"] * se:
        return []
    # onset: the knot of a two-piece linear fit around the minimum (where the climb starts)
    # left part starts once the early decay is over (within a fifth of the rise of the min)
    near = np.flatnonzero(sm[:imin + 1] <= lvl_min + 0.2 * rise)
    lo = int(near[0]) if len(near) else imin
    lo = min(lo, max(0, imin - 2))
    # (eval loss drifts up as the adapter memorises: a two-piece line, no step model)
    onset_i = sg.climb_onset(x, y, sm, imin, rise, lo, max(2, k), allow_step=False)
    onset = int(round(x[onset_i]))
    # train loss over the same stretch
    wt = max(1, tc.n // 40)
    t_on = _level_at(tc, onset, wt)
    t_end = float(np.median(tc.y[-max(2, tc.n // 20):]))
    t_se = 1.25 * tc.sigma * math.sqrt(1.0 / (2 * wt + 1) + 1.0 / max(2, tc.n // 20))
    allowed = max(math.log1p(p["max_train_rise"]) if tc.mode == "log" else 0.0, 3 * t_se)
    if not np.isfinite(t_on) or t_end - t_on > allowed:
        return []
    last = int(ec.steps[-1])
    evd = [f"{ev_s.name} best {fmt(ec.level(lvl_min))} near step {int(ec.steps[imin])}, "
           f"{fmt(ec.level(lvl_end))} over the last {wend} evals",
           f"{tr_s.name} {fmt(tc.level(t_on))} at step {onset}, {fmt(tc.level(t_end))} at the end",
           f"eval climbs from step {onset} ({n - onset_i} of {n} evals after it)"]
    ckpts = sorted(c.step for c in run.checkpoints if c.step is not None and c.step <= onset)
    if ckpts:
        evd.append(f"last checkpoint before the onset: step {ckpts[-1]}")
    title = (f"Overfitting from step {onset}: eval loss rose from {fmt(ec.level(lvl_min))} to "
             f"{fmt(ec.level(lvl_end))} while train loss fell to {fmt(tc.level(t_end))}")
    return [p.finding(title, step=onset, step_range=[onset, last], evidence=evd,
                      extra={"series": ev_s.name, "train_series": tr_s.name, "change_points": [onset]})]
