"""What the HTML reports chart: curves reduced for display, the markers, a static fallback.

The pages draw interactive charts with uPlot (vendored in ``lorascope/_vendor/uplot``,
inlined in the page) from a JSON block this module fills; nothing here draws pixels.

Long curves are reduced before they reach the page, min/max-preserving: the run is cut
into about as many buckets as the chart has pixel columns, and each bucket keeps its
lowest and its highest finite point and its first non-finite one, so a spike or a NaN
is never hidden.  Around the diagnosed step, at finding steps and change points every
point is kept, so zooming to the failure shows the logged values.  A 100k-step run
makes a page well under 1 MB.

:func:`static_svg` draws the same loss curves as a plain SVG polyline for a reader
without JavaScript (the page's script replaces it with the interactive chart).
"""
from __future__ import annotations

import json
from typing import Iterable

import numpy as np

from lorascope.report.safe import visible

BUCKETS = 1000             # per series: ~ pixel columns of a chart
WINDOW = 150               # points kept at full resolution either side of the diagnosed step
SWEEP_BUCKETS = 120        # per run on the sweep index's overlay chart
STATIC_BUCKETS = 300       # per series in the static SVG (the picture without JavaScript)
MAX_MARKS = 500            # per kind of marker (non-finite steps, checkpoints, epochs)
LABEL_CHARS = 80

COLORS = {"train_loss": "#2563eb", "smooth": "#1e3a8a", "eval_loss": "#ea580c", "lr": "#6b7280",
          "grad_norm": "#0891b2", "norm": "#059669"}


# -- reduction ---------------------------------------------------------------------------

def _first_per_bucket(mask: np.ndarray, bid: np.ndarray) -> np.ndarray:
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return idx
    b = bid[idx]
    return idx[np.r_[True, b[1:] != b[:-1]]]


def reduce_index(values: np.ndarray, buckets: int = BUCKETS, keep: np.ndarray | None = None) -> np.ndarray:
    """Indices (ascending) of the points to draw: all of them when there are at most
    ``2 * buckets``; else per bucket of consecutive points its first minimum, its first
    maximum and its first non-finite value, the first and last point, and every index
    in ``keep``."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n <= 2 * buckets:
        return np.arange(n)
    bid = (np.arange(n, dtype=np.int64) * buckets) // n          # non-decreasing
    starts = np.flatnonzero(np.r_[True, bid[1:] != bid[:-1]])
    fin = np.isfinite(v)
    lo = np.where(fin, v, np.inf)
    hi = np.where(fin, v, -np.inf)
    mins = np.minimum.reduceat(lo, starts)
    maxs = np.maximum.reduceat(hi, starts)
    sel = np.zeros(n, dtype=bool)
    for mask in (fin & (lo == mins[bid]), fin & (hi == maxs[bid]), ~fin):
        sel[_first_per_bucket(mask, bid)] = True
    sel[0] = sel[-1] = True
    if keep is not None and len(keep):
        k = np.asarray(keep, dtype=np.int64)
        sel[k[(k >= 0) & (k < n)]] = True
    return np.flatnonzero(sel)


def reduce_points(steps: np.ndarray, values: np.ndarray, buckets: int = BUCKETS,
                  keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` reduced by :func:`reduce_index`."""
    idx = reduce_index(values, buckets, keep)
    return np.asarray(steps)[idx], np.asarray(values, dtype=float)[idx]


def _keep_index(steps: np.ndarray, at: Iterable[int], windows: Iterable[int] = ()) -> np.ndarray:
    """Indices of the points nearest each step of ``at``, and WINDOW points either side
    of each step of ``windows``."""
    steps = np.asarray(steps)
    n = len(steps)
    if n == 0:
        return np.zeros(0, np.int64)
    out = []
    for s in at:
        i = int(np.searchsorted(steps, s))
        out += [i - 1, i]
    for s in windows:
        i = int(np.searchsorted(steps, s))
        out += list(range(i - WINDOW, i + WINDOW + 1))
    k = np.asarray(out, dtype=np.int64)
    return k[(k >= 0) & (k < n)]


def _ys(values: np.ndarray) -> list:
    """Values for the page: rounded to six significant digits (vectorised), None (a gap)
    where not finite."""
    v = np.asarray(values, dtype=float)
    fin = np.isfinite(v)
    out = np.where(fin, v, 0.0)
    nz = fin & (np.abs(v) > 1e-300)
    if nz.any():
        with np.errstate(over="ignore", invalid="ignore"):
            scale = 10.0 ** (5 - np.floor(np.log10(np.abs(v[nz]))))
            r = np.round(v[nz] * scale) / scale
        out[nz] = np.where(np.isfinite(r), r, v[nz])
    lst = out.tolist()
    for i in np.flatnonzero(~fin).tolist():
        lst[i] = None
    return lst


def label(text) -> str:
    """A string from the data as a chart label: control, bidi and invisible characters
    escaped (report/safe.py), bounded length."""
    s = visible(text)
    return s if len(s) <= LABEL_CHARS else s[:LABEL_CHARS - 1] + "…"


def _series(s, key: str, buckets: int, keep: np.ndarray | None, **style) -> dict:
    idx = reduce_index(s.values, buckets, keep)
    out = {"label": label(s.name), "role": key, "color": COLORS.get(key, "#374151"),
           "x": np.asarray(s.steps)[idx].tolist(), "y": _ys(np.asarray(s.values, dtype=float)[idx])}
    out.update(style)
    return out


def _noisy(values: np.ndarray) -> bool:
    """Point-to-point swings large against the level: draw a smoothed line on top."""
    v = values[np.isfinite(values)]
    if len(v) < 30:
        return False
    d = np.median(np.abs(np.diff(v)))
    return bool(d > 0.15 * max(np.median(np.abs(v)), 1e-12))


def _smooth(steps: np.ndarray, values: np.ndarray):
    """A centred rolling median over ~5% of the run (at least 5 points)."""
    fin = np.isfinite(values)
    st, v = steps[fin], values[fin]
    if len(v) > 4000:                 # a line for the eye: medians of ~2000 runs of points first
        k = len(v) // 2000
        m = len(v) // k
        st = st[k // 2: m * k: k][:m]
        v = np.median(v[:m * k].reshape(m, k), axis=1)
    w = max(5, len(v) // 20) | 1
    if len(v) < w:
        return st, v
    from numpy.lib.stride_tricks import sliding_window_view
    med = np.median(sliding_window_view(v, w), axis=1)
    return st[w // 2: w // 2 + len(med)], med


def _wide_range(series: list, ratio: float) -> bool:
    """Positive values spanning more than ``ratio``: the chart opens on a log scale."""
    vals = [np.asarray(s.values, dtype=float) for s in series if s is not None]
    vals = [v[np.isfinite(v)] for v in vals]
    vals = [v for v in vals if len(v)]
    if not vals:
        return False
    allv = np.concatenate(vals)
    return bool((allv > 0).all() and allv.max() / max(allv.min(), 1e-12) > ratio)


# -- the post-mortem page ---------------------------------------------------------------------

def main_finding(findings):
    """The finding the page is about: the first critical one with a step, else the first
    with a step."""
    return next((f for f in findings if f.step is not None and f.severity == "critical"), None) \
        or next((f for f in findings if f.step is not None), None)


def markers(run, findings) -> dict:
    """What every timeline chart marks: the diagnosed step and its range, change points,
    non-finite values, epoch boundaries and checkpoints."""
    main = main_finding(findings)
    diag = None
    if main is not None:
        a, b = (main.step_range or [main.step, main.step])[:2]
        if b is None or b < a:
            b = a
        diag = {"step": int(main.step), "from": int(a), "to": int(b), "severity": main.severity,
                "rule": main.rule}
    cps = sorted({int(cp) for f in findings for cp in (f.extra or {}).get("change_points", [])[:10]})
    bad: set[int] = set()
    count = 0
    for role in ("train_loss", "eval_loss", "grad_norm"):
        s = run.primary(role)
        if s is not None:
            nf = ~np.isfinite(s.values)
            count += int(nf.sum())
            bad.update(np.asarray(s.steps)[nf][:MAX_MARKS].tolist())
    return {
        "diag": diag,
        "change_points": cps[:50],
        "epochs": [int(b) for b in run.epoch_boundaries[:MAX_MARKS]],
        "checkpoints": sorted({int(c.step) for c in run.checkpoints if c.step is not None})[:MAX_MARKS],
        "nonfinite": sorted(bad)[:MAX_MARKS],
        "nonfinite_count": count,
    }


def timeline(run, findings) -> dict | None:
    """The timeline charts' data: ``{"charts": [...], "markers": {...}}``, or None when
    the run has no loss curve.  The loss chart holds the train and eval loss (and a
    smoothed train loss when it is noisy) with the learning rate on a second axis; the
    gradient norm has a chart of its own below it."""
    train, evals = run.primary("train_loss"), run.primary("eval_loss")
    lr, gn = run.primary("lr"), run.primary("grad_norm")
    if train is None and evals is None:
        return None
    marks = markers(run, findings)
    at = [f.step for f in findings if f.step is not None] + marks["change_points"]
    for f in findings:
        if f.step_range:
            at += [x for x in f.step_range[:2] if x is not None]
    windows = [marks["diag"]["step"]] if marks["diag"] else []

    def keep(s):
        return _keep_index(s.steps, at, windows)
    loss = []
    if train is not None:
        noisy = _noisy(np.asarray(train.values, dtype=float))
        loss.append(_series(train, "train_loss", BUCKETS, keep(train), width=0.8 if noisy else 1.2,
                            alpha=0.45 if noisy else 1.0))
        if noisy:
            st, sv = _smooth(np.asarray(train.steps), np.asarray(train.values, dtype=float))
            idx = reduce_index(sv, BUCKETS)
            loss.append({"label": label(f"{train.name} (smoothed)"), "role": "smooth",
                         "color": COLORS["smooth"], "x": st[idx].tolist(), "y": _ys(sv[idx]), "width": 1.8})
    if evals is not None:
        loss.append(_series(evals, "eval_loss", BUCKETS, keep(evals), width=1.8,
                            points=len(evals.steps) < 60))
    if lr is not None:
        loss.append(_series(lr, "lr", BUCKETS, None, scale="lr", dash=[5, 4], width=1.0))
    charts = [{"id": "loss", "ylabel": "loss", "height": 320, "series": loss,
               "log": _wide_range([train, evals], 8), "lr": lr is not None}]
    if gn is not None:
        charts.append({"id": "grad", "ylabel": "grad norm", "height": 170,
                       "series": [_series(gn, "grad_norm", BUCKETS, keep(gn), width=1.0)],
                       "log": _wide_range([gn], 50)})
    return {"charts": charts, "markers": marks}


def norms(run) -> dict | None:
    """The total adapter norm at each checkpoint (at least two)."""
    pts = [(c.step, float(np.sqrt(sum((m.norm or 0.0) ** 2 for m in c.modules))))
           for c in run.checkpoints if c.step is not None and c.modules]
    if len(pts) < 2:
        return None
    pts.sort()
    return {"charts": [{"id": "norms", "ylabel": "total adapter norm", "height": 200, "xlabel": "checkpoint step",
                        "series": [{"label": "adapter norm", "role": "norm", "color": COLORS["norm"],
                                    "x": [int(p[0]) for p in pts], "y": _ys(np.array([p[1] for p in pts])),
                                    "points": True, "width": 1.5}]}]}


# -- the sweep index ----------------------------------------------------------------------------

def sweep_curve(run) -> dict | None:
    """A run's training loss for the sweep index's overlay chart (reduced harder), with
    ``lo`` and ``hi`` (its 2nd and 98th percentiles: the normalised view maps them to 0
    and 1, so runs of any loss scale or sign compare by shape) and ``last`` (its last
    step: what "step as % of the run" divides by)."""
    s = run.primary("train_loss")
    if s is None or not len(s.steps):
        return None
    values = np.asarray(s.values, dtype=float)
    st, v = reduce_points(np.asarray(s.steps), values, SWEEP_BUCKETS)
    fin = values[np.isfinite(values)]
    lo = hi = None
    if len(fin):
        lo, hi = (float(f"{q:.6g}") for q in np.percentile(fin, [2, 98]))
        if not hi > lo:
            lo = hi = None
    return {"x": st.tolist(), "y": _ys(v), "lo": lo, "hi": hi, "last": int(s.steps[-1]) or None}


# -- into the page -------------------------------------------------------------------------------

def page_json(data) -> str:
    """``data`` as the text of a ``<script type="application/json">`` block: ASCII only
    (every other character a ``\\u`` escape), and ``<``, ``>`` and ``&`` escaped too, so
    no string from the data can close the block, open a comment or start markup."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def static_svg(data: dict | None, width: int = 1000, height: int = 260) -> str | None:
    """The loss chart as a plain SVG (polylines, the diagnosed step, the step and value
    range as numbers): what a reader without JavaScript sees.  No string from the data
    is written into it."""
    if not data:
        return None
    chart = data["charts"][0]
    curves = [s for s in chart["series"] if s.get("scale") != "lr" and s["x"]]
    ys = [y for s in curves for y in s["y"] if y is not None]
    xs = [x for s in curves for x in s["x"]]
    if not ys or not xs:
        return None
    log = chart.get("log") and min(ys) > 0

    def ty(v):
        return float(np.log10(v)) if log else v
    y0, y1 = ty(min(ys)), ty(max(ys))
    x0, x1 = min(xs), max(xs)
    if y1 == y0:
        y1 = y0 + 1
    if x1 == x0:
        x1 = x0 + 1
    L, R, T, B = 60, 10, 10, 24
    pw, ph = width - L - R, height - T - B

    def px(x):
        return L + (x - x0) / (x1 - x0) * pw

    def py(y):
        return T + (1 - (ty(y) - y0) / (y1 - y0)) * ph
    parts = [f'<svg class="chart static" role="img" aria-label="loss timeline" viewBox="0 0 {width} {height}" '
             f'xmlns="http://www.w3.org/2000/svg">',
             f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#e5e7eb"/>']
    diag = data["markers"].get("diag")
    if diag:
        a, b = px(diag["from"]), px(diag["to"])
        parts.append(f'<rect x="{a:.1f}" y="{T}" width="{max(b - a, 2):.1f}" height="{ph}" fill="#fecaca"/>'
                     f'<line x1="{px(diag["step"]):.1f}" x2="{px(diag["step"]):.1f}" y1="{T}" y2="{T + ph}" '
                     f'stroke="#dc2626" stroke-width="2"/>')
    for s in curves:
        segs, cur = [], []
        ya = np.array([np.nan if y is None else y for y in s["y"]], dtype=float)
        keep = reduce_index(ya, STATIC_BUCKETS).tolist()
        for x, y in zip((s["x"][i] for i in keep), (s["y"][i] for i in keep)):
            if y is None:
                if cur:
                    segs.append(cur)
                cur = []
            else:
                cur.append(f"{px(x):.1f},{py(y):.1f}")
        if cur:
            segs.append(cur)
        for seg in segs:
            parts.append(f'<polyline fill="none" stroke="{s["color"]}" stroke-width="1.2" '
                         f'points="{" ".join(seg)}"/>')
    fmt = "{:.3g}".format
    parts.append(f'<g font-size="11" fill="#6b7280"><text x="{L - 4}" y="{T + 10}" text-anchor="end">'
                 f'{fmt(max(ys))}</text><text x="{L - 4}" y="{T + ph}" text-anchor="end">{fmt(min(ys))}</text>'
                 f'<text x="{L}" y="{height - 6}">step {x0}</text>'
                 f'<text x="{width - R}" y="{height - 6}" text-anchor="end">step {x1}</text></g></svg>')
    return "".join(parts)
