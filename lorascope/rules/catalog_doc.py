"""The rule catalog as a document: `lorascope rules` and the generated docs/rules pages."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

from lorascope.rules.registry import DOC_SECTIONS, REGISTRY, is_stage, load_catalog, load_rule_modules


def parse_doc(doc: str) -> dict:
    """A rule docstring -> {"summary": first line, "<section>": text, ...}."""
    doc = inspect.cleandoc(doc or "")
    parts = re.split(r"^##\s+(.+?)\s*$", doc, flags=re.M)
    out = {"summary": parts[0].strip().split("\n")[0] if parts[0].strip() else ""}
    for i in range(1, len(parts) - 1, 2):
        out[parts[i].strip()] = parts[i + 1].strip()
    return out


def catalog_document(override: Path | None = None) -> dict:
    load_rule_modules()
    cat = load_catalog(override)
    rules = []
    stages = [{"id": sid, "summary": e.get("summary", ""), "params": e.get("params", {}),
               "rationale": e.get("rationale", "")} for sid, e in sorted(cat.items()) if is_stage(e)]
    for rid in sorted(set(cat) | set(REGISTRY)):
        entry = cat.get(rid, {})
        if is_stage(entry):
            continue
        spec = REGISTRY.get(rid)
        doc = parse_doc(spec.doc if spec else "")
        rules.append({
            "id": rid,
            "severity": entry.get("severity"),
            "summary": entry.get("summary") or doc.get("summary", ""),
            "needs": list(spec.needs) if spec else [],
            "params": entry.get("params", {}),
            "rationale": entry.get("rationale", ""),
            "causes": entry.get("causes", {}),
            "corroborates": entry.get("corroborates", {}),
            "fix": entry.get("fix", {}),
            "doc": {s: doc.get(s, "") for s in DOC_SECTIONS},
            "implemented": spec is not None,
        })
    return {"schema": "lorascope.rules/1", "rules": rules, "stages": stages}


def render_catalog_text(doc: dict) -> str:
    lines = []
    for st in doc.get("stages", []):
        lines.append(f"{st['id']}  [stage]  {st['summary']}")
        if st["params"]:
            lines.append("  thresholds: " + ", ".join(f"{k}={v}" for k, v in st["params"].items()))
        lines.append("")
    for r in doc["rules"]:
        lines.append(f"{r['id']}  [{r['severity']}]  {r['summary']}")
        for s in DOC_SECTIONS:
            text = r["doc"].get(s)
            if text:
                lines.append(f"  {s}:")
                lines.extend("    " + ln for ln in text.splitlines())
        if r["params"]:
            lines.append("  thresholds: " + ", ".join(f"{k}={v}" for k, v in r["params"].items()))
        if r["causes"]:
            lines.append("  likely causes: " + ", ".join(r["causes"]))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _thresholds(entry: dict) -> list[str]:
    """The thresholds table and the rationale of a rule or stage page."""
    out: list[str] = []
    if entry["params"]:
        out += ["## Thresholds", "", "| param | default |", "|---|---|"]
        out += [f"| `{k}` | `{v}` |" for k, v in entry["params"].items()]
        out.append("")
    if entry["rationale"]:
        out += ["## Rationale", "", entry["rationale"].strip(), ""]
    return out


def rule_page(r: dict) -> str:
    out = [f"# `{r['id']}`", "", f"**Default severity:** {r['severity']}  ", f"{r['summary']}", ""]
    for s in DOC_SECTIONS:
        out += [f"## {s}", "", r["doc"].get(s) or "_(not documented)_", ""]
    out += _thresholds(r)
    if r["causes"]:
        out += ["## Likely causes linked by the diagnosis", "", "| rule | base confidence |", "|---|---|"]
        out += [f"| [`{k}`]({k}.md) | {v} |" for k, v in r["causes"].items()]
        out.append("")
    if r.get("corroborates"):
        out += ["## Findings it corroborates", "",
                "When both fire (`step`: and their step ranges meet), each names the other in "
                "its evidence.", "", "| rule | when |", "|---|---|"]
        out += [f"| [`{k}`]({k}.md) | {v} |" for k, v in r["corroborates"].items()]
        out.append("")
    if r["fix"]:
        out += ["## Default fix applied by `rerun --fix`", "", "```toml"]
        out += [f"{k} = {v!r}" for k, v in r["fix"].items()]
        out += ["```", ""]
    out += ["_Generated from `rules/` and `lorascope/rules/` by `python -m lorascope.rules.catalog_doc`._", ""]
    return "\n".join(out)


def stage_page(st: dict) -> str:
    out = [f"# The `{st['id']}` stage", "", f"{st['summary']}", "",
           "Not a rule: the stage between the run model and the rules whose result every curve "
           "rule reads. Its thresholds can be overridden like a rule's with "
           f"`--rules FILE` (`[{st['id']}.params]`).", ""]
    out += _thresholds(st)
    out += ["_Generated from `rules/` by `python -m lorascope.rules.catalog_doc`._", ""]
    return "\n".join(out)


def index_page(doc: dict) -> str:
    out = ["# lorascope rules", "",
           "Generated from the catalog (`rules/*.toml`) and the rule docstrings. "
           "Override severities and thresholds with `lorascope analyze --rules FILE`.", "",
           "| id | severity | what it detects |", "|---|---|---|"]
    out += [f"| [`{r['id']}`](rules/{r['id']}.md) | {r['severity']} | {r['summary']} |" for r in doc["rules"]]
    if doc.get("stages"):
        out += ["", "Stages the rules read (thresholds only, no findings of their own):", "",
                "| stage | what it computes |", "|---|---|"]
        out += [f"| [`{st['id']}`](rules/{st['id']}.md) | {st['summary']} |" for st in doc["stages"]]
    return "\n".join(out) + "\n"


def generate(docs_dir: Path) -> list[Path]:
    doc = catalog_document()
    written = []
    (docs_dir / "rules").mkdir(parents=True, exist_ok=True)
    for r in doc["rules"]:
        p = docs_dir / "rules" / f"{r['id']}.md"
        p.write_text(rule_page(r), encoding="utf-8")
        written.append(p)
    for st in doc.get("stages", []):
        p = docs_dir / "rules" / f"{st['id']}.md"
        p.write_text(stage_page(st), encoding="utf-8")
        written.append(p)
    p = docs_dir / "rules.md"
    p.write_text(index_page(doc), encoding="utf-8")
    written.append(p)
    return written


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[2]
    for p in generate(root / "docs"):
        print(p.relative_to(root))
