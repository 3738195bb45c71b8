"""Synthetic curves and hand-built Runs for the curve-rule tests."""
from __future__ import annotations

import numpy as np

from lorascope.model import Config, Run, Series, StepInfo
from lorascope.rules.registry import REGISTRY, load_catalog, load_rule_modules, params_for

load_rule_modules()
CATALOG = load_catalog()


def decay(n=500, noise=0.05, seed=0, a=0.6, b=1.4, tau=0.1):
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=float)
    return np.log(a + b * np.exp(-t / (tau * n))) + rng.normal(0, noise, n)


# what the pre-typed Run kept in its `facts` dict, and the typed field that holds it now
FACT_FIELDS = {"loss_running_average": "loss_is_running_average", "steps_per_epoch": "per_epoch",
               "mixed_evidence": "mixed"}


def make_run(loss=None, *, steps=None, eval_steps=None, eval_vals=None, grad=None, bounds=(),
             config=None, task="llm", facts=None, loss_name="train/loss", running_average=False,
             steps_per_epoch=None, events=(), extra_series=()):
    """A hand-built Run.  ``facts`` (the old untyped dict) is still accepted for the keys
    in FACT_FIELDS and mapped to the typed fields."""
    facts = dict(facts or {})
    unknown = set(facts) - set(FACT_FIELDS)
    if unknown:
        raise TypeError(f"make_run: no typed Run field for facts {sorted(unknown)}")
    running_average = running_average or bool(facts.get("loss_running_average"))
    steps_per_epoch = steps_per_epoch or facts.get("steps_per_epoch")
    series = []
    last = 0
    if loss is not None:
        st = np.arange(1, len(loss) + 1, dtype=np.int64) if steps is None else np.asarray(steps)
        series.append(Series(loss_name, "train_loss", st, np.asarray(loss, dtype=float)))
        last = int(st[-1]) if len(st) else 0
    if eval_vals is not None:
        series.append(Series("eval/loss", "eval_loss", np.asarray(eval_steps, dtype=np.int64),
                             np.asarray(eval_vals, dtype=float)))
    if grad is not None:
        gs = np.arange(1, len(grad) + 1, dtype=np.int64) if steps is None else np.asarray(steps)
        series.append(Series("train/grad_norm", "grad_norm", gs, np.asarray(grad, dtype=float)))
        last = max(last, int(gs[-1]))
    series.extend(extra_series)
    return Run(path="r", name="r", task=task, series=series, config=Config(values=dict(config or {})),
               epoch_boundaries=list(bounds),
               steps=StepInfo(1 if last else None, last or None, last or None, per_epoch=steps_per_epoch),
               loss_is_running_average=running_average, mixed=tuple(facts.get("mixed_evidence") or ()),
               events=tuple(events))


def check(rule_id, run):
    """Run one rule the way the pipeline does (skipped when its needs are missing)."""
    spec = REGISTRY[rule_id]
    for need in spec.needs:
        if need in ("train_loss", "eval_loss", "grad_norm", "lr") and run.primary(need) is None:
            return []
    return spec.func(run, params_for(rule_id, CATALOG))


def alarms(rule_id, run):
    return [f for f in check(rule_id, run) if f.severity != "info"]
