"""The self-contained HTML post-mortem and the sweep index (Jinja2, autoescaped).

Charts are interactive (uPlot, vendored in ``lorascope/_vendor/uplot``): the library and
the page's own code are one inline script that the page's Content-Security-Policy
allows by its SHA-256 hash (nothing else runs, nothing is fetched); the chart data is a
JSON block (``<script type="application/json">``, never executed) escaped so no string
from the data can end it (see :func:`lorascope.report.charts.page_json`).  Without
JavaScript the verdict, the findings and the fix are plain HTML, and the loss chart is
a static SVG."""
from __future__ import annotations

import base64
import datetime as _dt
import functools
import hashlib
import io
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from lorascope import __version__
from lorascope.report import charts
from lorascope.report.paths import write_report
from lorascope.report.safe import visible
from lorascope.report.samples import sample_section
from lorascope.rules.registry import data_dir
from lorascope.safe_open import open_file

MAX_THUMBS = 24


def _visible_value(v):
    """Every ``{{ }}`` value of a page: a string shows its control, bidi and invisible
    characters escaped (as in the terminal), so none reaches the HTML file raw; our own
    markup (charts, the script) is Markup and passes untouched.  Autoescaping follows."""
    if isinstance(v, Markup) or not isinstance(v, str):
        return v
    return visible(v)


@functools.lru_cache(maxsize=1)
def _env() -> Environment:
    """One environment per process: templates compile once, not once per report."""
    return Environment(loader=FileSystemLoader(str(data_dir("reports/templates"))),
                       autoescape=select_autoescape(["html", "j2"], default=True),
                       trim_blocks=True, lstrip_blocks=True, finalize=_visible_value)


VENDOR = Path(__file__).resolve().parent.parent / "_vendor" / "uplot"


@functools.lru_cache(maxsize=8)
def _script(*names: str) -> tuple[Markup, str]:
    """The page's own JavaScript and its CSP source: uPlot (``uplot``) and files beside
    the templates, as one script.  The pages allow exactly this script by hash, so no
    inline handler and no ``javascript:`` link can run, whatever a string from the data
    managed to become.  Computed once per process."""
    folder = data_dir("reports/templates")
    parts = []
    for n in names:
        path = VENDOR / "uPlot.iife.min.js" if n == "uplot" else folder / n
        parts.append(path.read_text(encoding="utf-8"))
    js = "\n".join(parts)
    if "</script" in js.lower() or "<!--" in js:
        raise ValueError("a page script may not hold </script or <!--")
    digest = base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode()
    return Markup(js), f"sha256-{digest}"


@functools.lru_cache(maxsize=1)
def _chart_css() -> Markup:
    return Markup((VENDOR / "uPlot.min.css").read_text(encoding="utf-8"))


def _fmt(v) -> str:
    if v is None:
        return "unset"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def story(run, findings, verdict: str) -> str:
    """One paragraph telling what happened, in order."""
    parts = []
    if run.others:
        parts.append(f"This folder holds {len(run.others) + 1} runs; this report is about {run.id}"
                     + (" (the latest)" if run.latest else "") + ".")
    st = run.steps
    if st.last is not None:
        done = f"ran {st.last} optimizer steps"
        if st.planned and st.planned != st.last:
            done += f" of {st.planned} planned"
        parts.append(f"This {run.trainer if run.trainer != 'unknown' else ''} run {done}.".replace("  ", " "))
    tl = run.primary("train_loss")
    if tl is not None and len(tl.values):
        import numpy as np
        fin = tl.values[np.isfinite(tl.values)]
        if len(fin) >= 2:
            k = max(1, len(fin) // 20)
            parts.append(f"The training loss went from about {np.median(fin[:k]):.3g} "
                         f"to {np.median(fin[-k:]):.3g}.")
    crit = [f for f in findings if f.severity == "critical"]
    warn = [f for f in findings if f.severity == "warning"]
    main = next((f for f in crit if f.step is not None), None) or (crit[0] if crit else None) \
        or next((f for f in warn if f.step is not None), None) or (warn[0] if warn else None)
    if main is None:
        parts.append("lorascope found nothing wrong in the curves, logs, data or checkpoints it read.")
    else:
        when = f"At step {main.step}: " if main.step is not None and f"step {main.step}" not in main.title else ""
        parts.append(f"{when}{main.title.rstrip('.')}.")
        if main.causes:
            c = main.causes[0]
            parts.append(f"Most likely cause ({c.confidence:.0%}): {c.text.rstrip('.')}.")
        if main.fix:
            parts.append("Suggested change: " + ", ".join(f"{k} {_fmt(run.config.get(k))} → {_fmt(v)}"
                                                         for k, v in main.fix.items()) + ".")
        others = len(crit) + len(warn) - 1
        if others > 0:
            parts.append(f"{others} more finding(s) below.")
    return " ".join(parts)


def _thumb(path: Path) -> str | None:
    from PIL import Image
    try:
        with open_file(path) as fh, Image.open(fh) as im:
            if im.width * im.height > 64_000_000:
                return None
            im.draft("RGB", (160, 160))
            im = im.convert("RGB")
            im.thumbnail((120, 120))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=70)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:
        return None


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def flagged_images(run, findings) -> list[dict]:
    """Dataset images named by data findings, with a thumbnail when they decode.

    Only files inside the run directory or the dataset folder are opened; a name
    that exists only under another letter case shows the file found on disk."""
    items = {}
    for ds in run.datasets:
        for it in ds.items:
            if it.file:
                items[it.file] = (ds, it)
    out, seen = [], set()
    run_dir = Path(run.path).resolve()
    for f in findings:
        if not f.rule.startswith("data."):
            continue
        for name in f.files:
            if name in seen or len(out) >= MAX_THUMBS or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            seen.add(name)
            ds, it = items.get(name, (None, None))
            thumb = None
            try:                 # a name with a NUL, too long, a link loop: no thumbnail
                roots = [run_dir] + ([Path(ds.root).resolve()] if ds is not None else [])
                p = run_dir / name
                if it is not None and it.disk_name:
                    p = p.with_name(it.disk_name)
                p = p.resolve()
                if any(r in p.parents for r in roots) and p.is_file():
                    thumb = _thumb(p)
            except (OSError, ValueError, RuntimeError):
                pass
            out.append({"file": name, "rule": f.rule, "caption": it.caption if it else None,
                        "thumb": thumb, "error": it.error if it else None,
                        "disk_name": it.disk_name if it else None})
    return out


def fix_diff(run, fix: dict) -> list[dict]:
    from lorascope.report.text import fmt_fix_value
    rows = []
    for k, v in fix.items():
        if k == "exclude_files":
            # a data fix: the trainer's image folder, minus these files (rerun --fix trains
            # on a filtered copy of it)
            origin = run.config.origins.get("train_data_dir")
            where = (f"{origin.file}: {origin.orig_key} = {run.config.get('train_data_dir')}"
                     if origin else "the dataset")
            rows.append({"key": k, "old": "none", "new": fmt_fix_value(v, limit=10),
                         "where": f"{where} (rerun --fix trains on a copy without these files)"})
            continue
        origin = run.config.origins.get(k)
        rows.append({"key": k, "old": _fmt(run.config.get(k)), "new": _fmt(v),
                     "where": f"{origin.file}: {origin.orig_key}" if origin else "not set in any config"})
    return rows


def render_html(a, doc: dict) -> str:
    run, findings = a.run, a.findings
    timeline = charts.timeline(run, findings)
    norms = charts.norms(run)
    static = charts.static_svg(timeline)
    groups = [g for g in (timeline, norms) if g]
    ctx = {
        "doc": doc,
        "run": doc["run"],
        "verdict": doc["verdict"],
        "story": story(run, findings, doc["verdict"]),
        "timeline": timeline,
        "static_chart": Markup(static) if static else None,
        "norms": norms,
        "chart_json": Markup(charts.page_json({"groups": groups})),
        "chart_css": _chart_css(),
        "findings": [dict(f.to_json(), diff=fix_diff(run, f.fix), idx=i)
                     for i, f in enumerate(findings)],
        "images": flagged_images(run, findings),
        "samples": sample_section(run, findings),
        "counts": {s: sum(1 for f in findings if f.severity == s) for s in ("critical", "warning", "info")},
        "version": __version__,
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "rule_errors": a.rule_errors[::2],
    }
    ctx["script"], ctx["script_hash"] = _script("uplot", "charts.js", "filters.js", "tables.js")
    return _env().get_template("report.html.j2").render(**ctx)


def write_html(a, doc: dict, target: Path, run_dirs: list | None = None) -> Path:
    """Render and write the report (see :func:`~lorascope.report.paths.write_report`:
    never into a run directory or through a link to one of its files).  Raises
    ReportWriteError with a one-line reason."""
    return write_report(Path(target), render_html(a, doc),
                        run_dirs if run_dirs is not None else [a.run.path])


def _href(report: str | None, index: Path) -> str | None:
    """A link from the index to a report: a relative path (``./name.html``), escaped,
    never a URL scheme, whatever the run folder was called."""
    if not report:
        return None
    p = Path(report)
    if p.parent.resolve() != index.parent.resolve():
        return None                           # only reports written beside the index
    return "./" + quote(p.name, safe="")


def _cell(v) -> dict:
    """A settings-table cell: the text shown and the value it sorts by."""
    if v is None:
        return {"text": "—", "sort": ""}
    if isinstance(v, bool):
        return {"text": str(v).lower(), "sort": str(v).lower()}
    if isinstance(v, (int, float)):
        return {"text": f"{v:.4g}" if isinstance(v, float) else str(v), "sort": repr(v)}
    if isinstance(v, (list, dict)):
        text = ", ".join(map(str, v)) if isinstance(v, list) else str(v)
        return {"text": text[:120], "sort": text[:120]}
    return {"text": str(v)[:120], "sort": str(v)[:120]}


def _colors(verdicts: list[str]) -> list[str]:
    """One colour per run: reds for failed runs, ambers for warnings, blues for healthy
    ones, each family spread over its runs."""
    base = {"failed": (350, 365), "warning": (36, 50), "healthy": (195, 235)}
    seen: dict[str, int] = {}
    total = {v: verdicts.count(v) for v in set(verdicts)}
    out = []
    for v in verdicts:
        lo, hi = base.get(v, (260, 280))
        k = seen.get(v, 0)
        seen[v] = k + 1
        f = k / max(1, total[v] - 1)
        hue = (lo + (hi - lo) * f) % 360
        light = 38 + 18 * ((k * 7) % 5) / 4
        out.append(_hsl_hex(hue, 0.7 if v != "healthy" else 0.45, light / 100))
    return out


def _hsl_hex(h: float, s: float, l: float) -> str:
    import colorsys
    r, g, b = colorsys.hls_to_rgb(h / 360, l, s)
    return "#%02x%02x%02x" % (round(r * 255), round(g * 255), round(b * 255))


def write_index(docs: list[dict], htmls: list[str | None], target: Path,
                errors: list[dict] = (), run_dirs: list | None = None,
                curves: list[dict | None] | None = None) -> Path:
    """The sweep index: runs ranked (failures first), their training losses on one
    chart (``curves``: :func:`lorascope.report.charts.sweep_curve` per document, or
    None), the settings that differ with the failed runs' telling values marked (see
    :mod:`lorascope.report.sweep`), every table sortable and filterable."""
    from lorascope.report import sweep
    target = Path(target)
    comp = sweep.comparison(docs)
    curves = list(curves) if curves is not None else [None] * len(docs)
    colors = _colors([r["verdict"] for r in comp["runs"]])
    names = sweep.display_names([r["path"] for r in comp["runs"]])
    rows, series = [], []
    for r, color, name in zip(comp["runs"], colors, names):
        d = docs[r["report"]]
        rows.append({"rank": r["rank"], "path": d["run"]["path"], "name": name, "trainer": d["run"]["trainer"],
                     "verdict": r["verdict"], "verdict_rank": sweep.VERDICT_RANK.get(r["verdict"], 3),
                     "steps": d["run"]["steps"], "top": r["top"], "href": _href(htmls[r["report"]], target),
                     "counts": {s: r[s] for s in sweep.SEVERITIES}, "color": color,
                     "settings": [dict(_cell(r["settings"][k]), marked=k in r["marked"]) for k in comp["keys"]]})
        c = curves[r["report"]] if r["report"] < len(curves) else None
        if c:
            series.append(dict(c, label=charts.label(f"#{r['rank']} {name}"), color=color,
                               verdict=r["verdict"], width=1.6 if r["verdict"] == "failed" else 1.0))
    groups = []
    if series:
        ys = [y for s in series for y in s["y"] if y is not None]
        log = bool(ys) and min(ys) > 0 and max(ys) / max(min(ys), 1e-12) > 8
        # runs of very different lengths or loss levels: open on the normalised view
        lasts = [s["last"] for s in series if s.get("last")]
        spans = [s["hi"] - s["lo"] for s in series if s.get("hi") is not None]
        pct = bool(lasts) and max(lasts) > 4 * min(lasts)
        norm = bool(spans) and max(spans) > 10 * min(spans)
        groups.append({"charts": [{"id": "sweep", "ylabel": "train loss", "height": 380, "sweep": True,
                                   "series": series, "log": log and not norm, "pct": pct, "norm": norm}]})
    script, script_hash = _script("uplot", "charts.js", "tables.js")
    html = _env().get_template("index.html.j2").render(
        rows=rows, keys=[{"key": k, "label": sweep.LABELS.get(k, k)} for k in comp["keys"]],
        errors=list(errors), version=__version__, script=script, script_hash=script_hash,
        chart_json=Markup(charts.page_json({"groups": groups})), chart_css=_chart_css(),
        has_chart=bool(series),
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    return write_report(target, html, list(run_dirs if run_dirs is not None
                                           else [d["run"]["path"] for d in docs]))
