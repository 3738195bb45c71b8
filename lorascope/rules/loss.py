"""loss.* rules: symptoms read from the training-loss curve.

All of them look at the run's primary train-loss series (``run.primary("train_loss")``),
prepared by :func:`lorascope.signals.prepare` (finite points, log space for positive
losses, grad-accumulation-scaled points put back, downsampled copy for long curves).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lorascope import signals as sg
from lorascope.model import Finding, Run
from lorascope.rules.registry import Params, rule
from lorascope.signals import Curve, fmt


def _span(cur: Curve) -> int:
    return max(1, int(cur.steps[-1] - cur.steps[0]))


def _ratio_text(cur: Curve, a: float, b: float) -> str:
    la, lb = cur.level(a), cur.level(b)
    if cur.mode == "log" and la > 0:
        return f"x{fmt(lb / la)}"
    return f"{'+' if lb >= la else ''}{fmt(lb - la)}"


# -- loss.nonfinite -------------------------------------------------------------------

def _runs_of(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index ranges where mask is True."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


@rule("loss.nonfinite", needs=("train_loss",))
def loss_nonfinite(run: Run, p: Params) -> list[Finding]:
    """The training loss became NaN or Inf, or a NaN hidden by the trainer's logging.

    ## What it detects
    The first NaN or Inf value of the training loss. It also finds the NaN that HF
    Trainer hides: with ``logging_nan_inf_filter`` (on by default) a NaN step is left out
    of the logged average, so the log shows ``loss: 0.0`` or a plausible number while
    ``grad_norm`` is NaN at the same steps. A non-finite ``grad_norm`` at a few isolated
    steps while the loss stays finite and sensible is the fp16 loss scaler skipping a step,
    not a NaN loss; that is reported as info only.

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
    s = run.primary("train_loss")
    out: list[Finding] = []
    v = np.asarray(s.values, dtype=float)
    st = np.asarray(s.steps, dtype=np.int64)
    if len(v) == 0:
        return out
    bad = ~np.isfinite(v)
    if bad.any():
        i = int(np.argmax(bad))
        n_bad = int(bad.sum())
        kind = "NaN" if np.isnan(v[i]) else "Inf"
        prev = v[:i][np.isfinite(v[:i])]
        later_ok = int(np.isfinite(v[i:]).sum())
        ev = [f"{s.name} is {kind} at step {int(st[i])} (first of {n_bad} non-finite of {len(v)} points)"]
        if len(prev):
            ev.append(f"last finite value before it: {fmt(prev[-1])} at step {int(st[:i][np.isfinite(v[:i])][-1])}")
        if later_ok:
            ev.append(f"{later_ok} finite values follow (a loss scaler or a filtered average may hide further NaN steps)")
        title = (f"Training loss became {kind} at step {int(st[i])}"
                 + (" and stayed non-finite" if later_ok == 0 else ""))
        out.append(p.finding(title, step=int(st[i]), step_range=[int(st[i]), int(st[-1])],
                             evidence=ev, extra={"series": s.name, "change_points": [int(st[i])]}))
        return out
    g = run.primary("grad_norm")
    if g is None or len(g.values) == 0:
        return out
    gv = np.asarray(g.values, dtype=float)
    gs = np.asarray(g.steps, dtype=np.int64)
    gbad = ~np.isfinite(gv)
    if not gbad.any():
        return out
    bad_steps = gs[gbad]
    common, li, _ = np.intersect1d(st, bad_steps, return_indices=True)
    zero_loss = common[v[li] == 0.0] if len(common) else np.zeros(0, dtype=np.int64)
    runs = _runs_of(gbad)
    persistent = [r for r in runs if (r[1] - r[0]) >= int(p["min_consecutive"])]
    # share of the grad-norm log after the first bad point that is bad
    first = int(np.argmax(gbad))
    tail_share = float(gbad[first:].mean())
    if len(zero_loss) or persistent or (tail_share >= p["hidden_share"] and gbad.sum() >= 2):
        start = int(zero_loss[0]) if len(zero_loss) else int(gs[persistent[0][0]] if persistent else gs[first])
        start = min(start, int(gs[first])) if (persistent or len(zero_loss)) else start
        ev = [f"{g.name} is non-finite at {int(gbad.sum())} of {len(gv)} logged steps, first at step {int(gs[first])}"]
        if len(zero_loss):
            ev.append(f"{s.name} is exactly 0.0 at {len(zero_loss)} of those steps (first {int(zero_loss[0])}): "
                      "the NaN steps were filtered out of the logged average")
        if persistent:
            a, b = persistent[0]
            ev.append(f"{g.name} non-finite at {b - a} consecutive log entries, steps {int(gs[a])}-{int(gs[b - 1])}")
        ev.append(f"{s.name} stays finite: HF Trainer's logging_nan_inf_filter drops NaN losses from the average")
        out.append(p.finding(f"Loss became NaN at step {start} (hidden: grad_norm is NaN, loss logged as a number)",
                             step=start, step_range=[start, int(gs[-1])], evidence=ev,
                             extra={"series": g.name, "change_points": [start]}))
        return out
    # isolated non-finite grad norms with a finite loss: fp16 skipped steps
    sev = p.get("skipped_step_severity", "info")
    if sev == "off":
        return out
    out.append(p.finding(
        f"grad_norm non-finite at {int(gbad.sum())} isolated step(s) while the loss stayed finite "
        "(fp16 loss-scaler skipped steps, not a NaN loss)",
        severity=sev, step=int(bad_steps[0]), step_range=[int(bad_steps[0]), int(bad_steps[-1])],
        evidence=[f"{g.name} non-finite at steps {', '.join(str(int(x)) for x in bad_steps[:10])}"
                  + (" ..." if len(bad_steps) > 10 else ""),
                  f"{s.name} finite at all {len(v)} points; the GradScaler skips such steps and lowers its scale"],
        extra={"series": g.name, "change_points": [int(x) for x in bad_steps[:50]]}))
    return out


# -- change-point jumps shared by spike / divergence -------------------------------------

@dataclass
class Jump:
    ds: int
    idx: int            # full-resolution index of the first point of the new level
    step: int
    before: float       # analysed units
    after: float
    j_med: float
    j_lin: float
    z: float            # j_med over its standard error
    end_ds: int         # end (exclusive, downsampled) of the after segment
    n_after: int        # full-resolution points in the after segment
    n_before: int
    last_ds: int = -1   # the transition's last change point (downsampled; == ds for one)


def level_jumps(cur: Curve, beta: float, min_points: int = 1) -> list[Jump]:
    """Level changes at the change points of the curve. Change points separated by
    segments of fewer than ``min_points`` full-resolution points, within 2% of the run, are
    one transition (a loss that climbs to its peak in a few short stages): the jump
    compares the segment before the first with the segment after the last."""
    cps = cur.cps(beta)
    y, n_ds = cur.ds_y, len(cur.ds_y)
    bounds = [0] + cps + [n_ds]
    wmax = max(5, n_ds // 20)

    def seg_len(a: int, b: int) -> int:
        return (cur.full_index(b) if b < n_ds else cur.n) - cur.full_index(a)

    groups: list[tuple[int, int]] = []                # (index of first cp, index of last cp)
    max_width = max(min_points, cur.n // 50)           # a sudden change: 2% of the run at most
    j = 0
    while j < len(cps):
        g = j
        while (g + 1 < len(cps) and seg_len(bounds[g + 1], bounds[g + 2]) < min_points
               and seg_len(cps[j], cps[g + 1]) <= max_width):
            g += 1
        groups.append((j, g))
        j = g + 1
    out = []
    idx = np.arange(n_ds, dtype=float)
    for j, g in groups:
        b, e = cps[j], cps[g]
        lo, hi = max(bounds[j], b - wmax), min(bounds[g + 2], e + wmax)
        nb, na = b - lo, hi - e
        if nb < 1 or na < 1:
            continue
        before, after = float(np.median(y[lo:b])), float(np.median(y[e:hi]))
        # both sides extrapolated to the middle of the transition: a ramp cut into short
        # segments is continuous there, a jump is not
        at = (b + e) / 2 - 0.5
        vb, _ = sg.linear_edge(idx[lo:b], y[lo:b], at)
        va, _ = sg.linear_edge(idx[e:hi], y[e:hi], at)
        # the noise around this jump: losses whose noise changes along the run (a diffusion
        # loss that calms down once it has settled) must not be judged by a calm stretch
        # (the noise of the stretch the loss came from: the new level may be the spike)
        local = sg.robust_noise(y[max(0, b - 2 * wmax):b])
        se = 1.25 * max(cur.ds_sigma, local) * math.sqrt(1.0 / nb + 1.0 / na)
        end = bounds[g + 2]
        n_after = (cur.full_index(end) if end < n_ds else cur.n) - cur.full_index(e)
        n_before = cur.full_index(b) - cur.full_index(bounds[j])
        k = cur.refine(b, up=after > before)
        out.append(Jump(b, k, int(cur.steps[k]), before, after, after - before, va - vb,
                        (after - before) / max(se, 1e-12), end, n_after, n_before, e))
    return out


def _jump_threshold(cur: Curve, p: Params) -> float:
    return math.log(p["min_ratio"]) if cur.mode == "log" else float(p["min_abs_jump"])


def _spike_candidates(cur: Curve, run: Run, p: Params) -> list[Jump]:
    thr = _jump_threshold(cur, p)
    g = sg._grad_accum(run)
    init = abs(float(np.median(cur.raw[: max(3, cur.n // 10)])))
    out = []
    for jp in level_jumps(cur, p["cp_penalty"], int(p["min_points"])):
        if jp.j_med < thr or jp.z < p["min_z"] or jp.j_lin < 0.5 * jp.j_med:
            continue
        if jp.n_after < p["min_points"] or jp.n_before < p["min_points"]:
            continue
        if cur.level(jp.after) - cur.level(jp.before) < p["min_rel_init"] * init:
            continue   # tiny in the loss's own scale (a memorised loss bouncing near zero)
        if cur.mode == "log" and g > 1 and abs(jp.j_med - math.log(g)) < math.log(1.15):
            continue   # logging switched to loss * grad_accum: a scale change, not a spike
        out.append(jp)
    return out


# loss.spike's catalog thresholds, for the rules that set spikes aside (oscillation, epoch_jump)
_DEFAULT_SPIKE = Params("loss.spike", {"params": {"min_ratio": 2.0, "min_abs_jump": 0.5, "min_z": 6.0,
                                                  "min_points": 3, "min_rel_init": 0.05,
                                                  "cp_penalty": 4.0}})


def disturbed_stretches(cur: Curve, run: Run, bounds: list[int], tol: int) -> list[tuple[int, int]]:
    """[start, end) full-resolution index ranges disturbed by a loss spike that does not
    start at an epoch boundary: from the first change point of the jump through the short
    segments that follow it (a spike is wild for a while: up, higher, down, up again) until
    the loss holds one level for a while again (a segment of ``max(3 * min_points, n/50)``
    points; the stretch ends at most ``n/20`` points after the jump's last change point)."""
    cands = _spike_candidates(cur, run, _DEFAULT_SPIKE)
    if not cands:
        return []
    cps = cur.cps(_DEFAULT_SPIKE["cp_penalty"])
    n_ds = len(cur.ds_y)
    edges = cps + [n_ds]

    def full(d: int) -> int:
        return cur.full_index(d) if d < n_ds else cur.n

    settle_len = max(3 * int(_DEFAULT_SPIKE["min_points"]), cur.n // 50)
    out = []
    for jp in cands:
        if bounds and min(abs(jp.step - b) for b in bounds) <= tol:
            continue           # a jump at a boundary is what epoch_jump measures
        last = jp.last_ds if jp.last_ds >= 0 else jp.ds
        t = edges.index(last) if last in edges else len(edges) - 1
        cap = full(last) + max(settle_len, cur.n // 20)
        while t + 1 < len(edges) and full(edges[t + 1]) - full(edges[t]) < settle_len \
                and full(edges[t + 1]) <= cap:
            t += 1
        out.append((min(full(jp.ds), jp.idx), full(edges[t])))
    return out


@rule("loss.spike", needs=("train_loss",))
def loss_spike(run: Run, p: Params) -> list[Finding]:
    """A sudden upward jump of the training-loss level, with or without recovery.

    ## What it detects
    A change point where the loss level (not a single noisy point) jumps up by at least
    `min_ratio` (log space; for losses near zero or negative, by `min_abs_jump`) and by
    `min_z` times its own noise. The title says whether the loss came back to its earlier
    level and when. Points logged as loss x grad_accum and level shifts that line up with
    epoch boundaries are left to other checks.

    ## Why it matters
    A spike means an update threw the adapter far from where it was: usually a learning
    rate too high for the batch, no gradient clipping, or a bad batch. Without recovery the
    rest of the run trained a damaged adapter; with recovery, steps were wasted and the
    checkpoint saved during the spike is bad.

    ## Example
    `loss/current` median 0.11 over steps 1000-1247 and 4.8 from step 1250 on.

    ## Fix
    Lower the learning rate (a fifth is a good first try), set `max_grad_norm = 1.0`, add
    warmup, and check the samples of the batch at the spike step.
    """
    s = run.primary("train_loss")
    cur = sg.prepare(s, run)
    if cur is None or cur.n < p["min_curve_points"]:
        return []
    cands = _spike_candidates(cur, run, p)
    ej = epoch_analysis(cur, run, params_for_epoch(p))
    if ej is not None and ej["fires"]:
        tol = ej["tol"]
        cands = [c for c in cands if min(abs(c.step - b) for b in ej["boundaries"]) > tol]
    if cands and cur.mode == "log":
        # waves of a loss that oscillates are not spikes unless far larger than the waves
        osc = oscillation_stats(cur, 3, run)
        if osc is not None and osc[0] >= 4.0 and osc[1] >= math.log1p(0.15):
            cands = [c for c in cands if c.j_med > 4 * osc[1]]
    if not cands:
        return []
    jp = cands[0]
    rec_thr = jp.before + (math.log(p["recover_ratio"]) if cur.mode == "log" else 0.3 * jp.j_med)
    sm = sg.rolling_median(cur.ds_y, 3)
    later = np.flatnonzero(sm[jp.ds + 1:] <= rec_thr)
    b_level, a_level = cur.level(jp.before), cur.level(jp.after)
    last = int(cur.steps[-1])
    lo_b = int(cur.steps[cur.full_index(max(0, jp.ds - max(5, len(cur.ds_y) // 20)))])
    ev = [f"{s.name} median {fmt(b_level)} over steps {lo_b}-{int(cur.steps[max(0, jp.idx - 1)])}, "
          f"{fmt(a_level)} from step {jp.step} ({_ratio_text(cur, jp.before, jp.after)}, "
          f"{fmt(jp.z)} times the noise)"]
    if len(later):
        r = jp.ds + 1 + int(later[0])
        rk = cur.refine(r, up=False) if r < len(cur.ds_y) else cur.n - 1
        rk = max(rk, jp.idx + 1) if jp.idx + 1 < cur.n else jp.idx
        rstep = int(cur.steps[min(rk, cur.n - 1)])
        title = (f"Loss jumped from {fmt(b_level)} to {fmt(a_level)} at step {jp.step} "
                 f"and recovered by step {rstep}")
        rng = [jp.step, rstep]
        ev.append(f"back below {fmt(cur.level(rec_thr))} from step {rstep}")
    else:
        title = (f"Loss jumped from {fmt(b_level)} to {fmt(a_level)} at step {jp.step} "
                 "and did not recover")
        rng = [jp.step, last]
        ev.append(f"median over the last steps {fmt(cur.level(float(np.median(cur.ds_y[-max(3, len(cur.ds_y) // 20):]))))}")
    if len(cands) > 1:
        ev.append(f"{len(cands) - 1} further jump(s) at steps {', '.join(str(c.step) for c in cands[1:6])}")
    return [p.finding(title, step=jp.step, step_range=rng, evidence=ev,
                      extra={"series": s.name, "change_points": [c.step for c in cands],
                             "recovered": bool(len(later))})]


# -- loss.divergence --------------------------------------------------------------------

@rule("loss.divergence", needs=("train_loss",))
def loss_divergence(run: Run, p: Params) -> list[Finding]:
    """The training loss trends upward or explodes after having decreased.

    ## What it detects
    After its lowest smoothed level (warmup excluded), the loss climbs and ends at least
    `min_ratio` times higher (for losses near zero or negative: `min_abs_rise` higher),
    well beyond its noise, and the climb is a trend rather than one sudden jump (that is
    `loss.spike`). The step is the onset of the climb: in a window around the minimum,
    the knot of a "flat or falling, then rising" two-piece line, or the first point of the
    new level when the climb starts with a step (flat, a jump, a new level) that fits better.

    ## Why it matters
    A diverging run gets worse with every step; checkpoints after the onset are worse than
    the one before it. Typical causes are a learning rate that is too high once warmup ends,
    no gradient clipping, or fp16 overflow.

    ## Example
    `train/loss` falls from 2.1 to 0.9 by step 600, then rises steadily to 3.5 at step 1500.

    ## Fix
    Lower the learning rate, set `max_grad_norm = 1.0`, use a decaying scheduler, and keep
    the checkpoint saved before the onset.
    """
    s = run.primary("train_loss")
    cur = sg.prepare(s, run)
    if cur is None or cur.n < p["min_curve_points"]:
        return []
    y, n_ds = cur.ds_y, len(cur.ds_y)
    i0 = sg.warmup_index(cur, run, p["warmup_frac"])
    d0 = int(np.searchsorted(cur.ds_starts, i0))
    w = max(3, n_ds // 20)
    if n_ds - d0 < 2 * w:
        return []
    sm = sg.rolling_median(y, w)
    imin = d0 + int(np.argmin(sm[d0:]))
    we = max(3, n_ds // 20)
    if n_ds - imin < we + 2:
        return []
    lvl_min = float(sm[imin])
    lvl_end = float(np.median(y[-we:]))
    rise = lvl_end - lvl_min
    thr = math.log(p["min_ratio"]) if cur.mode == "log" else float(p["min_abs_rise"])
    se = 1.25 * cur.ds_sigma * math.sqrt(1.0 / we + 1.0 / w)
    if rise < thr or rise < p["min_z"] * se:
        return []
    ej = epoch_analysis(cur, run, params_for_epoch(p))
    if ej is not None and ej["fires"] and ej["direction"] == "up":
        return []      # a staircase of epoch-boundary rises: loss.epoch_jump reports it
    if cur.mode == "log":
        osc = oscillation_stats(cur, 3, run)
        if osc is not None and osc[0] >= 4.0 and rise < 4 * osc[1]:
            return []  # the end of a wave, not a trend: loss.oscillation reports it
    # one sudden jump that explains most of the rise is a spike, not a trend
    sp = _spike_params(p)
    for jp in level_jumps(cur, p["cp_penalty"]):
        if jp.ds > imin and jp.j_med >= 0.6 * rise and jp.j_lin >= 0.5 * jp.j_med:
            if jp.j_med >= _jump_threshold(cur, sp) or cur.mode == "linear":
                return []
    # the fit starts once the early decay is over (within a fifth of the rise of the min)
    near = np.flatnonzero(sm[d0:imin + 1] <= lvl_min + 0.2 * rise)
    lo = min(d0 + int(near[0]) if len(near) else imin, max(d0, imin - 2))
    xs = cur.ds_steps.astype(float)
    # (a quarter of the rise: a loss that climbs in stages starts with its first step)
    onset_ds = sg.climb_onset(xs, y, sm, imin, rise, lo, w, frac=0.25)
    onset = int(cur.ds_steps[onset_ds])
    peak_i = int(np.argmax(sm[imin:])) + imin
    was_down = float(np.median(y[:w])) - lvl_min
    ev = [f"{s.name} smoothed minimum {fmt(cur.level(lvl_min))} at step {int(cur.ds_steps[imin])}, "
          f"{fmt(cur.level(lvl_end))} over the last {max(1, cur.n // 20)} points "
          f"({_ratio_text(cur, lvl_min, lvl_end)})",
          f"climb starts near step {onset}; highest smoothed level {fmt(cur.level(float(sm[peak_i])))} "
          f"at step {int(cur.ds_steps[peak_i])}"]
    if was_down > 0:
        ev.append(f"before that it had fallen from {fmt(cur.level(float(np.median(y[:w]))))}")
    title = (f"Loss diverged from step {onset}: rose from {fmt(cur.level(lvl_min))} to "
             f"{fmt(cur.level(lvl_end))}")
    return [p.finding(title, step=onset, step_range=[onset, int(cur.steps[-1])], evidence=ev,
                      extra={"series": s.name, "change_points": [onset]})]


def _spike_params(p: Params) -> Params:
    return Params("loss.spike", {"params": {"min_ratio": p.get("spike_min_ratio", 2.0),
                                            "min_abs_jump": p.get("min_abs_rise", 0.5)}})


# -- loss.plateau -----------------------------------------------------------------------

_PREF_SERIES = ("reward", "accuracies", "accuracy", "logps", "margins", "chosen", "rejected")


def _preference_loss(run: Run, cur: Curve) -> bool:
    """A DPO-style sigmoid preference loss: it starts at ln 2 = 0.693 (chosen and rejected
    scored alike) and the run logs preference metrics (rewards/accuracies, logps, ...).
    Such a loss need not fall far; "never decreased" is no finding for it."""
    init = float(np.median(cur.raw[: max(3, cur.n // 30)]))
    if not 0.6 <= init <= 0.8:
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
    DPO-style loss that starts at ln 2 in a run that logs preference metrics. Diffusion
    (image) LoRA losses are dominated by the random noise timestep and often look flat in
    healthy runs; for them the finding is only `sd_severity`.

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
    s = run.primary("train_loss")
    cur = sg.prepare(s, run)
    if cur is None or cur.n < p["min_curve_points"] or cur.mode != "log":
        return []
    if _preference_loss(run, cur):
        return []
    y, n_ds = cur.ds_y, len(cur.ds_y)
    w = max(3, n_ds // 10)
    wi = max(5, n_ds // 30)          # the initial level: the first 3% (an early drop counts)
    ws = max(3, n_ds // 5)
    d0 = min(int(np.searchsorted(cur.ds_starts, sg.warmup_index(cur, run, p["warmup_frac"]))),
             max(0, n_ds - 2 * w))
    init = float(np.median(y[d0:d0 + wi]))
    sm = sg.rolling_median(y, ws)
    # only where the median window lies inside the curve: at the edges it is padded with
    # copies of the first / last point, and one low last point would be "the best level"
    a, b = d0 + max(w // 2, ws // 2), n_ds - ws // 2
    if b <= a:
        a, b = d0 + w // 2, n_ds
    best_i = a + int(np.argmin(sm[a:b]))
    best = float(sm[best_i])
    end = float(np.median(y[-w:]))
    drop = init - best
    se = 1.25 * cur.ds_sigma * math.sqrt(1.0 / wi + 1.0 / ws)
    # a decrease below min_decrease never counts; one within the noise counts only when it
    # is also below significant_decrease
    need = max(math.log1p(p["min_decrease"]),
               min(p["min_z"] * se, math.log1p(p["significant_decrease"])))
    if drop >= need or end - init > math.log1p(p["significant_decrease"]):
        return []      # it decreased, or it rose (loss.divergence / loss.epoch_jump)
    sev = None
    if drop >= math.log1p(p["min_decrease"]):
        # it did decrease a little, but not clearly beyond its noise: less sure
        sev = p.get("noisy_severity", "warning")
    if run.task == "sd":
        sev = p.get("sd_severity", "info")
    if sev == "off":
        return []
    first, last = int(cur.steps[0]), int(cur.steps[-1])
    ev = [f"{s.name} median {fmt(cur.level(init))} over the first {max(1, cur.n * wi // n_ds)} points, "
          f"best smoothed level {fmt(cur.level(best))} at step {int(cur.ds_steps[best_i])}, "
          f"{fmt(cur.level(end))} at the end",
          f"decrease {fmt(100 * (1 - math.exp(-drop)))}%, needed {fmt(100 * (1 - math.exp(-need)))}% "
          f"(noise of one point {fmt(100 * cur.sigma)}%)"]
    if run.task == "sd":
        ev.append("diffusion LoRA losses are dominated by the random timestep and often stay flat in healthy runs")
    title = f"Loss never decreased: {fmt(cur.level(init))} at the start, {fmt(cur.level(best))} at its best"
    # the fix follows the run's evidence: a learning-rate change cannot help a model whose
    # pretrained weights never loaded or an adapter with nothing trainable in it
    fix: dict = {}
    kinds = {e.kind for e in run.events}
    blocked = [k for k in ("base_model_not_loaded", "no_trainable_params") if k in kinds]
    lr = run.config.get("learning_rate")
    target = p.get("fix_learning_rate", 2e-4)
    if blocked:
        ev.append(f"the trainer's log shows {' and '.join(k.replace('_', ' ') for k in blocked)}: "
                  "no learning-rate change is suggested")
    elif not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr < target:
        fix["learning_rate"] = target
    return [p.finding(title, severity=sev, step=first, step_range=[first, last], evidence=ev,
                      fix=fix, extra={"series": s.name, "change_points": []})]


# -- loss.oscillation -------------------------------------------------------------------

def _wave_power_score(r: np.ndarray, W: int, min_cycles: int, epoch_period: float | None = None) -> float:
    """A periodic wave in a residual, on the scale of the smoother score (4 = clear).

    The periodogram of white noise has exponential ordinates around its mean; a sine of
    amplitude A over m points puts m*A^2/4 into one ordinate. The strongest ordinate with
    a period between 8 points and the trend width ``W`` (at least ``min_cycles`` waves;
    slow waves: a loss alternating between two levels at every log entry is not this)
    is compared with the median of its 16 neighbours on each side (a local level, so that
    red noise - a loss wandering slowly - is not mistaken for a wave), as the equivalent
    4 * sqrt(P / (30 * local mean)): 4 is a peak 30 times the mean noise power around it
    (white noise gets there with probability about e^-30 per ordinate: never)."""
    m = len(r)
    if m < 24:
        return 0.0
    P = np.abs(np.fft.rfft(r - np.mean(r))) ** 2
    f = np.arange(len(P)) / m                          # cycles per point
    keep = (f >= max(min_cycles / m, 1.0 / max(W, 8))) & (f <= 0.125)
    if epoch_period:
        # a pattern that repeats every epoch (a staircase, data in a fixed order) is
        # loss.epoch_jump's business, not an oscillation
        for h in (1, 2):
            keep &= np.abs(f * epoch_period / h - 1.0) > 0.1
    band = np.flatnonzero(keep)
    if len(band) == 0:
        return 0.0
    j = int(band[np.argmax(P[band])])
    nb = np.r_[P[max(1, j - 17):max(1, j - 1)], P[j + 2:j + 18]]
    if len(nb) < 8:
        return 0.0
    local = float(np.median(nb)) / math.log(2.0)
    return 4.0 * math.sqrt(float(P[j]) / max(30.0 * local, 1e-300))


def oscillation_stats(cur: Curve, min_cycles: int, run: Run | None = None):
    """(score, amp, crossings, width, lo, hi) of the strongest wave pattern, or None."""
    y, n_ds = cur.ds_y, len(cur.ds_y)
    if n_ds < 40:
        return None
    from scipy.ndimage import uniform_filter1d
    noise = cur.ds_sigma
    lo, hi = int(0.1 * n_ds), int(0.95 * n_ds)
    best = None
    ep = None
    if run is not None and len(run.epoch_boundaries) >= 2 and n_ds > 1:
        per_pt = float(np.median(np.diff(cur.ds_steps)))
        if per_pt > 0:
            ep = float(np.median(np.diff(sorted(run.epoch_boundaries)))) / per_pt
    for div in (40, 20, 10, 5):
        W = max(5, n_ds // div)
        trend = uniform_filter1d(sg.rolling_median(y, 3), W, mode="nearest")
        r = (y - trend)[lo:hi]
        k = max(3, W // 6)
        rs = sg.rolling_median(r, k)
        amp = float(np.subtract(*np.percentile(rs, [90, 10]))) / 2.56
        # count sign changes with hysteresis
        state, crossings = 0, 0
        for v in rs[:: max(1, k // 3)]:
            if v > 0.5 * amp and state <= 0:
                crossings += state != 0
                state = 1
            elif v < -0.5 * amp and state >= 0:
                crossings += state != 0
                state = -1
        # what white noise would leave after the same smoothing: the high-frequency part
        # removed by the smoother, scaled down by sqrt(k)
        hf = r - rs
        s_hf = 1.4826 * float(np.median(np.abs(hf - np.median(hf))))
        score = amp / max(1.25 * max(s_hf, 0.5 * noise) / math.sqrt(k), 1e-12)
        score = max(score, _wave_power_score(y[lo:hi] - trend[lo:hi], W, min_cycles, ep))
        if crossings >= 2 * min_cycles and (best is None or score > best[0]):
            best = (score, amp, crossings, W)
    if best is None:
        return None
    return best + (lo, hi)


def _wave_matches_epochs(cur: Curve, run: Run, crossings: int, lo: int, hi: int) -> bool:
    """A staircase at epoch boundaries leaves waves of the epoch's period (or of half of
    it) in the residual of a moving-average trend; waves far faster or slower than that
    are an oscillation of their own, whatever the epoch test says."""
    bounds = sorted(run.epoch_boundaries)
    if len(bounds) < 1 or crossings < 2 or len(cur.ds_steps) < 2:
        return True
    per_pt = float(np.median(np.diff(cur.ds_steps)))
    epoch = (float(np.median(np.diff(bounds))) if len(bounds) >= 2
             else float(bounds[0] - cur.ds_steps[0]))
    period = 2.0 * (hi - lo) * per_pt / crossings     # steps per wave
    return 0.35 * epoch <= period <= 2.0 * epoch


@rule("loss.oscillation", needs=("train_loss",))
def loss_oscillation(run: Run, p: Params) -> list[Finding]:
    """The training loss swings far more than its trend and its noise explain.

    ## What it detects
    Slow, repeated swings around the trend: the smoothed residual around a moving-average
    trend (several widths are tried) is at least `min_noise_ratio` times the point-to-point
    noise, at least `min_swing` in relative size, and crosses the trend at least
    `min_cycles` times up and down. Losses near zero or negative are not judged. Waves
    with about the epoch's period (a third of it to twice it) are left to
    `loss.epoch_jump` when that fires.

    ## Why it matters
    A loss that rises and falls by large amounts in waves usually means the learning rate is
    too high for the batch size (the optimiser overshoots back and forth), a cyclic schedule
    with too large a peak, or data that is not shuffled (the loss follows the data order).

    ## Example
    `train/loss` swings between 0.6 and 1.4 every ~200 steps while its trend falls slowly
    from 1.2 to 0.9.

    ## Fix
    Lower the learning rate or raise the effective batch (`grad_accum`), and make sure the
    dataset is shuffled.
    """
    s = run.primary("train_loss")
    cur = sg.prepare(s, run)
    if cur is None or cur.n < p["min_curve_points"] or cur.mode != "log":
        return []
    st = oscillation_stats(cur, p["min_cycles"], run)
    if st is None:
        return []
    score, amp, crossings, W, lo, hi = st
    ej = epoch_analysis(cur, run, params_for_epoch(p))
    if ej is not None and ej["fires"] and _wave_matches_epochs(cur, run, crossings, lo, hi):
        return []      # a staircase at epoch boundaries: loss.epoch_jump reports it
    if score < p["min_noise_ratio"] or amp < math.log1p(p["min_swing"]):
        return []
    # a jump of the level far larger than the swings leaves waves in the residual of a
    # moving-average trend: that is loss.spike's finding, not an oscillation
    if any(c.j_med > 4 * amp for c in _spike_candidates(cur, run, _DEFAULT_SPIKE)):
        return []
    first, last = int(cur.steps[0]), int(cur.steps[-1])
    start = int(cur.ds_steps[lo])
    pct = 100 * (math.exp(amp) - 1)
    ev = [f"{s.name} swings about +/-{fmt(pct)}% around its moving-average trend "
          f"({crossings} crossings of the trend between steps {start} and {int(cur.ds_steps[hi - 1])})",
          f"that is {fmt(score)} times its point-to-point noise"]
    return [p.finding(f"Loss oscillates: swings of about +/-{fmt(pct)}% around its trend",
                      step=start, step_range=[first, last], evidence=ev,
                      extra={"series": s.name, "change_points": []})]


# -- loss.epoch_jump --------------------------------------------------------------------

def params_for_epoch(p: Params) -> dict:
    """Epoch-jump thresholds as seen from another rule's Params (defaults if absent)."""
    return {"min_ratio": p.get("epoch_min_ratio", 1.15), "min_z": p.get("epoch_min_z", 5.0),
            "min_fraction": p.get("epoch_min_fraction", 0.5)}


def epoch_analysis(cur: Curve, run: Run, q: dict) -> dict | None:
    st = cur.steps
    bounds = sorted({int(b) for b in run.epoch_boundaries if st[0] < b <= st[-1]})
    if not bounds or cur.n < 10:
        return None
    edges = [0] + [int(np.searchsorted(st, b)) for b in bounds] + [cur.n]
    thr = math.log(q["min_ratio"]) if cur.mode == "log" else None
    y = cur.y
    x = st.astype(float)

    span = _span(cur)
    tol = max(int(0.01 * span), int(np.median(np.diff(st))) if cur.n > 1 else 1, 1)
    # the stretch right after a spike is no epoch effect: a boundary inside it is not
    # judged, and no window reaches into it
    dist = disturbed_stretches(cur, run, bounds, tol)

    def jump_at(i: int, lo: int, hi: int):
        for a, b in dist:
            if a <= i < b:
                return None
            if b <= i:
                lo = max(lo, b)
            elif a > i:
                hi = min(hi, a)
        side = min(i - lo, hi - i, 8000)
        if side < 3:
            return None
        at = (x[i - 1] + x[i]) / 2
        vb, sb = edge(i - side, i, at)
        va, sa = edge(i, i + side, at)
        w = side
        j = va - vb
        se = max(math.hypot(sb, sa), 1e-12)
        sig = abs(j) >= zmin * se and (thr is None or abs(j) >= thr)
        return j, se, sig, w

    def edge(a: int, b: int, at: float) -> tuple[float, float]:
        """The level at ``at`` from a line through y[a:b] (one side of a boundary). The
        line through every point of the side is the most precise, but where the curve
        bends (an early decay) it misses the edge: then the line through the half of the
        side nearest the boundary is used. The two disagree beyond their noise when the
        far half bends the line (nested estimates: the variance of their difference is
        about the difference of their variances)."""
        m = b - a
        vf, sf = sg.linear_edge(x[a:b], y[a:b], at)
        if m < 12:
            return vf, sf
        h = m // 2
        ha, hb = (b - h, b) if b <= at else (a, a + h)
        vh, sh = sg.linear_edge(x[ha:hb], y[ha:hb], at)
        if abs(vf - vh) > 1.0 * math.sqrt(max(sh * sh - sf * sf, 0.0)):
            return vh, sh
        return vf, sf

    # one boundary alone could be chance: ask more of it
    zmin = q["min_z"] * (1.5 if len(bounds) == 1 else 1.0)
    res = []
    for k, b in enumerate(bounds):
        r = jump_at(edges[k + 1], edges[k], edges[k + 2])
        if r is not None:
            res.append((b, edges[k + 1]) + r)
    ctrl = []
    for k in range(len(edges) - 1):
        lo, hi = edges[k], edges[k + 1]
        m = (lo + hi) // 2
        r = jump_at(m, lo, hi) if hi - lo >= 12 else None
        if r is not None:
            ctrl.append(r)
    if not res:
        return None
    ups = [r for r in res if r[4] and r[2] > 0]
    downs = [r for r in res if r[4] and r[2] < 0]
    main = ups if len(ups) >= len(downs) else downs
    ctrl_sig = sum(1 for c in ctrl if c[2]) / max(1, len(ctrl))
    need = max(1, math.ceil(q["min_fraction"] * len(res)))
    fires = len(main) >= need and ctrl_sig <= 0.25

    def pooled(rs):
        """z of the summed jumps: one shift repeated at k boundaries is sqrt(k) times
        clearer than any one of them."""
        return sum(r[0] for r in rs) / max(math.sqrt(sum(r[1] ** 2 for r in rs)), 1e-12)

    z_all = pooled([r[2:4] for r in res])
    if not fires and len(res) >= 2 and abs(z_all) >= q["min_z"]:
        # no single boundary is clear but together they are: the same direction at
        # min_fraction of them, a mean shift of min_ratio, and quiet mid-epoch controls
        sign = 1.0 if z_all > 0 else -1.0
        same = [r for r in res if sign * r[2] > 0]
        mean_j = sum(r[2] for r in res) / len(res)
        z_ctrl = pooled([c[:2] for c in ctrl]) if ctrl else 0.0
        if (len(same) >= need and (thr is None or abs(mean_j) >= thr) and ctrl_sig <= 0.25
                and abs(z_ctrl) < 0.5 * q["min_z"]):
            fires, main = True, same
            ups = same if sign > 0 else []
    return {"fires": fires, "jumps": main, "all": res, "boundaries": bounds, "ctrl_sig": ctrl_sig,
            "z_pooled": z_all,
            "tol": tol, "direction": "up" if main is ups else "down", "disturbed": dist}


def _running_average_artifact(cur: Curve, run: Run, name: str, bounds_idx: list[int]) -> bool:
    if run.loss_is_running_average:
        return True
    low = name.lower()
    if "average" in low or "avg" in low or "ema" in low.split("/"):
        return True
    # a running mean that restarts each epoch is much noisier in its first points
    early, late = [], []
    edges = [0] + bounds_idx + [cur.n]
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = hi - lo
        if m < 20:
            continue
        d = np.diff(cur.y[lo:hi])
        early.extend(np.abs(d[: m // 10]))
        late.extend(np.abs(d[m // 2:]))
    if len(early) >= 5 and len(late) >= 5:
        return float(np.median(early)) > 4 * max(float(np.median(late)), 1e-12)
    return False


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
    s = run.primary("train_loss")
    cur = sg.prepare(s, run)
    if cur is None or cur.n < p["min_curve_points"]:
        return []
    q = {"min_ratio": p["min_ratio"], "min_z": p["min_z"], "min_fraction": p["min_fraction"]}
    ej = epoch_analysis(cur, run, q)
    if ej is None or not ej["fires"]:
        return []
    jumps = ej["jumps"]
    b0 = jumps[0][0]
    idx_bounds = [r[1] for r in ej["all"]]
    artifact = _running_average_artifact(cur, run, s.name, idx_bounds)
    sev = p.get("artifact_severity", "info") if artifact else None
    if sev == "off":
        return []
    word = "rises" if ej["direction"] == "up" else "drops"
    wing = "rising" if ej["direction"] == "up" else "dropping"
    ev = []
    for b, i, j, se, _sig, _w in jumps[:5]:
        ev.append(f"step {b}: {fmt(cur.level(float(np.median(cur.y[max(0, i - 5):i]))))} before, "
                  f"{fmt(cur.level(float(np.median(cur.y[i:i + 5]))))} after "
                  f"(level {'x' if cur.mode == 'log' else '+'}"
                  f"{fmt(math.exp(j) if cur.mode == 'log' else j)}, {fmt(abs(j) / se)} standard errors)")
    ev.insert(0, f"{len(jumps)} of {len(ej['all'])} epoch boundaries show the loss level {wing} "
                 f"(mid-epoch controls: {fmt(100 * ej['ctrl_sig'])}% significant)")
    if len(ej["all"]) >= 2:
        ev.insert(1, f"all boundaries together: {fmt(abs(ej['z_pooled']))} standard errors")
    if artifact:
        ev.append(f"{s.name} is a running average that restarts each epoch: the jump is a logging "
                  "artifact, not a change in training")
        title = f"Loss {word} at {len(jumps)} epoch boundaries (running-average reset, a logging artifact)"
    else:
        title = f"Loss {word} at {len(jumps)} of {len(ej['all'])} epoch boundaries, first at step {b0}"
    return [p.finding(title, severity=sev, step=b0, step_range=[b0, jumps[-1][0]], evidence=ev,
                      extra={"series": s.name, "change_points": [r[0] for r in jumps],
                             "direction": ej["direction"], "artifact": artifact})]
