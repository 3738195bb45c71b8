"""grad.* rules: the gradient norm jumps by orders of magnitude, or is not finite."""
from __future__ import annotations

from lorascope.model import Finding, Run
from lorascope.rules.registry import Params, rule
from lorascope.signals import fmt


@rule("grad.explosion", needs=("grad_norm",))
def grad_explosion(run: Run, p: Params) -> list[Finding]:
    """The gradient norm jumps by orders of magnitude.

    ## What it detects
    The level of the gradient norm (a short running median, so one noisy point does not
    count) rises to at least `min_ratio` times the upper end (`baseline_percentile`) of the
    preceding stretch of the run and stays there for `min_points` logged points; a single
    logged point at least `isolated_ratio` times the preceding level is reported with
    `isolated_severity`, unless it stays within the run's own recurring range: no more than
    `range_ratio` times the `range_count`-th largest of the other logged points (start of
    the run included). A norm that flips between two levels (preference training), or a
    memorised run whose rare unfitted batch brings back the norm the run started with, is
    not an explosion. Non-finite grad norms are `grad.nonfinite`'s; the warmup phase at the
    start is not judged.

    ## Why it matters
    Exploding gradients throw the weights far in one step; the loss spikes or becomes NaN
    right after, and without clipping one bad batch can ruin the adapter.

    ## Example
    `grad_norm` about 0.4 for 900 steps, then 85 and above from step 912.

    ## Fix
    Set `max_grad_norm = 1.0`, lower the learning rate, and use bf16 rather than fp16.
    """
    out = []
    for e in p.curves(run).owned(p.rule_id):
        d = e.data
        if e.kind == "grad_jump":
            ev = [f"{e.series} level {fmt(e.before)} before step {e.onset}, {fmt(d['level'])} from step "
                  f"{e.onset} (x{fmt(d['ratio'])})",
                  f"peak {fmt(e.peak_level)}; {fmt(e.end_level)} over the last points"]
            clip = run.config.get("max_grad_norm")
            if clip:
                ev.append(f"max_grad_norm = {clip}: clipping bounds the update, not the logged (pre-clip) norm")
            out.append(p.finding(f"Gradient norm jumped x{fmt(d['ratio'])} at step {e.onset} "
                                 f"({fmt(e.before)} to {fmt(d['level'])})",
                                 step=e.onset, step_range=[e.onset, e.last], evidence=ev,
                                 extra={"series": e.series, "change_points": [e.onset]}))
        else:
            sev = p.get("isolated_severity", "warning")
            if sev == "off":
                continue
            out.append(p.finding(
                f"Gradient norm spiked x{fmt(e.peak_level / e.before)} at step {e.onset} (isolated)",
                severity=sev, step=e.onset, step_range=[e.onset, e.onset],
                evidence=[f"{e.series} {fmt(e.peak_level)} at step {e.onset}, median {fmt(e.before)} "
                          "before it; back to its level right after",
                          f"x{fmt(e.peak_level / d['ref'])} above the run's own recurring upper level "
                          f"({fmt(d['ref'])}: {d['range_count']} other points reach it)",
                          f"{d['count']} such isolated point(s) in the run"],
                extra={"series": e.series, "change_points": d["steps"]}))
    return out[:1]


@rule("grad.nonfinite", needs=("grad_norm",))
def grad_nonfinite(run: Run, p: Params) -> list[Finding]:
    """Non-finite gradient norms while the loss stays finite (fp16 loss-scaler skipped steps).

    ## What it detects
    Logged gradient norms that are NaN or Inf while the training loss at the same steps is
    finite and sensible. With fp16 mixed precision, the GradScaler skips any step whose
    gradients overflow and lowers its scale: a few isolated non-finite norms are that, and
    harmless (the default severity). Many of them (`many_share` of the logged norms,
    `min_consecutive` in a row, or `persist_share` of the log after the first) are reported
    with `many_severity`: the scaler keeps overflowing and most updates are skipped. When
    the loss is logged as exactly 0.0 at those steps the loss itself was NaN and HF's
    logging filter hid it: that is `loss.nonfinite`.

    ## Why it matters
    Skipped steps do not update the adapter. A handful is normal for fp16; a run that skips
    most of its steps trains far less than its step count says, and a scale that keeps
    falling ends in underflow.

    ## Example
    `grad_norm: inf` at steps 12, 340 and 905 while `loss` goes 1.31, 1.12, 0.98.

    ## Fix
    Nothing for a few; for many, train in bf16 where the GPU supports it, lower the
    learning rate, and set `max_grad_norm = 1.0`.
    """
    out = []
    for e in p.curves(run).owned(p.rule_id):
        d = e.data
        many = d["many"]
        sev = p.get("many_severity", "warning") if many else None
        if sev == "off":
            continue
        steps = d["steps"]
        ev = [f"{e.series} non-finite at {d['bad']} of {d['total']} logged steps: "
              f"{', '.join(str(s) for s in steps[:10])}" + (" ..." if d["bad"] > 10 else ""),
              f"{d['loss_series'] or 'the loss'} stays finite at those steps: the fp16 GradScaler skipped them"]
        if many:
            ev.append(f"longest run of non-finite norms: {d['longest']} log entries; "
                      f"{fmt(100 * d['tail_share'])}% of the log after the first")
            title = f"grad_norm non-finite at {d['bad']} of {d['total']} logged steps from step {e.onset}: many skipped updates"
        else:
            title = (f"grad_norm non-finite at {d['bad']} isolated step(s) while the loss stayed finite "
                     "(fp16 loss-scaler skipped steps, not a NaN loss)")
        out.append(p.finding(title, severity=sev, step=e.onset, step_range=[e.onset, e.last], evidence=ev,
                             fix={"max_grad_norm": 1.0} if many and not run.config.get("max_grad_norm") else {},
                             extra={"series": e.series, "change_points": steps[:50]}))
    return out[:1]
