"""The curve-analysis stage: every curve of a run analysed once, its episodes found once.

It sits between the run model and the rules::

    build (Run) -> curves.analyze_curves (CurveAnalysis) -> rules -> diagnose -> render

For every curve that matters (the training loss and every other loss series, each eval
loss - named eval sets included -, the gradient norm) it computes, once:

* its **noise model** (:class:`Noise`): robust point noise in log space where the loss is
  positive (linear for preference / RL losses that are zero, negative or start near zero),
  the upper tail of its residuals (a diffusion per-step loss is broad and heavy-tailed, an
  averaged LLM loss is smooth), and the noise of one downsampled point;
* its **segments** (:class:`Segment`): piecewise-constant levels from ``ruptures`` on a
  curve downsampled to a few thousand block medians (long curves) and refined at full
  resolution;
* its **episodes** (:class:`Episode`): every stretch where the curve leaves its expected
  path - a short spike, an excursion above its best level (a jump, a blow-up with or
  without recovery, a climb), a flat curve, a regime of swings, level shifts at epoch
  boundaries, a run of non-finite values, non-finite gradient norms, an eval loss that
  rises while the train loss falls, a jump of the gradient norm.

One arbiter (:mod:`lorascope.curves.arbiter`) then gives each episode to exactly one
symptom (a rule id): the first of the episode's candidate symptoms that is switched on and
whose catalog thresholds the episode meets. A rule switched off through ``--rules`` never
hides an episode: it goes to the next symptom that fits. The curve rules
(``lorascope/rules/loss.py``, ``overfit.py``, ``grad.py``) only read the episodes they own
and turn them into findings with evidence.

Every threshold is read from the catalog: the stage's own (``rules/curves.toml``, entry
``curves``) and each rule's ``params``.
"""
from __future__ import annotations

from lorascope.curves.model import CurveAnalysis, CurveModel, Episode, Noise, Segment

__all__ = ["CurveAnalysis", "CurveModel", "Episode", "Noise", "Segment", "analyze_curves"]


def analyze_curves(run, catalog: dict) -> CurveAnalysis:
    """Analyse every curve of ``run`` and assign its episodes (see module doc)."""
    from lorascope.curves.stage import analyze
    return analyze(run, catalog)
