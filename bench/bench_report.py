"""HTML reports and batch speed, measured side by side in one process run.

    .venv/bin/python bench/bench_report.py [--steps 100000] [--repeats 3] [--no-browser]
                                           [--wild ../shared/wild-runs] [--synthetic 12]
                                           [--synthetic-steps 100000]
                                           [--baseline ../main]

1. Rendering one report beyond analysis (``render_html`` after ``analyze``): a fixture
   -size run (100 steps) and a long run (N logged steps in a ``trainer_state.json``
   written by transformers' ``TrainerState``, a loss spike at 60 %), median of several
   renders; and the long run's page size.
2. ``lorascope analyze`` on the wild runs (../shared/wild-runs, 80 real run folders) as
   subprocesses: without HTML against with HTML (``--html DIR``: one page per run and
   the index), and ``--jobs 1`` against ``--jobs 2``.  Each configuration is run
   ``--repeats`` times, the configurations interleaved, best time kept (the machine is
   shared).
3. ``--jobs 1`` against ``--jobs 2`` on a batch where analysis outweighs the start-up
   (``--synthetic`` runs of ``--synthetic-steps`` logged steps each).  Every command's
   CPU time (its own and its workers') is shown beside its wall time: on a shared machine
   other people's jobs inflate the wall time of two workers first.
4. With Chromium: load time and first contentful paint of the long run's page.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_run(d: Path, n: int, seed: int = 0, lr: float = 1e-4, spike: float = 0.6) -> None:
    from transformers import TrainerState
    rng = np.random.default_rng(seed)
    steps = np.arange(1, n + 1)
    loss = 2.0 * np.exp(-steps / (n / 5)) + 0.3 + 0.02 * rng.standard_normal(n)
    if spike:
        loss[int(n * spike):] += 1.5
    st = TrainerState()
    st.log_history = [{"step": int(s), "epoch": float(s) / (n / 4), "loss": round(float(v), 4),
                       "learning_rate": lr, "grad_norm": 0.5} for s, v in zip(steps, loss)]
    st.max_steps = n
    st.global_step = n
    st.logging_steps = 1
    d.mkdir(parents=True)
    st.save_to_json(str(d / "trainer_state.json"))


def render_ms(run: Path, repeats: int = 15) -> tuple[float, float, int]:
    """(analysis s, median render ms, page bytes) for one run, in this process."""
    from lorascope.pipeline import analyze, report_document
    from lorascope.report.html import render_html
    t = time.perf_counter()
    a = analyze(run)
    t_an = time.perf_counter() - t
    doc = report_document(a)
    render_html(a, doc)                        # templates compiled, scripts hashed: once per process
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        page = render_html(a, doc)
        times.append((time.perf_counter() - t) * 1000)
    return t_an, statistics.median(times), len(page.encode("utf-8"))


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cli_time(runs: list[Path], args: list[str], out: Path, root: Path = ROOT) -> tuple[float, float]:
    """(wall s, CPU s) of one ``lorascope analyze``: the CPU time counts the command and
    the workers it waited for (a shared machine inflates the wall time, not the CPU)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    env.pop("LORASCOPE_STRICT", None)
    if out.exists():
        shutil.rmtree(out)
    c = _children_cpu()
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "lorascope.cli", "analyze", *map(str, runs), "--format", "json",
                        "--fail-on", "never", *args], env=env, capture_output=True, text=True, cwd=out.parent)
    dt = time.perf_counter() - t
    if r.returncode not in (0, 2):
        raise SystemExit(f"analyze failed ({r.returncode}): {r.stderr[-500:]}")
    return dt, _children_cpu() - c


def compare(runs: list[Path], configs: dict[str, list[str]], tmp: Path, repeats: int,
            baseline: Path | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Best wall time and best CPU time of each configuration (and of each with the
    ``baseline`` checkout's code, key suffixed " (baseline)"), configurations interleaved."""
    roots = [("", ROOT)] + ([(" (baseline)", baseline)] if baseline else [])
    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for _ in range(repeats):
        for name, args in configs.items():
            for suffix, root in roots:
                a = [x.replace("{out}", str(tmp / "html")) for x in args]
                t, c = cli_time(runs, a, tmp / "html", root)
                best[name + suffix] = min(best.get(name + suffix, float("inf")), t)
                cpu[name + suffix] = min(cpu.get(name + suffix, float("inf")), c)
    return best, cpu


def browser_times(html: Path, repeats: int = 3) -> tuple[float, float]:
    from playwright.sync_api import sync_playwright
    loads, fcps = [], []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        for _ in range(repeats):
            page = b.new_page(viewport={"width": 1280, "height": 900})
            t = time.perf_counter()
            page.goto(html.as_uri(), wait_until="load")
            loads.append(time.perf_counter() - t)
            fcp = page.evaluate("() => (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null")
            if fcp:
                fcps.append(fcp / 1000)
            page.close()
        b.close()
    return min(loads), (min(fcps) if fcps else float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--wild", type=Path, default=ROOT.parent / "shared" / "wild-runs")
    ap.add_argument("--synthetic", type=int, default=12, help="runs for the jobs comparison (0: skip)")
    ap.add_argument("--synthetic-steps", type=int, default=100_000, help="logged steps of each of those runs")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout (e.g. the main branch) timed on the same batches, interleaved")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. one report, beyond analysis
        long_run = tmp / "long-run"
        make_run(long_run, args.steps)
        rows = []
        fixture = ROOT / "fixtures" / "runs" / "hf-lr-diverge"
        for label, run in (("fixture hf-lr-diverge (100 steps)", fixture), (f"{args.steps:,} logged steps", long_run)):
            if run.is_dir():
                t_an, ms, size = render_ms(run)
                rows.append((label, t_an, ms, size))
        print("\n| run | analysis s | render ms (median) | page KB |")
        print("|---|---:|---:|---:|")
        for label, t_an, ms, size in rows:
            print(f"| {label} | {t_an:.2f} | {ms:.1f} | {size / 1e3:.0f} |")
        print(f"target: render < 50 ms; long-run page < 1 MB ({rows[-1][3] / 1e6:.2f} MB)")

        # 2. the wild runs: HTML or not, 1 or 2 jobs; the start-up alone (one run)
        wild = sorted(p for p in args.wild.iterdir() if p.is_dir()) if args.wild.is_dir() else []
        if wild:
            configs = {"--no-html --jobs 1": ["--no-html", "--jobs", "1"],
                       "--html DIR --jobs 1": ["--html", "{out}", "--jobs", "1"],
                       "--no-html --jobs 2": ["--no-html", "--jobs", "2"],
                       "--html DIR --jobs 2": ["--html", "{out}", "--jobs", "2"]}
            best, cpu = compare(wild, configs, tmp, args.repeats, args.baseline)
            one, one_cpu = compare(wild[:1], {"one run, --no-html": ["--no-html"]}, tmp, args.repeats,
                                   args.baseline)
            best.update(one)
            cpu.update(one_cpu)
            print(f"\n{len(wild)} wild runs, `lorascope analyze` (subprocess, best of {args.repeats}; "
                  f"CPU: the command and its workers):\n")
            print("| command | wall s | CPU s |")
            print("|---|---:|---:|")
            for k, v in sorted(best.items(), key=lambda kv: ("baseline" in kv[0], kv[0])):
                print(f"| `{k}` | {v:.2f} | {cpu[k]:.2f} |")
            print(f"\nHTML / no HTML: jobs 1 {best['--html DIR --jobs 1'] / best['--no-html --jobs 1']:.2f}x, "
                  f"jobs 2 {best['--html DIR --jobs 2'] / best['--no-html --jobs 2']:.2f}x (target <= 1.5x)")
            print(f"jobs 2 / jobs 1: no HTML {best['--no-html --jobs 2'] / best['--no-html --jobs 1']:.2f}, "
                  f"HTML {best['--html DIR --jobs 2'] / best['--html DIR --jobs 1']:.2f} (below 1: faster)")
            print(f"start-up (one run) is {best['one run, --no-html'] / best['--no-html --jobs 1']:.0%} "
                  f"of the 80-run time without HTML: only the rest can be shared by workers")
            if args.baseline:
                b = " (baseline)"
                print(f"baseline: HTML / no HTML {best['--html DIR --jobs 1' + b] / best['--no-html --jobs 1' + b]:.2f}x, "
                      f"jobs 2 / jobs 1 {best['--no-html --jobs 2' + b] / best['--no-html --jobs 1' + b]:.2f}")
        else:
            print(f"\nno wild runs at {args.wild}: batch comparison skipped")

        # 3. jobs on a batch where analysis outweighs the start-up
        if args.synthetic:
            batch = []
            for i in range(args.synthetic):
                d = tmp / "synthetic" / f"run{i:02d}"
                make_run(d, args.synthetic_steps, seed=i, lr=1e-4 * (i + 1), spike=0.6 if i % 3 == 0 else 0)
                batch.append(d)
            best, cpu = compare(batch, {"--no-html --jobs 1": ["--no-html", "--jobs", "1"],
                                        "--no-html --jobs 2": ["--no-html", "--jobs", "2"]}, tmp, args.repeats,
                                args.baseline)
            for suffix in ("", " (baseline)") if args.baseline else ("",):
                j1, j2 = best["--no-html --jobs 1" + suffix], best["--no-html --jobs 2" + suffix]
                print(f"\n{len(batch)} runs of {args.synthetic_steps:,} steps{suffix}: jobs 1 {j1:.2f} s "
                      f"(CPU {cpu['--no-html --jobs 1' + suffix]:.2f}), jobs 2 {j2:.2f} s "
                      f"(CPU {cpu['--no-html --jobs 2' + suffix]:.2f}): speed-up {j1 / j2:.2f}x")

        # 4. the long run's page in a browser
        if not args.no_browser and shutil.which("chromium"):
            from lorascope.pipeline import analyze, report_document
            from lorascope.report.html import write_html
            a = analyze(long_run)
            page = write_html(a, report_document(a), tmp / "long.html")
            load, fcp = browser_times(page)
            print(f"\nlong-run page in Chromium: load {load:.2f} s, first contentful paint {fcp:.2f} s")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
