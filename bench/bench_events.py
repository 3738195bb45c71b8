"""Benchmark: reading scalars from a TensorBoard event file.

    .venv/bin/python bench/bench_events.py [--scalars 1000000] [--tags 4]

Writes the input with torch.utils.tensorboard.SummaryWriter.add_scalar (the writer HF
Trainer, kohya and most LoRA trainers use) into a temp dir, then times in this one
process: lorascope's parser (default, and with data-CRC checks), tensorboard's
EventAccumulator (size_guidance 0 = keep everything), tbparse's SummaryReader and a bare
TFRecord frame walk (read each length, skip the record).  Peak memory of lorascope's
parse is measured in a fresh subprocess (tracemalloc peak and ru_maxrss growth) and
compared with the scalars' own size, n * (8 + 8 + 8) bytes.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TAGS = ["train/loss", "train/learning_rate", "train/grad_norm", "train/epoch",
        "eval/loss", "lr/unet", "loss/average", "loss/current"]


def write_input(d: Path, n: int, ntags: int) -> Path:
    import math

    from torch.utils.tensorboard import SummaryWriter
    tags = TAGS[:ntags]
    w = SummaryWriter(str(d), max_queue=10_000, flush_secs=3600)
    steps = n // len(tags)
    for s in range(steps):
        for j, tag in enumerate(tags):
            w.add_scalar(tag, math.sin(s * 0.001 + j) + 2.0, s)
    w.close()
    (f,) = d.glob("events.out.tfevents.*")
    return f


def _torch_version() -> str:
    import torch
    return torch.__version__


def frame_walk(path: Path) -> int:
    """Bare TFRecord walk: read each uint64 length and skip the record."""
    unpack = struct.Struct("<Q").unpack_from
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        size = len(mm)
        pos = 0
        count = 0
        while pos + 12 <= size:
            pos += unpack(mm, pos)[0] + 16
            count += 1
    return count


def run_lorascope(path: Path, **kw) -> int:
    from lorascope.ingest.tfevents import parse
    p = parse(path, path.name, **kw)
    assert not p.source.problems, p.source.problems
    return sum(len(s.steps) for s in p.series)


def run_event_accumulator(path: Path) -> int:
    from tensorboard.backend.event_processing import event_accumulator as ea
    acc = ea.EventAccumulator(str(path), size_guidance={k: 0 for k in ea.DEFAULT_SIZE_GUIDANCE})
    acc.Reload()
    return sum(len(acc.Scalars(t)) for t in acc.Tags()["scalars"])


def run_tbparse(path: Path) -> int:
    from tbparse import SummaryReader
    return len(SummaryReader(str(path), pivot=False).scalars)


def timed(fn, path, repeat=1, **kw):
    """(items, best wall seconds, best CPU seconds of this process)."""
    wall = cpu = None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        n = fn(path, **kw)
        dw, dc = time.perf_counter() - t, time.process_time() - c
        wall = dw if wall is None else min(wall, dw)
        cpu = dc if cpu is None else min(cpu, dc)
    return n, wall, cpu


MEM_CHILD = r"""
import json, sys, tracemalloc
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import numpy
from lorascope.ingest import tfevents
path = Path(sys.argv[1])
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return int(line.split()[1]) * 1024
with open('/proc/self/clear_refs', 'w') as fh:     # reset VmHWM to the current RSS
    fh.write('5')
rss0 = status('VmRSS')
tracemalloc.start()
p = tfevents.parse(path, path.name)
cur, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
hwm = status('VmHWM')
kept = sum(s.steps.nbytes + s.values.nbytes + s.wall_times.nbytes for s in p.series)
print(json.dumps({"tracemalloc_peak": peak, "tracemalloc_end": cur, "kept": kept,
                  "rss_peak_growth": hwm - rss0}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scalars", type=int, default=1_000_000)
    ap.add_argument("--tags", type=int, default=4, choices=range(1, len(TAGS) + 1))
    ap.add_argument("--input", type=Path,
                    help="use this event file instead of writing one")
    ap.add_argument("--skip-slow", action="store_true",
                    help="skip EventAccumulator and tbparse")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_events_") as tmp:
        t = time.perf_counter()
        if args.input:
            path = args.input
            print(f"input: {path}")
        else:
            path = write_input(Path(tmp), args.scalars, args.tags)
            print(f"input: {args.scalars:,} scalars over {args.tags} tags written by "
                  f"torch.utils.tensorboard.SummaryWriter (torch {_torch_version()}) in "
                  f"{time.perf_counter() - t:.1f} s")
        size = path.stat().st_size
        print(f"file {size / 1e6:.1f} MB")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpu(s)\n")

        rows = []
        walk = timed(frame_walk, path, repeat=5)
        ls = timed(run_lorascope, path, repeat=5)
        crc = timed(run_lorascope, path, repeat=3, verify_data_crc=True)
        rows.append(("lorascope parse", *ls))
        rows.append(("lorascope parse, verify_data_crc=True", *crc))
        if not args.skip_slow:
            ea = timed(run_event_accumulator, path)
            rows.append(("tensorboard EventAccumulator", *ea))
            tb = timed(run_tbparse, path)
            rows.append(("tbparse SummaryReader", *tb))
            assert ea[0] == ls[0] == tb[0], (ea[0], ls[0], tb[0])
        rows.append(("bare frame walk (records, no decoding)", *walk))
        assert crc[0] == ls[0]

        print("wall = best elapsed seconds; cpu = best CPU seconds of this process "
              "(steadier on a shared machine)")
        print(f"{'reader':40s} {'items':>10s} {'wall s':>8s} {'cpu s':>8s} "
              f"{'items/s (cpu)':>14s} {'its time / lorascope (cpu)':>27s}")
        for name, n, dw, dc in rows:
            print(f"{name:40s} {n:10,d} {dw:8.3f} {dc:8.3f} {n / dc:14,.0f} "
                  f"{dc / ls[2]:26.2f}x")
        print(f"\nlorascope time / bare frame walk time: cpu {ls[2] / walk[2]:.2f}, "
              f"wall {ls[1] / walk[1]:.2f}  (target <= 2)")
        n_ls = ls[0]

        out = subprocess.run([sys.executable, "-c", MEM_CHILD, str(path), str(ROOT)],
                             capture_output=True, text=True, check=True)
        mem = json.loads(out.stdout)
        own = n_ls * 24
        print(f"\nmemory of lorascope parse (fresh process): scalars' own size "
              f"n*24 = {own / 1e6:.1f} MB")
        print(f"  tracemalloc peak   {mem['tracemalloc_peak'] / 1e6:8.1f} MB "
              f"= {mem['tracemalloc_peak'] / own:.2f}x  (target < 2x)")
        print(f"  kept at the end    {mem['tracemalloc_end'] / 1e6:8.1f} MB "
              f"(arrays {mem['kept'] / 1e6:.1f} MB)")
        print(f"  peak RSS growth    {mem['rss_peak_growth'] / 1e6:8.1f} MB "
              f"= {mem['rss_peak_growth'] / own:.2f}x  (file is {size / 1e6:.1f} MB; "
              f"VmHWM after parse - VmRSS before)")


if __name__ == "__main__":
    main()
