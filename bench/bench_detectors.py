"""Detector quality bench: synthetic curves with known faults -> precision, recall,
step error of every curve rule, critical findings on healthy curves, and timing.

    .venv/bin/python bench/bench_detectors.py [--seeds 40] [--quick]

Curves: exponential decay ``a + b*exp(-t/tau)`` with multiplicative log-normal noise
(2% to 30%), a short warmup bump, rare heavy-tailed outliers and 1-5 epochs; faults are
injected at a known step. Info findings do not count as detections.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lorascope.model import Config, Run, Series, StepInfo  # noqa: E402
from lorascope.rules.registry import REGISTRY, load_catalog, load_rule_modules, params_for  # noqa: E402

CURVE_RULES = ["loss.nonfinite", "loss.spike", "loss.divergence", "loss.plateau",
               "loss.oscillation", "loss.epoch_jump", "overfit", "eval.missing", "grad.explosion"]
NOISES = (0.02, 0.05, 0.1, 0.2, 0.3)
LENGTHS = (60, 300, 2000, 10000)


# -- curve generators -------------------------------------------------------------------

def base_curve(rng, n, noise):
    t = np.arange(n, dtype=float)
    a = rng.uniform(0.3, 1.5)
    b = a * rng.uniform(0.8, 3.0)
    tau = n * rng.uniform(0.05, 0.2)
    logl = np.log(a + b * np.exp(-t / tau))
    # short warmup bump in the first 3%
    if rng.random() < 0.5:
        wu = max(2, int(0.03 * n))
        logl[:wu] += np.log(rng.uniform(1.02, 1.15)) * np.sin(np.linspace(0, np.pi, wu))
    eps = rng.normal(0, noise, n)
    # rare heavy-tailed single-point outliers (a hard batch), up to x1.8
    k = rng.random(n) < 0.01
    eps[k] += np.abs(rng.normal(0, 0.3, k.sum()))
    return t, logl, eps


def epochs_for(rng, n, lo=1, hi=5):
    ne = int(rng.integers(lo, hi + 1))
    spe = n // ne
    return [int(e * spe) + 1 for e in range(1, ne) if e * spe + 1 < n], spe


def make_run(loss, *, eval_steps=None, eval_vals=None, grad=None, bounds=(), config=None,
             task="llm", steps=None, name="bench"):
    n = len(loss)
    st = np.arange(1, n + 1, dtype=np.int64) if steps is None else steps
    series = [Series("train/loss", "train_loss", st, np.asarray(loss, dtype=float))]
    if eval_vals is not None:
        series.append(Series("eval/loss", "eval_loss", np.asarray(eval_steps, dtype=np.int64),
                             np.asarray(eval_vals, dtype=float)))
    if grad is not None:
        series.append(Series("train/grad_norm", "grad_norm", st, np.asarray(grad, dtype=float)))
    cfg = Config(values=dict(config or {}))
    return Run(path=name, name=name, task=task, series=series, config=cfg,
               epoch_boundaries=list(bounds), steps=StepInfo(int(st[0]), int(st[-1]), int(st[-1])))


def healthy_grad(rng, n):
    t = np.arange(n)
    lvl = 0.4 * (1 + 2 * np.exp(-t / (0.1 * n)))
    return lvl * np.exp(rng.normal(0, 0.3, n))


def scenario(kind, rng, n, noise):
    """Returns (run, expected {rule: gt_step or None})."""
    t, logl, eps = base_curve(rng, n, noise)
    bounds, spe = epochs_for(rng, n)
    grad = healthy_grad(rng, n)
    exp = {}
    cfg = {}
    ev_steps = ev_vals = None
    if kind == "healthy":
        pass
    elif kind == "healthy_rl":       # GRPO-like: near zero, negative, noisy
        vals = rng.normal(0.0, 0.02, n) + 0.01 * np.sin(t / n * 6)
        vals[rng.random(n) < 0.02] += rng.normal(0, 0.08)
        return make_run(vals, grad=grad, bounds=bounds), {}
    elif kind == "healthy_gradaccum":  # some points logged as loss * grad_accum
        g = int(rng.choice([4, 8, 16]))
        cfg["grad_accum"] = g
        vals = np.exp(logl + eps)
        idx = rng.choice(n, size=max(1, n // 50), replace=False)
        vals[idx] *= g
        return make_run(vals, grad=grad, bounds=bounds, config=cfg), {}
    elif kind in ("spike_recover", "spike_stay"):
        t0 = int(rng.uniform(0.3, 0.8) * n)
        f = max(math.log(rng.uniform(2.5, 8.0)), 5 * noise)
        if kind == "spike_recover":
            d = int(rng.uniform(max(5, 0.01 * n), max(6, 0.08 * n)))
            logl[t0:t0 + d] += f
        else:
            logl[t0:] += f
        exp["loss.spike"] = t0 + 1
        bounds = []
    elif kind == "plateau":
        c = rng.uniform(0.5, 3.0)
        logl = np.full(n, math.log(c)) - np.linspace(0, rng.uniform(0, 0.01), n)
        exp["loss.plateau"] = 1
    elif kind == "divergence":
        t0 = int(rng.uniform(0.3, 0.7) * n)
        total = math.log(rng.uniform(3.0, 20.0))
        logl[t0:] += total * (t[t0:] - t0) / (n - t0)
        exp["loss.divergence"] = t0 + 1
        bounds = []
    elif kind == "epoch_jump":
        bounds, spe = epochs_for(rng, n, 3, 6)
        f = max(-math.log(rng.uniform(0.5, 0.75)), 3 * noise)
        f = -f if rng.random() < 0.7 else f
        for b in bounds:
            logl[b - 1:] += f
        exp["loss.epoch_jump"] = bounds[0]
    elif kind == "oscillation":
        amp = max(rng.uniform(0.25, 0.5), 2 * noise)
        per = max(10.0, n / rng.uniform(6, 25))
        logl += amp * np.sin(2 * np.pi * t / per + rng.uniform(0, 6.28))
        exp["loss.oscillation"] = None
    elif kind == "overfit":
        m = 100
        ev_steps = np.linspace(n / m, n, m).astype(int)
        te = ev_steps.astype(float)
        t0 = int(rng.uniform(0.3, 0.7) * n)
        a = rng.uniform(0.8, 1.5)
        tau = n * rng.uniform(0.03, 0.08)
        rise = math.log(rng.uniform(1.15, 1.6))
        ev = np.log(a + a * np.exp(-te / tau)) + rise * np.clip(te - t0, 0, None) / (n - t0)
        ev_vals = np.exp(ev + rng.normal(0, rng.uniform(0.005, 0.02), m))
        exp["overfit"] = t0
    elif kind == "grad_explosion":
        t0 = int(rng.uniform(0.2, 0.8) * n)
        grad[t0:] *= rng.uniform(30, 1000)
        exp["grad.explosion"] = t0 + 1
    elif kind == "nonfinite":
        t0 = int(rng.uniform(0.2, 0.9) * n)
        vals = np.exp(logl + eps)
        vals[t0:] = np.nan
        return make_run(vals, grad=grad, bounds=bounds), {"loss.nonfinite": t0 + 1}
    elif kind == "hidden_nan":
        t0 = int(rng.uniform(0.2, 0.9) * n)
        vals = np.exp(logl + eps)
        grad[t0:] = np.nan
        vals[t0:] = 0.0 if rng.random() < 0.5 else vals[t0:]
        # a flat 0.0 tail is also a plateau-free, spike-free curve for the other rules
        return make_run(vals, grad=grad, bounds=bounds), {"loss.nonfinite": t0 + 1}
    elif kind == "fp16_skips":      # isolated inf grad norms, finite loss: not a NaN loss
        grad[rng.choice(n, size=3, replace=False)] = np.inf
    elif kind == "eval_missing":
        cfg.update(eval_strategy="steps", eval_steps=max(1, n // 10))
        exp["eval.missing"] = None
    elif kind == "eval_present":
        cfg.update(eval_strategy="steps", eval_steps=max(1, n // 10))
        ev_steps = np.arange(n // 10, n + 1, max(1, n // 10))
        ev_vals = np.exp(logl[ev_steps - 1] + 0.05)
    vals = np.exp(logl + eps)
    return make_run(vals, eval_steps=ev_steps, eval_vals=ev_vals, grad=grad, bounds=bounds,
                    config=cfg), exp


KINDS = ["healthy", "healthy_rl", "healthy_gradaccum", "spike_recover", "spike_stay", "plateau",
         "divergence", "epoch_jump", "oscillation", "overfit", "grad_explosion", "nonfinite",
         "hidden_nan", "fp16_skips", "eval_missing", "eval_present"]
HEALTHY = {"healthy", "healthy_rl", "healthy_gradaccum", "fp16_skips", "eval_present"}


def run_rules(run, catalog):
    out = []
    for rid in CURVE_RULES:
        spec = REGISTRY[rid]
        p = params_for(rid, catalog)
        roles = [x for x in spec.needs if x in ("train_loss", "eval_loss", "grad_norm", "lr")]
        if any(run.primary(r) is None for r in roles):
            continue
        out.extend(spec.func(run, p))
    return out


def quality(seeds: int, lengths=LENGTHS, verbose=False):
    load_rule_modules()
    catalog = load_catalog()
    tp, fp, fn = defaultdict(int), defaultdict(int), defaultdict(int)
    errs = defaultdict(list)
    healthy_crit = healthy_warn = healthy_runs = 0
    fp_examples = defaultdict(list)
    misses = defaultdict(int)
    for kind in KINDS:
        for n in lengths:
            for noise in NOISES:
                for seed in range(seeds):
                    rng = np.random.default_rng(zlib.crc32(repr((kind, n, noise, seed)).encode()))
                    run, exp = scenario(kind, rng, n, noise)
                    found = [f for f in run_rules(run, catalog) if f.severity != "info"]
                    fired = {f.rule: f for f in found}
                    for rid in CURVE_RULES:
                        if rid in exp and rid in fired:
                            tp[rid] += 1
                            if exp[rid] is not None and fired[rid].step is not None:
                                span = max(1, run.steps.last - run.steps.first)
                                errs[rid].append(100 * abs(fired[rid].step - exp[rid]) / span)
                        elif rid in exp:
                            fn[rid] += 1
                            misses[(rid, n)] += 1
                            if verbose:
                                fp_examples["FN " + rid].append((kind, n, noise, seed))
                        elif rid in fired:
                            fp[rid] += 1
                            fp_examples[rid].append((kind, n, noise, seed, fired[rid].title))
                    if kind in HEALTHY:
                        healthy_runs += 1
                        healthy_crit += sum(f.severity == "critical" for f in found)
                        healthy_warn += sum(f.severity == "warning" for f in found)
    rows = []
    for rid in CURVE_RULES:
        P = tp[rid] / max(1, tp[rid] + fp[rid])
        R = tp[rid] / max(1, tp[rid] + fn[rid])
        med = statistics.median(errs[rid]) if errs[rid] else None
        rows.append((rid, tp[rid], fp[rid], fn[rid], P, R, med))
    fp_examples["misses by (rule, length)"] = sorted(misses.items())
    return rows, healthy_runs, healthy_crit, healthy_warn, fp_examples


def timing(sizes=(10_000, 100_000, 1_000_000)):
    load_rule_modules()
    catalog = load_catalog()
    out = []
    for n in sizes:
        rng = np.random.default_rng(n)
        t, logl, eps = base_curve(rng, n, 0.1)
        bounds, _ = epochs_for(rng, n, 3, 3)
        m = 200
        ev_steps = np.linspace(n / m, n, m).astype(int)
        run = make_run(np.exp(logl + eps), eval_steps=ev_steps, eval_vals=np.exp(logl[ev_steps - 1]),
                       grad=healthy_grad(rng, n), bounds=bounds,
                       config={"eval_strategy": "steps", "eval_steps": n // m})
        t0 = time.perf_counter()
        run_rules(run, catalog)
        out.append((n, time.perf_counter() - t0))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="2 seeds, lengths up to 2000")
    ap.add_argument("-v", action="store_true")
    a = ap.parse_args(argv)
    seeds = 2 if a.quick else a.seeds
    lengths = LENGTHS[:3] if a.quick else LENGTHS
    t0 = time.perf_counter()
    rows, hr, hc, hw, ex = quality(seeds, lengths, a.v)
    print(f"{len(KINDS)} scenarios x {len(lengths)} lengths {lengths} x {len(NOISES)} noise levels "
          f"x {seeds} seeds ({time.perf_counter() - t0:.0f} s)\n")
    print("| rule | TP | FP | FN | precision | recall | median step error (% of run) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for rid, tp, fp, fn, P, R, med in rows:
        print(f"| `{rid}` | {tp} | {fp} | {fn} | {P:.3f} | {R:.3f} | "
              f"{'-' if med is None else f'{med:.2f}'} |")
    print(f"\nhealthy curves: {hr}; critical findings on them: {hc}; warnings: {hw}")
    print("misses by (rule, points):", ", ".join(f"{r}@{n}: {c}" for (r, n), c in ex["misses by (rule, length)"]))
    if a.v:
        for k, v in ex.items():
            print(k, len(v), v[:6])
    print("\n| points | time to run all curve rules |")
    print("|---:|---:|")
    for n, s in timing():
        print(f"| {n:,} | {s:.2f} s |")


if __name__ == "__main__":
    main()
