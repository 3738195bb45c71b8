"""The terminal summary: verdict first, then findings grouped by severity."""
from __future__ import annotations

import click

from lorascope.model import SEVERITY_ORDER

COLORS = {"critical": "red", "warning": "yellow", "info": "cyan",
          "failed": "red", "healthy": "green"}
ICONS = {"critical": "✗", "warning": "!", "info": "i"}


def _fmt_fix(fix: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in fix.items())


def render_text(doc: dict, color: bool = False, html_path: str | None = None) -> str:
    def st(s: str, key: str, bold: bool = False) -> str:
        return click.style(s, fg=COLORS.get(key), bold=bold) if color else s

    run = doc["run"]
    lines: list[str] = []
    steps = run["steps"]
    span = ""
    if steps["last"] is not None:
        span = f", steps {steps['first']}-{steps['last']}"
        if steps["planned"]:
            span += f" of {steps['planned']} planned"
    lines.append(f"{run['path']}  ({run['trainer']}, {run['task']}{span})")
    counts = {s: sum(1 for f in doc["findings"] if f["severity"] == s)
              for s in ("critical", "warning", "info")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no findings"
    lines.append(st(f"verdict: {doc['verdict'].upper()}", doc["verdict"], bold=True) + f"  ({summary})")
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
            lines.append(st(f"      fix: {_fmt_fix(f['fix'])}", "healthy"))
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
