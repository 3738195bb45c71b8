"""verify: the reproduction check (does a replay start where the original run was?) and
the verdict it leads to. No torch, no training: curves as a trainer would log them."""
from __future__ import annotations

import numpy as np
import pytest

from lorascope.model import Series
from lorascope.rerun.verify import (REPRO_RTOL, REPRO_RTOL_PER_UPDATE, check_reproduction,
                                    decide)


def _s(steps, values):
    return Series("train/loss", "train_loss", np.asarray(steps, np.int64),
                  np.asarray(values, float))


ORIG = _s(range(1, 41), [4.8 - 0.07 * i for i in range(40)])        # logs every step


def test_replay_that_continues_the_run_is_reproduced():
    # resumed at 25: step 26 ran the checkpoint's weights on the same batch
    rep = _s([26, 27, 28], [ORIG.values[25] * 1.004, 1.5, 1.4])
    r = check_reproduction(ORIG, rep, 25, "baseline")
    assert r.ok is True and r.step == 26 and r.tolerance == pytest.approx(REPRO_RTOL)
    assert "reproduces the original run at step 26" in r.reason()


def test_other_data_pipeline_is_not_reproduced_with_a_one_line_reason():
    # the fixture bug: cutoff 1024 / answers-only labels instead of cutoff 64 / prompt too
    orig = _s([24, 25, 26, 27], [2.77, 2.69, 2.92, 2.79])
    rep = _s([26, 27], [4.72, 5.67])
    r = check_reproduction(orig, rep, 25, "fixed")
    assert r.ok is False and (r.step, r.original, r.replayed) == (26, 2.92, 4.72)
    msg = r.reason()
    assert "\n" not in msg
    assert msg.startswith("the fixed replay does not reproduce the original run at step 26: "
                          "loss 4.72 vs 2.92")
    assert "use --cmd with your own trainer" in msg


def test_coarse_logging_compares_the_first_interval_with_a_wider_tolerance():
    orig = _s(range(10, 101, 10), [5.0, 4.0, 3.5, 3.2, 3.0, 2.9, 2.8, 2.7, 2.6, 2.5])
    # resumed at 30, the first log at 40 averages 10 updates: tolerance 10 % + 9 x 5 %
    tol = REPRO_RTOL + 9 * REPRO_RTOL_PER_UPDATE
    assert check_reproduction(orig, _s([40, 50], [3.2 * (1 + tol * 0.9), 3]), 30).ok is True
    assert check_reproduction(orig, _s([40, 50], [3.2 * (1 + tol * 1.1), 3]), 30).ok is False
    # resumed at 25 (mid-interval): 5 updates before the log at 30
    r = check_reproduction(orig, _s([30], [3.5]), 25)
    assert r.ok is True and r.tolerance == pytest.approx(REPRO_RTOL + 4 * REPRO_RTOL_PER_UPDATE)


def test_not_checked_when_there_is_nothing_to_compare():
    assert check_reproduction(ORIG, _s([], []), 25).ok is None                 # nothing logged
    assert check_reproduction(_s([1, 2, 3], [3, 2, 1]), _s([26], [1.0]), 25).ok is None
    # the replay logs only 30 steps after the checkpoint, the original every step
    r = check_reproduction(ORIG, _s([55], [1.0]), 25)
    assert r.ok is None and "not checked" in r.reason()


def test_non_finite_first_step_must_be_non_finite_in_the_replay_too():
    assert check_reproduction(_s([26, 27], [np.nan, 3.0]), _s([26, 27], [np.nan, 3.0]), 25).ok is True
    r = check_reproduction(_s([26, 27], [np.nan, 3.0]), _s([26, 27], [2.0, 3.0]), 25)
    assert r.ok is False and "loss 2 vs nan" in r.reason()


def test_from_scratch_first_step_is_the_base_models_loss():
    # a fresh adapter has lora_B = 0: step 1 is the base model on the first batch
    assert check_reproduction(ORIG, _s([1, 2], [4.8, 4.7]), 0).ok is True
    assert check_reproduction(ORIG, _s([1, 2], [6.0, 4.7]), 0).ok is False


def test_a_replay_that_does_not_reproduce_makes_the_verdict_inconclusive():
    assert decide("loss.divergence", ["loss.divergence"], [], False) == "fixed"
    # the same episode by the other shape: a replay that jumps where the run climbed
    assert decide("loss.divergence", ["loss.spike"], [], False) == "fixed"
    assert decide("loss.divergence", ["loss.spike"], ["loss.spike"], False) == "not_fixed"
    assert decide("loss.divergence", ["grad.explosion"], [], False) == "inconclusive"
    assert decide("loss.divergence", ["loss.divergence"], [], False,
                  reproduced=False) == "inconclusive"
    assert decide("loss.divergence", None, ["loss.divergence"], False,
                  reproduced=False) == "inconclusive"


# -- why a baseline that does not call the symptom back is inconclusive -----------------

def _climb_run():
    """A loss that falls to ~2.8 by step 25, then climbs gradually to ~x1.6 (diverges)."""
    from tests.curves import make_run
    rng = np.random.default_rng(3)
    t = np.arange(1, 101)
    level = np.where(t <= 30, 2.8 + 2.0 * np.exp(-t / 6.0), 2.8 * np.exp(0.0068 * (t - 30)))
    return make_run(level * np.exp(rng.normal(0, 0.02, len(t))))


def _plan(run, checkpoint=True):
    from pathlib import Path

    from lorascope.pipeline import run_rules
    from lorascope.rerun.plan import CheckpointRef, Plan
    from tests.curves import CATALOG
    found, _ = run_rules(run, CATALOG)
    f = next(f for f in found if f.rule == "loss.divergence")
    ck = CheckpointRef(25, Path("r/checkpoint-25")) if checkpoint else None
    start = 25 if checkpoint else 0
    return Plan(run_dir=Path("r"), run_name="r", rule=f.rule, onset=int(f.step), symptom_end=100,
                checkpoint=ck, start=start, end=100, fix={"learning_rate": 2e-4}, planned=100)


def _jump_back_baseline(orig):
    """The replay from step 25: the original's points up to 25, then a jump to x1.7 at
    step 27 (a fresh optimizer's first updates), back near the earlier level by step 40,
    ending x1.2 above it: neither a divergence nor a spike by the catalog's ratios."""
    from dataclasses import replace
    s = orig.primary("train_loss")
    rng = np.random.default_rng(4)
    t = s.steps
    rep = np.where(t < 27, s.values, np.where(t < 38, 4.8, 2.9 + 0.006 * (t - 38)))
    rep = np.where(t <= 26, s.values, rep * np.exp(rng.normal(0, 0.02, len(t))))
    return replace(orig, series=(replace(s, values=rep),))


def test_baseline_shortfall_says_why_in_the_detectors_numbers_and_what_to_do():
    from lorascope.rerun.verify import baseline_shortfall, unique_rules
    from tests.curves import CATALOG
    orig = _climb_run()
    plan = _plan(orig)
    base = _jump_back_baseline(orig)
    # the premise: the detectors call nothing back on this baseline
    from lorascope.pipeline import run_rules
    found, _ = run_rules(base, CATALOG)
    assert not {"loss.divergence", "loss.spike"} & set(unique_rules(found))
    msg = baseline_shortfall(plan, orig, base, CATALOG)
    assert "\n" not in msg and msg.startswith("inconclusive because the baseline replay's loss rose x1.")
    # the thresholds it missed, read from the catalog, and the original's own size
    assert "loss.divergence needs a climb that stays x1.4 up" in msg
    assert "loss.spike a jump of x2" in msg
    assert "the original run's loss.divergence was x1.5" in msg or \
        "the original run's loss.divergence was x1.6" in msg
    # where it left the original path: the first step after the reproduced one
    o, r = orig.primary("train_loss").values, base.primary("train_loss").values
    assert f"left it at step 27 (loss {r[26]:.4g} where the original logged {o[26]:.4g})" in msg
    # the cause and the remedy of a replay resumed from a checkpoint
    assert "fresh optimizer" in msg and "the likely reason it left the original path at once" in msg
    assert "rerun with --from-step 0" in msg and "(100 steps instead of 75)" in msg


def test_baseline_shortfall_from_scratch_does_not_blame_the_optimizer():
    from lorascope.rerun.verify import baseline_shortfall
    from tests.curves import CATALOG
    orig = _climb_run()
    plan = _plan(orig, checkpoint=False)
    msg = baseline_shortfall(plan, orig, _jump_back_baseline(orig), CATALOG)
    assert "--from-step 0" not in msg and "fresh optimizer" not in msg
    assert "--cmd" in msg


def test_departure_is_the_first_step_off_the_original_path():
    from lorascope.rerun.verify import departure
    rep = _s([26, 27, 28], [ORIG.values[25], ORIG.values[26] * 1.05, ORIG.values[27] * 1.5])
    assert departure(ORIG, rep, 25) == (27, 28, ORIG.values[27], ORIG.values[27] * 1.5)
    assert departure(ORIG, _s([26, 27], [ORIG.values[25], ORIG.values[26]]), 25) is None
    assert departure(ORIG, _s([26], [9.0]), 25) == (25, 26, ORIG.values[25], 9.0)


def test_baseline_shortfall_of_a_baseline_that_never_rose_compares_its_end_level():
    from dataclasses import replace

    from lorascope.rerun.verify import baseline_shortfall
    from tests.curves import CATALOG
    orig = _climb_run()
    s = orig.primary("train_loss")
    flat = np.where(s.steps <= 25, s.values, s.values[24])        # holds its step-25 level
    msg = baseline_shortfall(_plan(orig), orig, replace(orig, series=(replace(s, values=flat),)),
                             CATALOG)
    assert msg.startswith(f"inconclusive because the baseline replay's level over the run's last "
                          f"tenth was {s.values[24]:.3g} (x")
    assert "before the symptom" in msg and "left it at step" in msg
