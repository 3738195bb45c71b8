"""The terminal summary: verdict first, then findings grouped by severity."""
from __future__ import annotations

import click

from lorascope.model import SEVERITY_ORDER
from lorascope.report.safe import visible, visible_tree

COLORS = {"critical": "red", "warning": "yellow", "info": "cyan",
          "failed": "red", "healthy": "green"}
ICONS = {"critical": "✗", "warning": "!", "info": "i"}


def fmt_fix_value(v, limit: int = 5) -> str:
    """A fix value for people: a list (exclude_files) as its first items, comma-separated,
    and how many more; anything else as str()."""
    if isinstance(v, (list, tuple)):
        shown = ", ".join(str(x) for x in v[:limit])
        return shown + (f" (+{len(v) - limit} more)" if len(v) > limit else "") if v else "none"
    return str(v)


def fmt_fix(fix: dict, eq: str = "=") -> str:
    """`learning_rate=0.0001, max_grad_norm=1.0`; list values read
    `exclude_files: a.png, b.png` and the entries are then joined with `; `."""
    lists = any(isinstance(v, (list, tuple)) for v in fix.values())
    parts = [f"{k}: {fmt_fix_value(v)}" if isinstance(v, (list, tuple)) else f"{k}{eq}{v}"
             for k, v in fix.items()]
    return ("; " if lists else ", ").join(parts)


def _other_runs(doc: dict) -> list[str]:
    """A folder holding several runs: which one the findings are about, and the others."""
    runs = doc.get("runs") or []
    me = next((r for r in runs if r.get("analysed")), None)
    if me is None:
        return []
    out = [f"this folder holds {len(runs)} runs; the findings below are about {me['id']}"
           + (" (the latest)" if me.get("latest") else "")]
    for r in runs:
        if r is me:
            continue
        st = r["steps"]
        span = f"steps {st['first']}-{st['last']}" if st["last"] is not None else "no steps"
        if st["planned"]:
            span += f" of {st['planned']} planned"
        rules = sorted({f["rule"] for f in r["findings"] if f["severity"] != "info"} - {"run.mixed"})
        out.append(f"  other run {r['id']}: {span}, verdict {r['verdict']}"
                   + (f" ({', '.join(rules)})" if rules else ""))
    return out


def render_text(doc: dict, color: bool = False, html_path: str | None = None) -> str:
    """The summary for a terminal or a pipe.  Every string of the document (file names,
    titles, evidence, config values) goes through :func:`~lorascope.report.safe.visible`
    first: control characters and bidi overrides from the data are shown escaped, so only
    our own colours reach the terminal as sequences."""
    doc = visible_tree(doc)
    html_path = visible(html_path) if html_path else html_path

    def st(s: str, key: str, bold: bool = False) -> str:
        return click.style(s, fg=COLORS.get(key), bold=bold) if color else s

    run = doc["run"]
    lines: list[str] = []
    steps = run["steps"]
    span = ""
    if steps["last"] is not None:
        span = (f", steps {steps['first']}-{steps['last']}" if steps["first"] is not None
                else f", step {steps['last']}")
        if steps["planned"]:
            span += f" of {steps['planned']} planned"
    lines.append(f"{run['path']}  ({run['trainer']}, {run['task']}{span})")
    counts = {s: sum(1 for f in doc["findings"] if f["severity"] == s)
              for s in ("critical", "warning", "info")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no findings"
    lines.append(st(f"verdict: {doc['verdict'].upper()}", doc["verdict"], bold=True) + f"  ({summary})")
    lines.extend(_other_runs(doc))
    findings = sorted(doc["findings"], key=lambda f: -SEVERITY_ORDER[f["severity"]])
    current = None
    for f in findings:
        if f["severity"] != current:
            current = f["severity"]
            lines.append("")
            lines.append(st(current.upper(), current, bold=True))
        where = f" @ step {f['step']}" if f["step"] is not None else ""
        lines.append(st(f"  {ICONS[f['severity']]} [{f['rule']}]", f["severity"]) + f"{where}  {f['title']}")
        for e in f["evidence"][:4]:
            lines.append(f"      evidence: {e}")
        if len(f["evidence"]) > 4:
            lines.append(f"      … {len(f['evidence']) - 4} more")
        for c in f["causes"][:3]:
            lines.append(f"      cause ({c['confidence']:.0%}): [{c['rule']}] {c['text']}")
        if f["fix"]:
            lines.append(st(f"      fix: {fmt_fix(f['fix'])}", "healthy"))
        if f["files"]:
            shown = ", ".join(f["files"][:5])
            more = f" (+{len(f['files']) - 5} more)" if len(f["files"]) > 5 else ""
            lines.append(f"      files: {shown}{more}")
    bad = [s for s in run["sources"] if s["problems"]]
    if bad:
        lines.append("")
        lines.append("sources with problems:")
        for s in bad[:10]:
            lines.append(f"  {s['path']} ({s['kind']}): {'; '.join(s['problems'][:3])}")
        if len(bad) > 10:
            lines.append(f"  … {len(bad) - 10} more")
    if html_path:
        lines.append("")
        lines.append(f"report: {html_path}")
    return "\n".join(lines)
