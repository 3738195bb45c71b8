import numpy as np

from curves import decay, make_run
from lorascope import signals as sg
from lorascope.model import Series


def test_robust_noise_matches_white_noise_and_ignores_a_trend():
    rng = np.random.default_rng(1)
    y = np.linspace(5, 0, 5000) + rng.normal(0, 0.1, 5000)
    assert 0.09 < sg.robust_noise(y) < 0.11


def test_robust_noise_of_constant_and_tiny_curves_is_small_and_finite():
    assert sg.robust_noise(np.ones(50)) < 1e-6
    assert sg.robust_noise(np.array([1.0])) == 0.0


def test_downsample_keeps_block_starts_and_medians():
    steps = np.arange(10_000, dtype=np.int64)
    y = np.arange(10_000, dtype=float)
    ds_steps, ds_y, starts, block = sg.downsample(steps, y, target=100)
    assert block == 100 and len(ds_y) == 100
    assert ds_steps[3] == 300 and starts[3] == 300
    assert ds_y[3] == np.median(np.arange(300, 400))


def test_change_points_and_local_refinement_find_a_step():
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(40_000), np.ones(60_000)] + rng.normal(0, 0.2, 100_000)
    steps = np.arange(100_000, dtype=np.int64)
    ds_steps, ds_y, starts, block = sg.downsample(steps, y)
    cps = sg.change_points(ds_y, sg.robust_noise(ds_y))
    assert len(cps) == 1
    lo, hi = starts[cps[0] - 2], starts[cps[0] + 2]
    assert abs(sg.refine_split(y, lo, hi, up=True) - 40_000) <= 5


def test_hinge_fit_finds_the_knot():
    x = np.arange(200, dtype=float)
    y = np.where(x < 120, 1.0, 1.0 + 0.05 * (x - 120))
    k, a, b1, b2, sse = sg.hinge_fit(x, y)
    assert abs(x[k] - 120) <= 1 and b2 > 0.04 and abs(b1) < 1e-6


def test_prepare_picks_log_space_for_positive_losses_and_linear_for_signed():
    pos = sg.prepare(Series("l", "train_loss", np.arange(100), np.exp(decay(100))))
    assert pos.mode == "log"
    neg = sg.prepare(Series("l", "train_loss", np.arange(100),
                            np.random.default_rng(0).normal(0, 0.02, 100)))
    assert neg.mode == "linear"


def test_prepare_handles_all_nan_one_point_and_huge_values():
    assert sg.prepare(Series("l", "train_loss", np.arange(5), np.full(5, np.nan))) is None
    one = sg.prepare(Series("l", "train_loss", np.array([3]), np.array([2.0])))
    assert one.n == 1
    huge = sg.prepare(Series("l", "train_loss", np.arange(50), np.full(50, 1e300)))
    assert np.isfinite(huge.y).all()


def test_prepare_puts_back_points_logged_times_grad_accum():
    v = np.exp(decay(400, noise=0.03))
    v[[50, 120, 300]] *= 8
    run = make_run(v, config={"grad_accum": 8})
    cur = sg.prepare(run.primary("train_loss"), run)
    assert cur.rescaled == 3
    assert cur.raw.max() < 2.5


def test_rise_onset_finds_a_ramp_knot_and_the_start_of_a_step():
    rng = np.random.default_rng(1)
    x = np.arange(300, dtype=float)
    ramp = np.where(x < 150, 0.0, 0.01 * (x - 150)) + rng.normal(0, 0.05, 300)
    assert abs(sg.rise_onset(x, ramp, 0, 300) - 150) <= 10
    # flat and noisy, then a jump to a new level: the onset is the jump, not the middle
    # of the flat stretch (a straight line through the window would put it much earlier)
    step = np.where(x < 200, 0.0, 0.5) + rng.normal(0, 0.1, 300)
    assert abs(sg.rise_onset(x, step, 0, 300) - 200) <= 3


def test_hinge_fit_flat_left_piece_when_constrained():
    x = np.arange(100, dtype=float)
    y = np.where(x < 60, 0.01 * x, 0.6 + 0.05 * (x - 60))
    k, a, b1, b2, sse = sg.hinge_fit(x, y, left_flat_or_falling=True)
    assert b1 <= 0 and b2 > 0
