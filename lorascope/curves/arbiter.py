"""The arbiter: every episode goes to exactly one symptom, or is explained by another.

1. **Explained episodes.** A short spike inside an excursion is part of it. An excursion
   that starts inside a regime of swings and is no larger than the swings' peak-to-trough
   range (plus a spike's ratio) is a wave of it; an upward excursion at an epoch boundary
   of an upward epoch staircase is a step of it, and swings with the epoch's period are the
   staircase seen as waves. An explaining episode that has no owner (its rule is off)
   explains nothing: what it would have absorbed is reported on its own.
2. **Warmup bumps.** An excursion that starts during warmup, is back before twice the
   warmup is over and stays below ``warmup_bump_ratio`` is the warmup, not a symptom.
3. **Shape.** A stretch that rose suddenly (a jump) or came back (a blow-up that
   recovered, fully or partly) is a spike first; a gradual climb that stays up is a
   divergence first.
4. **Ownership.** The first candidate symptom that is switched on and whose catalog
   thresholds the episode meets owns it.
"""
from __future__ import annotations

import math

from lorascope.curves.model import KINDS, Episode
from lorascope.curves.params import Thresholds


def _accepts(rule: str, e: Episode, T: Thresholds, mode: str) -> bool:
    if rule == "loss.spike":
        if e.kind == "spike":
            return True
        if e.kind != "excursion":
            return False
        if mode == "log":
            return e.magnitude >= math.log(T.rule("loss.spike", "min_ratio"))
        return e.magnitude >= float(T.rule("loss.spike", "min_abs_jump"))
    if rule == "loss.divergence":
        if e.kind not in ("excursion", "spike"):
            return False
        thr = (math.log(T.rule("loss.divergence", "min_ratio")) if mode == "log"
               else float(T.rule("loss.divergence", "min_abs_rise")))
        if e.kind == "excursion" and e.recovered is False:
            return e.data.get("end_excess", 0.0) >= thr      # it climbed and stays up
        # a blow-up that came back (or one point) fits "explodes" only as large as a spike
        spike = (math.log(T.rule("loss.spike", "min_ratio")) if mode == "log"
                 else float(T.rule("loss.spike", "min_abs_jump")))
        return e.magnitude >= max(thr, spike)
    return rule in KINDS.get(e.kind, ())


def _accepts_any(e: Episode, T: Thresholds, mode: str) -> bool:
    return any(_accepts(r, e, T, mode) for r in ("loss.spike", "loss.divergence"))


def _inside(step, a, b) -> bool:
    return step is not None and a is not None and b is not None and a <= step <= b


def arbitrate(eps: list[Episode], T: Thresholds, *, mode: str = "log",
              warmup_step: float = 0.0, epoch: dict | None = None) -> list[Episode]:
    # owners of the episodes that may explain others come first
    for e in eps:
        e.candidates = tuple(KINDS.get(e.kind, ()))
    explainers = [e for e in eps if e.kind in ("swings", "epoch_shift")]
    for e in explainers:
        _own(e, T, mode)
    epoch_ep = next((e for e in eps if e.kind == "epoch_shift" and e.owner), None)
    swings_ep = next((e for e in eps if e.kind == "swings" and e.owner), None)
    if swings_ep is not None and epoch_ep is not None and swings_ep.data.get("epoch_like"):
        _absorb(swings_ep, epoch_ep, eps, "waves of the epoch's period: the epoch staircase")
        swings_ep = None
    excs = [e for e in eps if e.kind == "excursion"]
    for e in eps:
        if e.kind == "spike":
            host = next((x for x in excs if _inside(e.onset, x.onset, x.last)
                         or _inside(e.peak, x.onset, x.last)), None)
            if host is None:
                continue
            if host.recovered and host.data.get("duration_points", 1 << 30) <= e.data.get("max_points", 0):
                # the "excursion" is the short spike itself, seen by the segments
                host.candidates, host.why = (), "the short spike itself"
                host.absorbed_by = eps.index(e)
            else:
                _absorb(e, host, eps, "a point of a longer excursion")
    wb = float(T.stage("warmup_bump_ratio"))
    for e in excs:
        if (mode == "log" and e.data.get("in_warmup") and e.recovered and e.end is not None
                and e.end <= 2 * warmup_step + 1 and e.magnitude < math.log(wb)):
            e.candidates = ()
            e.why = "warmup bump"
    if swings_ep is not None:
        big = [e for e in eps if e.kind == "excursion" and e.magnitude >= 4 * swings_ep.magnitude
               and _inside(e.onset, swings_ep.onset, swings_ep.last)]
        if big:
            # a jump far larger than the swings leaves waves in any detrended residual:
            # the swings are its shadow, not a regime of their own
            swings_ep.owner, swings_ep.why = None, "the residual of a far larger jump"
            swings_ep.candidates = ()
            swings_ep = None
    if swings_ep is not None:
        room = 2 * swings_ep.magnitude + math.log(T.rule("loss.spike", "min_ratio"))
        margin = int(swings_ep.data.get("period_steps", 0))
        a, b = swings_ep.onset - margin, swings_ep.last + margin
        for e in eps:
            # a point measured against a running median that lags the wave carries the
            # wave's swing on top of the spike threshold
            lim = room if e.kind == "excursion" else e.data.get("threshold", 0.0) + 2 * swings_ep.magnitude
            if e.kind in ("excursion", "spike") and e.absorbed_by is None and \
                    _inside(e.onset, a, b) and e.magnitude <= lim:
                _absorb(e, swings_ep, eps, "a wave of the oscillation")
    if epoch_ep is not None and epoch_ep.data.get("direction") == "up":
        tol = int(epoch_ep.data.get("tol", 1))
        steps = epoch_ep.data.get("steps", [])
        for e in eps:
            if e.kind in ("excursion", "spike") and e.absorbed_by is None and e.onset is not None \
                    and steps and min(abs(e.onset - b) for b in steps) <= tol:
                _absorb(e, epoch_ep, eps, "a step of the epoch staircase")
    # an eval loss that rises with a blow-up of the train loss follows it: the train
    # curve's episode says it
    trains = [e for e in eps if e.kind in ("excursion", "spike") and e.absorbed_by is None
              and e.candidates and e.why != "warmup bump"]
    for e in eps:
        if e.kind != "eval_rise":
            continue
        for x in trains:
            x_end = x.end if x.end is not None else x.last
            if x.onset is not None and x_end is not None and x.onset <= (e.last or e.onset) \
                    and x_end >= e.onset and _accepts_any(x, T, mode):
                e.candidates = ()
                e.why = "the eval loss follows a blow-up of the train loss"
                break
    for e in eps:
        if e.kind == "excursion" and e.candidates:
            if e.recovered is False and not e.sudden:
                e.candidates = ("loss.divergence", "loss.spike")
            else:
                e.candidates = ("loss.spike", "loss.divergence")
    for e in eps:
        if e.owner is None and e.absorbed_by is None and e.candidates:
            _own(e, T, mode)
    return eps


def _own(e: Episode, T: Thresholds, mode: str) -> None:
    for rule in e.candidates:
        if T.enabled(rule) and _accepts(rule, e, T, mode):
            e.owner = rule
            return


def _absorb(e: Episode, host: Episode, eps: list[Episode], why: str) -> None:
    if host.owner is None:
        return
    e.absorbed_by = eps.index(host)
    e.owner = None
    e.why = why
