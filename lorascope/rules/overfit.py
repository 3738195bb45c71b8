"""overfit: eval loss rises while the train loss keeps falling."""
from __future__ import annotations

from lorascope.model import Finding, Run
from lorascope.rules.registry import Params, rule
from lorascope.signals import fmt


@rule("overfit", needs=("train_loss", "eval_loss"))
def overfit(run: Run, p: Params) -> list[Finding]:
    """Eval loss rises while the train loss keeps falling.

    ## What it detects
    An eval loss reaches its best and then climbs: its final level is at least `min_rise`
    (relative) above its best while the training loss over the same steps did not rise.
    Every eval-loss series is judged on its own, named eval sets (`eval_<name>_loss`, one
    per dataset of a dict passed to HF Trainer) included; the finding lists each set that
    rose. With many evaluations the climb must be `min_z` times the scatter of the eval
    points and the step is the onset of the climb (a two-piece linear fit); with few (4-6
    evaluations) every evaluation after the best must confirm the rise and the step is the
    best evaluation's.

    ## Why it matters
    From the onset on, the adapter memorises the training set instead of learning what
    generalises: later checkpoints are worse on new data even though the train loss looks
    better and better.

    ## Example
    `eval/loss` falls from 1.9 to 1.32 by step 1200 and climbs to 1.61 by step 3000 while
    `train/loss` falls from 1.1 to 0.4; or five evaluations 0.62, 0.66, 0.71, 0.78, 0.84.

    ## Fix
    Keep the checkpoint nearest the onset (`load_best_model_at_end`), train fewer epochs,
    add data, lower the rank or raise `lora_dropout` / weight decay.
    """
    eps = p.curves(run).owned(p.rule_id)
    if not eps:
        return []
    eps = sorted(eps, key=lambda e: (e.onset, -e.magnitude))
    head = eps[0]
    d = head.data
    evd = []
    for e in eps[:6]:
        ed = e.data
        evd.append(f"{e.series} best {fmt(e.before)} at step {ed['best_step']}, {fmt(e.end_level)} "
                   f"at the end (x{fmt(e.end_level / e.before) if e.before else '?'}, "
                   f"{ed['evals']} evals, climbing from step {e.onset})")
    if len(eps) > 6:
        evd.append(f"{len(eps) - 6} more eval sets rose")
    evd.append(f"{d['train']} {fmt(d['train_on'])} at step {head.onset}, {fmt(d['train_end'])} at the end")
    ckpts = sorted(c.step for c in run.checkpoints if c.step is not None and c.step <= head.onset)
    if ckpts:
        evd.append(f"last checkpoint before the onset: step {ckpts[-1]}")
    n_sets = len(run.by_role("eval_loss"))
    which = f" ({len(eps)} of {n_sets} eval sets)" if n_sets > 1 else ""
    title = (f"Overfitting from step {head.onset}: eval loss rose from {fmt(head.before)} to "
             f"{fmt(head.end_level)}{which} while train loss fell to {fmt(d['train_end'])}")
    return [p.finding(title, step=head.onset, step_range=[head.onset, head.last], evidence=evd,
                      extra={"series": head.series, "train_series": d["train"],
                             "change_points": [e.onset for e in eps]})]
