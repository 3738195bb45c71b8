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
