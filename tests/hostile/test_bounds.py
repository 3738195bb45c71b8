"""Time and memory bounds (docs/reliability.md): duplicate series over thousands of tags,
thousands of event files of runs that all start at step 1, a trainer state with
thousands of metric keys, one event record naming 300,000 tags, and a trainer_state.json
of well over a hundred megabytes under a memory limit.  Each used to take minutes or
gigabytes; the bounds themselves are measured by bench/bench_bounds.py (time x2 for
input x2), these tests only check that the hostile sizes finish and answer."""
from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time

import pytest

from helpers import lorascope, write_trainer_state
from hostile.util import healthy_history, strict_json

pytestmark = pytest.mark.timeout(600)


def analyze_json(run, cwd, **kw):
    t0 = time.monotonic()
    r = lorascope("analyze", run, "--format", "json", "--no-html", cwd=cwd, **kw)
    elapsed = time.monotonic() - t0
    assert r.returncode in (0, 1), r.stderr[-2000:]
    return strict_json(r.stdout), elapsed


def test_twenty_thousand_tags_in_the_event_file_and_the_trainer_state(tmp_path):
    """HF Trainer writes each logged key to the event file and to trainer_state.json:
    the duplicate merge compared every series with every other (over a minute)."""
    from torch.utils.tensorboard import SummaryWriter
    run = tmp_path / "run"
    keys = [f"metric_{k}" for k in range(20_000)]
    w = SummaryWriter(str(run / "runs"), max_queue=100_000, flush_secs=3600)
    for s in (1, 2):
        w.add_scalar("train/loss", 2.0 / s, s)
        for i, k in enumerate(keys):
            w.add_scalar(f"train/{k}", float(i + s), s)
    w.close()
    write_trainer_state(run, [dict({"loss": 2.0 / s, "step": s}, **{k: float(i + s) for i, k in enumerate(keys)})
                              for s in (1, 2)], max_steps=2, global_step=2, logging_steps=1)
    doc, elapsed = analyze_json(run, tmp_path)
    assert elapsed < 60, f"{elapsed:.0f} s"
    names = [s["name"] for s in doc["series"]]
    assert len(names) == len(set(names))
    # every curve once: the trainer state's copies were recognised and dropped
    assert sum(1 for n in names if "metric_" in n) == len(keys), len(names)


def test_fifteen_hundred_event_files_that_all_start_at_step_one(tmp_path):
    """A reused log folder: the mixed-run check compared every file with every other."""
    from torch.utils.tensorboard import SummaryWriter
    run = tmp_path / "run"
    for i in range(1500):
        w = SummaryWriter(str(run / "logs" / f"r{i:04d}"))
        for s in range(1, 6):
            w.add_scalar("train/loss", 2.0 / s + i * 0.01, s)
        w.close()
    doc, elapsed = analyze_json(run, tmp_path)
    assert elapsed < 60, f"{elapsed:.0f} s"
    mixed = next(f for f in doc["findings"] if f["rule"] == "run.mixed")
    assert any("both start at step 1" in e for e in mixed["evidence"])


def test_twenty_thousand_metric_keys_in_every_checkpoint_state(tmp_path):
    """Every key of log_history is a series: the merge compared each with every other
    (10,000 keys: 25 s; 20,000: about 100 s)."""
    run = tmp_path / "run"
    keys = [f"eval_m{k}" for k in range(20_000)]
    hist = [dict(h, **{k: h["step"] + i for i, k in enumerate(keys)}) for h in healthy_history(10)]
    for d in (run, run / "checkpoint-10"):
        write_trainer_state(d, hist, max_steps=10, global_step=10, logging_steps=1)
    doc, elapsed = analyze_json(run, tmp_path)
    assert elapsed < 60, f"{elapsed:.0f} s"
    assert doc["run"]["steps"]["last"] == 10 and len(doc["series"]) > len(keys)


def one_record_with_tags(path, n: int, step: int = 1):
    """One Event with n scalar values, written by tensorboard's own EventFileWriter."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    w = EventFileWriter(str(path))
    w.add_event(event_pb2.Event(wall_time=1.7e9, step=step, summary=summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=f"m{i}", simple_value=float(i)) for i in range(n)])))
    for s in range(1, 41):
        w.add_event(event_pb2.Event(wall_time=1.7e9 + s, step=s, summary=summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag="train/loss", simple_value=2.0 / s + 0.3)])))
    w.close()


def test_one_record_naming_300k_tags_under_a_memory_limit(tmp_path):
    """Each tag used to get a 6 KiB preallocation: 2.25 GB for one 4.5 MB record."""
    from hostile.util import run_limited
    run = tmp_path / "run"
    one_record_with_tags(run / "logs", 300_000)
    size = sum(p.stat().st_size for p in (run / "logs").iterdir())
    assert size > 4_000_000
    r = run_limited("analyze", run, "--format", "json", "--no-html", cwd=tmp_path, timeout=300)
    assert r.returncode in (0, 1), r.stderr[-2000:]
    doc = strict_json(r.stdout)
    probs = [p for s in doc["run"]["sources"] for p in s["problems"]]
    assert any("more than 10000 scalar tags" in p for p in probs), probs
    assert doc["run"]["steps"]["last"] == 40                     # the loss is still read


def test_a_big_record_reads_as_protobuf_would(tmp_path):
    """The value-by-value decoding of a large record gives what Event.FromString gives."""
    import lorascope.ingest.tfevents as tf
    one_record_with_tags(tmp_path / "a", 9000, step=7)
    f = next((tmp_path / "a").iterdir())
    fast = {s.tag: (s.steps.tolist(), s.values.tolist(), s.wall_times.tolist()) for s in tf.parse(f, "f").series}
    old = tf.BIG_RECORD
    try:
        tf.BIG_RECORD = 1 << 40
        whole = {s.tag: (s.steps.tolist(), s.values.tolist(), s.wall_times.tolist()) for s in tf.parse(f, "f").series}
    finally:
        tf.BIG_RECORD = old
    assert fast == whole and len(fast) == 9001 and fast["m8999"][0] == [7]


VMPEAK = """
import atexit, sys
def show():
    for line in open("/proc/self/status"):
        if line.startswith("VmPeak:"):
            print("VMPEAK", int(line.split()[1]) * 1024, file=sys.stderr)
atexit.register(show)
sys.argv = ["lorascope"] + sys.argv[1:]
from lorascope.cli import main
main()
"""


def test_a_trainer_state_far_larger_than_memory_allows_whole(tmp_path):
    """~140 MB of trainer_state.json within the stated bound: the address space of a
    small run plus 1.5x the file.  Read whole it peaked near 5x its size, and under a
    limit the MemoryError came out as "nothing readable"."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc to measure the address space of a small run")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env.pop("LORASCOPE_STRICT", None)
    small = tmp_path / "small"
    write_trainer_state(small, healthy_history(), max_steps=40, global_step=40, logging_steps=1)
    r = subprocess.run([sys.executable, "-c", VMPEAK, "analyze", str(small), "--format", "json", "--no-html"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    base = int(next(ln.split()[1] for ln in r.stderr.splitlines() if ln.startswith("VMPEAK")))
    run = tmp_path / "run"
    run.mkdir()
    n = 800_000
    # the layout TrainerState.save_to_json writes (json, indent=2, sort_keys), streamed
    # entry by entry: the real writer would need the whole list in this process
    with open(run / "trainer_state.json", "w") as fh:
        fh.write('{\n  "best_metric": null,\n  "epoch": 800.0,\n  "global_step": %d,\n  "log_history": [\n' % n)
        for s in range(1, n + 1):
            e = {"epoch": s / 1000, "grad_norm": 0.5 + math.sin(s) / 10, "learning_rate": 2e-4 * (1 - s / n),
                 "loss": 2 * math.exp(-s / n) + 0.3, "step": s}
            fh.write(json.dumps(e, indent=2, sort_keys=True).replace("\n", "\n    ").join(["    ", ",\n" if s < n else "\n"]))
        fh.write('  ],\n  "logging_steps": 1,\n  "max_steps": %d,\n  "num_train_epochs": 800\n}\n' % n)
    size = (run / "trainer_state.json").stat().st_size
    assert size > 120_000_000
    limit = base + int(1.5 * size)

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    r = subprocess.run([sys.executable, "-m", "lorascope.cli", "analyze", str(run), "--format", "json",
                        "--no-html"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500,
                       preexec_fn=limited)
    assert r.returncode in (0, 1), (limit >> 20, r.stderr[-2000:])
    doc = strict_json(r.stdout)
    assert doc["run"]["steps"]["last"] == n and doc["series"][0]["points"] == n


def test_out_of_memory_is_named_never_nothing_readable(tmp_path):
    """Whatever a limit makes fail, the answer names it: the trainer state's parser
    running out of memory (forced here, at its first allocation) is a problem on that
    file, and the one-line reason says so instead of "nothing readable"."""
    run = tmp_path / "run"
    write_trainer_state(run, healthy_history(), max_steps=40, global_step=40, logging_steps=1)
    script = ("import sys, lorascope.ingest.trainer_state as ts\n"
              "def parse(path, rel):\n    raise MemoryError\n"
              "ts.parse = parse\n"
              "from lorascope.cli import main\n"
              "sys.argv = ['lorascope'] + sys.argv[1:]\nmain()\n")
    env = dict(os.environ)
    env.pop("LORASCOPE_STRICT", None)
    r = subprocess.run([sys.executable, "-c", script, "analyze", str(run), "--no-html"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "out of memory" in lines[0] and "trainer_state.json" in lines[0], lines
