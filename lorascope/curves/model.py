"""The curve stage's typed output: noise models, segments, episodes."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# Episode kinds and the symptoms (rule ids) that may own them, best fit first. The
# arbiter may reorder an excursion's candidates by its shape (a sudden jump is a spike
# first, a gradual climb a divergence first).
KINDS = {
    "nonfinite": ("loss.nonfinite",),          # NaN / Inf values of a loss series
    "hidden_nan": ("loss.nonfinite",),         # loss 0.0 beside a NaN grad_norm (HF's filter)
    "grad_nonfinite": ("grad.nonfinite",),     # non-finite grad norm, finite loss (fp16 skips)
    "spike": ("loss.spike", "loss.divergence"),        # 1..max_points logged points far up
    "excursion": ("loss.spike", "loss.divergence"),    # a stretch above the best level so far
    "flat": ("loss.plateau",),                 # never meaningfully decreased
    "swings": ("loss.oscillation",),           # a regime of periodic swings
    "epoch_shift": ("loss.epoch_jump",),       # level shifts at epoch boundaries
    "eval_rise": ("overfit",),                 # eval loss rises while train loss falls
    "grad_jump": ("grad.explosion",),          # grad-norm level jumps by orders of magnitude
    "grad_point": ("grad.explosion",),         # one grad-norm point far above its level
}


@dataclass(frozen=True)
class Noise:
    """How much a curve moves by itself."""

    mode: str                # "log": analysed as log(value + offset); "linear": as is
    sigma: float             # robust noise of one point (analysed units)
    tail: float              # upper-tail residual (tail_quantile) around the local median
    heavy: bool              # tail far beyond a Gaussian's (diffusion per-step losses)
    ds_sigma: float          # noise of one downsampled point
    block: int               # points per downsampled point

    def to_json(self) -> dict:
        return {"mode": self.mode, "sigma": _r(self.sigma), "tail": _r(self.tail),
                "heavy": self.heavy, "ds_sigma": _r(self.ds_sigma), "block": self.block}


@dataclass(frozen=True)
class Segment:
    """A stretch of constant level (ruptures change points, refined)."""

    start: int               # full-resolution index, inclusive
    end: int                 # exclusive
    first_step: int
    last_step: int
    level: float             # median, analysed units
    se: float                # standard error of the level


@dataclass
class Episode:
    """One stretch where a curve leaves its expected path."""

    kind: str                            # see KINDS
    series: str                          # the series it was seen on
    onset: int | None                    # first step of the episode (its change point)
    peak: int | None = None              # step of its highest level / value
    end: int | None = None               # step where it recovered (None: it did not)
    last: int | None = None              # last step of the stretch it covers
    before: float | None = None          # level before it, in the series' own units
    peak_level: float | None = None
    end_level: float | None = None       # level at the end of the curve (or of the episode)
    recovered: bool | None = None        # came back within recover_ratio of `before`
    sudden: bool | None = None           # rose within a few points (a jump)
    magnitude: float = 0.0               # size in analysed units (log ratio or additive)
    data: dict[str, Any] = field(default_factory=dict)    # numbers for the evidence
    candidates: tuple[str, ...] = ()
    owner: str | None = None
    absorbed_by: int | None = None       # index of an episode that explains this one
    why: str = ""                        # the arbiter's reason, for the report and tests

    @property
    def ratio(self) -> float | None:
        if self.before and self.peak_level is not None and self.before > 0:
            return self.peak_level / self.before
        return None

    def to_json(self) -> dict:
        return {"kind": self.kind, "series": self.series, "onset": self.onset, "peak": self.peak,
                "end": self.end, "last": self.last, "before": _r(self.before),
                "peak_level": _r(self.peak_level), "end_level": _r(self.end_level),
                "recovered": self.recovered, "sudden": self.sudden,
                "magnitude": _r(self.magnitude), "owner": self.owner, "why": self.why}


@dataclass
class CurveModel:
    """One analysed curve."""

    name: str
    role: str
    points: int
    noise: Noise | None = None
    segments: list[Segment] = field(default_factory=list)
    first_step: int | None = None
    last_step: int | None = None


@dataclass
class CurveAnalysis:
    """Everything the curve rules read."""

    curves: dict[str, CurveModel] = field(default_factory=dict)
    episodes: list[Episode] = field(default_factory=list)
    train: str | None = None                  # name of the train-loss series analysed
    epoch: dict | None = None                 # epoch-boundary analysis of the train loss

    def owned(self, rule_id: str) -> list[Episode]:
        return [e for e in self.episodes if e.owner == rule_id]

    def unowned(self) -> list[Episode]:
        return [e for e in self.episodes if e.owner is None and e.candidates
                and e.absorbed_by is None]


def _r(v):
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return round(f, 6) if math.isfinite(f) else None
