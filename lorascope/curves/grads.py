"""Gradient-norm episodes: level jumps by orders of magnitude, isolated huge points,
non-finite norms (with a finite loss: fp16 skipped steps; with the loss logged as 0.0:
a NaN hidden by HF's logging filter)."""
from __future__ import annotations

import math

import numpy as np

from lorascope import signals as sg
from lorascope.curves.model import Episode
from lorascope.curves.params import Thresholds
from lorascope.model import Series


def _runs_of(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index ranges where mask is True."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def nonfinite(g: Series, loss: Series | None, T: Thresholds) -> Episode | None:
    """Non-finite grad norms. With the loss logged as exactly 0.0 at those steps (amid
    positive losses) the loss itself was NaN: HF's logging_nan_inf_filter dropped it from
    the logged average (kind hidden_nan). Otherwise a finite loss beside a non-finite norm
    is the fp16 loss scaler skipping steps (kind grad_nonfinite)."""
    gv = np.asarray(g.values, dtype=float)
    gs = np.asarray(g.steps, dtype=np.int64)
    gbad = ~np.isfinite(gv)
    if not gbad.any():
        return None
    bad_steps = gs[gbad]
    first = int(np.argmax(gbad))
    runs = _runs_of(gbad)
    longest = max(b - a for a, b in runs)
    tail_share = float(gbad[first:].mean())
    zero_loss = np.zeros(0, dtype=np.int64)
    if loss is not None and len(loss.values):
        v = np.asarray(loss.values, dtype=float)
        st = np.asarray(loss.steps, dtype=np.int64)
        pos = v[np.isfinite(v) & (v > 0)]
        common, li, _ = np.intersect1d(st, bad_steps, return_indices=True)
        if len(common) and len(pos) and float(np.median(pos)) >= 0.05:
            zero_loss = common[v[li] == 0.0]
    if len(zero_loss):
        start = min(int(zero_loss[0]), int(gs[first]))
        return Episode("hidden_nan", g.name, onset=start, last=int(gs[-1]), recovered=False,
                       data={"bad": int(gbad.sum()), "total": len(gv), "first": int(gs[first]),
                             "zero_loss": len(zero_loss), "zero_first": int(zero_loss[0]),
                             "loss_series": loss.name if loss is not None else None})
    many = (longest >= int(T.rule("grad.nonfinite", "min_consecutive"))
            or (gbad.mean() >= float(T.rule("grad.nonfinite", "many_share")) and gbad.sum() >= 2)
            or (tail_share >= float(T.rule("grad.nonfinite", "persist_share")) and gbad.sum() >= 2))
    return Episode("grad_nonfinite", g.name, onset=int(bad_steps[0]), last=int(bad_steps[-1]),
                   data={"bad": int(gbad.sum()), "total": len(gv), "steps": [int(x) for x in bad_steps[:50]],
                         "longest": int(longest), "tail_share": tail_share, "many": bool(many),
                         "loss_series": loss.name if loss is not None else None})


def explosion(g: Series, T: Thresholds, warmup_steps) -> Episode | None:
    """A level of the grad norm min_ratio above the upper end of the preceding stretch
    (held for min_points points), or one point isolated_ratio above it, outside the run's
    own recurring range."""
    p = lambda k: T.rule("grad.explosion", k)  # noqa: E731
    v = np.asarray(g.values, dtype=float)
    st = np.asarray(g.steps, dtype=np.int64)
    ok = np.isfinite(v) & (v > 0)
    if ok.sum() < p("min_curve_points"):
        return None
    steps, y = st[ok], np.log(v[ok])
    n = len(y)
    ds_steps, ds_y, starts, block = sg.downsample(steps, y)
    if block > 1:
        nb = n // block
        mx = np.max(y[: nb * block].reshape(nb, block), axis=1)
        if n > nb * block:
            mx = np.append(mx, y[nb * block:].max())
    else:
        mx = y
    nd = len(ds_y)
    lvl = sg.rolling_median(ds_y, 3) if nd >= 5 else ds_y
    W = max(5, nd // 10)
    from scipy.ndimage import percentile_filter
    cen = percentile_filter(ds_y, p("baseline_percentile"), size=W, mode="nearest")
    prev = np.full(nd, np.nan)
    shift = W // 2 + 1
    prev[shift:] = cen[: nd - shift]
    prev[:W] = np.nan
    first, last = int(steps[0]), int(steps[-1])
    end = first + p("warmup_frac") * (last - first)
    if isinstance(warmup_steps, (int, float)) and 0 < warmup_steps < last:
        end = max(end, float(warmup_steps))
    d0 = int(np.searchsorted(starts, int(np.searchsorted(steps, end))))
    prev[:d0] = np.nan
    thr = math.log(p("min_ratio"))
    with np.errstate(invalid="ignore"):
        hit = np.flatnonzero(lvl - prev >= thr)
    mp = int(p("min_points"))
    for d in hit:
        if d + mp > nd or not np.all(lvl[d:d + mp] - prev[d] >= thr):
            continue
        lo = int(starts[max(0, d - 1)])
        base = float(prev[d])
        above = y[lo:] >= base + thr
        idx = np.flatnonzero(above)
        if len(idx) == 0:
            continue
        f0 = lo + int(idx[0])
        seg = above[f0 - lo: f0 - lo + mp]
        if len(seg) >= mp and seg.mean() >= 0.66:
            return Episode("grad_jump", g.name, onset=int(steps[f0]), last=int(steps[-1]),
                           before=math.exp(base), peak_level=float(np.exp(y[f0:].max())),
                           end_level=float(np.exp(np.median(y[-max(3, n // 20):]))),
                           magnitude=float(lvl[d] - base),
                           data={"level": math.exp(lvl[d]), "ratio": math.exp(lvl[d] - base)})
    iso_thr = math.log(p("isolated_ratio"))
    with np.errstate(invalid="ignore"):
        ih = np.flatnonzero(mx - prev >= iso_thr)
    order = np.sort(y)[::-1]
    kc = max(1, int(p("range_count")))
    rng_log = math.log(p("range_ratio"))
    spikes = []
    for d in ih:
        d = int(d)
        lo = int(starts[d])
        hi = int(starts[d + 1]) if d + 1 < nd else n
        k = lo + int(np.argmax(y[lo:hi]))
        others = np.delete(order, int(np.searchsorted(-order, -y[k])))
        if len(others) < kc:
            continue
        ref = float(others[kc - 1])
        if y[k] - ref <= rng_log:
            continue
        spikes.append((d, k, ref))
    if not spikes:
        return None
    d, k, ref = spikes[0]
    return Episode("grad_point", g.name, onset=int(steps[k]), peak=int(steps[k]), last=int(steps[k]),
                   before=math.exp(prev[d]), peak_level=math.exp(y[k]), recovered=True,
                   magnitude=float(y[k] - prev[d]),
                   data={"ref": math.exp(ref), "range_count": kc, "count": len(spikes),
                         "steps": [int(steps[s[1]]) for s in spikes]})
