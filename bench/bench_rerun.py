"""Step throughput of `rerun`'s built-in backend vs a plain HF Trainer + PEFT loop.

Both train the same tiny LLaMA (fixtures/tinyllm.py), the same data, the same settings and
the same number of steps, in this one process: (a) `fixtures.tinyllm.train` (HF Trainer +
PEFT, what the fixture runs are made with) resuming from checkpoint-S via HF's own resume;
(b) `lorascope.rerun.backend_hf.replay` from the same checkpoint (sanitised copy, fresh
optimizer, scheduler advanced, window callback). Best of --repeat, wall seconds.

    .venv/bin/python bench/bench_rerun.py [--steps 40] [--repeat 2] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fixtures import tinyllm  # noqa: E402
from tests.rerun import llmruns  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    from lorascope.pipeline import analyze
    from lorascope.rerun import backend_hf
    from lorascope.rerun.plan import find_checkpoints, Plan

    tmp = Path(tempfile.mkdtemp(prefix="bench-rerun-"))
    try:
        base = tinyllm.build_base_model(tmp / "base", pretrain_steps=20)
        cfg = llmruns.yaml_config(model_name_or_path=str(base), learning_rate=2e-4,
                                  max_grad_norm=1.0, warmup_steps=0, max_steps=5 + a.steps,
                                  save_steps=5, lr_scheduler_type="linear")
        run_dir = tmp / "run"
        t0 = time.perf_counter()
        llmruns.train_from_yaml(run_dir, dict(cfg, max_steps=5))
        print(f"setup run: {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        an = analyze(run_dir)
        ck = find_checkpoints(run_dir)[0]
        plan = Plan(run_dir=run_dir, run_name="run", rule="bench", onset=6, symptom_end=6,
                    checkpoint=ck, start=5, end=5 + a.steps, fix={}, planned=5 + a.steps)
        plain, ours = [], []
        for i in range(a.repeat):
            d = tmp / f"plain{i}"
            shutil.copytree(run_dir, d)
            kw = llmruns.yaml_to_train_kwargs(cfg, d)
            kw.update(max_steps=5 + a.steps, save_steps=None, log_file=None,
                      resume_from_checkpoint=str(d / "checkpoint-5"))
            t0 = time.perf_counter()
            tinyllm.train(d, **kw)
            plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r = backend_hf.replay(an.run, plan, {"save_steps": None}, tmp / f"ours{i}", a.device)
            ours.append(time.perf_counter() - t0)
            assert r.ok, r.error
        p, o = min(plain), min(ours)
        print(f"steps per replay: {a.steps} (device {a.device})")
        print(f"plain HF Trainer loop : {p:6.2f} s  {a.steps / p:6.2f} steps/s")
        print(f"rerun built-in backend: {o:6.2f} s  {a.steps / o:6.2f} steps/s")
        print(f"ratio backend/plain time: {o / p:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
