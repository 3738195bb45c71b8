import math

import numpy as np

from curves import alarms, decay, make_run


def _eval(n=2000, t0=None, seed=0):
    te = np.linspace(20, n, 100).astype(int)
    y = np.log(1.0 + np.exp(-te / (0.05 * n)))
    if t0 is not None:
        y = y + math.log(1.4) * np.clip(te - t0, 0, None) / (n - t0)
    return te, np.exp(y + np.random.default_rng(seed).normal(0, 0.01, len(te)))


def test_overfit_fires_at_the_onset_of_the_eval_rise():
    te, ev = _eval(t0=1000)
    (f,) = alarms("overfit", make_run(np.exp(decay(2000)), eval_steps=te, eval_vals=ev))
    assert f.severity == "warning" and abs(f.step - 1000) <= 60


def test_no_overfit_when_eval_keeps_falling_or_train_rises_too():
    te, ev = _eval()
    assert alarms("overfit", make_run(np.exp(decay(2000)), eval_steps=te, eval_vals=ev)) == []
    te, ev = _eval(t0=1000)
    y = decay(2000)
    y[1000:] += np.linspace(0, 1.0, 1000)
    assert alarms("overfit", make_run(np.exp(y), eval_steps=te, eval_vals=ev)) == []


def test_too_few_eval_points_are_not_judged():
    assert alarms("overfit", make_run(np.exp(decay(200)), eval_steps=[100, 200],
                                      eval_vals=[1.0, 1.5])) == []
