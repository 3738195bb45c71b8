"""Sample-image forensics: per-signal precision / recall on generated timelines, and speed.

1. Precision and recall of ``sample.broken``, ``sample.memorized``, ``sample.collapse`` and
   ``sample.drift`` on the cases of ``samplecorpus.py`` (known truth), at image sizes
   64 / 128 / 512 px and 2 / 4 / 8 prompts x 5 / 10 / 20 sample steps.  A case counts as
   detected when its truth rule fires; a rule firing on a case whose truth is another
   rule (or none) is a false positive (``sample.drift`` on a memorising or collapsing
   case too: those jumps are the other rules').  The step is right when it lies where the fault arrives (memorisation and
   collapse ramp in over 1-3 sample steps: any of them).
2. Speed: a kohya-style run folder with thousands of samples (PNG files named as
   sd-scripts names them, 512 px) and a dataset; ``build_run`` + the rules, against a
   plain Pillow loop that decodes every sample once (``Image.open(p).load()``), in this
   one process run.

    .venv/bin/python bench/bench_samples.py                  # both parts
    .venv/bin/python bench/bench_samples.py --cases 8 --speed 0
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lorascope.pipeline import run_rules  # noqa: E402
from lorascope.build import build_run  # noqa: E402
from lorascope.imagesim import signature  # noqa: E402
from lorascope.ingest.samples import features, image_features  # noqa: E402
from lorascope.model import DataItem, Dataset, Run, SampleImage  # noqa: E402
from lorascope.rules.registry import load_catalog  # noqa: E402
from samplecorpus import FAMILIES, TRUTH, _palette, evolve, make_case, random_scene, render  # noqa: E402

RULES = ("sample.broken", "sample.memorized", "sample.collapse", "sample.drift")
GRID = [(64, 4, 10), (128, 2, 5), (128, 4, 10), (128, 8, 20), (512, 4, 10)]


def case_run(case) -> Run:
    items = []
    for j, im in enumerate(case.train):
        items.append(DataItem(file=f"dataset/img_{j:03d}.png", signature=signature(im),
                              width=im.width, height=im.height))
    samples = []
    for k, strip in enumerate(case.strips):
        for i, pic in enumerate(strip):
            s = SampleImage(file=f"sample/x_{case.steps[i]:06d}_{k:02d}_20240101000000_42.png",
                            step=case.steps[i], prompt_index=k, seed=42)
            res = features(pic) if isinstance(pic, bytes) else image_features(pic)
            s.width, s.height, s.error, s.blank, s.noise, s.signature, s.thumb = res
            samples.append(s)
    ds = Dataset(kind="images", root="dataset", items=items)
    return Run(path="bench", name="bench", trainer="kohya", task="sd", samples=tuple(samples),
               datasets=(ds,))


def step_ok(case, f) -> bool:
    if f.step is None or case.truth_step is None:
        return False
    ramp = case.notes["ramp"] if case.family in ("memorize", "collapse") else 1
    i = case.steps.index(case.truth_step)
    lo = case.steps[max(0, i - ramp + 1)]
    return lo <= f.step <= case.truth_step


def accuracy(n_cases: int, catalog: dict) -> dict:
    stats = {r: {"tp": 0, "fp": 0, "fn": 0, "step_ok": 0} for r in RULES}
    fps: list[str] = []
    misses: list[str] = []
    total = 0
    for size, prompts, steps in GRID:
        for fam in FAMILIES:
            for seed in range(n_cases):
                case = make_case(fam, 1000 * size + 100 * prompts + 7 * seed + FAMILIES.index(fam),
                                 size=size, prompts=prompts, steps=steps)
                total += 1
                found, _ = run_rules(case_run(case), catalog)
                fired = {f.rule: f for f in found if f.rule in RULES}
                want = TRUTH.get(fam)
                for r in RULES:
                    if r == want:
                        if r in fired:
                            stats[r]["tp"] += 1
                            stats[r]["step_ok"] += step_ok(case, fired[r])
                        else:
                            stats[r]["fn"] += 1
                            misses.append(f"{r} missed: {fam} size {size} {prompts}x{steps} seed {seed}")
                    elif r in fired:
                        stats[r]["fp"] += 1
                        fps.append(f"{r} on {fam} size {size} {prompts}x{steps} seed {seed}: {fired[r].title}")
    return {"stats": stats, "cases": total, "fps": fps, "misses": misses}


def speed(n_samples: int, size: int, n_train: int, jobs: int | None) -> dict:
    rng = __import__("numpy").random.default_rng(0)
    pal = _palette(rng)
    tmp = Path(tempfile.mkdtemp(prefix="lorascope-bench-samples-"))
    try:
        (tmp / "sample").mkdir()
        (tmp / "dataset").mkdir()
        def png(im) -> bytes:
            buf = io.BytesIO()
            im.save(buf, "PNG")
            return buf.getvalue()
        # 8 prompts, each drawing its own picture that moves a little every 16 steps; 32
        # other pictures for the training set; PNG bytes made once and reused
        prompts = 8
        scenes = [random_scene(rng, pal) for _ in range(prompts)]
        frames = []
        for k in range(prompts):
            sc, fr = scenes[k], []
            for _ in range(16):
                fr.append(png(render(sc, size)))
                sc = evolve(sc, rng, 1.0)
            frames.append(fr)
        for n in range(n_samples):
            i, k = n // prompts, n % prompts
            (tmp / "sample" / f"bench_{i * 50:06d}_{k:02d}_20240101000000_{k}.png").write_bytes(
                frames[k][min(15, i * 16 // max(1, n_samples // prompts))])
        train = [png(render(random_scene(rng, pal), size)) for _ in range(32)]
        for j in range(n_train):
            (tmp / "dataset" / f"img_{j:03d}.png").write_bytes(train[j % 32])
        (tmp / "prompts.txt").write_text("".join(f"prompt {k} --d {k}\n" for k in range(prompts)))
        (tmp / "config.toml").write_text('output_name = "bench"\nnetwork_module = "networks.lora"\n'
                                         'network_dim = 4\ntrain_data_dir = "dataset"\n'
                                         'sample_prompts = "prompts.txt"\n')
        files = sorted((tmp / "sample").iterdir())
        t0, c0 = time.perf_counter(), _cpu()
        for p in files:
            with Image.open(p) as im:
                im.load()
        t_pillow, c_pillow = time.perf_counter() - t0, _cpu() - c0
        t0, c0 = time.perf_counter(), _cpu()
        run = build_run(tmp, jobs=jobs)
        t_build, c_build = time.perf_counter() - t0, _cpu() - c0
        t0 = time.perf_counter()
        found, errors = run_rules(run, load_catalog())
        t_rules = time.perf_counter() - t0
        thumbs = sum(len(s.thumb or b"") for s in run.samples)
        return {"samples": len(run.samples), "size": size, "train": n_train,
                "pillow_s": t_pillow, "build_s": t_build, "rules_s": t_rules,
                "pillow_cpu": c_pillow, "build_cpu": c_build,
                "thumb_bytes": thumbs, "errors": errors,
                "fired": sorted({f.rule for f in found if f.rule.startswith("sample.")})}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the decode workers)."""
    import resource
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=12, help="cases per family and grid point")
    ap.add_argument("--speed", type=int, default=3000, help="samples in the speed run (0: skip)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--show", type=int, default=10, help="false positives / misses to print")
    a = ap.parse_args()
    if a.cases:
        t0 = time.perf_counter()
        res = accuracy(a.cases, load_catalog())
        print(f"{res['cases']} cases ({len(FAMILIES)} families x {len(GRID)} grid points x "
              f"{a.cases}) in {time.perf_counter() - t0:.0f} s")
        print("| rule | TP | FP | FN | precision | recall | step right |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r, s in res["stats"].items():
            prec = s["tp"] / (s["tp"] + s["fp"]) if s["tp"] + s["fp"] else float("nan")
            rec = s["tp"] / (s["tp"] + s["fn"]) if s["tp"] + s["fn"] else float("nan")
            print(f"| {r} | {s['tp']} | {s['fp']} | {s['fn']} | {prec:.3f} | {rec:.3f} | "
                  f"{s['step_ok']}/{s['tp']} |")
        for line in res["fps"][:a.show]:
            print("  FP", line)
        for line in res["misses"][:a.show]:
            print("  FN", line)
    if a.speed:
        r = speed(a.speed, a.size, 200, a.jobs)
        print(f"\nspeed: {r['samples']} samples of {r['size']} px (+{r['train']} training images), "
              f"jobs={a.jobs or os.cpu_count()}")
        print(f"  pillow loop (decode each sample once): {r['pillow_s']:.2f} s wall, "
              f"{r['pillow_cpu']:.2f} s cpu")
        print(f"  lorascope build_run (samples + dataset + signatures): {r['build_s']:.2f} s wall "
              f"({r['build_s'] / r['pillow_s']:.2f}x the pillow loop), {r['build_cpu']:.2f} s cpu "
              f"({r['build_cpu'] / r['pillow_cpu']:.2f}x)")
        print(f"  rules: {r['rules_s']:.2f} s; thumbnails kept: {r['thumb_bytes'] / 1e6:.1f} MB; "
              f"fired: {r['fired']}; rule errors: {len(r['errors'])}")


if __name__ == "__main__":
    main()
