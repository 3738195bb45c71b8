"""Benchmark: reading a 1M-point history from a W&B record log and an MLflow file store.

    .venv/bin/python bench/bench_trackers.py [--points 1000000] [--tags 4] [--only wandb|mlflow]
                                             [--wandb-input FILE] [--mlflow-input MLRUNS_DIR]

Inputs are written by the formats' own writers (wandb offline, as HF's WandbCallback
logs: each row the tags plus ``train/global_step``, ``*`` defined against it; MLflow's
``MlflowClient.log_batch`` into a ``file:`` store, as MLflowCallback logs), then timed
in this one process:

* W&B: ``lorascope.ingest.wandb.parse`` against wandb's own Python decoding -- the
  ``DataStore`` scan of ``wandb/sdk/internal/datastore.py`` (wandb <= 0.17: CRC check of
  every chunk, FIRST/MIDDLE/LAST joined) with ``wandb_internal_pb2.Record.FromString``
  and ``json.loads`` of each history item (wandb 0.18+ reads the log only in its Go
  core; the Python protobuf classes still ship with it).
* MLflow: ``lorascope.ingest.mlflow.parse`` against ``MlflowClient.get_metric_history``
  for every key (the file store's own reader).

CPU time, best of --repeat runs for lorascope, of one run for the reference readers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TAGS = ["train/loss", "train/learning_rate", "train/grad_norm", "train/epoch", "eval/loss",
        "train/x1", "train/x2", "train/x3"]


def cpu(fn, repeat: int = 1):
    best, out = None, None
    for _ in range(repeat):
        t = time.process_time()
        out = fn()
        dt = time.process_time() - t
        best = dt if best is None else min(best, dt)
    return best, out


# ------------------------------------------------------------------------- W&B
def write_wandb(d: Path, points: int, ntags: int) -> Path:
    import wandb
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(d),
                      WANDB_DISABLE_GIT="true", WANDB_CONSOLE="off")
    run = wandb.init(project="bench", config={"learning_rate": 1e-3})
    run.define_metric("train/global_step")
    run.define_metric("*", step_metric="train/global_step", step_sync=True)
    tags = TAGS[:ntags]
    for s in range(points // ntags):
        run.log({**{t: math.sin(s * 0.001 + j) + 2.0 for j, t in enumerate(tags)}, "train/global_step": s + 1})
    run.finish()
    (f,) = d.glob("wandb/offline-run-*/run-*.wandb")
    return f


def wandb_reference(path: Path) -> int:
    """wandb's DataStore.scan_data + Record.FromString + json.loads per item."""
    from wandb.proto import wandb_internal_pb2 as pb
    crc = [0] + [zlib.crc32(bytes([t])) & 0xFFFFFFFF for t in range(1, 5)]
    hist: dict[str, list] = {}
    with open(path, "rb") as fp:
        fp.read(7)
        index = 7

        def scan_record():
            nonlocal index
            h = fp.read(7)
            if len(h) < 7:
                return None
            c, n, t = struct.unpack("<IHB", h)
            data = fp.read(n)
            assert zlib.crc32(data, crc[t]) & 0xFFFFFFFF == c, "record checksum is invalid"
            index += 7 + n
            return t, data

        while True:
            left = 32768 - index % 32768
            if left < 7:
                fp.read(left)
                index += left
            r = scan_record()
            if r is None:
                break
            t, data = r
            if t == 2:
                while True:
                    t2, more = scan_record()
                    data += more
                    if t2 == 4:
                        break
            rec = pb.Record.FromString(data)
            if rec.WhichOneof("record_type") == "history":
                for it in rec.history.item:
                    hist.setdefault(it.key or ".".join(it.nested_key), []).append(json.loads(it.value_json))
    return sum(len(v) for k, v in hist.items() if not k.startswith("_") and k != "train/global_step")


def wandb_lorascope(path: Path) -> int:
    from lorascope.ingest import wandb as W
    p = W.parse(path, path.name)
    assert not p.source.problems, p.source.problems
    return sum(len(s.steps) for s in p.series)


# ------------------------------------------------------------------------ MLflow
def write_mlflow(d: Path, points: int, ntags: int) -> Path:
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    store = d / "mlruns"
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    run = client.create_run("0")
    tags = [t.replace("train/", "") for t in TAGS[:ntags]]
    now = int(time.time() * 1000)
    batch = []
    for s in range(points // ntags):
        for j, t in enumerate(tags):
            batch.append(Metric(t, math.sin(s * 0.001 + j) + 2.0, now + s, s + 1))
        if len(batch) >= 1000:
            client.log_batch(run.info.run_id, metrics=batch)
            batch = []
    if batch:
        client.log_batch(run.info.run_id, metrics=batch)
    client.set_terminated(run.info.run_id)
    return store


def _run_meta(store: Path) -> Path:
    return next(p for p in store.glob("*/*/meta.yaml") if (p.parent / "metrics").is_dir())


def mlflow_reference(store: Path) -> int:
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.tracking import MlflowClient
    meta = _run_meta(store)
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    keys = [p.relative_to(meta.parent / "metrics").as_posix() for p in (meta.parent / "metrics").rglob("*")
            if p.is_file()]
    return sum(len(client.get_metric_history(meta.parent.name, k)) for k in keys)


def mlflow_lorascope(store: Path) -> int:
    from lorascope.ingest import mlflow as M
    meta = _run_meta(store)
    p = M.parse(meta, "meta.yaml")
    assert not p.source.problems, p.source.problems
    return sum(len(s.steps) for s in p.series)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--tags", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", choices=["wandb", "mlflow"])
    ap.add_argument("--wandb-input")
    ap.add_argument("--mlflow-input")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as td:
        if a.only in (None, "wandb"):
            t = time.time()
            f = Path(a.wandb_input) if a.wandb_input else write_wandb(Path(td), a.points, a.tags)
            print(f"W&B input: {f.stat().st_size / 1e6:.1f} MB ({time.time() - t:.0f} s to write)", flush=True)
            ours, n1 = cpu(lambda: wandb_lorascope(f), a.repeat)
            ref, n2 = cpu(lambda: wandb_reference(f))
            assert n1 == n2, (n1, n2)
            rows.append(("W&B record log", n1, ours, ref))
        if a.only in (None, "mlflow"):
            t = time.time()
            s = Path(a.mlflow_input) if a.mlflow_input else write_mlflow(Path(td), a.points, a.tags)
            print(f"MLflow input: {sum(p.stat().st_size for p in s.rglob('*') if p.is_file()) / 1e6:.1f} MB "
                  f"({time.time() - t:.0f} s to write)", flush=True)
            ours, n1 = cpu(lambda: mlflow_lorascope(s), a.repeat)
            ref, n2 = cpu(lambda: mlflow_reference(s))
            assert n1 == n2, (n1, n2)
            rows.append(("MLflow file store", n1, ours, ref))
    print("| format | points | lorascope cpu s | own reader cpu s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, n, ours, ref in rows:
        print(f"| {name} | {n:,} | {ours:.2f} | {ref:.2f} | {ref / ours:.1f}x |")


if __name__ == "__main__":
    main()
