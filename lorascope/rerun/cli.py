"""`lorascope rerun RUN_DIR --fix`: plan, replay (baseline, fixed), verify, report.

Exit status: 0 fixed, 1 not_fixed / inconclusive, 2 errors (one line on stderr).
Output (never inside RUN_DIR): <out>/<run>-baseline/, <out>/<run>-fixed/ and
<out>/<run>-rerun.html, with <out> = --out or ./lorascope-rerun.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import click

from lorascope.cli import _inside

from lorascope.rerun.plan import Plan, RerunError, make_plan

EXIT = {"fixed": 0, "not_fixed": 1, "inconclusive": 1}
MARKER = ".lorascope-rerun"


def _die(msg: str) -> None:
    click.echo(f"lorascope: {msg}", err=True)
    sys.exit(2)


def _fresh_dir(p: Path) -> Path:
    """An empty output folder; only a previous rerun's output (marker file) is replaced."""
    if p.exists():
        if not p.is_dir():
            raise RerunError(f"{p} exists and is not a folder")
        if any(p.iterdir()):
            if not (p / MARKER).is_file():
                raise RerunError(f"{p} exists and was not written by lorascope rerun; "
                                 f"choose another --out")
            shutil.rmtree(p)
    p.mkdir(parents=True, exist_ok=True)
    (p / MARKER).write_text("written by lorascope rerun\n", encoding="utf-8")
    return p


def execute(run_dir: str, *, from_step=None, steps=None, device="auto", out=None, cmd=None,
            rule_id=None, baseline=False) -> tuple[dict, Plan, dict]:
    """Everything but printing: returns (document, plan, extra for the HTML report)."""
    from lorascope.pipeline import analyze
    from lorascope.build import Unreadable
    from lorascope.rerun import verify

    try:
        a = analyze(run_dir)
    except Unreadable as e:
        raise RerunError(str(e)) from None
    plan = make_plan(a, rule_id=rule_id, from_step=from_step, steps=steps)
    for n in plan.notes:
        click.echo(f"lorascope: {n}", err=True)
    out_root = Path(out) if out else Path("lorascope-rerun")
    if _inside(out_root, Path(run_dir)):
        raise RerunError(f"refusing to write inside the run directory: {out_root}")
    click.echo(f"lorascope: diagnosis {plan.rule} at step {plan.onset}; replaying steps "
               f"{plan.start + 1}-{plan.end} from "
               f"{'scratch' if plan.checkpoint is None else plan.checkpoint.path} "
               f"with {plan.fix}", err=True)

    if cmd:
        from lorascope.rerun import backend_cmd
        dev = device if device != "auto" else "cpu"

        def run_one(fix, label):
            return backend_cmd.replay(a.run, plan, fix, _fresh_dir(out_root / f"{a.run.name}-{label}"),
                                      cmd, label=label)
    else:
        from lorascope.rerun import backend_hf
        from lorascope.rerun.plan import base_model_path
        dev = backend_hf.pick_device(device)
        if plan.checkpoint is not None and plan.checkpoint.kind != "peft-dir":
            raise RerunError(f"the checkpoint before the symptom is a LoRA file "
                             f"({plan.checkpoint.path.name}); the built-in backend resumes "
                             f"HF/PEFT checkpoint folders only: use --cmd with your trainer")
        from lorascope.rerun.data_fix import DATA_FIX_KEYS
        if any(k in plan.fix for k in DATA_FIX_KEYS):
            raise RerunError(f"the fix ({', '.join(k for k in plan.fix if k in DATA_FIX_KEYS)}) "
                             f"changes the dataset; the built-in backend does not apply data "
                             f"fixes: use --cmd with your trainer")
        base_model_path(a.run, plan)            # fail early: exit 2 before any training
        data_files = backend_hf.dataset_paths(a.run)   # resolved once, for every replay

        def run_one(fix, label):
            return backend_hf.replay(a.run, plan, fix, _fresh_dir(out_root / f"{a.run.name}-{label}"),
                                     dev, label=label, data_files=data_files)

    def judge(fix, label):
        """Replay, then the rules that fire in the window (None when training failed)."""
        res = run_one(fix, label)
        if not res.ok:
            click.echo(f"lorascope: {label} replay failed: {res.error}", err=True)
            return res, None, None
        fs, an = verify.findings_in_window(res.out_dir, plan.start, plan.end, a.run)
        return res, verify.unique_rules(fs), an

    base_res = base_rules = base_an = None
    if baseline:
        base_res, base_rules, base_an = judge({}, "baseline")
    fixed_res, fixed_rules, fixed_an = judge(plan.fix, "fixed")
    failed = (base_res is not None and not base_res.ok) or not fixed_res.ok
    # each replay must start where the original run was (same weights, same batch)
    # (a data fix changes the batches, so the fixed replay cannot match the original there)
    from lorascope.rerun.data_fix import DATA_FIX_KEYS
    data_fix = [k for k in plan.fix if k in DATA_FIX_KEYS]
    orig_loss = a.run.primary("train_loss")
    repro = []
    for label, an in (("baseline", base_an), ("fixed", fixed_an)):
        if an is None:
            continue
        if label == "fixed" and data_fix:
            r = verify.Reproduction(label, None, note=f"the fix ({', '.join(data_fix)}) changes "
                                    f"the training data, so the replay's batches differ from "
                                    f"the original's (run with --baseline to check the replay "
                                    f"pipeline)")
            repro.append(r)
            click.echo(f"lorascope: {r.reason()}", err=True)
            continue
        r = verify.check_reproduction(orig_loss, an.run.primary("train_loss"), plan.start, label)
        repro.append(r)
        click.echo(f"lorascope: {r.reason()}", err=True)
    reproduced = not any(r.ok is False for r in repro)
    v = verify.decide(plan.rule, base_rules, fixed_rules, failed, reproduced)
    why = None
    if v == "inconclusive" and not failed and reproduced and base_an is not None \
            and not verify.has_symptom(plan.rule, base_rules):
        try:
            why = verify.baseline_shortfall(plan, a.run, base_an.run, base_an.catalog)
        except Exception as e:  # the verdict stands without its explanation
            if os.environ.get("LORASCOPE_DEBUG"):
                raise
            why = (f"inconclusive because the baseline replay did not show {plan.rule} "
                   f"(its explanation failed: {type(e).__name__})")
        click.echo(f"lorascope: {why}", err=True)
    doc = verify.rerun_document(plan, dev, base_res, base_rules, fixed_res, fixed_rules, v,
                                run_path=str(run_dir))
    extra = {"original": a, "baseline": base_an, "fixed": fixed_an, "out_root": out_root,
             "reproduction": repro, "plan": plan, "why": why}
    return doc, plan, extra


def render_text(doc: dict, html: str | None = None, reproduction=(), why: str | None = None) -> str:
    lines = [f"{doc['run']}: rerun of {doc['diagnosis']['rule']} (step {doc['diagnosis']['step']})"]
    rf = doc["resumed_from"]
    lines.append(f"  resumed from: {rf['checkpoint'] or 'scratch (base model, new adapter)'} "
                 f"at step {rf['step']}")
    from lorascope.report.text import fmt_fix
    lines.append("  applied fix:  " + fmt_fix(doc["applied_fix"]))
    lines.append(f"  device:       {doc['device']}")
    if doc["baseline"] is not None:
        b = doc["baseline"]
        lines.append(f"  baseline:     {'reproduced' if b['reproduced'] else 'did NOT reproduce'} "
                     f"({', '.join(b['findings']) or 'no findings'})")
    fx = doc["fixed"]
    lines.append(f"  fixed replay: steps {fx['steps'][0]}-{fx['steps'][1]} in {fx['out']} "
                 f"({', '.join(fx['findings']) or 'no findings'})")
    for r in reproduction:
        lines.append(f"  reproduction: {r.reason()}")
    lines.append(f"verdict: {doc['verdict'].upper().replace('_', ' ')}")
    if why:
        lines.append(f"  {why}")
    if html:
        lines.append(f"report: {html}")
    return "\n".join(lines)


def rerun_command(run_dir, from_step=None, steps=None, device="auto", out=None, fmt="text",
                  cmd=None, rule_id=None, baseline=False) -> None:
    try:
        doc, plan, extra = execute(run_dir, from_step=from_step, steps=steps, device=device,
                                   out=out, cmd=cmd, rule_id=rule_id, baseline=baseline)
    except RerunError as e:
        _die(str(e))
        return
    html = None
    try:
        from lorascope.report.rerun_html import write_rerun_html
        target = extra["out_root"] / f"{plan.run_name}-rerun.html"
        write_rerun_html(doc, extra["original"], extra["baseline"], extra["fixed"], target,
                         reproduction=extra.get("reproduction", ()), why=extra.get("why"))
        html = str(target)
    except Exception as e:  # the verdict stands without its chart
        if os.environ.get("LORASCOPE_DEBUG"):
            raise
        click.echo(f"lorascope: HTML report not written: {type(e).__name__}: {e}", err=True)
    if fmt == "json":
        click.echo(json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False))
    else:
        click.echo(render_text(doc, html, extra.get("reproduction", ()), extra.get("why")))
    sys.exit(EXIT[doc["verdict"]])
