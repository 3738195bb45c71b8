"""HTML page for `lorascope rerun`: original, baseline and fixed loss curves overlaid."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lorascope import __version__
from lorascope.report.charts import _mpl, _svg, reduce_points, safe_label

TEMPLATES = Path(__file__).resolve().parents[2] / "reports" / "templates"


def overlay_svg(curves: list[tuple[str, object]], window: tuple[int, int],
                onset: int | None) -> str | None:
    """curves: [(label, Series)]; shades the replayed window, marks the onset."""
    curves = [(lab, s) for lab, s in curves if s is not None and len(s.steps)]
    if not curves:
        return None
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    styles = {"original": ("#888888", "-"), "baseline": ("#d62728", "--"), "fixed": ("#2ca02c", "-")}
    for lab, s in curves:
        st, v = reduce_points(np.asarray(s.steps), np.asarray(s.values, dtype=float))
        color, ls = styles.get(lab, ("#1f77b4", "-"))
        ax.plot(st, np.where(np.isfinite(v), v, np.nan), ls, color=color, lw=1.2,
                label=safe_label(lab))
    ax.axvspan(window[0], window[1], color="#1f77b4", alpha=0.06, lw=0)
    if onset is not None:
        ax.axvline(onset, color="#d62728", lw=0.8, ls=":")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.legend(loc="best", frameon=False)
    return _svg(fig)


def write_rerun_html(doc: dict, original, baseline, fixed, target: Path) -> Path:
    """original/baseline/fixed: lorascope Analysis objects (baseline/fixed may be None)."""
    import jinja2
    curves = [("original", original.run.primary("train_loss") if original else None),
              ("baseline", baseline.run.primary("train_loss") if baseline else None),
              ("fixed", fixed.run.primary("train_loss") if fixed else None)]
    svg = overlay_svg(curves, tuple(doc["fixed"]["steps"]), doc["diagnosis"]["step"])
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    html = env.get_template("rerun.html.j2").render(doc=doc, chart=svg, version=__version__)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(html, encoding="utf-8")
    return target
