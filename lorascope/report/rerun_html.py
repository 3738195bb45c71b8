"""HTML page for `lorascope rerun`: original, baseline and fixed loss curves overlaid."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lorascope import __version__
from lorascope.report import charts

TEMPLATES = Path(__file__).resolve().parents[2] / "reports" / "templates"


BANNER = {"fixed": "healthy", "not_fixed": "failed", "inconclusive": "warning"}
STYLES = {"original": ("#888888", None), "baseline": ("#d62728", [6, 4]), "fixed": ("#2ca02c", None)}


def overlay(curves: list[tuple[str, object]], window: tuple[int, int],
            onset: int | None, resume: int | None = None) -> dict | None:
    """The chart data (see :mod:`lorascope.report.charts`): curves ``[(label, Series)]``;
    the replayed window is the shaded band, the symptom's onset its red line, the resume
    step (the checkpoint the replays start from) a checkpoint marker."""
    curves = [(lab, s) for lab, s in curves if s is not None and len(s.steps)]
    if not curves:
        return None
    series = []
    for lab, s in curves:
        st, v = charts.reduce_points(np.asarray(s.steps), np.asarray(s.values, dtype=float))
        color, dash = STYLES.get(lab, ("#1f77b4", None))
        series.append({"label": charts.label(lab), "role": lab, "color": color, "dash": dash, "width": 1.4,
                       "x": st.tolist(), "y": charts._ys(v)})
    step = onset if onset is not None else window[0]
    marks = {"diag": {"step": int(step), "from": int(window[0]), "to": int(window[1])},
             "checkpoints": [int(resume)] if resume is not None else [], "change_points": [],
             "epochs": [], "nonfinite": []}
    return {"charts": [{"id": "rerun", "ylabel": "train loss", "xlabel": "step", "height": 300,
                        "series": series, "log": False}], "markers": marks}


def _after(series, start: int):
    """A replay's own points (the verifier prefixes its curves with the original's)."""
    if series is None:
        return None
    from dataclasses import replace
    keep = np.asarray(series.steps) > start
    return replace(series, steps=np.asarray(series.steps)[keep], values=np.asarray(series.values)[keep])


def story(doc: dict, reproduction=(), why: str | None = None) -> str:
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
                f"its absence in the fixed replay proves nothing."
                + (f" {_sentence(why.removeprefix('inconclusive because '))}" if why else ""))
    return "Inconclusive: a replay failed to train (see the messages on stderr)."


def _sentence(s: str) -> str:
    return (s[:1].upper() + s[1:]).rstrip(".") + "." if s else s


def write_rerun_html(doc: dict, original, baseline, fixed, target: Path,
                     reproduction=(), why: str | None = None) -> Path:
    """original/baseline/fixed: lorascope Analysis objects (baseline/fixed may be None);
    reproduction: verify.Reproduction results (shown, and in the story)."""
    import jinja2
    start = doc["resumed_from"]["step"]
    curves = [("original", original.run.primary("train_loss") if original else None),
              ("baseline", _after(baseline.run.primary("train_loss"), start) if baseline else None),
              ("fixed", _after(fixed.run.primary("train_loss"), start) if fixed else None)]
    from markupsafe import Markup

    from lorascope.report.html import _chart_css, _script
    chart = overlay(curves, tuple(doc["fixed"]["steps"]), doc["diagnosis"]["step"],
                    resume=doc["resumed_from"]["step"])
    static = charts.static_svg(chart)
    script, script_hash = _script("uplot", "charts.js")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    html = env.get_template("rerun.html.j2").render(
        doc=doc, chart=chart, static_chart=Markup(static) if static else None, version=__version__,
        banner=BANNER.get(doc["verdict"], "warning"), story=story(doc, reproduction, why),
        reproduction=list(reproduction), script=script, script_hash=script_hash, chart_css=_chart_css(),
        chart_json=Markup(charts.page_json({"groups": [chart] if chart else []})))
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(html, encoding="utf-8")
    return target
