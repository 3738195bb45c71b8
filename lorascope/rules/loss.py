"""loss.* rules: symptoms of the training-loss curve.

The curve-analysis stage (:mod:`lorascope.curves`) finds every episode of the run's curves
once and its arbiter gives each episode to one symptom; these rules read the episodes they
own (``p.curves(run).owned(rule_id)``) and turn them into findings: when it began, how
high it went, whether and when the curve recovered, where it ended, with the evidence.
"""
from __future__ import annotations

import math

from lorascope.curves.model import Episode
from lorascope.model import Finding, Run
from lorascope.rules.registry import Params, rule
from lorascope.signals import fmt


def _ratio(a: float | None, b: float | None, mode: str = "log") -> str:
    if a is None or b is None:
        return "?"
    if mode == "log" and a > 0 and b > 0:
        return f"x{fmt(b / a)}"
    return f"{'+' if b >= a else ''}{fmt(b - a)}"


def _mode(run: Run, p: Params, series: str) -> str:
    cm = p.curves(run).curves.get(series)
    return cm.noise.mode if cm is not None and cm.noise is not None else "log"


def _over(a: int, b: int) -> str:
    return f"at step {a}" if a == b else f"over steps {a}-{b}"


def _headline(eps: list[Episode]) -> Episode:
    """The first episode at least half as large (in log units) as the largest: when it
    went wrong, not the noise before it."""
    big = max(e.magnitude for e in eps)
    return next(e for e in sorted(eps, key=lambda e: e.onset or 0) if e.magnitude >= 0.5 * big)


def _others(eps: list[Episode], head: Episode) -> list[str]:
    rest = [e for e in sorted(eps, key=lambda e: e.onset or 0) if e is not head]
    if not rest:
        return []
    return [f"{len(rest)} further episode(s) at steps {', '.join(str(e.onset) for e in rest[:6])}"
            + (" ..." if len(rest) > 6 else "")]


def _range(e: Episode) -> list[int]:
    end = e.end if e.end is not None else e.last
    a = int(e.onset)
    return [a, int(end) if end is not None and end >= a else a]


# -- loss.nonfinite -------------------------------------------------------------------

@rule("loss.nonfinite", needs=("train_loss",))
def loss_nonfinite(run: Run, p: Params) -> list[Finding]:
    """The training loss became NaN or Inf, or a NaN hidden by the trainer's logging.

    ## What it detects
    The first NaN or Inf value of the training loss, in any series that carries it (the
    logged loss, kohya's running average `loss/average`, its per-epoch mean `loss/epoch`).
    It also finds the NaN that HF Trainer hides: with `logging_nan_inf_filter` (on by
    default) a NaN step is left out of the logged average, so the log shows `loss: 0.0`
    while `grad_norm` is NaN at the same steps. A non-finite `grad_norm` beside a finite,
    sensible loss is the fp16 loss scaler skipping a step, not a NaN loss: that is
    `grad.nonfinite`.

    ## Why it matters
    Once a weight becomes NaN every later step is NaN too: the adapter saved after that
    point is garbage, whatever the rest of the log looks like.

    ## Example
    `loss` 1.21, 1.18, 1.15, then `nan` from step 840 on; or `loss: 0.0` with
    `grad_norm: NaN` at every log entry after step 300.

    ## Fix
    Lower the learning rate, clip gradients (`max_grad_norm = 1.0`), use bf16 instead of
    fp16 where the GPU supports it, and resume from the last checkpoint before the first
    non-finite step.
    """
    out = []
    for e in p.curves(run).owned(p.rule_id):
        if e.kind == "nonfinite":
            d = e.data
            ev = [f"{e.series} is {d['kind']} at step {e.onset} (first of {d['bad']} non-finite "
                  f"of {d['total']} points)"]
            if d.get("prev"):
                ev.append(f"last finite value before it: {fmt(d['prev'][0])} at step {d['prev'][1]}")
            if d["later_ok"]:
                ev.append(f"{d['later_ok']} finite values follow (a loss scaler or a filtered average "
                          "may hide further NaN steps)")
            title = (f"Training loss became {d['kind']} at step {e.onset}"
                     + (" and stayed non-finite" if not d["later_ok"] else ""))
        else:   # hidden_nan
            d = e.data
            ev = [f"{e.series} is non-finite at {d['bad']} of {d['total']} logged steps, first at step {d['first']}",
                  f"{d['loss_series']} is exactly 0.0 at {d['zero_loss']} of those steps (first {d['zero_first']}): "
                  "the NaN steps were filtered out of the logged average",
                  f"{d['loss_series']} stays finite: HF Trainer's logging_nan_inf_filter drops NaN losses "
                  "from the average"]
            title = f"Loss became NaN at step {e.onset} (hidden: grad_norm is NaN, loss logged as 0.0)"
        out.append(p.finding(title, step=e.onset, step_range=_range(e), evidence=ev,
                             extra={"series": e.series, "change_points": [e.onset]}))
    return out[:1]


# -- loss.spike -----------------------------------------------------------------------

def _spike_text(e: Episode, mode: str) -> tuple[str, list[str], str | None]:
    """(title, evidence, severity override) of one spike-like episode."""
    d = e.data
    b, pk, end = e.before, e.peak_level, e.end_level
    sev = None
    if e.kind == "spike":
        n = d["points"]
        what = "one logged point" if n == 1 else f"{n} logged points"
        ev = [f"{e.series} {fmt(pk)} at step {e.peak}: {_ratio(b, pk, mode)} its local level {fmt(b)} "
              f"({what}, {fmt(d['z'])} times the point noise)"]
        if e.recovered:
            ev.append(f"back to its level at step {e.end}")
            title = f"Loss spiked from {fmt(b)} to {fmt(pk)} at step {e.onset} and recovered at once"
        else:
            title = f"Loss spiked from {fmt(b)} to {fmt(pk)} at step {e.onset} (last logged point)"
        return title, ev, "short"
    b0, b1 = d["before_steps"]
    ev = [f"{e.series} level {fmt(b)} {_over(b0, b1)}, {fmt(pk)} at its peak near step {e.peak} "
          f"({_ratio(b, pk, mode)}, {fmt(d['z'])} standard errors)",
          f"rose over {d['rise_points']} logged point(s) from step {e.onset}"
          + (f"; highest point {fmt(d['peak_point'])}" if d.get("peak_point") else "")]
    if e.recovered:
        ev.append(f"back near its earlier level from step {e.end}")
        ce = d.get("curve_end")
        if mode == "log" and ce is not None and b and ce / max(b, 1e-300) >= 1.1:
            # back within recover_ratio, but not all the way: say where the curve ended
            ev.append(f"the loss ended at {fmt(ce)}: {_ratio(b, ce, mode)} its level before the jump")
            title = (f"Loss blew up from {fmt(b)} to {fmt(pk)} at step {e.onset} and partly recovered "
                     f"by step {e.end}: it ended at {fmt(ce)} ({_ratio(b, ce, mode)} its earlier level)")
        else:
            title = (f"Loss jumped from {fmt(b)} to {fmt(pk)} at step {e.onset} "
                     f"and recovered by step {e.end}")
    else:
        # came back most of the way (below a spike's ratio of its earlier level) but not
        # within recover_ratio: partly recovered
        spike_ratio = 2.0 if mode == "log" else None
        partly = (mode == "log" and end is not None and b and pk and end < pk
                  and end / max(b, 1e-300) < spike_ratio)
        ev.append(f"level at the end {fmt(end)}: {_ratio(b, end, mode)} its level before the jump")
        if partly:
            title = (f"Loss blew up from {fmt(b)} to {fmt(pk)} at step {e.onset} and only partly "
                     f"recovered: it ended at {fmt(end)} ({_ratio(b, end, mode)} its earlier level)")
        else:
            title = (f"Loss jumped from {fmt(b)} to {fmt(pk)} at step {e.onset} and did not recover: "
                     f"it ended at {fmt(end)} ({_ratio(b, end, mode)} its earlier level)")
    return title, ev, sev


@rule("loss.spike", needs=("train_loss",))
def loss_spike(run: Run, p: Params) -> list[Finding]:
    """A sudden upward jump of the training loss, with or without recovery.

    ## What it detects
    Two shapes. A **short spike**: one to `max_points` logged points far above their local
    level (`point_min_ratio` times it, `min_z` times the point noise, and beyond the
    curve's own upper tail: a diffusion per-step loss is broad by itself, a smooth averaged
    LLM loss is not), then back. A **jump or blow-up**: the loss level stands `min_ratio`
    above its best level so far (for losses near zero or negative: `min_abs_jump` higher)
    and it got there suddenly, or it came back down (fully, or partly: the finding says how
    far from its earlier level it ended). The finding gives the onset, the peak, whether
    and when the loss recovered and where it ended. Jumps that are steps of an epoch
    staircase or waves of an oscillation are reported by those rules.

    ## Why it matters
    A spike means an update threw the adapter far from where it was: usually a learning
    rate too high for the batch, no gradient clipping, or a bad batch. Without recovery the
    rest of the run trained a damaged adapter; with recovery, steps were wasted and the
    checkpoint saved during the spike is bad.

    ## Example
    `loss/current` median 0.11 over steps 1000-1247 and 4.8 from step 1250 on; or one
    logged `loss` of 23.0 at step 400 between values of 1.0.

    ## Fix
    Lower the learning rate (a fifth is a good first try), set `max_grad_norm = 1.0`, add
    warmup, and check the samples of the batch at the spike step.
    """
    eps = p.curves(run).owned(p.rule_id)
    if not eps:
        return []
    head = _headline(eps)
    mode = _mode(run, p, head.series)
    title, ev, kind = _spike_text(head, mode)
    ev += _others(eps, head)
    sev = None
    if kind == "short" and head.recovered and all(e.kind == "spike" for e in eps):
        sev = p.get("short_severity", None)
        if sev == "off":
            return []
    return [p.finding(title, severity=sev, step=head.onset, step_range=_range(head), evidence=ev,
                      extra={"series": head.series, "change_points": [e.onset for e in eps][:20],
                             "recovered": bool(head.recovered), "peak": head.peak,
                             "end_level": head.end_level})]


# -- loss.divergence --------------------------------------------------------------------

@rule("loss.divergence", needs=("train_loss",))
def loss_divergence(run: Run, p: Params) -> list[Finding]:
    """The training loss trends upward or explodes, after having decreased or from its first points.

    ## What it detects
    The loss level climbs, gradually rather than in one jump, and stays up: at the end it
    is at least `min_ratio` times its best level before the climb (for losses near zero
    or negative: `min_abs_rise` higher), well beyond its noise. No earlier decrease is
    needed: a loss that climbs from its first logged points diverged too, and ten points
    are enough to see it. The step is the onset of the climb: the knot of a "flat or
    falling, then rising" two-piece line, or the first point of the new level when the
    climb starts with a step.

    ## Why it matters
    A diverging run gets worse with every step; checkpoints after the onset are worse than
    the one before it. Typical causes are a learning rate that is too high (from the start,
    or once warmup ends), no gradient clipping, or fp16 overflow.

    ## Example
    `train/loss` falls from 2.1 to 0.9 by step 600, then rises steadily to 3.5 at step
    1500; or 1.0, 4.3, 8.8, 13.5 ... 29.6 over the first 100 steps at a constant 5e-3.

    ## Fix
    Lower the learning rate, set `max_grad_norm = 1.0`, use a decaying scheduler, and keep
    the checkpoint saved before the onset.
    """
    eps = p.curves(run).owned(p.rule_id)
    if not eps:
        return []
    head = _headline(eps)
    mode = _mode(run, p, head.series)
    d = head.data
    b, pk, end = head.before, head.peak_level, head.end_level
    if head.kind == "spike":
        ev = [f"{head.series} {fmt(pk)} at step {head.peak}: {_ratio(b, pk, mode)} its local level {fmt(b)}"]
        title = f"Loss rose from {fmt(b)} to {fmt(pk)} at step {head.onset}"
    else:
        b0, b1 = d["before_steps"]
        ev = [f"{head.series} level {fmt(b)} {_over(b0, b1)}, {fmt(end)} at the end "
              f"({_ratio(b, end, mode)}, {fmt(d['z'])} standard errors at the peak)",
              f"climb starts near step {head.onset}; highest level {fmt(pk)} near step {head.peak}"]
        cm = p.curves(run).curves.get(head.series)
        if cm is not None and cm.first_step is not None and cm.last_step is not None and cm.points > 1 and \
                head.onset - cm.first_step <= max(2 * (cm.last_step - cm.first_step) / (cm.points - 1),
                                                   (cm.last_step - cm.first_step) / 20):
            ev.append("it climbed from its first logged points: it never decreased")
        elif d.get("start_level") and b and mode == "log" and d["start_level"] > 1.1 * b:
            ev.append(f"before that it had fallen from {fmt(d['start_level'])}")
        if head.recovered:
            ev.append(f"came back within its earlier level from step {head.end}")
            title = (f"Loss diverged from step {head.onset}: rose from {fmt(b)} to {fmt(pk)}, "
                     f"back by step {head.end}")
        else:
            title = f"Loss diverged from step {head.onset}: rose from {fmt(b)} to {fmt(end)}"
    ev += _others(eps, head)
    return [p.finding(title, step=head.onset, step_range=_range(head), evidence=ev,
                      extra={"series": head.series, "change_points": [e.onset for e in eps][:20],
                             "recovered": bool(head.recovered), "peak": head.peak})]


# -- loss.plateau -----------------------------------------------------------------------

_PREF_SERIES = ("reward", "accuracies", "accuracy", "logps", "margins", "chosen", "rejected")


def _preference_loss(run: Run, e: Episode) -> bool:
    """A DPO-style sigmoid preference loss: it starts at ln 2 = 0.693 (chosen and rejected
    scored alike) and the run logs preference metrics (rewards/accuracies, logps, ...).
    Such a loss need not fall far; "never decreased" is no finding for it."""
    if e.before is None or not 0.6 <= e.before <= 0.8:
        return False
    names = [x.name.lower() for x in run.series if x.role not in ("train_loss", "eval_loss", "lr")]
    return any(k in nm for nm in names for k in _PREF_SERIES)


@rule("loss.plateau", needs=("train_loss",))
def loss_plateau(run: Run, p: Params) -> list[Finding]:
    """The training loss never meaningfully decreased.

    ## What it detects
    The best smoothed level of the loss is less than `min_decrease` (relative) below its
    initial level, or the decrease is within `min_z` times the noise of a level estimate:
    the curve is flat compared to its own noise. Losses that are zero or negative, or start
    near zero (preference / RL training such as DPO or GRPO), are not judged, nor is a
    DPO-style loss that starts at ln 2 in a run that logs preference metrics, nor a loss
    that rose (a divergence). Diffusion (image) LoRA losses are dominated by the random
    noise timestep and often look flat in healthy runs; for them the finding is only
    `sd_severity`.

    ## Why it matters
    A flat loss means the adapter is not learning: a learning rate too low, no trainable
    parameters, frozen adapter weights, labels masked out, or a data pipeline that feeds
    the same thing every step.

    ## Example
    `train/loss` 2.31 over the first 10% of steps and 2.29 at its best.

    ## Fix
    Check that the base model loaded, that the adapter has trainable parameters and that
    labels are not all masked, then raise the learning rate (1e-4 to 2e-4 is usual for
    LoRA). The learning rate (`fix_learning_rate`) is suggested only when the run's own
    is lower and the trainer's log does not show a base model that failed to load or zero
    trainable parameters.
    """
    eps = p.curves(run).owned(p.rule_id)
    if not eps:
        return []
    e = eps[0]
    if _preference_loss(run, e):
        return []
    d = e.data
    if d["noisy"] and d["points"] < int(p.get("noisy_min_points", 20)):
        return []      # a short curve that fell a little, within its noise: no claim either way
    sev = p.get("noisy_severity", "warning") if d["noisy"] else None
    if run.task == "sd":
        sev = p.get("sd_severity", "info")
    if sev == "off":
        return []
    drop = e.magnitude
    ev = [f"{e.series} median {fmt(e.before)} over the first {d['init_points']} points, "
          f"best smoothed level {fmt(e.peak_level)} at step {d['best_step']}, {fmt(e.end_level)} at the end",
          f"decrease {fmt(100 * (1 - math.exp(-drop)))}%, needed {fmt(100 * (1 - math.exp(-d['need'])))}% "
          f"(noise of one point {fmt(100 * d['sigma'])}%)"]
    if run.task == "sd":
        ev.append("diffusion LoRA losses are dominated by the random timestep and often stay flat in healthy runs")
    if d["noisy"]:      # it fell by min_decrease or more, but not clearly beyond its noise
        title = (f"Loss fell only {fmt(100 * (1 - math.exp(-drop)))}%, within its noise: "
                 f"{fmt(e.before)} at the start, {fmt(e.peak_level)} at its best")
    else:
        title = f"Loss never decreased: {fmt(e.before)} at the start, {fmt(e.peak_level)} at its best"
    # the fix follows the run's evidence: a learning-rate change cannot help a model whose
    # pretrained weights never loaded or an adapter with nothing trainable in it
    fix: dict = {}
    kinds = {ev_.kind for ev_ in run.events}
    blocked = [k for k in ("base_model_not_loaded", "no_trainable_params") if k in kinds]
    lr = run.config.get("learning_rate")
    target = p.get("fix_learning_rate", 2e-4)
    if blocked:
        ev.append(f"the trainer's log shows {' and '.join(k.replace('_', ' ') for k in blocked)}: "
                  "no learning-rate change is suggested")
    elif not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr < target:
        fix["learning_rate"] = target
    return [p.finding(title, severity=sev, step=e.onset, step_range=[e.onset, e.last], evidence=ev,
                      fix=fix, extra={"series": e.series, "change_points": []})]


# -- loss.oscillation -------------------------------------------------------------------

@rule("loss.oscillation", needs=("train_loss",))
def loss_oscillation(run: Run, p: Params) -> list[Finding]:
    """The training loss swings far more than its trend and its noise explain.

    ## What it detects
    A regime of periodic swings around the trend: after a running median about two wave
    periods wide is taken out (waves from `min_period` points to a third of the curve are
    looked for), the periodogram of what is left has a peak `min_power` times the noise
    power around it, the swings are at least `min_swing` in relative size and they last at
    least `min_cycles` periods. The step is where the swings begin. Losses near zero or
    negative are not judged. Waves with the epoch's period are `loss.epoch_jump`'s when
    that fires.

    ## Why it matters
    A loss that rises and falls by large amounts in waves usually means the learning rate is
    too high for the batch size (the optimiser overshoots back and forth), a cyclic schedule
    with too large a peak, or data that is not shuffled (the loss follows the data order).

    ## Example
    `train/loss` swings between 0.6 and 1.4 every ~30 logged points while its trend falls
    slowly from 1.2 to 0.9.

    ## Fix
    Lower the learning rate or raise the effective batch (`grad_accum`), and make sure the
    dataset is shuffled.
    """
    eps = p.curves(run).owned(p.rule_id)
    if not eps:
        return []
    e = eps[0]
    d = e.data
    ev = [f"{e.series} swings about +/-{fmt(d['amp_pct'])}% around its trend, one wave every "
          f"{fmt(d['period_points'])} logged points (~{fmt(d['period_steps'])} steps), "
          f"{fmt(d['cycles'])} waves from step {e.onset} to {e.last}",
          f"the wave's power is {fmt(d['score'])} times the noise power around it"]
    return [p.finding(f"Loss oscillates from step {e.onset}: swings of about +/-{fmt(d['amp_pct'])}% "
                      f"every ~{fmt(d['period_steps'])} steps",
                      step=e.onset, step_range=[e.onset, e.last], evidence=ev,
                      extra={"series": e.series, "change_points": []})]


# -- loss.epoch_jump --------------------------------------------------------------------

@rule("loss.epoch_jump", needs=("train_loss",))
def loss_epoch_jump(run: Run, p: Params) -> list[Finding]:
    """Loss level shifts that line up with epoch boundaries.

    ## What it detects
    At most epoch boundaries (`min_fraction` of them) the loss level just after the
    boundary differs from the level just before (each side fitted with a line and
    extrapolated to the boundary) by at least `min_ratio` and `min_z` standard errors, in
    the same direction, while the same test at mid-epoch positions mostly finds nothing.
    Each side's line runs through the whole neighbouring epoch, or through its half next
    to the boundary where the curve bends (the two lines disagree beyond their noise).
    The stretch right after a loss spike that starts between boundaries (until the loss
    holds one level again) is not judged: a boundary inside it is the spike's aftermath.
    When the series is a running average that restarts each epoch (kohya's `loss/average`
    in some versions) the shift is a logging artifact and the finding is `artifact_severity`.

    ## Why it matters
    A drop at each new epoch means the model recognises samples it has already seen: it is
    memorising the training set, and eval loss will soon rise. A rise at each epoch often
    means the data is not shuffled or a scheduler/optimizer restarts per epoch.

    ## Example
    `train/loss` about 1.10 at the end of epoch 1 and 0.78 right after step 501, the first
    step of epoch 2; again 0.74 to 0.52 at step 1001.

    ## Fix
    Train fewer epochs, add data, or lower the rank; use an eval split to pick the
    checkpoint. For a rise at each epoch, enable shuffling and check the scheduler.
    """
    eps = p.curves(run).owned(p.rule_id)
    if not eps:
        return []
    e = eps[0]
    d = e.data
    artifact = d["artifact"]
    sev = p.get("artifact_severity", "info") if artifact else None
    if sev == "off":
        return []
    word = "rises" if d["direction"] == "up" else "drops"
    wing = "rising" if d["direction"] == "up" else "dropping"
    log = d["mode"] == "log"
    ev = [f"{d['n_jumps']} of {d['n_bounds']} epoch boundaries show the loss level {wing} "
          f"(mid-epoch controls: {fmt(100 * d['ctrl_sig'])}% significant)"]
    if d["n_bounds"] >= 2:
        ev.append(f"all boundaries together: {fmt(abs(d['z_pooled']))} standard errors")
    for b, before, after, j, z in d["rows"]:
        ev.append(f"step {b}: {fmt(before)} before, {fmt(after)} after "
                  f"(level {'x' if log else '+'}{fmt(math.exp(j) if log else j)}, {fmt(z)} standard errors)")
    if artifact:
        ev.append(f"{e.series} is a running average that restarts each epoch: the jump is a logging "
                  "artifact, not a change in training")
        title = f"Loss {word} at {d['n_jumps']} epoch boundaries (running-average reset, a logging artifact)"
    else:
        title = f"Loss {word} at {d['n_jumps']} of {d['n_bounds']} epoch boundaries, first at step {e.onset}"
    return [p.finding(title, severity=sev, step=e.onset, step_range=[e.onset, e.last], evidence=ev,
                      extra={"series": e.series, "change_points": d["steps"],
                             "direction": d["direction"], "artifact": artifact})]
