"""Charts for the HTML report, drawn with matplotlib as inline SVG.

Long curves are reduced before drawing (min/max per pixel column keeps spikes
visible), so a 100k-step run still makes a small, fast page.
"""
from __future__ import annotations

import io
import re

import numpy as np

MAX_POINTS = 1500          # per series, after min/max reduction


def _mpl():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    plt.rcParams.update({
        "svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
        "axes.spines.right": False, "svg.hashsalt": "lorascope",
        "font.family": "DejaVu Sans",
    })
    return plt


def safe_label(text: str) -> str:
    """A string from a file as a matplotlib label: control, bidi and invisible characters
    escaped (report/safe.py), no mathtext, bounded length."""
    from lorascope.report.safe import visible
    return visible(text)[:60].replace("$", r"\$")


def reduce_points(steps: np.ndarray, values: np.ndarray, n: int = MAX_POINTS):
    """At most ~n points: the min and max of each bucket, in step order."""
    if len(steps) <= n:
        return steps, values
    buckets = n // 2
    edges = np.linspace(0, len(steps), buckets + 1).astype(int)
    out_s, out_v = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        if b <= a:
            continue
        seg = values[a:b]
        fin = np.isfinite(seg)
        if not fin.any():
            out_s.append(steps[a]); out_v.append(np.nan)
            continue
        idx = np.nonzero(fin)[0]
        lo = idx[np.argmin(seg[fin])]; hi = idx[np.argmax(seg[fin])]
        for i in sorted({lo, hi}):
            out_s.append(steps[a + i]); out_v.append(seg[i])
    return np.asarray(out_s), np.asarray(out_v, dtype=float)


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
    w = max(5, len(v) // 20) | 1
    if len(v) < w:
        return st, v
    from numpy.lib.stride_tricks import sliding_window_view
    med = np.median(sliding_window_view(v, w), axis=1)
    return st[w // 2: w // 2 + len(med)], med


def _svg(fig) -> str:
    plt = _mpl()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.find("<svg"):]                 # drop the XML prolog and doctype
    return re.sub(r'<svg ', '<svg role="img" class="chart" ', svg, count=1)


def timeline_svg(run, findings) -> str | None:
    """The loss timeline: train/eval loss, lr, change points, NaNs, epochs, checkpoints."""
    train = run.primary("train_loss")
    evals = run.primary("eval_loss")
    lr = run.primary("lr")
    gn = run.primary("grad_norm")
    if train is None and evals is None:
        return None
    plt = _mpl()
    rows = 2 if gn is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(10, 3.6 if rows == 1 else 5.0), sharex=True,
                             gridspec_kw={"height_ratios": [3, 1.2][:rows]}, squeeze=False)
    ax = axes[0][0]
    positive = True
    lo_hi = []
    for s, color, lw in ((train, "#2563eb", 1.0), (evals, "#ea580c", 1.6)):
        if s is None:
            continue
        st, v = reduce_points(s.steps, s.values)
        fin = np.isfinite(v)
        if fin.any():
            positive &= bool((v[fin] > 0).all())
            lo_hi += [np.nanmin(v[fin]), np.nanmax(v[fin])]
        noisy = s is train and _noisy(s.values)
        ax.plot(st, np.where(fin, v, np.nan), color=color, lw=0.6 if noisy else lw,
                alpha=0.35 if noisy else 1.0, label=safe_label(s.name),
                marker="o" if s is evals and len(st) < 60 else None, ms=3)
        if noisy:
            ss, sv = reduce_points(*_smooth(s.steps, s.values))
            ax.plot(ss, sv, color=color, lw=1.6, label=safe_label(f"{s.name} (smoothed)"))
        bad = ~np.isfinite(s.values)
        if bad.any():
            bs = s.steps[bad][:200]
            ax.plot(bs, np.full(len(bs), np.nan), alpha=0)
            for b in bs[:1]:
                ax.axvline(b, color="#dc2626", lw=1.2, ls="-")
            ax.scatter(bs, [0.02] * len(bs), transform=ax.get_xaxis_transform(), marker="x",
                       color="#dc2626", s=18, zorder=5, label=f"non-finite ({int(bad.sum())})")
    if positive and len(lo_hi) >= 2 and lo_hi[1] / max(lo_hi[0], 1e-12) > 8:
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    for i, b in enumerate(run.epoch_boundaries[:200]):
        ax.axvline(b, color="#9ca3af", lw=0.6, ls=":", label="epoch boundary" if i == 0 else None)
    ck_steps = sorted({c.step for c in run.checkpoints if c.step is not None})
    if ck_steps:
        ax.scatter(ck_steps, [0.98] * len(ck_steps), transform=ax.get_xaxis_transform(),
                   marker="v", color="#059669", s=22, zorder=5, label="checkpoint")
    main = next((f for f in findings if f.step is not None and f.severity == "critical"), None) \
        or next((f for f in findings if f.step is not None), None)
    for f in findings:
        for cp in (f.extra or {}).get("change_points", [])[:10]:
            ax.axvline(cp, color="#7c3aed", lw=0.8, ls="--", alpha=0.7)
    if main is not None:
        a, b = (main.step_range or [main.step, main.step])[:2]
        if b is None or b <= a:
            b = a + max(1, ((run.steps.last or a) - (run.steps.first or 0)) // 200)
        ax.axvspan(a, b, color="#fecaca", alpha=0.45, lw=0, label=f"diagnosed: step {main.step}")
        ax.axvline(main.step, color="#dc2626", lw=1.6)
    if lr is not None:
        ax2 = ax.twinx()
        st, v = reduce_points(lr.steps, lr.values)
        ax2.plot(st, v, color="#6b7280", lw=0.9, ls="--", label=safe_label(lr.name))
        ax2.set_ylabel("learning rate", color="#6b7280")
        ax2.spines["right"].set_visible(True)
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8, framealpha=0.85)
    else:
        ax.legend(loc="upper right", fontsize=8, framealpha=0.85)
    if gn is not None:
        gx = axes[1][0]
        st, v = reduce_points(gn.steps, gn.values)
        fin = np.isfinite(v)
        gx.plot(st, np.where(fin, v, np.nan), color="#0891b2", lw=0.9)
        if fin.any() and (v[fin] > 0).all() and np.nanmax(v[fin]) / max(np.nanmin(v[fin]), 1e-12) > 50:
            gx.set_yscale("log")
        gx.set_ylabel("grad norm")
        if main is not None:
            gx.axvline(main.step, color="#dc2626", lw=1.2)
        gx.set_xlabel("optimizer step")
    else:
        ax.set_xlabel("optimizer step")
    fig.tight_layout()
    return _svg(fig)


def norms_svg(run) -> str | None:
    """Adapter norm trajectory across the run's checkpoints."""
    pts = [(c.step, float(np.sqrt(sum((m.norm or 0.0) ** 2 for m in c.modules))))
           for c in run.checkpoints if c.step is not None and c.modules]
    if len(pts) < 2:
        return None
    pts.sort()
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(6, 2.4))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color="#059669")
    ax.set_xlabel("checkpoint step")
    ax.set_ylabel("total adapter norm")
    fig.tight_layout()
    return _svg(fig)
