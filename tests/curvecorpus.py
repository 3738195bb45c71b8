"""A labelled corpus of training curves with known truth, for the curve rules.

Each :class:`Case` is a hand-free :class:`~lorascope.model.Run` made by a generator with a
fault injected at a known step (or none), and the truth: which curve rules must fire and
the window of steps their finding's ``step`` must fall in (one logging interval around a
change point; the episode's extent for a gradual one).

The generators cover the failure classes users meet (a loss that climbs from its first
points, a climb after a fall, a blow-up that partly recovers, short spikes of 1-3 logged
points, a jump that stays, oscillation, a plateau, NaN at one step or for good, NaN hidden
by HF's logging filter, fp16 skipped steps, an exploding gradient norm, overfitting seen
with few evaluations or in named eval sets, epoch-boundary staircases) and healthy curves
that look alarming to a naive test (warmup bumps, SGDR restarts, diffusion per-step
noise, preference / RL losses near zero, short runs, long multi-epoch runs). Lengths run
from 10 to 1M logged points, logging intervals from 1 to 50 steps, and the noise from a
smooth averaged LLM loss (0.5-8% per point) to a diffusion per-step loss (a broad,
heavy-tailed spread across timesteps).

Used by ``bench/bench_curves.py`` (precision / recall per rule) and by the test suite (a
fixed, smaller sample).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lorascope.build import role_of
from lorascope.model import Config, Run, Series, StepInfo

# The curve rules scored by the corpus. A finding counts when its severity is at least
# warning, except for rules whose default is info (they count at any severity).
CURVE_RULES = ("loss.nonfinite", "loss.spike", "loss.divergence", "loss.plateau",
               "loss.oscillation", "loss.epoch_jump", "overfit", "grad.explosion",
               "grad.nonfinite")
INFO_RULES = ("grad.nonfinite",)


@dataclass
class Case:
    name: str
    family: str
    run: Run
    truth: dict[str, tuple[int, int]] = field(default_factory=dict)   # rule -> step window
    alt: dict[str, tuple[int, int]] = field(default_factory=dict)     # also acceptable
    n: int = 0
    interval: int = 1
    noise: str = "avg"


# -- building blocks -------------------------------------------------------------------

def _steps(n: int, interval: int, first: int | None = None) -> np.ndarray:
    f = interval if first is None else first
    return (f + interval * np.arange(n)).astype(np.int64)


def _decay(rng, n: int, *, warmup: bool | None = None) -> np.ndarray:
    """A healthy LLM loss level (natural units): a + b*exp(-t/tau), maybe a warmup bump."""
    t = np.arange(n, dtype=float)
    a = rng.uniform(0.3, 1.6)
    b = a * rng.uniform(0.5, 3.0)
    tau = max(1.0, n * rng.uniform(0.03, 0.3))
    lvl = a + b * np.exp(-t / tau)
    if warmup is None:
        warmup = rng.random() < 0.5
    if warmup and n >= 30:
        wu = max(2, int(rng.uniform(0.02, 0.05) * n))
        lvl[:wu] *= 1 + rng.uniform(0.02, 0.2) * np.sin(np.linspace(0, np.pi, wu))
    return lvl


def _avg_noise(rng, n: int, sigma: float | None = None) -> np.ndarray:
    """Multiplicative noise of a loss averaged over a logging window."""
    s = rng.uniform(0.005, 0.08) if sigma is None else sigma
    e = rng.normal(0, s, n)
    # rare hard batches: up to x1.5
    k = rng.random(n) < 0.01
    e[k] += np.abs(rng.normal(0, 0.15, int(k.sum())))
    return np.exp(e)


def _sd_noise(rng, n: int) -> np.ndarray:
    """A diffusion per-step loss: the random timestep spreads it over an order of magnitude,
    with a heavy upper tail."""
    s = rng.uniform(0.3, 0.6)
    e = np.exp(rng.normal(0, s, n))
    k = rng.random(n) < 0.03
    e[k] *= rng.uniform(1.5, 4.0, int(k.sum()))
    return e


def _sd_level(rng, n: int) -> np.ndarray:
    t = np.arange(n, dtype=float)
    base = rng.uniform(0.04, 0.25)
    return base * (1 - rng.uniform(0, 0.2) * (1 - np.exp(-t / max(1.0, 0.3 * n))))


def _run(name: str, loss_steps, loss, *, task="llm", loss_name="train/loss", evals=(),
         grad=None, grad_steps=None, bounds=(), config=None, lr=None, extra=()) -> Run:
    series = [Series(loss_name, role_of(loss_name), np.asarray(loss_steps, dtype=np.int64),
                     np.asarray(loss, dtype=float))]
    for ename, est, ev in evals:
        series.append(Series(ename, role_of(ename), np.asarray(est, dtype=np.int64),
                             np.asarray(ev, dtype=float)))
    if grad is not None:
        gs = loss_steps if grad_steps is None else grad_steps
        series.append(Series("train/grad_norm", "grad_norm", np.asarray(gs, dtype=np.int64),
                             np.asarray(grad, dtype=float)))
    if lr is not None:
        series.append(Series("train/learning_rate", "lr", np.asarray(loss_steps, dtype=np.int64),
                             np.asarray(lr, dtype=float)))
    series.extend(extra)
    st = np.asarray(loss_steps)
    last = int(st[-1])
    return Run(path=name, name=name, task=task, series=series,
               config=Config(values=dict(config or {})), epoch_boundaries=list(bounds),
               steps=StepInfo(int(st[0]), last, last))


def _healthy_grad(rng, n: int) -> np.ndarray:
    t = np.arange(n)
    lvl = 0.5 * (1 + 2 * np.exp(-t / max(1.0, 0.1 * n)))
    return lvl * np.exp(rng.normal(0, 0.25, n))


def _pick(rng, xs):
    return xs[int(rng.integers(len(xs)))]


def _after_warmup(rng, n: int, lo: float = 0.2, hi: float = 0.8) -> int:
    return int(rng.uniform(lo, hi) * n)


# -- healthy ---------------------------------------------------------------------------

def healthy_llm(rng, n, interval):
    st = _steps(n, interval)
    loss = _decay(rng, n) * _avg_noise(rng, n)
    grad = _healthy_grad(rng, n) if rng.random() < 0.5 else None
    return _run("healthy_llm", st, loss, grad=grad), {}


def healthy_sgdr(rng, n, interval):
    """Cosine with restarts: each restart of the learning rate bumps the loss a little."""
    st = _steps(n, interval)
    lvl = _decay(rng, n)
    k = int(rng.integers(2, 5))
    for c in range(1, k):
        i0 = c * n // k
        w = max(2, n // (8 * k))
        bump = rng.uniform(0.05, 0.25)
        t = np.arange(n - i0)
        lvl[i0:] *= 1 + bump * np.exp(-t / w) * np.minimum(1, (t + 1) / 2)
    return _run("healthy_sgdr", st, lvl * _avg_noise(rng, n)), {}


def healthy_sd(rng, n, interval):
    st = _steps(n, interval)
    loss = _sd_level(rng, n) * _sd_noise(rng, n)
    spe = max(2, n // int(rng.integers(2, 10)))
    bounds = [int(st[i]) for i in range(spe, n, spe)]
    return _run("healthy_sd", st, loss, task="sd", loss_name="loss/current", bounds=bounds), {}


def healthy_short(rng, n, interval):
    n = int(rng.integers(10, 30))
    st = _steps(n, interval)
    loss = _decay(rng, n, warmup=False) * _avg_noise(rng, n, rng.uniform(0.005, 0.04))
    return _run("healthy_short", st, loss), {}


def healthy_pref(rng, n, interval):
    """DPO (starts at ln 2, falls) or GRPO (near zero, both signs, occasional jumps)."""
    st = _steps(n, interval)
    if rng.random() < 0.5:
        t = np.arange(n)
        lvl = 0.693 - rng.uniform(0.1, 0.5) * (1 - np.exp(-t / max(1.0, 0.2 * n)))
        loss = lvl + rng.normal(0, rng.uniform(0.02, 0.1), n)
        rw = rng.normal(0.5, 0.2, n)
        return _run("healthy_pref", st, loss,
                    extra=[Series("train/rewards/accuracies", "other", st, rw)]), {}
    loss = rng.normal(0, rng.uniform(0.001, 0.05), n)
    k = rng.random(n) < 0.02
    loss[k] += rng.normal(0, 0.2, int(k.sum()))
    return _run("healthy_pref", st, loss), {}


def healthy_epochs(rng, n, interval):
    """Several epochs, a smooth decay, no shift at the boundaries; eval falls with it."""
    st = _steps(n, interval)
    ne = int(rng.integers(2, 12))
    spe = max(2, n // ne)
    bounds = [int(st[i]) for i in range(spe, n, spe)]
    lvl = _decay(rng, n)
    loss = lvl * _avg_noise(rng, n)
    ne_ev = int(rng.integers(4, 30))
    ei = np.linspace(n // ne_ev, n - 1, ne_ev).astype(int)
    ev = lvl[ei] * 1.1 * np.exp(rng.normal(0, 0.005, ne_ev))
    return _run("healthy_epochs", st, loss, bounds=bounds,
                evals=[("eval/loss", st[ei], ev)]), {}


def healthy_eval_plateau(rng, n, interval):
    """Eval loss flattens (a few tenths of a percent up and down) while train falls."""
    st = _steps(n, interval)
    lvl = _decay(rng, n)
    loss = lvl * _avg_noise(rng, n)
    ne_ev = int(rng.integers(5, 20))
    ei = np.linspace(n // ne_ev, n - 1, ne_ev).astype(int)
    ev = (lvl[ei] * 1.15 + 0.02 * lvl[-1]) * np.exp(rng.normal(0, 0.01, ne_ev))
    ev = np.maximum(ev, np.minimum.accumulate(ev) * 1.0)
    return _run("healthy_eval_plateau", st, loss, evals=[("eval/loss", st[ei], ev)]), {}


# -- faults ----------------------------------------------------------------------------

def div_start(rng, n, interval):
    """Constant lr far too high: the loss climbs from its first logged points."""
    n = min(n, int(rng.integers(10, 400)))
    st = _steps(n, interval)
    g = math.log(rng.uniform(3, 30))
    t = np.arange(n) / max(1, n - 1)
    shape = t ** rng.uniform(0.5, 1.5)
    loss = rng.uniform(0.8, 2.5) * np.exp(g * shape) * _avg_noise(rng, n, rng.uniform(0.01, 0.08))
    return _run("div_start", st, loss, config={"learning_rate": 5e-3}), {
        "loss.divergence": (int(st[0]), int(st[max(1, n // 3)]))}


def div_after(rng, n, interval, sd=False):
    if sd:
        n = max(n, 50)       # a diffusion per-step loss is judged on 50 points or more
    st = _steps(n, interval)
    t0 = _after_warmup(rng, n, 0.2, 0.7)
    base = _sd_level(rng, n) if sd else _decay(rng, n)
    base = base.copy()
    base[t0:] = base[t0]                          # the decay is over by the onset
    g = math.log(rng.uniform(2.0, 10.0) if not sd else rng.uniform(3.0, 10.0))
    u = np.arange(n - t0) / max(1, n - 1 - t0)
    base[t0:] *= np.exp(g * u ** rng.uniform(0.7, 1.5))
    noise = _sd_noise(rng, n) if sd else _avg_noise(rng, n)
    loss = base * noise
    span = int(st[-1] - st[t0])
    lo = int(st[t0]) - max(interval, int(0.05 * (st[-1] - st[0])))
    return _run("div_after_sd" if sd else "div_after", st, loss, task="sd" if sd else "llm",
                loss_name="loss/current" if sd else "train/loss"), {
        "loss.divergence": (lo, int(st[t0]) + span // 2)}


def spike_short(rng, n, interval):
    st = _steps(n, interval)
    n = len(st)
    t0 = _after_warmup(rng, n, 0.15, 0.95)
    k = int(rng.integers(1, 4))
    k = min(k, n - t0)
    loss = _decay(rng, n) * _avg_noise(rng, n, rng.uniform(0.005, 0.05))
    loss[t0:t0 + k] *= rng.uniform(8, 40)
    return _run("spike_short", st, loss), {
        "loss.spike": (int(st[t0]) - interval, int(st[min(n - 1, t0 + k)]))}


def jump_stay(rng, n, interval, sd=False):
    if sd:
        n = max(n, 50)
    st = _steps(n, interval)
    t0 = _after_warmup(rng, n, 0.2, 0.85)
    base = _sd_level(rng, n) if sd else _decay(rng, n)
    r = rng.uniform(4, 20) if sd else rng.uniform(2.5, 10)
    base = base.copy()
    base[t0:] *= r
    noise = _sd_noise(rng, n) if sd else _avg_noise(rng, n)
    return _run("jump_stay_sd" if sd else "jump_stay", st, base * noise, task="sd" if sd else "llm",
                loss_name="loss/current" if sd else "train/loss"), {
        "loss.spike": (int(st[t0]) - 2 * interval, int(st[min(n - 1, t0 + 2)]))}


def blowup_partial(rng, n, interval):
    """After warmup the loss triples over ~15 points, takes 100+ points to come back and
    ends 10-40% above its earlier level; the eval loss follows it."""
    n = max(n, 400)
    st = _steps(n, interval)
    t0 = _after_warmup(rng, n, 0.15, 0.5)
    m = int(rng.integers(8, 25))
    rec = int(rng.integers(100, max(101, min(400, n - t0 - m - 10))))
    peak = math.log(rng.uniform(2.5, 5.0))
    end = math.log(rng.uniform(1.1, 1.4))
    lvl = _decay(rng, n)
    lvl[t0:] = lvl[t0]
    f = np.zeros(n)
    f[t0:t0 + m] = np.linspace(0, peak, m)
    r_end = min(n, t0 + m + rec)
    f[t0 + m:r_end] = np.linspace(peak, end, r_end - t0 - m)
    f[r_end:] = end
    loss = lvl * np.exp(f) * _avg_noise(rng, n, rng.uniform(0.005, 0.05))
    ne_ev = 20
    ei = np.linspace(n // ne_ev, n - 1, ne_ev).astype(int)
    ev = lvl[ei] * 1.1 * np.exp(f[ei]) * np.exp(rng.normal(0, 0.005, ne_ev))
    return _run("blowup_partial", st, loss, evals=[("eval/loss", st[ei], ev)]), {
        "loss.spike": (int(st[t0]) - 2 * interval, int(st[t0 + m]))}, {
        "loss.divergence": (int(st[t0]) - 2 * interval, int(st[t0 + m]))}


def oscillation(rng, n, interval, sd=False):
    per = rng.uniform(10, 60)
    n = max(n, 200, int(8 * per))        # at least 5 waves after the onset
    st = _steps(n, interval)
    amp = math.log(rng.uniform(1.4, 1.7))
    t0 = 0 if rng.random() < 0.6 else _after_warmup(rng, n, 0.1, 0.4)
    t = np.arange(n)
    wave = np.zeros(n)
    shape = rng.random()
    ph = 2 * np.pi * (t - t0) / per
    w = np.sin(ph) if shape < 0.6 else (2 / np.pi * np.arcsin(np.sin(ph)) if shape < 0.85 else np.sign(np.sin(ph)))
    wave[t0:] = amp * w[t0:]
    lvl = _sd_level(rng, n) if sd else _decay(rng, n)
    noise = _sd_noise(rng, n) if sd else _avg_noise(rng, n, rng.uniform(0.005, 0.06))
    loss = lvl * np.exp(wave) * noise
    return _run("oscillation_sd" if sd else "oscillation", st, loss, task="sd" if sd else "llm",
                loss_name="loss/current" if sd else "train/loss"), {
        "loss.oscillation": (int(st[0]), int(st[min(n - 1, t0 + int(3 * per))]))}


def plateau(rng, n, interval):
    n = max(n, 20)           # ten points cannot tell a plateau from a slow start
    st = _steps(n, interval)
    n = len(st)
    lvl = np.full(n, rng.uniform(1.0, 10.0)) * (1 - rng.uniform(0, 0.02) * np.arange(n) / n)
    loss = lvl * _avg_noise(rng, n, rng.uniform(0.005, 0.05))
    return _run("plateau", st, loss, config={"learning_rate": 1e-7}), {
        "loss.plateau": (int(st[0]), int(st[0]) + interval)}


def nan_one(rng, n, interval, sd=None):
    sd = rng.random() < 0.5 if sd is None else sd
    st = _steps(n, interval)
    t0 = _after_warmup(rng, n, 0.1, 0.95)
    loss = (_sd_level(rng, n) * _sd_noise(rng, n)) if sd else _decay(rng, n) * _avg_noise(rng, n)
    loss[t0] = np.nan if rng.random() < 0.8 else np.inf
    return _run("nan_one", st, loss, task="sd" if sd else "llm",
                loss_name="loss/current" if sd else "train/loss"), {
        "loss.nonfinite": (int(st[t0]), int(st[t0]))}


def nan_tail(rng, n, interval):
    st = _steps(n, interval)
    t0 = _after_warmup(rng, n, 0.2, 0.9)
    loss = _decay(rng, n) * _avg_noise(rng, n)
    loss[t0:] = np.nan
    return _run("nan_tail", st, loss), {"loss.nonfinite": (int(st[t0]), int(st[t0]))}


def hidden_nan(rng, n, interval):
    """HF's logging_nan_inf_filter: from the NaN on, loss logs 0.0, grad_norm NaN."""
    st = _steps(n, interval)
    t0 = _after_warmup(rng, n, 0.2, 0.9)
    loss = _decay(rng, n) * _avg_noise(rng, n)
    grad = _healthy_grad(rng, n)
    loss[t0:] = 0.0
    grad[t0:] = np.nan
    return _run("hidden_nan", st, loss, grad=grad), {"loss.nonfinite": (int(st[t0]) - interval, int(st[t0]))}


def grad_skips(rng, n, interval):
    """fp16: the loss scaler skips a few steps (inf grad norm), the loss stays finite."""
    n = max(n, 30)
    st = _steps(n, interval)
    loss = _decay(rng, n) * _avg_noise(rng, n)
    grad = _healthy_grad(rng, n)
    k = int(rng.integers(1, 6))
    idx = np.sort(rng.choice(np.arange(1, n), size=min(k, n - 1), replace=False))
    grad[idx] = np.inf if rng.random() < 0.5 else np.nan
    return _run("grad_skips", st, loss, grad=grad), {
        "grad.nonfinite": (int(st[idx[0]]), int(st[idx[0]]))}


def grad_explosion(rng, n, interval):
    n = max(n, 50)
    st = _steps(n, interval)
    t0 = _after_warmup(rng, n, 0.2, 0.85)
    loss = _decay(rng, n) * _avg_noise(rng, n)
    grad = _healthy_grad(rng, n)
    grad[t0:] *= rng.uniform(15, 1000)
    return _run("grad_explosion", st, loss, grad=grad, config={"max_grad_norm": 1.0}), {
        "grad.explosion": (int(st[t0]) - interval, int(st[min(n - 1, t0 + 2)]))}


def overfit_few(rng, n, interval, named=False):
    """Five evaluations (Whisper / T5 runs): best at the first, then up 15-50% while the
    train loss keeps falling; with named eval sets, some of them do it."""
    n = max(n, 50)
    st = _steps(n, interval)
    lvl = _decay(rng, n)
    loss = lvl * _avg_noise(rng, n, rng.uniform(0.005, 0.04))
    ne_ev = int(rng.integers(4, 7)) if not named else int(rng.integers(4, 12))
    ei = np.linspace(n // ne_ev, n - 1, ne_ev).astype(int)
    ev_steps = st[ei]
    evals = []
    sets = [f"eval_g{k}_loss" for k in range(int(rng.integers(2, 7)))] if named else ["eval/loss"]
    bad = set(rng.choice(len(sets), size=int(rng.integers(1, len(sets) + 1)), replace=False).tolist())
    for k, nm in enumerate(sets):
        e0 = lvl[ei[0]] * rng.uniform(0.9, 1.3)
        if k in bad:
            rise = rng.uniform(0.15, 0.5) if not named else rng.uniform(0.3, 3.0)
            prof = np.linspace(0, 1, ne_ev) ** rng.uniform(0.6, 1.4)
            ev = e0 * np.exp(math.log1p(rise) * prof)
        else:
            ev = e0 * (lvl[ei] / lvl[ei[0]]) ** 0.3
        evals.append((nm, ev_steps, ev * np.exp(rng.normal(0, 0.005, ne_ev))))
    return _run("overfit_named" if named else "overfit_few", st, loss, evals=evals), {
        "overfit": (int(ev_steps[0]) - interval, int(ev_steps[min(2, ne_ev - 1)]))}


def overfit_many(rng, n, interval):
    n = max(n, 200)
    st = _steps(n, interval)
    lvl = _decay(rng, n)
    loss = lvl * _avg_noise(rng, n)
    ne_ev = int(rng.integers(10, 60))
    ei = np.linspace(n // ne_ev, n - 1, ne_ev).astype(int)
    j0 = int(rng.integers(1, max(2, ne_ev // 2)))
    ev = lvl[ei] * 1.1
    ev[j0:] = ev[j0]
    u = np.arange(ne_ev - j0) / max(1, ne_ev - 1 - j0)
    ev[j0:] *= np.exp(math.log1p(rng.uniform(0.1, 0.5)) * u ** rng.uniform(0.8, 1.5))
    ev *= np.exp(rng.normal(0, 0.004, ne_ev))
    span = int(st[ei[-1]] - st[ei[j0]])
    return _run("overfit_many", st, loss, evals=[("eval/loss", st[ei], ev)]), {
        "overfit": (int(st[ei[max(0, j0 - 2)]]), int(st[ei[j0]]) + span // 3)}


def epoch_jump(rng, n, interval):
    """Loss drops at every epoch boundary (memorisation), in a long multi-epoch run."""
    n = max(n, 300)
    st = _steps(n, interval)
    ne = int(rng.integers(3, 21))
    spe = n // ne
    bidx = list(range(spe, n, spe))[: ne - 1]
    bounds = [int(st[i]) for i in bidx]
    lvl = _decay(rng, n)
    drop = rng.uniform(0.55, 0.85)
    f = np.ones(n)
    for i in bidx:
        f[i:] *= drop
    loss = lvl * f * _avg_noise(rng, n, rng.uniform(0.005, 0.05))
    return _run("epoch_jump", st, loss, bounds=bounds), {
        "loss.epoch_jump": (bounds[0] - interval, bounds[0] + interval)}


HEALTHY = {
    "healthy_llm": healthy_llm, "healthy_sgdr": healthy_sgdr, "healthy_sd": healthy_sd,
    "healthy_short": healthy_short, "healthy_pref": healthy_pref, "healthy_epochs": healthy_epochs,
    "healthy_eval_plateau": healthy_eval_plateau,
}
FAULTS = {
    "div_start": div_start, "div_after": div_after,
    "div_after_sd": lambda r, n, i: div_after(r, n, i, sd=True),
    "spike_short": spike_short, "jump_stay": jump_stay,
    "jump_stay_sd": lambda r, n, i: jump_stay(r, n, i, sd=True),
    "blowup_partial": blowup_partial, "oscillation": oscillation,
    "oscillation_sd": lambda r, n, i: oscillation(r, n, i, sd=True),
    "plateau": plateau, "nan_one": nan_one, "nan_tail": nan_tail, "hidden_nan": hidden_nan,
    "grad_skips": grad_skips, "grad_explosion": grad_explosion, "overfit_few": overfit_few,
    "overfit_named": lambda r, n, i: overfit_few(r, n, i, named=True),
    "overfit_many": overfit_many, "epoch_jump": epoch_jump,
}
GENERATORS = {**HEALTHY, **FAULTS}
LENGTHS = (10, 20, 50, 100, 300, 1000, 3000, 10_000, 100_000)
INTERVALS = (1, 5, 10, 50)


def make_case(family: str, seed: int, n: int | None = None, interval: int | None = None) -> Case:
    rng = np.random.default_rng([seed, sum(map(ord, family))])
    n = n if n is not None else int(_pick(rng, LENGTHS))
    interval = interval if interval is not None else int(_pick(rng, INTERVALS))
    out = GENERATORS[family](rng, n, interval)
    run, truth = out[0], out[1]
    alt = out[2] if len(out) > 2 else {}
    tl = next(s for s in run.series if s.role == "train_loss")
    return Case(f"{family}-{seed}", family, run, truth, alt, len(tl.steps), interval,
                "sd" if run.task == "sd" else "avg")


def corpus(seeds: int = 10, families=None, start: int = 0) -> list[Case]:
    fams = list(GENERATORS) if families is None else list(families)
    return [make_case(f, s) for f in fams for s in range(start, start + seeds)]


# -- scoring ---------------------------------------------------------------------------

def counted(findings, rule_ids=CURVE_RULES) -> dict[str, list]:
    """The findings that count as a detection, by rule."""
    out: dict[str, list] = {}
    for f in findings:
        if f.rule not in rule_ids:
            continue
        if f.severity == "info" and f.rule not in INFO_RULES:
            continue
        out.setdefault(f.rule, []).append(f)
    return out


def score(case: Case, findings) -> dict[str, str]:
    """rule -> 'tp' | 'fn' | 'fp' | 'late' (fired, step outside the window) per curve rule
    that is in the truth or fired."""
    got = counted(findings)
    res: dict[str, str] = {}
    for rule, (lo, hi) in case.truth.items():
        fs = got.get(rule, [])
        if not fs:
            alt = [r for r in case.alt if got.get(r)]
            res[rule] = "tp" if any(_in(got[r], *case.alt[r]) for r in alt) else "fn"
            continue
        res[rule] = "tp" if _in(fs, lo, hi) else "late"
    for rule, fs in got.items():
        if rule in case.truth or rule in res:
            continue
        if rule in case.alt:
            continue
        res[rule] = "fp"
    return res


def _in(fs, lo, hi) -> bool:
    return any(f.step is not None and lo <= f.step <= hi for f in fs)


# -- the two 'never healthy' properties --------------------------------------------------

def _level(v: np.ndarray, w: int) -> np.ndarray:
    from scipy.ndimage import median_filter
    return median_filter(v, size=max(1, w) | 1, mode="nearest")


def property_violations(run, findings) -> list[str]:
    """The two 'never healthy' properties of issue 13."""
    out = []
    from lorascope.diagnose import verdict
    if verdict(findings) != "healthy":
        return out
    tl = run.primary("train_loss")
    if tl is not None:
        v = tl.values[np.isfinite(tl.values)]
        if len(v) >= 30 and (v > 0).all():
            w = max(3, len(v) // 10)
            sm = _level(v, w)[w // 2: len(v) - w // 2] if len(v) > w else _level(v, w)
            end = float(np.median(v[-max(3, len(v) // 10):]))
            if end >= 2.0 * float(sm.min()):
                out.append(f"train loss ends {end:.3g} >= 2x its minimum {sm.min():.3g}")
    for ev in run.by_role("eval_loss"):
        e = ev.values[np.isfinite(ev.values)]
        if len(e) < 3 or tl is None or not (e > 0).all():
            continue
        best = float(e.min())
        if e[-1] >= 1.3 * best and int(np.argmin(e)) < len(e) - 1:
            b_step = int(ev.steps[np.isfinite(ev.values)][int(np.argmin(e))])
            t_ok = np.isfinite(tl.values)
            ts, tv = tl.steps[t_ok], tl.values[t_ok]
            before = tv[ts <= b_step]
            after = tv[-max(1, len(tv) // 10):]
            if len(before) and float(np.median(after)) < float(np.median(before[-max(1, len(before) // 10):])):
                out.append(f"{ev.name} ends {e[-1]:.3g} >= 1.3x its best {best:.3g} while train falls")
    return out
