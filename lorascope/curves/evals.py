"""Eval curves: an eval loss that rises from its best while the train loss keeps falling.

Every eval-loss series is judged on its own (HF Trainer with a dict of eval datasets logs
``eval_<name>_loss``: each set is a curve). An eval loss is an average over the same
held-out set each time, so it is smooth: with many evaluations the rise is measured
against the scatter of the points around their running median; with few (4-6 evaluations,
as Whisper / T5 runs often have) a rise that every later evaluation confirms is enough.
"""
from __future__ import annotations

import math

import numpy as np

from lorascope import signals as sg
from lorascope.curves.model import Episode
from lorascope.curves.params import Thresholds


def _level_at(cur: sg.Curve, step: float, w: int) -> float:
    i = int(np.searchsorted(cur.steps, step))
    return sg.window_median(cur.y, i - w, i + w + 1)


def eval_rise(ec: sg.Curve, tc: sg.Curve, name: str, train_name: str, T: Thresholds) -> Episode | None:
    p = lambda k: T.rule("overfit", k)  # noqa: E731
    if ec is None or tc is None or ec.n < int(p("min_eval_points")) or tc.n < 3:
        return None
    x = ec.steps.astype(float)
    y = ec.y
    n = ec.n
    few = n < int(p("many_evals"))
    k = max(1, n // 20)
    sm = sg.rolling_median(y, 2 * k + 1) if not few else y
    imin = int(np.argmin(sm))
    after = n - 1 - imin
    if after < int(p("min_points_after")):
        return None
    wend = max(2, n // 10) if not few else (2 if n >= 5 else 1)
    lvl_end = float(np.median(y[-wend:]))
    lvl_min = float(np.median(y[max(0, imin - k):imin + k + 1])) if not few else float(y[imin])
    rise = lvl_end - lvl_min
    thr = math.log1p(p("few_min_rise" if few else "min_rise")) if ec.mode == "log" else float(p("min_abs_rise"))
    if rise < thr:
        return None
    if few:
        # every evaluation after the best confirms it: above the best by half the rise
        # threshold (an eval loss is an average over one fixed set: it barely jitters)
        later = y[imin + 1:]
        if float(np.mean(later > lvl_min + 0.5 * thr)) < float(p("few_confirm_share")):
            return None
        onset_i = imin
        z = float("inf")
    else:
        resid = y - sg.rolling_median(y, 5)
        scatter = max(1.4826 * float(np.median(np.abs(resid))), ec.sigma * 0.5, 1e-9)
        se = scatter * math.sqrt(1.0 / wend + 1.0 / (2 * k + 1))
        z = rise / se
        if rise < p("min_z") * se:
            return None
        near = np.flatnonzero(sm[:imin + 1] <= lvl_min + 0.2 * rise)
        lo = int(near[0]) if len(near) else imin
        lo = min(lo, max(0, imin - 2))
        onset_i = sg.climb_onset(x, y, sm, imin, rise, lo, max(2, k), allow_step=False)
    onset = int(round(x[onset_i]))
    wt = max(1, tc.n // 40)
    t_on = _level_at(tc, onset, wt)
    t_end = float(np.median(tc.y[-max(2, tc.n // 20):]))
    t_se = 1.25 * tc.sigma * math.sqrt(1.0 / (2 * wt + 1) + 1.0 / max(2, tc.n // 20))
    allowed = max(math.log1p(p("max_train_rise")) if tc.mode == "log" else 0.0, 3 * t_se)
    if not np.isfinite(t_on) or t_end - t_on > allowed:
        return None        # the train loss rose too: that is the train curve's episode
    return Episode("eval_rise", name, onset=onset, peak=int(ec.steps[-1]), last=int(ec.steps[-1]),
                   before=ec.level(lvl_min), peak_level=ec.level(lvl_end), end_level=ec.level(lvl_end),
                   recovered=False, magnitude=float(rise),
                   data={"best_step": int(ec.steps[imin]), "evals": n, "after": n - onset_i,
                         "wend": wend, "train": train_name, "train_on": tc.level(t_on),
                         "train_end": tc.level(t_end), "z": z, "few": few})
