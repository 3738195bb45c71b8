"""Runs every finder on every curve of a run, then the arbiter."""
from __future__ import annotations

import math

import numpy as np

from lorascope import signals as sg
from lorascope.curves import evals, grads, loss, swings
from lorascope.curves.arbiter import arbitrate
from lorascope.curves.epochs import epoch_shift
from lorascope.curves.model import CurveAnalysis, CurveModel, Episode
from lorascope.curves.params import Thresholds
from lorascope.model import Run, Series

# Series that carry the training loss in another form: kohya's running average and its
# per-epoch mean. A NaN there is a NaN of the training loss.
LOSS_ALIASES = {"loss/average", "loss/avr", "loss/moving_average", "loss/epoch", "loss/epoch_average"}


def loss_like(run: Run) -> list[Series]:
    out = [s for s in run.series if s.role == "train_loss"]
    out += [s for s in run.series if s.role == "other" and s.name.split(" ")[0].lower() in LOSS_ALIASES]
    return out


_PREF_SERIES = ("reward", "accuracies", "accuracy", "logps", "margins", "chosen", "rejected")


def preference_loss(run: Run, s: Series) -> bool:
    """A DPO-style sigmoid preference loss: it starts at ln 2 = 0.693 (chosen and rejected
    scored alike) and the run logs preference metrics (rewards/accuracies, logps, ...)."""
    v = np.asarray(s.values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 3:
        return False
    init = float(np.median(v[: max(3, len(v) // 30)]))
    if not 0.6 <= init <= 0.8:
        return False
    names = [x.name.lower() for x in run.series if x.role not in ("train_loss", "eval_loss", "lr")]
    return any(k in nm for nm in names for k in _PREF_SERIES)


def running_average_declared(run: Run) -> bool:
    """The run's only train-loss series is a running average (set by the run model)."""
    return bool(run.loss_is_running_average)


EPOCH_LOSS = {"loss/epoch", "loss/epoch_average"}


def _epoch_numbered(run: Run, s: Series) -> bool:
    """kohya before March 2024 logs its per-epoch mean at step = epoch number."""
    last = run.steps.last or 0
    st = np.asarray(s.steps)
    return (s.name.split(" ")[0].lower() in EPOCH_LOSS and len(st) > 0 and last > 0
            and int(st.max()) < last / 2 and bool(np.array_equal(st, np.arange(st[0], st[0] + len(st)))))


def _epoch_start(run: Run, k: int) -> int:
    """First optimizer step of epoch k (1-based)."""
    b = sorted(run.epoch_boundaries)
    if k <= 1 or not b:
        return int(run.steps.first or 1)
    return int(b[min(k - 2, len(b) - 1)])


def nonfinite_losses(run: Run) -> Episode | None:
    """The first NaN / Inf in any series of the training loss."""
    best = None
    for s in loss_like(run):
        v = np.asarray(s.values, dtype=float)
        bad = ~np.isfinite(v)
        if not bad.any():
            continue
        i = int(np.argmax(bad))
        step = int(s.steps[i])
        coarse = _epoch_numbered(run, s)
        if coarse:
            step = _epoch_start(run, step)     # the NaN came somewhere in that epoch
        # a per-step series says more exactly when than a per-epoch one
        if best is not None and (coarse, step) >= (best[-1], best[0]):
            continue
        fin = np.isfinite(v[:i])
        prev = (float(v[:i][fin][-1]), int(s.steps[:i][fin][-1])) if fin.any() else None
        best = (step, s, i, int(bad.sum()), prev, int(np.isfinite(v[i:]).sum()),
                "NaN" if np.isnan(v[i]) else "Inf", coarse)
    if best is None:
        return None
    step, s, i, n_bad, prev, later_ok, kind, _coarse = best
    return Episode("nonfinite", s.name, onset=step, last=int(s.steps[-1]),
                   recovered=later_ok > 0,
                   data={"kind": kind, "bad": n_bad, "total": len(s.values), "prev": prev,
                         "later_ok": later_ok})


def _warmup_step(cur: sg.Curve, run: Run, frac: float) -> float:
    first, last = int(cur.steps[0]), int(cur.steps[-1])
    end = first + frac * (last - first)
    ws = run.config.get("warmup_steps")
    if isinstance(ws, (int, float)) and not isinstance(ws, bool) and 0 < ws < last:
        end = max(end, float(ws))
    return end


def analyze(run: Run, catalog: dict) -> CurveAnalysis:
    T = Thresholds(catalog)
    ca = CurveAnalysis()
    eps: list[Episode] = []
    nf = nonfinite_losses(run)
    if nf is not None:
        eps.append(nf)
    train = run.primary("train_loss")
    tcur = None
    if train is not None:
        # a DPO-style preference loss starts at ln 2 and moves by additive amounts: its
        # ratios mean nothing (linear mode, as for losses near zero)
        log = False if preference_loss(run, train) else None
        tcur = sg.prepare(train, run, log=log, ds_target=T.stage("ds_target"))
    mode = "log"
    warm = 0.0
    if tcur is not None:
        ca.train = train.name
        mode = tcur.mode
        noise, resid = loss.noise_model(tcur, T)
        model = CurveModel(train.name, train.role, tcur.n, noise,
                           first_step=int(tcur.steps[0]), last_step=int(tcur.steps[-1]))
        ca.curves[train.name] = model
        warm = _warmup_step(tcur, run, float(T.stage("warmup_frac")))
        if tcur.n >= int(T.stage("min_points")):
            sig_ds = loss.local_sigma(tcur, noise, T)
            yw = loss.winsorized(tcur, noise, T, sig_ds)
            model.segments = loss.segments(tcur, yw, noise, T, sig_ds)
            exc = loss.excursions(tcur, train.name, yw, model.segments, noise, T, warm, sig_ds)
            g = sg._grad_accum(run)
            if tcur.mode == "log" and g > 1:
                for e in exc:
                    # a level that moves by exactly the accumulation factor and stays: the
                    # trainer started logging loss x grad_accum, a scale change
                    if e.sudden and not e.recovered and abs(e.data["end_excess"] - math.log(g)) < math.log(1.15):
                        e.kind, e.why = "scale_change", f"the loss is logged x grad_accum ({g}) from here"
            eps += exc
            spikes = loss.point_spikes(tcur, train.name, noise, resid, T, sig_ds)
            back = loss.end_rise(tcur, train.name, yw, sig_ds, T, exc + spikes)
            if back is not None:
                eps.append(back)
            eps += spikes
            fl = loss.flat(tcur, train.name, T, sg.warmup_index(tcur, run, T.rule("loss.plateau", "warmup_frac")))
            if fl is not None:
                eps.append(fl)
            spe = run.steps.per_epoch
            if not spe and len(run.epoch_boundaries) >= 2:
                spe = float(np.median(np.diff(sorted(run.epoch_boundaries))))
            sw = swings.swings(tcur, train.name, T, float(spe) if spe else None)
            if sw is not None:
                eps.append(sw)
            es, ej = epoch_shift(tcur, train.name, run.epoch_boundaries, T, eps,
                                 running_average_declared(run), model.segments)
            ca.epoch = ej
            if es is not None:
                eps.append(es)
    for ev in run.by_role("eval_loss"):
        ec = sg.prepare(ev, run, ds_target=T.stage("ds_target"))
        if ec is not None:
            ca.curves[ev.name] = CurveModel(ev.name, ev.role, ec.n, first_step=int(ec.steps[0]),
                                            last_step=int(ec.steps[-1]))
        e = evals.eval_rise(ec, tcur, ev.name, train.name if train is not None else "", T) \
            if tcur is not None else None
        if e is not None:
            eps.append(e)
    g = run.primary("grad_norm")
    if g is not None:
        ge = grads.nonfinite(g, train, T)
        if ge is not None:
            eps.append(ge)
        gx = grads.explosion(g, T, run.config.get("warmup_steps"))
        if gx is not None:
            eps.append(gx)
    ca.episodes = arbitrate(eps, T, mode=mode, warmup_step=warm, epoch=ca.epoch)
    return ca
