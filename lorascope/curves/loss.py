"""Episodes of a loss curve: short spikes, excursions above its best level, a flat curve.

All work is on a :class:`lorascope.signals.Curve` (finite points, log space for positive
losses, downsampled copy for long curves). Levels are compared in analysed units: a log
ratio in log mode, a difference in linear mode.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from lorascope import signals as sg
from lorascope.curves.model import Episode, Noise, Segment
from lorascope.curves.params import Thresholds


# -- noise ---------------------------------------------------------------------------

def fast_window(n: int, w: int) -> int:
    """The local-median window for points, shrunk for very short curves (a 3-point spike
    needs 7 points around it to stay out of their median)."""
    if n < 8:
        return 3
    if n < 15:
        return 5
    return max(3, int(w) | 1)


def local_baseline(cur: sg.Curve, w: int, max_median_points: int) -> np.ndarray:
    """The curve's local level at every full-resolution point: a running median of ``w``
    points (a few logged points far off their neighbours do not move it), or, for curves
    longer than ``max_median_points``, the block medians interpolated (blocks of hundreds of
    points: as robust, and far cheaper)."""
    if cur.block == 1 or cur.n <= max_median_points:
        return sg.rolling_median(cur.y, fast_window(cur.n, w))
    centers = cur.ds_starts + (np.diff(np.r_[cur.ds_starts, cur.n]) - 1) / 2.0
    return np.interp(np.arange(cur.n, dtype=float), centers, cur.ds_y)


def tail_threshold(resid: np.ndarray, skip: int, T: Thresholds) -> tuple[float, float]:
    """(q, threshold): the residual the curve's own extremes reach. The ``tail_k`` largest
    residuals (after the ``skip`` largest, which may be the spikes themselves) have
    exponential excesses over the next one, q, with mean beta; the largest of n such
    values stays below q + beta * (ln k + ln(1/tail_alpha)) with probability 1 - alpha.
    A short spike must clear that."""
    n = len(resid)
    k = max(int(T.stage("tail_k")), int(T.stage("tail_frac") * n))
    if n < int(T.stage("tail_min_points")) or n < k + skip + 2:
        return 0.0, 0.0
    top = -np.partition(-resid, k + skip)[: k + skip + 1]
    top = np.sort(top)[::-1]
    q = float(top[k + skip])
    beta = float(np.mean(top[skip:k + skip] - q))
    return q, q + beta * (math.log(k) + math.log(1.0 / float(T.stage("tail_alpha"))))


def noise_model(cur: sg.Curve, T: Thresholds) -> tuple[Noise, np.ndarray]:
    """(noise, residuals around the local baseline)."""
    base = local_baseline(cur, T.stage("fast_window"), int(T.stage("max_median_points")))
    resid = cur.y - base
    sigma = max(cur.sigma, 1e-9)
    q, thr = tail_threshold(resid, int(T.rule("loss.spike", "max_points")), T)
    # a Gaussian's q (the k-th largest of n) is about z * sigma; far more is a broad,
    # heavy-tailed per-step loss
    k = max(int(T.stage("tail_k")), int(T.stage("tail_frac") * cur.n))
    zq = _norm_ppf(1.0 - k / max(cur.n, k + 1))
    heavy = q > float(T.stage("heavy_tail_factor")) * max(zq, 1.0) * sigma
    return Noise(cur.mode, sigma, thr, bool(heavy), max(cur.ds_sigma, 1e-9), cur.block), resid


def local_sigma(cur: sg.Curve, noise: Noise, T: Thresholds) -> np.ndarray:
    """The noise of each downsampled point, from the differences around it (a running
    median of |diff| over local_window points): a loss whose noise changes along the run
    (a diffusion loss that calms down once it settled, a blow-up that leaves it quieter)
    is judged by the noise where it is. Never below half the curve's overall noise."""
    y = cur.ds_y
    floor = 0.5 * noise.ds_sigma
    if len(y) < 6:
        return np.full(len(y), max(noise.ds_sigma, 1e-9))
    from scipy.ndimage import median_filter
    d = np.diff(y)
    w = min(int(T.stage("local_window")), len(d)) | 1
    # the local MAD of the differences around their local median (a trend moves the
    # differences, not their spread), as the noise of one point
    dev = np.abs(d - median_filter(d, size=w, mode="nearest"))
    m = 1.4826 / math.sqrt(2.0) * median_filter(dev, size=w, mode="nearest")
    s = np.r_[m[0], 0.5 * (m[:-1] + m[1:]), m[-1]]
    return np.maximum(s, max(floor, 1e-9))


def _norm_ppf(q: float) -> float:
    # scipy.stats.norm.ppf is this function; importing scipy.stats costs 0.3-0.9 s of
    # every analysis, scipy.special is loaded already (scipy.ndimage uses it)
    from scipy.special import ndtri
    return float(ndtri(q))


# -- short spikes --------------------------------------------------------------------

def point_spikes(cur: sg.Curve, series: str, noise: Noise, resid: np.ndarray,
                 T: Thresholds, sig_ds: np.ndarray | None = None) -> list[Episode]:
    """Runs of 1..max_points logged points far above their local level (then back)."""
    n = cur.n
    if n < 5 or cur.mode != "log":
        return []      # preference / RL losses jump around zero by themselves
    sig = noise.sigma
    if sig_ds is not None and len(sig_ds) == len(cur.ds_starts):
        # the local noise of each point (its block's, or the point's own), never below
        # the curve's overall noise: a spike must stand out where it happens
        sig = np.maximum(np.repeat(sig_ds, np.diff(np.r_[cur.ds_starts, n])), noise.sigma)
    thr = np.maximum(max(math.log(T.rule("loss.spike", "point_min_ratio")), noise.tail),
                     float(T.rule("loss.spike", "min_z")) * sig)
    hi = resid > thr
    if not hi.any():
        return []
    # a run of points shorter than a few downsampled blocks is too short for the segments
    maxp = max(int(T.rule("loss.spike", "max_points")), 3 * cur.block if cur.block > 1 else 0)
    init = abs(float(np.median(cur.raw[: max(3, n // 30)])))
    out = []
    d = np.diff(np.r_[0, hi.astype(np.int8), 0])
    for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)):
        a, b = int(a), int(b)
        if b - a > maxp or a == 0:
            continue        # a level change (the excursions see it), or the very first point
        k = a + int(np.argmax(cur.y[a:b]))
        base_y = cur.y[k] - resid[k]
        before, peak = cur.level(base_y), float(cur.raw[k])
        if peak - before < float(T.rule("loss.spike", "min_rel_init")) * init:
            continue      # tiny in the loss's own units (a memorised loss bouncing near zero)
        out.append(Episode(
            "spike", series, onset=int(cur.steps[a]), peak=int(cur.steps[k]),
            end=int(cur.steps[b]) if b < n else None, last=int(cur.steps[b - 1]),
            before=before, peak_level=peak, end_level=before, recovered=b < n, sudden=True,
            magnitude=float(resid[k]),
            data={"points": b - a, "max_points": maxp,
                  "z": float(resid[k] / max(float(np.broadcast_to(sig, (n,))[k]), 1e-12)),
                  "threshold": float(np.broadcast_to(thr, (n,))[k]), "index": (a, b)}))
    return out


# -- segments ------------------------------------------------------------------------

def winsorized(cur: sg.Curve, noise: Noise, T: Thresholds, sig_ds: np.ndarray) -> np.ndarray:
    """The downsampled curve with single points pulled to within clip_sigma of the median
    of them and their two neighbours: short spikes are their own episodes, and a heavy tail
    must not cut the level into spurious segments."""
    y = cur.ds_y
    if len(y) < 5 or cur.block > 1:
        return y.copy()          # block medians are robust already
    med = sg.rolling_median(y, 3)
    c = float(T.stage("clip_sigma")) * sig_ds
    return med + np.clip(y - med, -c, c)


def segments(cur: sg.Curve, yw: np.ndarray, noise: Noise, T: Thresholds,
             sig_ds: np.ndarray) -> list[Segment]:
    """Constant-level stretches of the (winsorized) downsampled curve."""
    n_ds = len(yw)
    if n_ds == 0:
        return []
    min_size = 1 if n_ds < 30 else 2
    cps = sg.change_points(yw, noise.ds_sigma, float(T.stage("cp_penalty")), min_size=min_size)
    bounds = [0] + cps + [n_ds]
    # the noise of a short curve is read off few differences: its MAD may be low by about
    # 1.1/sqrt(m) of itself; the standard errors take one such error in (a 10-point
    # curve's by 1.6x, a 1000-point curve's by 1.04x)
    inflate = 1.0 / max(1.0 - 1.1 / math.sqrt(max(1, n_ds - 1)), 1.0 / 3.0)
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b <= a:
            continue
        lvl = float(np.median(yw[a:b]))
        se = 1.25 * inflate * float(np.median(sig_ds[a:b])) / math.sqrt(b - a)
        s0 = cur.full_index(a)
        s1 = cur.full_index(b) if b < n_ds else cur.n
        out.append(Segment(a, b, int(cur.steps[s0]), int(cur.steps[s1 - 1]), lvl, se))
    return out


# -- excursions ----------------------------------------------------------------------

def excursions(cur: sg.Curve, series: str, yw: np.ndarray, segs: list[Segment], noise: Noise,
               T: Thresholds, warmup_step: float, sig_ds: np.ndarray) -> list[Episode]:
    """Stretches where the level stands significantly above its best level so far.

    Segments are visited in order; the best (lowest) level so far is the reference. A
    segment whose level exceeds it by ``enter`` (the smallest ratio any owner accepts) and
    by ``level_z`` standard errors of both levels opens an excursion; the excursion goes on
    while segments stay above ``recover_ratio`` (and significantly so), and ends at the
    first segment back within it: recovered. One still open at the end did not recover."""
    if len(segs) < 2:
        return []
    # the level test is made once per segment: its z grows slowly with their number
    # (level_alpha shared among them), between level_z_min and level_z
    z = min(float(T.stage("level_z")),
            max(float(T.stage("level_z_min")), _norm_ppf(1.0 - float(T.stage("level_alpha")) / len(segs))))
    if cur.mode == "log":
        enter = math.log(min(T.rule("loss.spike", "min_ratio"), T.rule("loss.divergence", "min_ratio")))
        back = math.log(T.stage("recover_ratio"))
    else:
        enter = min(float(T.rule("loss.spike", "min_abs_jump")), float(T.rule("loss.divergence", "min_abs_rise")))
        back = 0.3 * enter
    # a level that sets the best so far must hold for a few points: the lowest of many
    # short noisy segments is low by chance
    min_best = max(1, min(int(T.stage("min_best_points")), len(yw) // 50))
    # and within a long segment the curve still moves (a decay flattening, noise): its
    # best is the lowest running median of w_b points in it, not the segment's median
    w_b = max(3, min(len(yw) // 20, int(T.stage("best_window"))))
    sm_b = sg.rolling_median(yw, w_b) if len(yw) >= 5 else yw

    def ref(sg_: Segment) -> Segment:
        h = w_b // 2
        if sg_.end - sg_.start <= w_b:
            return sg_
        low = float(np.min(sm_b[sg_.start + h:sg_.end - h]))
        se_b = 1.25 * float(np.median(sig_ds[sg_.start:sg_.end])) / math.sqrt(w_b)
        # the lowest of k noisy window levels is low by about sqrt(2 ln k) of their error
        k = max(1.0, (sg_.end - sg_.start) / w_b)
        low += se_b * math.sqrt(2.0 * math.log(k)) if k > 1 else 0.0
        return replace(sg_, level=low, se=max(sg_.se, se_b)) if low < sg_.level else sg_

    best = ref(segs[0])
    open_: list = []            # [base_seg, first_idx, peak_idx]
    found: list[tuple[Segment, int, int, int | None]] = []
    for i, s in enumerate(segs):
        if i == 0:
            continue
        if not open_:
            ex = s.level - best.level
            if ex > max(enter, z * math.hypot(s.se, best.se)):
                open_ = [best, i, i]
            elif s.level < best.level and (s.end - s.start) >= min_best:
                best = ref(s)
            continue
        base = open_[0]
        ex = s.level - base.level
        if ex > back and ex > z * math.hypot(s.se, base.se) * 0.5:
            if s.level > segs[open_[2]].level:
                open_[2] = i
            continue
        found.append((base, open_[1], open_[2], i))
        best = ref(s) if s.level < base.level and (s.end - s.start) >= min_best else base
        open_ = []
    if open_:
        found.append((open_[0], open_[1], open_[2], None))

    out = []
    y = yw
    x = cur.ds_steps.astype(float)
    n_ds = len(y)
    sm3 = sg.rolling_median(y, 3) if n_ds >= 5 else y
    init = abs(float(np.median(cur.raw[: max(3, cur.n // 30)])))
    rel_min = float(T.rule("loss.spike", "min_rel_init")) * init
    w_e = max(3, n_ds // 20)
    w_s = max(1, min(int(T.stage("sudden_points")), int(T.stage("sudden_max_frac") * n_ds)))
    for base, i_first, i_peak, i_back in found:
        b_seg = base
        first, peak_seg = segs[i_first], segs[i_peak]
        rise = peak_seg.level - b_seg.level
        lo = b_seg.start
        hi = peak_seg.end if i_back is not None else n_ds
        # where the episode ends: recovered at the first point back within recover_ratio,
        # or the level over the last points (a climb is highest at its end)
        if i_back is not None:
            end_level = segs[i_back].level
        else:
            tail = segs[-1]
            end_level = max(tail.level, float(np.median(y[max(tail.start, n_ds - w_e):])))
        # sudden: at least half of the rise that counts (to the peak of an episode that came
        # back, to the end of one that stays up) within sudden_points points, a step that
        # fits better than a ramp or a level that is discontinuous there
        target = rise if i_back is not None else end_level - b_seg.level
        # (looked for from a little before the first high segment: the best level's own
        # stretch is noise, and its largest few-point rise is noise too)
        g_lo = max(lo, first.start - 2 * w_s - (first.end - first.start) // 4)
        g = sm3[g_lo + w_s:peak_seg.end] - sm3[g_lo:peak_seg.end - w_s] if peak_seg.end - g_lo > w_s else np.zeros(0)
        j = g_lo + int(np.argmax(g)) if len(g) else g_lo
        sudden = bool(len(g)) and float(g[j - g_lo]) >= 0.5 * target > 0
        if sudden:
            # and clear of the noise: the levels of up to 10 points on each side differ by
            # jump_sigma standard errors
            w_m = max(2, min(10, (j + 1 - lo), n_ds - (j + w_s)))
            pre = float(np.median(y[max(lo, j + 1 - w_m):j + 1]))
            post = float(np.median(y[j + w_s:j + w_s + w_m])) if j + w_s < n_ds else float(y[-1])
            se_j = 1.25 * float(sig_ds[min(j, n_ds - 1)]) * math.sqrt(2.0 / w_m)
            sudden = post - pre >= 0.5 * target and post - pre >= float(T.stage("jump_sigma")) * se_j
        st_fit = sg.step_fit(y, lo, hi, up=True)
        hg = sg.hinge_fit(x[lo:hi], y[lo:hi], left_flat_or_falling=True) if hi - lo >= 5 else None
        jump = hg is None or hg[3] <= 0 or (st_fit is not None and st_fit[1] <= hg[4])
        if sudden:
            # the first point of the new level: the best split around the fastest rise
            on = sg.refine_split(y, max(lo, j - w_s), min(n_ds, j + 2 * w_s + 1), up=True)
            # a rise in short stages starts with its first stage: the first point around
            # the fastest rise whose local level is half-way up already
            half = np.flatnonzero(sm3[max(lo, j - w_s):on + 1] >= b_seg.level + 0.5 * target)
            if len(half):
                on = max(lo, j - w_s) + int(half[0])
            if i_back is None and not jump:
                gap = _discontinuity(x, y, lo, hi, on)
                sudden = gap[0] - gap[1] >= 0.5 * target
        if not sudden:
            # a climb: the knot of a "flat or falling, then rising" two-piece line from the
            # best level to the peak (the split of a step where no line rises); a knot
            # in noise may sit a few points early: the onset is the first point from it on
            # whose local level is clearly above the best level
            clear = b_seg.level + min(2.0 * float(np.median(sig_ds[lo:first.end])) / math.sqrt(3.0), 0.25 * rise)
            if jump and st_fit is not None:
                # a step fits better: its split, moved back to the start of the rise that
                # leads into it (a short ramp up to a new level)
                on = max(lo, min(st_fit[0], first.start))
                while on > lo and sm3[on - 1] >= clear:
                    on -= 1
            else:
                on = lo + hg[0] if hg is not None and hg[3] > 0 else first.start
                on = max(lo, min(on, first.start))
                up = np.flatnonzero(sm3[on:first.start + 1] >= clear)
                if len(up):
                    on = on + int(up[0])
        on = int(max(lo, min(on, peak_seg.end - 1)))
        on_full = cur.full_index(on)
        if cur.block > 1:
            on_full = sg.refine_split(cur.y, cur.full_index(max(0, on - 2)),
                                      cur.full_index(min(n_ds - 1, on + 2)), up=True)
        # how long the rise took: from the onset to the first segment at 80% of the peak
        j80 = next((k for k in range(i_first, i_peak + 1) if segs[k].level >= b_seg.level + 0.8 * rise), i_peak)
        rise_pts = max(1, cur.full_index(max(on, segs[j80].start)) - on_full + 1)
        # the peak: the highest smoothed point within the peak segment (not before the onset)
        p0 = max(peak_seg.start, min(on, peak_seg.end - 1))
        pk = p0 + int(np.argmax(sm3[p0:peak_seg.end]))
        if i_back is not None:
            back_seg = segs[i_back]
            scan = np.flatnonzero(sm3[pk:back_seg.end] <= b_seg.level + back)
            r = pk + int(scan[0]) if len(scan) else back_seg.start
            r = max(r, pk + 1) if pk + 1 < n_ds else r
            end_step = int(cur.ds_steps[min(r, n_ds - 1)])
            last_step = int(cur.ds_steps[max(r - 1, pk)])
            dur = max(1, cur.full_index(min(r, n_ds - 1)) - on_full)
        else:
            end_step = None
            last_step = int(cur.steps[-1])
            dur = max(1, cur.n - on_full)
        onset_step = int(cur.steps[min(on_full, cur.n - 1)])
        peak_step, peak_lvl = int(cur.ds_steps[pk]), peak_seg.level
        if cur.block > 1:
            # block medians dilute a blow-up shorter than a few blocks: its height is read
            # at full resolution (a running median of fast_window points)
            a0 = cur.full_index(on)
            a1 = cur.full_index(peak_seg.end) if peak_seg.end < n_ds else cur.n
            if a1 - a0 >= 3:
                fr = sg.rolling_median(cur.y[a0:a1], fast_window(a1 - a0, T.stage("fast_window")))
                j = int(np.argmax(fr))
                if fr[j] > peak_lvl:
                    peak_step, peak_lvl = int(cur.steps[a0 + j]), float(fr[j])
                    rise = peak_lvl - b_seg.level
        if i_back is None and end_level > peak_lvl:
            peak_lvl = end_level          # a climb is highest at its end
        if cur.level(peak_lvl) - cur.level(b_seg.level) < rel_min:
            continue      # tiny in the loss's own units (a memorised loss bouncing near zero)
        if cur.mode == "linear" and i_back is None and n_ds - first.start < 2:
            continue      # one last point of a preference / RL loss: it jumps by itself
        ep = Episode(
            "excursion", series, onset=onset_step, peak=peak_step, end=end_step,
            last=last_step, before=cur.level(b_seg.level), peak_level=cur.level(peak_lvl),
            end_level=cur.level(end_level), recovered=i_back is not None, sudden=bool(sudden),
            magnitude=float(rise),
            data={"end_excess": float(end_level - b_seg.level), "rise_points": int(rise_pts),
                  "curve_end": cur.level(max(segs[-1].level, float(np.median(y[max(segs[-1].start, n_ds - w_e):])))
                                         if i_back is None else segs[-1].level),
                  "duration_points": int(dur), "before_steps": (b_seg.first_step, b_seg.last_step),
                  "start_level": cur.level(float(np.median(y[:max(1, min(5, n_ds // 20))]))),
                  "peak_point": float(np.max(cur.raw[cur.full_index(on):cur.full_index(peak_seg.end - 1) + 1]))
                  if on < peak_seg.end else cur.level(peak_seg.level),
                  "z": float(rise / max(math.hypot(peak_seg.se, b_seg.se), 1e-12)),
                  "in_warmup": onset_step <= warmup_step})
        out.append(ep)
    return out


def end_rise(cur: sg.Curve, series: str, yw: np.ndarray, sig_ds: np.ndarray, T: Thresholds,
             found: list[Episode]) -> Episode | None:
    """The backstop for a curve whose segments found no climb that stays up: its level over
    the last tenth against its lowest running median over a tenth of the points before it.
    Ending min_ratio (divergence) above its best, by level_z_min standard errors after the
    bias of taking the lowest of n/w windows, is a climb that stays up, however noisy the
    curve (a 50-point diffusion loss climbing x5 in its last third)."""
    n_ds = len(yw)
    if cur.mode != "log" or n_ds < 30 or any(e.kind == "excursion" and e.recovered is False for e in found):
        return None
    w = max(3, n_ds // 10)
    tail_from = int(cur.ds_steps[n_ds - w])
    if any(e.kind == "spike" and e.onset is not None and e.onset >= tail_from for e in found):
        return None       # a short spike in the last points lifts their level: it is the spike's
    sm = sg.rolling_median(yw, w)
    a, b = w // 2, n_ds - w - w // 2
    if b <= a:
        return None
    i_best = a + int(np.argmin(sm[a:b]))
    best = float(sm[i_best])
    end = float(np.median(yw[-w:]))
    sig = float(np.median(sig_ds))
    se_w = 1.25 * sig / math.sqrt(w)
    k = max(1.0, (b - a) / w)
    bias = se_w * math.sqrt(2.0 * math.log(k)) if k > 1 else 0.0
    rise = end - best
    if rise < math.log(T.rule("loss.divergence", "min_ratio")) or \
            rise - bias < float(T.stage("level_z_min")) * se_w * math.sqrt(2.0):
        return None
    # onset: where the smoothed level last stood within a quarter of the rise of its best
    # (a knot fitted through this much noise lands anywhere in the flat stretch)
    low = np.flatnonzero(sm[i_best:n_ds - w // 2] <= best + rise / 4.0)
    on = i_best + (int(low[-1]) + 1 if len(low) else 0)
    on = min(on, n_ds - 1)
    on_full = cur.full_index(on)
    init = abs(float(np.median(cur.raw[: max(3, cur.n // 30)])))
    if cur.level(end) - cur.level(best) < float(T.rule("loss.spike", "min_rel_init")) * init:
        return None
    return Episode(
        "excursion", series, onset=int(cur.steps[min(on_full, cur.n - 1)]), peak=int(cur.steps[-1]),
        end=None, last=int(cur.steps[-1]), before=cur.level(best), peak_level=cur.level(end),
        end_level=cur.level(end), recovered=False, sudden=False, magnitude=float(rise),
        data={"end_excess": rise, "rise_points": int(cur.n - on_full), "duration_points": int(cur.n - on_full),
              "curve_end": cur.level(end),
              "before_steps": (int(cur.ds_steps[max(0, i_best - w // 2)]), int(cur.ds_steps[min(n_ds - 1, i_best + w // 2)])),
              "start_level": cur.level(float(np.median(yw[:max(1, min(5, n_ds // 20))]))),
              "z": float((rise - bias) / max(se_w * math.sqrt(2.0), 1e-12)), "in_warmup": False,
              "backstop": True})


def _discontinuity(x: np.ndarray, y: np.ndarray, lo: int, hi: int, k: int) -> tuple[float, float]:
    """(how far the level jumps at index k, its standard error): a line through each side
    (up to 20 points or a fifth of the stretch), both extrapolated to the gap between k-1
    and k."""
    side = max(3, min(20, (hi - lo) // 5))
    a, b = max(lo, k - side), min(hi, k + side)
    if k - a < 2 or b - k < 2:
        d = float(y[k] - y[k - 1]) if 0 < k < len(y) else 0.0
        return d, 0.0
    at = (x[k - 1] + x[k]) / 2.0
    vb, sb = sg.linear_edge(x[a:k], y[a:k], at)
    va, sa = sg.linear_edge(x[k:b], y[k:b], at)
    se = math.hypot(sb, sa) if math.isfinite(sb) and math.isfinite(sa) else 0.0
    return float(va - vb), se


# -- a flat curve ----------------------------------------------------------------------

def flat(cur: sg.Curve, series: str, T: Thresholds, warmup_idx: int) -> Episode | None:
    """The loss never meaningfully decreased: its best smoothed level is less than
    min_decrease below its initial level, or a decrease within the noise and below
    significant_decrease. Log mode only (preference / RL losses are not judged)."""
    if cur.mode != "log" or cur.n < int(T.rule("loss.plateau", "min_curve_points")):
        return None
    y, n_ds = cur.ds_y, len(cur.ds_y)
    w = max(3, n_ds // 10)
    wi = max(5, n_ds // 30)          # the initial level: the first 3% (an early drop counts)
    ws = max(3, n_ds // 5)
    d0 = min(int(np.searchsorted(cur.ds_starts, warmup_idx)), max(0, n_ds - 2 * w))
    init = float(np.median(y[d0:d0 + wi]))
    sm = sg.rolling_median(y, ws)
    # only where the median window lies inside the curve: at the edges it is padded with
    # copies of the first / last point, and one low last point would be "the best level"
    a, b = d0 + max(w // 2, ws // 2), n_ds - ws // 2
    if b <= a:
        a, b = d0 + w // 2, n_ds
    best_i = a + int(np.argmin(sm[a:b]))
    best = float(sm[best_i])
    end = float(np.median(y[-w:]))
    drop = init - best
    se = 1.25 * cur.ds_sigma * math.sqrt(1.0 / wi + 1.0 / ws)
    p = lambda k: T.rule("loss.plateau", k)  # noqa: E731
    need = max(math.log1p(p("min_decrease")), min(p("min_z") * se, math.log1p(p("significant_decrease"))))
    if drop >= need or end - init > math.log1p(p("significant_decrease")):
        return None      # it decreased, or it rose (an excursion)
    return Episode("flat", series, onset=int(cur.steps[0]), last=int(cur.steps[-1]),
                   before=cur.level(init), peak_level=cur.level(best), end_level=cur.level(end),
                   magnitude=float(drop),
                   data={"noisy": drop >= math.log1p(p("min_decrease")), "need": need, "points": cur.n,
                         "best_step": int(cur.ds_steps[best_i]), "init_points": max(1, cur.n * wi // n_ds),
                         "sigma": cur.sigma})
