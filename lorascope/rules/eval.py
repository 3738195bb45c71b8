"""eval.missing: evaluation configured, no eval metric logged."""
from __future__ import annotations

from lorascope.model import Cause, Finding, Run
from lorascope.rules.registry import Params, rule


def _strategy(v) -> str | None:
    if v is None:
        return None
    s = str(v).strip().lower()
    s = s.rsplit(".", 1)[-1]          # "IntervalStrategy.STEPS"
    return s or None


@rule("eval.missing", needs=("config",))
def eval_missing(run: Run, p: Params) -> list[Finding]:
    """Evaluation is configured but no eval metric was logged.

    ## What it detects
    The config asks for evaluation (`eval_strategy` steps or epoch, or `eval_steps` set)
    and the run got far enough for one to be due (past the first `eval_steps`, or past the
    first epoch), yet no eval series (eval loss or any `eval_*` metric) was logged.

    ## Why it matters
    Without eval loss there is no way to see overfitting or to pick the best checkpoint;
    the run looked evaluated but was not. With PEFT models the usual reason is that the
    Trainer cannot find the label column: `PeftModel.forward` hides the base model's
    signature, so `label_names` stays empty, no loss is computed in evaluation, and
    `eval_loss` is silently missing.

    ## Example
    `eval_strategy: steps`, `eval_steps: 100`, 2000 steps trained, and `log_history` holds
    only `loss`, `learning_rate` and `grad_norm`.

    ## Fix
    Set `label_names = ["labels"]` in the training arguments, pass an eval dataset (or
    `val_size` in LLaMA-Factory), and check that `do_eval` is on.
    """
    cfg = run.config
    strat = _strategy(cfg.get("eval_strategy"))
    eval_steps = cfg.get("eval_steps")
    try:
        eval_steps = int(eval_steps) if eval_steps is not None else None
    except (TypeError, ValueError):
        eval_steps = None
    if strat in ("no", "none", "false"):
        return []
    configured = strat in ("steps", "epoch") or (strat is None and eval_steps and eval_steps > 0
                                                 and p.get("eval_steps_alone", True))
    if not configured:
        return []
    if run.primary("eval_loss") is not None:
        return []
    if any(s.name.lower().startswith(("eval_", "eval/")) for s in run.series):
        return []
    last = run.steps.last
    tr = run.primary("train_loss")
    if last is None and tr is not None and len(tr.steps):
        last = int(tr.steps[-1])
    if last is None:
        return []
    if strat == "epoch":
        if not run.epoch_boundaries and not (run.steps.per_epoch and
                                             last >= run.steps.per_epoch):
            return []
        due = run.epoch_boundaries[0] - 1 if run.epoch_boundaries else int(run.steps.per_epoch)
    else:
        if not eval_steps or eval_steps <= 0:
            return []
        if eval_steps < 1:   # a ratio of the planned steps (HF accepts floats < 1)
            return []
        due = eval_steps
    if last < due:
        return []
    labels = cfg.get("label_names")
    ev = [f"eval_strategy = {strat or 'unset'}" + (f", eval_steps = {eval_steps}" if eval_steps else ""),
          f"training reached step {last}, the first evaluation was due at step {due}",
          "no eval_loss or eval_* series in any log"]
    causes = []
    if not labels:
        causes.append(Cause("eval.missing", p.get("label_names_confidence", 0.6),
                            "label_names is not set: with a PEFT model the Trainer cannot find the "
                            "label column, computes no eval loss and logs no eval_loss"))
    causes.append(Cause("eval.missing", 0.3, "no eval dataset was passed (or val_size is 0), "
                                              "or evaluation failed before logging"))
    fix = {"label_names": ["labels"]} if not labels else {}
    return [p.finding(f"Evaluation configured ({strat or 'eval_steps'}) but no eval metric was logged",
                      step=None, evidence=ev, causes=causes, fix=fix,
                      extra={"due_step": due})]
