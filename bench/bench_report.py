"""HTML report size and render time for a long run, in one process run.

    .venv/bin/python bench/bench_report.py [--steps 100000]

Builds a run with N logged steps (trainer_state.json written by transformers'
TrainerState, with a loss spike at 60%), times `lorascope analyze` (build + rules +
HTML), then opens the report in headless Chromium (Debian's, driven by playwright)
and times navigation to the `load` event and to the first contentful paint. For
comparison it times the same page with the timeline chart as a PNG image written
by matplotlib's default backend (what a notebook user would make).
"""
from __future__ import annotations

import argparse
import base64
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_run(d: Path, n: int) -> None:
    from transformers import TrainerState
    rng = np.random.default_rng(0)
    steps = np.arange(1, n + 1)
    loss = 2.0 * np.exp(-steps / (n / 5)) + 0.3 + 0.02 * rng.standard_normal(n)
    loss[int(n * 0.6):] += 1.5
    st = TrainerState()
    st.log_history = [{"step": int(s), "epoch": float(s) / (n / 4), "loss": round(float(v), 4),
                       "learning_rate": 1e-4, "grad_norm": 0.5} for s, v in zip(steps, loss)]
    st.max_steps = n
    st.global_step = n
    st.logging_steps = 1
    d.mkdir(parents=True)
    st.save_to_json(str(d / "trainer_state.json"))


def render_times(html: Path, repeats: int = 3) -> tuple[float, float]:
    from playwright.sync_api import sync_playwright
    exe = shutil.which("chromium")
    loads, fcps = [], []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=[
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
    args = ap.parse_args()
    from lorascope.analyze import analyze, report_document
    from lorascope.report.html import render_html, write_html
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = tmp / "long-run"
        t = time.perf_counter()
        make_run(run, args.steps)
        print(f"input: {args.steps} logged steps, written in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        a = analyze(run)
        t_an = time.perf_counter() - t
        doc = report_document(a)
        t = time.perf_counter()
        html = write_html(a, doc, tmp / "report.html")
        t_html = time.perf_counter() - t
        size = html.stat().st_size
        # the alternative: the same page with a PNG chart of every point
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        s = a.run.primary("train_loss")
        fig, ax = plt.subplots(figsize=(10, 3.6))
        ax.plot(s.steps, s.values, lw=0.6)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        png = "<img src='data:image/png;base64," + base64.b64encode(buf.getvalue()).decode() + "'>"
        text = render_html(a, doc)
        start = text.find("<svg")
        end = text.find("</svg>", start) + len("</svg>")
        alt = tmp / "report-png.html"
        alt.write_text(text[:start] + png + text[end:])
        print(f"analyze (build + rules): {t_an:.2f} s; HTML written in {t_html:.2f} s; "
              f"findings: {[f.rule for f in a.findings]}")
        print(f"report size: {size / 1e6:.2f} MB (target < 3 MB)")
        if shutil.which("chromium") is None:
            print("no chromium: render time not measured")
            return
        load, fcp = render_times(html)
        load2, fcp2 = render_times(alt)
        print("| page | size MB | load s | first paint s |")
        print("|---|---:|---:|---:|")
        print(f"| lorascope report (SVG charts) | {size / 1e6:.2f} | {load:.2f} | {fcp:.2f} |")
        print(f"| same page, full-resolution PNG chart | {alt.stat().st_size / 1e6:.2f} | {load2:.2f} | {fcp2:.2f} |")
        print(f"load time / 2 s target: {load / 2:.2f}; ratio to the PNG page: {load / load2:.2f}")


if __name__ == "__main__":
    main()
