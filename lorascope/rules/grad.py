"""grad.explosion: the gradient norm jumps by orders of magnitude."""
from __future__ import annotations

import math

import numpy as np

from lorascope import signals as sg
from lorascope.model import Finding, Run, Series
from lorascope.rules.registry import Params, rule
from lorascope.signals import fmt


@rule("grad.explosion", needs=("grad_norm",))
def grad_explosion(run: Run, p: Params) -> list[Finding]:
    """The gradient norm jumps by orders of magnitude.

    ## What it detects
    The level of the gradient norm (a short running median, so one noisy point does not
    count) rises to at least `min_ratio` times its median over the preceding stretch of
    the run and stays there for `min_points` logged points; a single logged point at least
    `isolated_ratio` times the preceding level is reported with `isolated_severity`, unless
    it stays within the run's own recurring range: no more than `range_ratio` times the
    `range_count`-th largest of the other logged points (start of the run included). A norm
    that flips between two levels (preference training), or a memorised run whose rare
    unfitted batch brings back the norm the run started with, is not an explosion.
    Non-finite grad norms (fp16 skipped steps) are left to `loss.nonfinite`; the warmup
    phase at the start is not judged.

    ## Why it matters
    Exploding gradients throw the weights far in one step; the loss spikes or becomes NaN
    right after, and without clipping one bad batch can ruin the adapter.

    ## Example
    `grad_norm` about 0.4 for 900 steps, then 85 and above from step 912.

    ## Fix
    Set `max_grad_norm = 1.0`, lower the learning rate, and use bf16 rather than fp16.
    """
    g: Series = run.primary("grad_norm")
    v = np.asarray(g.values, dtype=float)
    st = np.asarray(g.steps, dtype=np.int64)
    ok = np.isfinite(v) & (v > 0)
    if ok.sum() < p["min_curve_points"]:
        return []
    steps, y = st[ok], np.log(v[ok])
    n = len(y)
    ds_steps, ds_y, starts, block = sg.downsample(steps, y)
    # block maxima too, for isolated points
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
    # baseline: the upper end (q-th percentile) of the preceding stretch, so that a norm
    # that always jumps between two levels is not an explosion
    from scipy.ndimage import percentile_filter
    cen = percentile_filter(ds_y, p["baseline_percentile"], size=W, mode="nearest")
    prev = np.full(nd, np.nan)
    shift = W // 2 + 1
    prev[shift:] = cen[: nd - shift]
    prev[:W] = np.nan                                  # need a full baseline window
    i0 = sg.warmup_index(sg.Curve("g", steps, v[ok], y, "log", 0.0, 0.0, n), run, p["warmup_frac"])
    d0 = int(np.searchsorted(starts, i0))
    prev[:d0] = np.nan
    thr = math.log(p["min_ratio"])
    with np.errstate(invalid="ignore"):
        hit = np.flatnonzero(lvl - prev >= thr)
    # the level must hold for min_points full-resolution points
    mp = int(p["min_points"])
    for d in hit:
        # the level itself must hold: min_points downsampled levels in a row
        if d + mp > nd or not np.all(lvl[d:d + mp] - prev[d] >= thr):
            continue
        lo = int(starts[max(0, d - 1)])
        base = float(prev[d])
        above = y[lo:] >= base + thr
        runs = np.flatnonzero(above)
        if len(runs) == 0:
            continue
        first = lo + int(runs[0])
        seg = above[first - lo: first - lo + int(p["min_points"])]
        if len(seg) >= p["min_points"] and seg.mean() >= 0.66:
            step = int(steps[first])
            peak = float(np.exp(y[first:].max()))
            end_lvl = float(np.exp(np.median(y[-max(3, n // 20):])))
            ev = [f"{g.name} median {fmt(math.exp(base))} before step {step}, "
                  f"{fmt(math.exp(lvl[d]))} from step {step} (x{fmt(math.exp(lvl[d] - base))})",
                  f"peak {fmt(peak)}; {fmt(end_lvl)} over the last points"]
            clip = run.config.get("max_grad_norm")
            if clip:
                ev.append(f"max_grad_norm = {clip}: clipping bounds the update, not the logged (pre-clip) norm")
            return [p.finding(f"Gradient norm jumped x{fmt(math.exp(lvl[d] - base))} at step {step} "
                              f"({fmt(math.exp(base))} to {fmt(math.exp(lvl[d]))})",
                              step=step, step_range=[step, int(steps[-1])], evidence=ev,
                              extra={"series": g.name, "change_points": [step]})]
    sev = p.get("isolated_severity", "warning")
    if sev == "off":
        return []
    iso_thr = math.log(p["isolated_ratio"])
    with np.errstate(invalid="ignore"):
        ih = np.flatnonzero(mx - prev >= iso_thr)
    # a point inside the run's own recurring range is not an explosion: a norm that flips
    # between two levels (preference training) or a memorised run whose rare unfitted batch
    # brings back the norm it started with. The range's upper end: the range_count-th
    # largest of the other points (warmup included: the norm a run starts with is its own)
    order = np.sort(y)[::-1]
    kc = max(1, int(p.get("range_count", 3)))
    rng_log = math.log(p.get("range_ratio", 2.0))
    spikes = []
    for d in ih:
        d = int(d)
        lo = int(starts[d])
        hi = int(starts[d + 1]) if d + 1 < nd else n
        k = lo + int(np.argmax(y[lo:hi]))
        others = np.delete(order, int(np.searchsorted(-order, -y[k])))  # drop one copy of y[k]
        if len(others) < kc:
            continue
        ref = float(others[kc - 1])
        if y[k] - ref <= rng_log:
            continue
        spikes.append((d, k, ref))
    if spikes:
        d, k, ref = spikes[0]
        step = int(steps[k])
        return [p.finding(f"Gradient norm spiked x{fmt(math.exp(y[k] - prev[d]))} at step {step} "
                          "(isolated)", severity=sev, step=step, step_range=[step, step],
                          evidence=[f"{g.name} {fmt(math.exp(y[k]))} at step {step}, median "
                                    f"{fmt(math.exp(prev[d]))} before it; back to its level right after",
                                    f"x{fmt(math.exp(y[k] - ref))} above the run's own recurring upper "
                                    f"level ({fmt(math.exp(ref))}: {kc} other points reach it)",
                                    f"{len(spikes)} such isolated point(s) in the run"],
                          extra={"series": g.name, "change_points": [int(steps[s[1]]) for s in spikes]})]
    return []
