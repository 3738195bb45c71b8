"""The curve-analysis stage on the failure classes of issue 13, each built the way it shows
up in a real run, and the labelled corpus (tests/curvecorpus.py) scored per rule."""
import math
import re
from collections import Counter, defaultdict

import numpy as np
import pytest

import curvecorpus as cc
from curves import CATALOG, alarms, check, decay, make_run
from lorascope.pipeline import run_rules
from lorascope.curves import analyze_curves
from lorascope.diagnose import diagnose, verdict
from lorascope.model import Series


def _findings(run, catalog=CATALOG):
    fs, errors = run_rules(run, catalog)
    assert not errors
    return diagnose(run, fs, catalog)


def test_a_loss_that_climbs_from_its_first_points_diverged():
    # ten logged points, constant lr 5e-3: 1.0 -> 30, no earlier fall, no long curve
    v = np.array([0.997, 4.35, 8.81, 13.5, 15.7, 15.0, 18.8, 20.8, 25.6, 29.6])
    steps = np.arange(10, 101, 10)
    run = make_run(v, steps=steps, config={"learning_rate": 5e-3})
    (f,) = alarms("loss.divergence", run)
    assert f.severity == "critical" and f.step <= 30
    assert "climbed from its first logged points" in " ".join(f.evidence)
    assert alarms("loss.spike", run) == [] and alarms("loss.plateau", run) == []


def test_a_blow_up_that_partly_recovers_is_a_spike_and_the_eval_follows_it():
    # after warmup the loss triples over 15 points, takes 200 to come back and ends 30%
    # above its earlier level; the eval loss follows it (no overfitting claim)
    rng = np.random.default_rng(1)
    n = 600
    lvl = np.exp(decay(n, 0.0))
    t0 = 150
    lvl[t0:] = lvl[t0]
    f = np.zeros(n)
    f[t0:t0 + 15] = np.linspace(0, math.log(3), 15)
    f[t0 + 15:t0 + 215] = np.linspace(math.log(3), math.log(1.3), 200)
    f[t0 + 215:] = math.log(1.3)
    v = lvl * np.exp(f) * np.exp(rng.normal(0, 0.02, n))
    ev_steps = np.arange(30, n + 1, 30)
    ev = lvl[ev_steps - 1] * 1.1 * np.exp(f[ev_steps - 1])
    run = make_run(v, eval_steps=ev_steps, eval_vals=ev)
    fs = _findings(run)
    rules = {x.rule: x for x in fs if x.severity != "info"}
    assert set(rules) == {"loss.spike"}, [(x.rule, x.title) for x in fs]
    sp = rules["loss.spike"]
    assert abs(sp.step - (t0 + 1)) <= 3
    assert "partly recovered" in sp.title
    ended = float(re.search(r"\(x([0-9.]+) its earlier level\)", sp.title).group(1))
    assert 1.2 <= ended <= 1.4


@pytest.mark.parametrize("ratio,width", [(8, 1), (23, 1), (40, 3)])
def test_short_spikes_in_a_smooth_averaged_loss_are_found(ratio, width):
    rng = np.random.default_rng(2)
    v = np.exp(decay(400, 0.0)) * np.exp(rng.normal(0, 0.02, 400))
    v[250:250 + width] *= ratio
    (f,) = alarms("loss.spike", make_run(v))
    assert f.step == 251 and "recovered at once" in f.title and f.severity == "warning"
    assert verdict(_findings(make_run(v))) != "healthy"


def test_a_diffusion_per_step_loss_is_heavy_tailed_by_itself():
    # per-step SD loss: the random timestep spreads it over an order of magnitude; its own
    # extremes (8-15x its median) are not spikes
    for seed in range(20):
        case = cc.make_case("healthy_sd", seed, n=3000, interval=1)
        assert alarms("loss.spike", case.run) == [], seed


@pytest.mark.parametrize("period,amp,shape", [(12, 1.4, "sine"), (30, 1.55, "triangle"), (60, 1.7, "square")])
def test_oscillation_of_large_swings_is_found(period, amp, shape):
    rng = np.random.default_rng(3)
    n = 600
    t = np.arange(n)
    ph = 2 * np.pi * t / period
    w = {"sine": np.sin(ph), "triangle": 2 / np.pi * np.arcsin(np.sin(ph)), "square": np.sign(np.sin(ph))}[shape]
    v = np.exp(decay(n, 0.0) + math.log(amp) * w + rng.normal(0, 0.03, n))
    run = make_run(v)
    (f,) = alarms("loss.oscillation", run)
    assert f.step <= 1 + 2 * period
    # the waves are not reported as spikes or a divergence
    assert alarms("loss.spike", run) == [] and alarms("loss.divergence", run) == []


def test_overfitting_seen_with_five_evaluations():
    # a Whisper-style run: best eval at the first of five, then up 30% while train falls
    v = np.exp(decay(200, 0.01))
    run = make_run(v, eval_steps=[40, 80, 120, 160, 200], eval_vals=[0.307, 0.356, 0.421, 0.452, 0.468])
    (f,) = alarms("overfit", run)
    assert f.step == 40 and "0.307" in f.title


def test_named_eval_sets_are_eval_curves():
    # HF Trainer with a dict of eval datasets: eval_<name>_loss, one curve per set
    from lorascope.build import role_of
    assert role_of("eval_g0_loss") == "eval_loss" and role_of("eval/g3_loss") == "eval_loss"
    assert role_of("eval_runtime") == "other"
    v = np.exp(decay(300, 0.01))
    st = np.arange(30, 301, 30)
    run = make_run(v, extra_series=[
        Series("eval_g0_loss", "eval_loss", st, 1.1 * np.linspace(1.0, 4.0, 10)),
        Series("eval_g1_loss", "eval_loss", st, 1.3 * np.exp(-np.arange(10) / 20))])
    (f,) = alarms("overfit", run)
    assert "1 of 2 eval sets" in f.title and any("eval_g0_loss" in e for e in f.evidence)


def test_epoch_jumps_in_a_long_run_are_dated_at_the_first_boundary():
    rng = np.random.default_rng(4)
    n, ne = 20000, 10
    spe = n // ne
    f = np.ones(n)
    for b in range(spe, n, spe):
        f[b:] *= 0.75
    v = np.exp(decay(n, 0.0)) * f * np.exp(rng.normal(0, 0.03, n))
    bounds = [b + 1 for b in range(spe, n, spe)]
    (e,) = alarms("loss.epoch_jump", make_run(v, bounds=bounds))
    assert e.step == bounds[0] and "drops" in e.title


def test_nan_at_one_step_in_a_kohya_event_file(tmp_path):
    # a real SummaryWriter file in kohya's layout: loss/current, loss/average, loss/epoch
    SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter
    from lorascope.pipeline import analyze
    rng = np.random.default_rng(5)
    w = SummaryWriter(str(tmp_path / "log" / "20240101" / "network_train"))
    hist = []
    for step in range(1, 401):
        cur = float(0.1 * np.exp(rng.normal(0, 0.5)))
        if step == 250:
            cur = float("nan")
        hist.append(cur)
        w.add_scalar("loss/current", cur, step)
        w.add_scalar("loss/average", float(np.mean(hist[-40:])), step)
        if step % 40 == 0:
            w.add_scalar("loss/epoch", float(np.mean(hist[-40:])), step // 40)
    w.close()
    a = analyze(tmp_path)
    (f,) = [x for x in a.findings if x.rule == "loss.nonfinite"]
    assert f.step == 250 and f.severity == "critical"


def test_turning_spike_off_never_hides_a_jump():
    # a 4x jump that never recovers: with loss.spike off, the divergence symptom reports it
    y = decay(1000, 0.03, seed=6)
    y[600:] += math.log(4)
    run = make_run(np.exp(y))
    on = [f.rule for f in _findings(run) if f.severity != "info"]
    assert on == ["loss.spike"]
    cat = {k: dict(v) for k, v in CATALOG.items()}
    cat["loss.spike"]["severity"] = "off"
    off = [(f.rule, f.step) for f in _findings(run, cat) if f.severity != "info"]
    assert len(off) == 1 and off[0][0] == "loss.divergence" and abs(off[0][1] - 601) <= 3


def test_every_episode_has_one_owner_or_a_reason():
    for fam in cc.GENERATORS:
        case = cc.make_case(fam, 0)
        ca = analyze_curves(case.run, CATALOG)
        for e in ca.episodes:
            owners = [e.owner] if e.owner else []
            assert len(owners) <= 1
            if e.owner is None and e.candidates:
                assert e.absorbed_by is not None or e.why, (fam, e.kind)


def test_the_labelled_corpus_per_rule():
    """Precision and recall >= 0.95 for every curve rule on a fixed sample of the corpus
    (the bench runs more seeds and prints the table)."""
    tally = defaultdict(Counter)
    for fam in cc.GENERATORS:
        for seed in range(100, 108):
            case = cc.make_case(fam, seed)
            for rule, outcome in cc.score(case, _findings(case.run)).items():
                tally[rule][outcome] += 1
    for rule in cc.CURVE_RULES:
        c = tally[rule]
        prec = c["tp"] / max(1, c["tp"] + c["fp"] + c["late"])
        rec = c["tp"] / max(1, c["tp"] + c["fn"] + c["late"])
        assert prec >= 0.95 and rec >= 0.95, (rule, dict(c))


def test_no_run_that_ends_far_above_its_minimum_is_healthy():
    from curvecorpus import property_violations
    bad = []
    for fam in cc.FAULTS:
        for seed in range(100, 106):
            case = cc.make_case(fam, seed)
            bad += [(case.name, v) for v in property_violations(case.run, _findings(case.run))]
    assert bad == []


def test_edge_curves_never_crash():
    for v in ([], [1.0], [np.nan] * 30, [2.0] * 100, [1e30] * 100, list(-np.linspace(1, 2, 50)),
              [0.0] * 20, [1e-30, 1e30] * 10, [np.inf, 1.0, 2.0] * 5):
        run = make_run(np.asarray(v, dtype=float)) if len(v) else make_run(np.zeros(0))
        analyze_curves(run, CATALOG)
        for rid in ("loss.spike", "loss.divergence", "loss.oscillation", "grad.nonfinite"):
            check(rid, run)
