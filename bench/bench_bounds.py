"""Time and memory bounds: every parser and merge step, at input size n and 2n.

    .venv/bin/python bench/bench_bounds.py [--scale 1.0] [--only NAME,...] [--json]

For each case it writes an input of size n, then of size 2n (tags, files, lines,
records, tensors: whatever the case doubles), and runs lorascope on each in a fresh
subprocess, which reports its CPU seconds and its peak RSS (VmHWM) above what the same
process held after its imports.  It prints:

* ``time x2``: CPU time at 2n divided by CPU time at n.  Linear work gives about 2;
  quadratic work gives about 4 (small inputs read a little above 2: fixed costs).
* ``MB`` and ``mem / input``: the peak RSS growth at 2n, and that growth divided by the
  input's size on disk (the bound docs/reliability.md states).

Cases (n at --scale 1):

=====================  ===========================================================
``tfevents_scalars``   one event file, 4 tags x n/4 steps (SummaryWriter layout)
``tfevents_tags``      one event record naming n distinct tags (hostile)
``trainer_state``      trainer_state.json, n log_history entries (HF layout)
``trainer_state_keys`` trainer_state.json, 10 entries with n distinct metric keys
``trainer_log``        LLaMA-Factory trainer_log.jsonl, n lines
``text_log``           a trainer's stdout with n HF-style printed dicts
``text_dataset``       a JSONL dataset, n records
``safetensors_header`` an adapter with n tiny LoRA layers (header, grouping, scan)
``config``             a YAML config with n keys
``walk``               a run folder of n empty files (discover)
``merge_tags``         event file and trainer_state.json both logging n tags: the
                       duplicate-series merge compares them
``mixed_files``        n event files of train loss, all starting at step 1: the
                       mixed-run check compares them
=====================  ===========================================================

Cases run through ``build_run`` (parse + merge) except the dataset ones, which call the
dataset loader directly.  Inputs are written with plain ``json``/``struct`` writers in the
trainers' layouts (the real writers are too slow for millions of records); the
fixtures and the hostile tests use the real writers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# -- writers ---------------------------------------------------------------------------

def _crc32c_masked(data: bytes) -> int:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
    return masked_crc32c(data)


def _record(data: bytes) -> bytes:
    n = struct.pack("<Q", len(data))
    return n + struct.pack("<I", _crc32c_masked(n)) + data + struct.pack("<I", _crc32c_masked(data))


def _event(step: int, values: list[tuple[str, float]], wall: float = 1.7e9) -> bytes:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    ev = event_pb2.Event(wall_time=wall, step=step,
                         summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=t, simple_value=v)
                                                            for t, v in values]))
    return ev.SerializeToString()


def write_events(path: Path, rows) -> None:
    from tensorboard.compat.proto import event_pb2
    with open(path, "wb") as f:
        f.write(_record(event_pb2.Event(wall_time=1.7e9, file_version="brain.Event:2").SerializeToString()))
        for step, values in rows:
            f.write(_record(_event(step, values)))


def case_tfevents_scalars(d: Path, n: int) -> Path:
    run = d / "run"
    run.mkdir()
    tags = ["train/loss", "train/learning_rate", "train/grad_norm", "train/epoch"]
    write_events(run / "events.out.tfevents.1.host", ((s, [(t, 1.0 / s)]) for s in range(1, n // 4 + 1)
                                                    for t in tags))
    return run


def case_tfevents_tags(d: Path, n: int) -> Path:
    run = d / "run"
    run.mkdir()
    write_events(run / "events.out.tfevents.1.host",
                 [(1, [("train/loss", 1.0)]), (1, [(f"m{i}", float(i)) for i in range(n)])])
    return run


def _state(entries: list[dict], n_steps: int) -> dict:
    return {"best_metric": None, "epoch": 1.0, "global_step": n_steps, "log_history": entries,
            "logging_steps": 1, "max_steps": n_steps, "num_train_epochs": 1}


def case_trainer_state(d: Path, n: int) -> Path:
    run = d / "run"
    run.mkdir()
    hist = [{"epoch": s / n, "grad_norm": 0.5 + math.sin(s) / 10, "learning_rate": 2e-4 * (1 - s / n),
             "loss": 2 * math.exp(-s / n) + 0.3, "step": s} for s in range(1, n + 1)]
    (run / "trainer_state.json").write_text(json.dumps(_state(hist, n), indent=2, sort_keys=True))
    return run


def case_trainer_state_keys(d: Path, n: int) -> Path:
    run = d / "run"
    run.mkdir()
    hist = [dict({"loss": 1.0 / s, "step": s}, **{f"metric_{k}": k + s for k in range(n)})
            for s in range(1, 11)]
    (run / "trainer_state.json").write_text(json.dumps(_state(hist, 10), indent=2, sort_keys=True))
    return run


def case_trainer_log(d: Path, n: int) -> Path:
    run = d / "run"
    run.mkdir()
    with open(run / "trainer_log.jsonl", "w") as f:
        for s in range(1, n + 1):
            f.write(json.dumps({"current_steps": s, "total_steps": n, "loss": 1.0 / s,
                                "lr": 1e-4, "epoch": s / n, "percentage": 100 * s / n,
                                "elapsed_time": "0:00:01", "remaining_time": "0:00:01"}) + "\n")
    return run


def case_text_log(d: Path, n: int) -> Path:
    run = d / "run"
    run.mkdir()
    with open(run / "train.log", "w") as f:
        for s in range(1, n + 1):
            f.write(f"{{'loss': {1.0 / s:.4f}, 'grad_norm': 0.5, 'learning_rate': 0.0002, "
                    f"'epoch': {s / n:.4f}}}\n")
    return run


def case_text_dataset(d: Path, n: int) -> Path:
    p = d / "train.jsonl"
    with open(p, "w") as f:
        for i in range(n):
            f.write(json.dumps({"instruction": f"question {i}", "input": "", "output": "answer " * 8}) + "\n")
    return p


def case_safetensors_header(d: Path, n: int) -> Path:
    import numpy as np
    from safetensors.numpy import save_file
    run = d / "run"
    run.mkdir()
    t = {}
    for i in range(n):
        t[f"lora_unet_b{i}.lora_down.weight"] = np.full((2, 4), 0.1, np.float16)
        t[f"lora_unet_b{i}.lora_up.weight"] = np.full((4, 2), 0.1, np.float16)
        t[f"lora_unet_b{i}.alpha"] = np.array(1.0, np.float16)
    save_file(t, str(run / "lora.safetensors"))
    return run


def case_config(d: Path, n: int) -> Path:
    run = d / "run"
    run.mkdir()
    (run / "trainer_state.json").write_text(json.dumps(_state([{"loss": 1.0, "step": 1}], 1)))
    with open(run / "config.yaml", "w") as f:
        f.write("learning_rate: 1.0e-4\n")
        for i in range(n):
            f.write(f"key_{i}: value {i}\n")
    return run


def case_walk(d: Path, n: int) -> Path:
    run = d / "run"
    run.mkdir()
    (run / "trainer_state.json").write_text(json.dumps(_state([{"loss": 1.0, "step": 1}], 1)))
    for i in range(n):
        sub = run / f"d{i // 1000}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i}.dat").touch()
    return run


def case_merge_tags(d: Path, n: int) -> Path:
    """HF Trainer writes every logged key to the event file (train/<key>) and to
    trainer_state.json (<key>): n keys, 20 steps each."""
    run = d / "run"
    (run / "runs").mkdir(parents=True)
    steps = range(1, 21)
    keys = [f"metric_{k}" for k in range(n)]
    write_events(run / "runs" / "events.out.tfevents.1.host",
                 ((s, [(f"train/{k}", float(i + s))]) for s in steps for i, k in enumerate(["loss"] + keys)))
    hist = [dict({"loss": float(s), "step": s}, **{k: float(i + 1 + s) for i, k in enumerate(keys)})
            for s in steps]
    (run / "trainer_state.json").write_text(json.dumps(_state(hist, 20), indent=2, sort_keys=True))
    return run


def case_mixed_files(d: Path, n: int) -> Path:
    run = d / "run"
    run.mkdir()
    for i in range(n):
        sub = run / f"r{i:05d}"
        sub.mkdir()
        write_events(sub / f"events.out.tfevents.{i}.host",
                     ((s, [("train/loss", 2.0 / s + i * 1e-3)]) for s in range(1, 21)))
    return run


CASES = {  # name -> (writer, n at scale 1)
    "tfevents_scalars": (case_tfevents_scalars, 400_000),
    "tfevents_tags": (case_tfevents_tags, 100_000),
    "trainer_state": (case_trainer_state, 100_000),
    "trainer_state_keys": (case_trainer_state_keys, 3_000),
    "trainer_log": (case_trainer_log, 100_000),
    "text_log": (case_text_log, 100_000),
    "text_dataset": (case_text_dataset, 100_000),
    "safetensors_header": (case_safetensors_header, 5_000),
    "config": (case_config, 20_000),
    "walk": (case_walk, 10_000),
    "merge_tags": (case_merge_tags, 3_000),
    "mixed_files": (case_mixed_files, 300),
}


# -- the measured process ----------------------------------------------------------------

def _hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _reset_hwm() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")              # resets VmHWM to the current RSS (Linux)
    except OSError:
        pass


def worker(name: str, path: str) -> None:
    import importlib
    for m in ("tfevents", "trainer_state", "safetensors", "textlog", "config", "llamafactory"):
        importlib.import_module(f"lorascope.ingest.{m}")      # imports before the baseline
    import lorascope.ingest.dataset as ds
    from lorascope.build import build_run
    _reset_hwm()
    base = _hwm_kb()
    t0 = time.process_time()
    if name == "text_dataset":
        ds.load_text_dataset(Path(path), Path(path).parent)
    else:
        build_run(path, jobs=1)
    cpu = time.process_time() - t0
    print(json.dumps({"cpu": cpu, "mb": (_hwm_kb() - base) / 1024}))


def measure(name: str, n: int, tmp: Path) -> dict:
    d = tmp / f"{name}-{n}"
    d.mkdir()
    path = CASES[name][0](d, n)
    size = sum(p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, __file__, "--worker", name, str(path)], capture_output=True,
                       text=True, env=env, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"{name} n={n} failed: {r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out.update(n=n, bytes=size)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--only", default="")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", nargs=2, metavar=("CASE", "PATH"))
    a = ap.parse_args()
    if a.worker:
        worker(*a.worker)
        return
    names = [x for x in a.only.split(",") if x] or list(CASES)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for name in names:
            n = max(2, int(CASES[name][1] * a.scale))
            small, big = measure(name, n, tmp), measure(name, 2 * n, tmp)
            ratio = big["cpu"] / small["cpu"] if small["cpu"] > 0 else float("nan")
            rows.append({"case": name, "n": n, "cpu_n": small["cpu"], "cpu_2n": big["cpu"],
                         "time_x2": ratio, "input_mb_2n": big["bytes"] / 2**20, "mb_2n": big["mb"],
                         "mem_per_input": big["mb"] / (big["bytes"] / 2**20) if big["bytes"] else None})
            if not a.json:
                r = rows[-1]
                print(f"{name:20s} n={n:>8}  cpu {r['cpu_n']:7.2f}s -> {r['cpu_2n']:7.2f}s  "
                      f"time x2 = {r['time_x2']:4.2f}   input {r['input_mb_2n']:7.1f} MB  "
                      f"peak +{r['mb_2n']:7.1f} MB  mem/input {r['mem_per_input']:5.2f}", flush=True)
    if a.json:
        print(json.dumps(rows, indent=1))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if not a.json:
        print(f"load average {load:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
