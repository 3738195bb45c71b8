"""HTML page for `lorascope rerun`: original, baseline and fixed loss curves overlaid."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lorascope import __version__
from lorascope.report.charts import _mpl, _svg, reduce_points, safe_label

TEMPLATES = Path(__file__).resolve().parents[2] / "reports" / "templates"


BANNER = {"fixed": "healthy", "not_fixed": "failed", "inconclusive": "warning"}


def overlay_svg(curves: list[tuple[str, object]], window: tuple[int, int],
                onset: int | None, resume: int | None = None) -> str | None:
    """curves: [(label, Series)]; shades the replayed window, marks the resume step
    (the checkpoint the replays start from) and the symptom's onset."""
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
    if resume is not None:
        ax.axvline(resume, color="#1f77b4", lw=1.0, ls="--", label=f"resume (step {resume})")
    if onset is not None:
        ax.axvline(onset, color="#d62728", lw=1.0, ls=":", label=f"symptom onset (step {onset})")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.legend(loc="best", frameon=False, fontsize=8)
    return _svg(fig)


def _after(series, start: int):
    """A replay's own points (the verifier prefixes its curves with the original's)."""
    if series is None:
        return None
    from dataclasses import replace
    keep = np.asarray(series.steps) > start
    return replace(series, steps=np.asarray(series.steps)[keep], values=np.asarray(series.values)[keep])


def story(doc: dict, reproduction=()) -> str:
    bad = [r for r in reproduction if r.ok is False]
    from lorascope.report.text import fmt_fix
    fix = fmt_fix(doc["applied_fix"], eq=" = ")
    rule, onset = doc["diagnosis"]["rule"], doc["diagnosis"]["step"]
    if bad:
        return (f"Inconclusive: {bad[0].reason()}. The replays cannot tell whether {fix} "
                f"fixes {rule}.")
    b = doc["baseline"]
    if doc["verdict"] == "fixed":
        base = (" The baseline replay (no change) reproduced it," if b and b["reproduced"] else "")
        return (f"Fixed:{base} and with {fix} the replay from step {doc['resumed_from']['step']} "
                f"no longer shows {rule} (onset at step {onset} in the original run).")
    if doc["verdict"] == "not_fixed":
        return f"Not fixed: with {fix} the replay still shows {rule}."
    if b is not None and not b["reproduced"]:
        return (f"Inconclusive: the baseline replay (no change) did not reproduce {rule}, so "
                f"its absence in the fixed replay proves nothing.")
    return "Inconclusive: a replay failed to train (see the messages on stderr)."


def write_rerun_html(doc: dict, original, baseline, fixed, target: Path,
                     reproduction=()) -> Path:
    """original/baseline/fixed: lorascope Analysis objects (baseline/fixed may be None);
    reproduction: verify.Reproduction results (shown, and in the story)."""
    import jinja2
    start = doc["resumed_from"]["step"]
    curves = [("original", original.run.primary("train_loss") if original else None),
              ("baseline", _after(baseline.run.primary("train_loss"), start) if baseline else None),
              ("fixed", _after(fixed.run.primary("train_loss"), start) if fixed else None)]
    svg = overlay_svg(curves, tuple(doc["fixed"]["steps"]), doc["diagnosis"]["step"],
                      resume=doc["resumed_from"]["step"])
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    html = env.get_template("rerun.html.j2").render(
        doc=doc, chart=svg, version=__version__, banner=BANNER.get(doc["verdict"], "warning"),
        story=story(doc, reproduction), reproduction=list(reproduction))
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(html, encoding="utf-8")
    return target
