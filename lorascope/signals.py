"""Shared curve maths for the curve rules.

A training loss is multiplicative (a jump from 0.1 to 0.3 matters as much as one from 1
to 3), so positive losses are analysed in log space; losses that are zero or negative
(preference / RL training: TRL DPO, GRPO) or that start near zero are analysed as they
are ("linear" mode) and ratio tests are switched off for them.

Long curves are reduced to about :data:`DS_TARGET` block medians before change-point
detection (ruptures' ``KernelCPD`` with a linear kernel, the fast C implementation of the
l2 / Pelt segmentation, with a penalty scaled by the curve's own noise); each change point
is then refined at full resolution inside the few blocks around it.

Everything here is pure numpy / scipy / ruptures and never raises on bad numbers: all-NaN,
constant, one-point and huge-valued curves give ``None`` or empty answers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import median_filter

from lorascope.model import Run, Series

DS_TARGET = 2000          # points kept for change-point detection
MIN_POINTS = 10           # curves shorter than this are skipped by most rules
NEAR_ZERO_LEVEL = 0.05    # an initial loss level below this is "near zero": linear mode
LOG_OFFSET_FRAC = 0.01    # log(v + 1% of the initial level): tames values near zero
_NOISE_FLOOR = 1e-9


def fmt(v: float) -> str:
    """A number for evidence text: 3 significant digits."""
    if v is None or not np.isfinite(v):
        return str(v)
    return f"{v:.3g}"


def robust_noise(y: np.ndarray) -> float:
    """Point-to-point noise of a curve: MAD of first differences, as a standard deviation
    of one point (differences of white noise have sqrt(2) times its spread)."""
    y = np.asarray(y, dtype=float)
    y = y[np.isfinite(y)]
    if len(y) < 3:
        return 0.0
    d = np.diff(y)
    mad = float(np.median(np.abs(d - np.median(d))))
    s = 1.4826 * mad / math.sqrt(2.0)
    if s <= _NOISE_FLOOR:
        # quantized or constant curves: fall back to the plain spread of the differences
        s = float(np.std(d)) / math.sqrt(2.0)
    return max(s, _NOISE_FLOOR)


def rolling_median(y: np.ndarray, w: int) -> np.ndarray:
    w = max(1, int(w))
    if w % 2 == 0:
        w += 1
    if len(y) == 0 or w == 1:
        return np.asarray(y, dtype=float).copy()
    return median_filter(np.asarray(y, dtype=float), size=min(w, 2 * (len(y) // 2) + 1),
                         mode="nearest")


def downsample(steps: np.ndarray, y: np.ndarray, target: int = DS_TARGET):
    """Block medians of ``y`` (about ``target`` blocks). Returns (ds_steps, ds_y, starts,
    block) where ``starts[j]`` is the full-resolution index where block j begins and
    ``ds_steps[j] = steps[starts[j]]``."""
    n = len(y)
    block = max(1, int(math.ceil(n / max(1, target))))
    if block == 1:
        return steps.copy(), y.copy(), np.arange(n), 1
    nb = n // block
    main = np.median(y[: nb * block].reshape(nb, block), axis=1)
    starts = np.arange(nb) * block
    if n > nb * block:
        main = np.append(main, np.median(y[nb * block:]))
        starts = np.append(starts, nb * block)
    return steps[starts], main, starts, block


def change_points(y: np.ndarray, sigma: float, beta: float = 4.0, min_size: int = 2) -> list[int]:
    """Indices where a new constant-level segment starts (l2 cost, penalty
    ``beta * sigma^2 * log(n)``). Uses ruptures' KernelCPD (linear kernel == l2 Pelt)."""
    n = len(y)
    if n < 2 * min_size + 1:
        return []
    import ruptures as rpt  # noqa: PLC0415  (import cost only when a curve is analysed)
    pen = beta * max(sigma, _NOISE_FLOOR) ** 2 * math.log(max(n, 3))
    try:
        bk = rpt.KernelCPD(kernel="linear", min_size=min_size).fit(
            np.asarray(y, dtype=float).reshape(-1, 1)).predict(pen=pen)
    except Exception:  # ruptures refuses degenerate input: no change point
        return []
    return [int(b) for b in bk[:-1]]


def refine_split(y: np.ndarray, lo: int, hi: int, up: bool | None = None) -> int:
    """Best single split in y[lo:hi] (full resolution) by the two-mean l2 cost: the index
    of the first point of the second segment. ``up`` restricts to upward (True) or
    downward (False) steps."""
    lo, hi = max(0, lo), min(len(y), hi)
    seg = np.asarray(y[lo:hi], dtype=float)
    m = len(seg)
    if m < 3:
        return lo + m // 2
    cs = np.cumsum(seg)
    tot = cs[-1]
    k = np.arange(1, m)
    left = cs[:-1] / k
    right = (tot - cs[:-1]) / (m - k)
    gain = k * (m - k) / m * (right - left) ** 2
    if up is True:
        gain = np.where(right > left, gain, -1)
    elif up is False:
        gain = np.where(right < left, gain, -1)
    return lo + int(np.argmax(gain)) + 1


def hinge_fit(x: np.ndarray, y: np.ndarray, lo: int = 0, hi: int | None = None,
              left_flat_or_falling: bool = False):
    """Continuous two-piece linear fit ``y = a + b1*(x-k)_- + b2*(x-k)_+`` with the knot k
    at one of x[lo:hi]. Returns (knot_index, a, b1, b2, sse) or None.

    ``left_flat_or_falling`` constrains the left slope to ``b1 <= 0`` (the fit for the
    onset of a rise: "flat or still falling, then rising"; where the free fit would make
    the left piece rise, the left piece is flat instead)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = len(x)
    if n < 5:
        return None
    hi = n - 1 if hi is None else min(hi, n - 1)
    lo = max(1, lo)
    if hi <= lo:
        return None
    xs = (x - x[0]) / max(x[-1] - x[0], 1e-12)        # scale for conditioning
    cx, cxx = np.cumsum(xs), np.cumsum(xs * xs)
    cy, cxy = np.cumsum(y), np.cumsum(xs * y)
    tx, txx, ty, txy = cx[-1], cxx[-1], cy[-1], cxy[-1]
    syy = float(np.dot(y, y))
    ks = np.arange(lo, hi + 1)
    xk = xs[ks]
    nl = ks.astype(float)                              # points strictly left of the knot
    lx, lxx, ly, lxy = cx[ks - 1], cxx[ks - 1], cy[ks - 1], cxy[ks - 1]
    rx, rxx, ry, rxy = tx - lx, txx - lxx, ty - ly, txy - lxy
    nr = n - nl
    su = lx - nl * xk
    suu = lxx - 2 * xk * lx + nl * xk * xk
    suy = lxy - xk * ly
    sv = rx - nr * xk
    svv = rxx - 2 * xk * rx + nr * xk * xk
    svy = rxy - xk * ry
    A = np.zeros((len(ks), 3, 3))
    A[:, 0, 0] = n
    A[:, 0, 1] = A[:, 1, 0] = su
    A[:, 0, 2] = A[:, 2, 0] = sv
    A[:, 1, 1] = suu + 1e-12
    A[:, 2, 2] = svv + 1e-12
    b = np.stack([np.full(len(ks), ty), suy, svy], axis=1)
    try:
        coef = np.linalg.solve(A, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return None
    sse = syy - np.einsum("ij,ij->i", coef, b)
    if left_flat_or_falling:
        up = coef[:, 1] > 0
        if up.any():
            # refit those knots with a flat left piece: y = a + b2*(x-k)_+
            det = n * (svv + 1e-12) - sv * sv
            ok = np.abs(det) > 1e-300
            a2 = np.where(ok, (ty * (svv + 1e-12) - sv * svy) / np.where(ok, det, 1.0), ty / n)
            c2 = np.where(ok, (n * svy - sv * ty) / np.where(ok, det, 1.0), 0.0)
            sse2 = syy - (a2 * ty + c2 * svy)
            coef = coef.copy()
            coef[up] = np.stack([a2[up], np.zeros(int(up.sum())), c2[up]], axis=1)
            sse = np.where(up, sse2, sse)
    j = int(np.argmin(sse))
    scale = max(x[-1] - x[0], 1e-12)
    a, b1, b2 = coef[j]
    return int(ks[j]), float(a), float(b1 / scale), float(b2 / scale), float(max(sse[j], 0.0))


def step_fit(y: np.ndarray, lo: int = 0, hi: int | None = None, up: bool | None = None):
    """Best single mean shift in y[lo:hi]: (index of the first point of the second
    segment, sse of the two-mean fit) or None."""
    hi = len(y) if hi is None else min(hi, len(y))
    seg = np.asarray(y[max(0, lo):hi], dtype=float)
    m = len(seg)
    if m < 4:
        return None
    k = refine_split(seg, 0, m, up)
    sse = float(np.sum((seg[:k] - seg[:k].mean()) ** 2) + np.sum((seg[k:] - seg[k:].mean()) ** 2))
    return max(0, lo) + k, sse


def rise_onset(x: np.ndarray, y: np.ndarray, lo: int, hi: int, allow_step: bool = True) -> int | None:
    """Where a rise begins in y[lo:hi]: the knot of a "flat or falling, then rising"
    two-piece line, or (``allow_step``) the split of a mean shift up when the rise is a step
    (a flat stretch, a jump, a new level) and the step explains the window better. Index
    into y, or None."""
    hf = hinge_fit(x[lo:hi], y[lo:hi], left_flat_or_falling=True)
    st = step_fit(y, lo, hi, up=True) if allow_step else None
    if hf is None and st is None:
        return None
    if hf is None or hf[3] <= 0:
        return st[0] if st is not None else None
    if st is not None and st[1] < hf[4]:
        return st[0]
    return lo + hf[0]


def climb_onset(x: np.ndarray, y: np.ndarray, sm: np.ndarray, imin: int, rise: float,
                lo: int, w: int, allow_step: bool = True, frac: float = 0.5) -> int:
    """Onset of a climb that follows a minimum: :func:`rise_onset` in a window around the
    smoothed minimum ``sm[imin]``. The window ends a little after the smoothed curve has
    made ``frac`` of its ``rise`` (the onset is a local feature, and a rise in stages -
    flat, a step, flat, a climb - is not one line) and starts at ``lo`` but no earlier than half
    that time before the minimum (a decay that is still slowing down is bent like a
    parabola only locally). ``allow_step`` as in :func:`rise_onset`. Returns an index into
    y (``imin`` when nothing fits)."""
    n = len(y)
    hi = n
    half = np.flatnonzero(sm[imin:] >= sm[imin] + frac * rise)
    if len(half):
        h = imin + int(half[0])
        hi = min(n, h + max(h - imin, w))
        lo = max(lo, min(imin - (h - imin) // 2, imin - 2 * w))
    lo = max(0, min(lo, imin))
    on = rise_onset(x, y, lo, hi, allow_step)
    return imin if on is None else int(on)


def linear_edge(x: np.ndarray, y: np.ndarray, at: float) -> tuple[float, float]:
    """Least-squares line through (x, y) evaluated at ``at``; returns (value, std error)."""
    m = len(x)
    if m == 0:
        return float("nan"), float("inf")
    if m < 4:
        return float(np.median(y)), float(robust_noise(y) if m >= 3 else np.inf)
    xm = x.mean()
    dx = x - xm
    sxx = float(np.dot(dx, dx))
    if sxx <= 0:
        return float(np.median(y)), float(np.std(y) / math.sqrt(m))
    slope = float(np.dot(dx, y - y.mean())) / sxx
    val = float(y.mean() + slope * (at - xm))
    res = y - (y.mean() + slope * dx)
    s = float(np.sqrt(np.dot(res, res) / max(1, m - 2)))
    se = s * math.sqrt(1.0 / m + (at - xm) ** 2 / sxx)
    return val, se


# -- prepared curves -----------------------------------------------------------------

@dataclass
class Curve:
    """A series made ready for the rules: finite points, transformed values, noise,
    a downsampled copy and its change points."""

    name: str
    steps: np.ndarray              # int64, finite points only
    raw: np.ndarray                # float64 values (after the grad-accumulation fix)
    y: np.ndarray                  # analysed values: log(raw + offset) or raw
    mode: str                      # "log" | "linear"
    offset: float
    sigma: float                   # point noise of y
    n_total: int                   # points including non-finite ones
    rescaled: int = 0              # points divided by grad_accum
    ds_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ds_y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ds_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    block: int = 1
    ds_sigma: float = 0.0
    _cps: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.y)

    def level(self, yv: float) -> float:
        """Back from analysed units to the loss's own units."""
        if self.mode == "log":
            with np.errstate(over="ignore"):
                return float(np.exp(yv) - self.offset)
        return float(yv)

    def cps(self, beta: float = 4.0) -> list[int]:
        """Change points (downsampled indices), cached per penalty."""
        if beta not in self._cps:
            self._cps[beta] = change_points(self.ds_y, self.ds_sigma, beta)
        return self._cps[beta]

    def full_index(self, ds_index: int) -> int:
        return int(self.ds_starts[min(max(ds_index, 0), len(self.ds_starts) - 1)])

    def refine(self, ds_index: int, up: bool | None = None) -> int:
        """Full-resolution index of a change point found at downsampled index."""
        if self.block == 1:
            lo, hi = ds_index - 2, ds_index + 2
        else:
            lo = self.full_index(ds_index - 2)
            hi = self.full_index(ds_index + 2) if ds_index + 2 < len(self.ds_starts) else self.n
        return refine_split(self.y, lo, hi, up)


_CACHE: dict[tuple, tuple] = {}


def prepare(series: Series | None, run: Run | None = None, *, log: bool | None = None,
            ds_target: int = DS_TARGET) -> Curve | None:
    """Prepare a series (cached per array object). ``log=None`` picks the mode from the
    values: log space for positive losses that do not start near zero. Curves longer than
    ``ds_target`` points get a downsampled copy of about that many block medians."""
    if series is None:
        return None
    key = (id(series.values), id(series.steps), len(series.values), log,
           _grad_accum(run), int(ds_target))
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is series.values:
        return hit[1]
    cur = _prepare(series, run, log, int(ds_target))
    if len(_CACHE) > 16:
        _CACHE.clear()
    _CACHE[key] = (series.values, cur)
    return cur


def _grad_accum(run: Run | None) -> int:
    if run is None:
        return 1
    g = run.config.get("grad_accum")
    try:
        g = int(g)
    except (TypeError, ValueError):
        return 1
    return g if 2 <= g <= 4096 else 1


def _prepare(series: Series, run: Run | None, log: bool | None, ds_target: int = DS_TARGET) -> Curve | None:
    v = np.asarray(series.values, dtype=float)
    st = np.asarray(series.steps, dtype=np.int64)
    ok = np.isfinite(v)
    if ok.sum() < 1:
        return None
    steps, raw = st[ok], v[ok].copy()
    n = len(raw)
    init = float(np.median(raw[: max(3, n // 10)]))
    positive = bool((raw > 0).all())
    if log is None:
        # a diffusion loss is an MSE: strictly positive and multiplicative however small
        # its level (0.02-0.05 is common); only preference / RL losses live near zero
        diffusion = run is not None and run.task == "sd" and positive
        log = bool((raw >= 0).all()) and (init >= NEAR_ZERO_LEVEL or diffusion) and (
            positive or float(np.mean(raw == 0)) < 0.9)
    elif log and not positive:
        log = False
    if log and (raw == 0).any() and (raw >= 0).all() and float(np.median(raw[raw > 0])) >= NEAR_ZERO_LEVEL:
        # exact 0.0 amid positive losses: HF's NaN filter logging an empty window, not a
        # value (loss.nonfinite reports it); keep the real points only
        keep = raw > 0
        steps, raw = steps[keep], raw[keep]
        n = len(raw)
        if n < 1:
            return None
    rescaled = 0
    g = _grad_accum(run)
    if log and g > 1 and n >= 9:
        # some trainers log loss * grad_accum at some steps: put those points back
        lr = np.log(raw)
        dev = lr - rolling_median(lr, 9)
        tol = max(math.log(1.15), 2.5 * robust_noise(lr))
        bad = (np.abs(dev - math.log(g)) < tol) if tol < 0.5 * math.log(g) else np.zeros(n, bool)
        if 0 < bad.sum() <= 0.3 * n:
            raw[bad] /= g
            rescaled = int(bad.sum())
    if log:
        offset = LOG_OFFSET_FRAC * init
        y = np.log(raw + offset)
        mode = "log"
    else:
        offset = 0.0
        y = raw.copy()
        mode = "linear"
    cur = Curve(series.name, steps, raw, y, mode, offset, robust_noise(y), len(v), rescaled)
    cur.ds_steps, cur.ds_y, cur.ds_starts, cur.block = downsample(steps, y, max(10, ds_target))
    cur.ds_sigma = robust_noise(cur.ds_y) if cur.block > 1 else cur.sigma
    return cur


def warmup_index(cur: Curve, run: Run | None, frac: float) -> int:
    """Full-resolution index where the warmup phase is surely over: the larger of
    ``frac`` of the run and the configured warmup steps."""
    first, last = int(cur.steps[0]), int(cur.steps[-1])
    end = first + frac * (last - first)
    if run is not None:
        ws = run.config.get("warmup_steps")
        if isinstance(ws, (int, float)) and 0 < ws < last:
            end = max(end, float(ws))
    return int(np.searchsorted(cur.steps, end))


def window_median(y: np.ndarray, lo: int, hi: int) -> float:
    lo, hi = max(0, lo), min(len(y), hi)
    return float(np.median(y[lo:hi])) if hi > lo else float("nan")
