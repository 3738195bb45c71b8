import numpy as np

from curves import alarms, check, decay, make_run


def _grad(n=1000, seed=0):
    return 0.4 * np.exp(np.random.default_rng(seed).normal(0, 0.3, n))


def test_grad_explosion_fires_at_the_jump():
    g = _grad()
    g[700:] *= 200
    (f,) = alarms("grad.explosion", make_run(np.exp(decay(1000)), grad=g))
    assert f.severity == "critical" and abs(f.step - 701) <= 2


def test_healthy_and_bimodal_grad_norms_are_silent():
    assert alarms("grad.explosion", make_run(np.exp(decay(1000)), grad=_grad())) == []
    g = _grad()
    g[::7] *= 80      # a norm that keeps jumping between two levels (GRPO-like)
    assert [f for f in alarms("grad.explosion", make_run(np.exp(decay(1000)), grad=g))
            if f.severity == "critical"] == []


def test_isolated_huge_point_is_a_warning_and_nonfinite_is_ignored():
    g = _grad()
    g[500] *= 1000
    g[300] = np.inf
    (f,) = check("grad.explosion", make_run(np.exp(decay(1000)), grad=g))
    assert f.severity == "warning" and f.step == 501 and "isolated" in f.title


def test_point_inside_the_runs_recurring_range_is_not_an_explosion():
    # a preference run: grad_norm flips between ~0.001 and ~0.1 throughout (hf-agent-redteam);
    # one upper-mode point at 0.15 after a calm stretch is x100 its neighbours, not a spike
    rng = np.random.default_rng(1)
    g = 0.001 * np.exp(rng.normal(0, 0.3, 200))
    g[rng.choice(np.arange(5, 200), 20, replace=False)] = rng.uniform(0.06, 0.12, 20)
    g[120:140] = 0.001
    g[130] = 0.15
    assert check("grad.explosion", make_run(np.exp(decay(200)), grad=g)) == []
    # a memorised run whose rare unfitted batch brings back the norm it started with
    # (peft-unsloth-5hiri-b: 2.6 at step 1, ~0.007, then 2.3 and 2.4 at steps 40 and 42)
    g = np.r_[np.geomspace(2.6, 0.01, 20), np.full(40, 0.007)] * np.exp(rng.normal(0, 0.2, 60))
    g[[39, 41]] = [2.3, 2.4]
    assert check("grad.explosion", make_run(np.exp(decay(60)), grad=g)) == []
    # the same point far above everything the run ever logged is still reported
    g[39] = 300.0
    (f,) = check("grad.explosion", make_run(np.exp(decay(60)), grad=g))
    assert f.severity == "warning" and f.step == 40
