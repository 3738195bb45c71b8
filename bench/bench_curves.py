"""Curve-diagnosis quality: precision and recall of every curve rule on a labelled corpus
of generated curves (tests/curvecorpus.py), the fixture runs and ../shared/wild-runs, plus
the time of the curve analysis on long curves.

    .venv/bin/python bench/bench_curves.py [--seeds 20] [--families a,b] [--show-misses]

Scoring (per rule): a finding counts when it is at least a warning (info for rules whose
default is info); tp = fired with its step inside the truth's window, late = fired with
the step outside it, fn = did not fire, fp = fired where the truth does not have it.
precision = tp / (tp + fp + late), recall = tp / (tp + fn + late).

Two properties are checked on every generated case, fixture run and wild run: no run whose
train loss ends (median of its last tenth) >= 2x its minimum (a running median over a tenth
of its points), or whose eval loss ends >= 1.3x its
best while the train loss falls, is reported healthy.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import curvecorpus as cc  # noqa: E402
from lorascope.pipeline import run_rules  # noqa: E402
from lorascope.diagnose import diagnose  # noqa: E402
from lorascope.rules.registry import load_catalog  # noqa: E402


def findings_of(run, catalog):
    fs, errors = run_rules(run, catalog)
    if errors:
        raise RuntimeError("; ".join(errors[:2]))
    return diagnose(run, fs, catalog)


def real_runs():
    dirs = []
    fx = ROOT / "fixtures" / "runs"
    if fx.is_dir():
        dirs += sorted(p for p in fx.iterdir() if p.is_dir())
    wild = ROOT.parent / "shared" / "wild-runs"
    if wild.is_dir():
        dirs += sorted(p for p in wild.iterdir() if p.is_dir())
    return dirs


def timing(catalog, n: int = 1_000_000, reps: int = 3) -> float:
    from lorascope import curves
    best = float("inf")
    for r in range(reps):
        case = cc.make_case("div_after", seed=r, n=n, interval=1)
        t0 = time.perf_counter()
        curves.analyze_curves(case.run, catalog)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--families", default=None)
    ap.add_argument("--show-misses", action="store_true")
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args()
    catalog = load_catalog()
    fams = args.families.split(",") if args.families else None
    tally: dict[str, Counter] = defaultdict(Counter)
    fam_tally: dict[str, Counter] = defaultdict(Counter)
    misses = []
    props = []
    t0 = time.perf_counter()
    ncases = 0
    for fam in (fams or list(cc.GENERATORS)):
        for s in range(args.start, args.start + args.seeds):
            case = cc.make_case(fam, s)
            ncases += 1
            fs = findings_of(case.run, catalog)
            res = cc.score(case, fs)
            for rule, outcome in res.items():
                tally[rule][outcome] += 1
                fam_tally[fam][outcome] += 1
                if outcome != "tp":
                    got = [(f.rule, f.severity, f.step) for f in fs if f.rule in cc.CURVE_RULES]
                    misses.append((case.name, case.n, case.interval, rule, outcome,
                                   case.truth.get(rule), got))
            if not res:
                fam_tally[fam]["tn"] += 1
            for v in cc.property_violations(case.run, fs):
                props.append((case.name, v))
    dt = time.perf_counter() - t0
    print(f"{ncases} generated cases in {dt:.1f} s")
    print(f"{'rule':18s} {'tp':>5s} {'fn':>5s} {'late':>5s} {'fp':>5s} {'precision':>10s} {'recall':>8s}")
    worst = 1.0
    for rule in cc.CURVE_RULES:
        c = tally.get(rule, Counter())
        tp, fn, late, fp = c["tp"], c["fn"], c["late"], c["fp"]
        prec = tp / (tp + fp + late) if tp + fp + late else float("nan")
        rec = tp / (tp + fn + late) if tp + fn + late else float("nan")
        for x in (prec, rec):
            if not math.isnan(x):
                worst = min(worst, x)
        print(f"{rule:18s} {tp:5d} {fn:5d} {late:5d} {fp:5d} {prec:10.3f} {rec:8.3f}")
    print("by family (outcomes of the rules scored on it):")
    for fam, c in fam_tally.items():
        print(f"  {fam:22s} " + " ".join(f"{k}={v}" for k, v in sorted(c.items())))
    if args.show_misses:
        for m in misses:
            print("  miss:", m)
    print(f"property violations on generated cases: {len(props)}")
    for p in props[:20]:
        print("  ", p)
    if not args.no_real:
        from lorascope.pipeline import analyze
        rp = []
        t1 = time.perf_counter()
        dirs = real_runs()
        for d in dirs:
            a = analyze(d)
            for v in cc.property_violations(a.run, a.findings):
                rp.append((d.name, v))
        print(f"{len(dirs)} fixture and wild runs in {time.perf_counter() - t1:.1f} s; "
              f"property violations: {len(rp)}")
        for p in rp:
            print("  ", p)
    if not args.no_timing:
        print(f"curve analysis of a 1M-point curve: {timing(catalog):.3f} s (best of 3)")
    print(f"worst precision/recall: {worst:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
