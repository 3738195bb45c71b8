"""`lorascope watch` on a growing run: the latency from an appended event to the printed
finding, and the CPU the watch process uses while the run grows and while it is idle.

    .venv/bin/python bench/bench_watch.py [--sizes 10000,100000,1000000] [--modes notify,poll]

For each size and mode, in a fresh temporary folder:

1. ``lorascope watch RUN --format json`` starts on the empty folder (``--poll``: without
   change notifications, a poll every ``--interval`` s);
2. a writer subprocess (``torch.utils.tensorboard.SummaryWriter``, HF Trainer's tags
   ``train/loss``, ``train/learning_rate``, ``train/grad_norm``, ``train/epoch``) grows the
   run to SIZE points as fast as it can, flushing every ``--batch`` steps (time
   compressed: at 100 events/s a million points would take 2.8 hours);
3. then writes at a trainer's rate, 100 events/s (25 steps of 4 scalars, each step
   flushed), for ``--live`` s; then one NaN loss; then ``--after`` s more at 100 events/s;
4. then writes nothing for ``--idle`` s; then the watch gets SIGINT.

Latency: the ``time`` of the watch's ``appeared`` event for ``loss.nonfinite`` minus the
NaN record's wall time (set by the writer just before it writes and flushes it).  CPU:
user+system time of the watch process (psutil) over each phase, divided by the phase's
wall time.  The alternative is running ``lorascope analyze`` again and again: its time on
the finished folder is the least latency such a loop can have.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAGS = ("train/loss", "train/learning_rate", "train/grad_norm", "train/epoch")


# -- the writer (a subprocess) ------------------------------------------------------------

def writer(run: Path, points: int, batch: int, live: float, after: float, idle: float) -> None:
    import math
    import random

    from torch.utils.tensorboard import SummaryWriter
    rnd = random.Random(0)
    w = SummaryWriter(str(run / "runs"), max_queue=100000, flush_secs=3600)
    steps = points // len(TAGS)

    def say(what: str, **kw) -> None:
        print(json.dumps({"phase": what, "time": time.time(), **kw}), flush=True)

    def step(s: int, loss: float | None = None) -> None:
        if loss is None:
            loss = 0.6 + 1.5 * math.exp(-s / max(steps / 5, 50)) + rnd.gauss(0, 0.03)
        w.add_scalar("train/loss", loss, s)
        w.add_scalar("train/learning_rate", 1e-4, s)
        w.add_scalar("train/grad_norm", 1.0 + abs(rnd.gauss(0, 0.2)), s)
        w.add_scalar("train/epoch", s / 1000, s)

    say("grow")
    s = 0
    for s in range(1, steps + 1):
        step(s)
        if s % batch == 0:
            w.flush()
    w.flush()
    say("live", step=s)

    def at_rate(seconds: float) -> None:
        nonlocal s
        t_end = time.monotonic() + seconds
        nxt = time.monotonic()
        while time.monotonic() < t_end:
            s += 1
            step(s)
            w.flush()
            nxt += len(TAGS) / 100.0          # 100 events/s
            time.sleep(max(0.0, nxt - time.monotonic()))

    at_rate(live)
    s += 1
    t = time.time()
    w.add_scalar("train/loss", float("nan"), s, walltime=t)
    w.add_scalar("train/learning_rate", 1e-4, s, walltime=t)
    w.add_scalar("train/grad_norm", 1.0, s, walltime=t)
    w.add_scalar("train/epoch", s / 1000, s, walltime=t)
    w.flush()
    say("nan", step=s, wall=t)
    at_rate(after)
    w.flush()
    say("idle", step=s)
    time.sleep(idle)
    say("end", step=s)
    w.close()


# -- the bench --------------------------------------------------------------------------

def one(points: int, mode: str, a) -> dict:
    import psutil
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   LORASCOPE_WATCH_DEBUG="1")
        cmd = [sys.executable, "-m", "lorascope.cli", "watch", str(run), "--format", "json",
               "--interval", str(a.interval), "--idle-timeout", "3600"]
        if mode == "poll":
            cmd.append("--poll")
        wp = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        events: list[dict] = []
        analyses: list[tuple[float, float, float]] = []       # (time, read s, analysis s)
        ready = threading.Event()

        def read_out() -> None:
            for line in wp.stdout:
                events.append(json.loads(line))

        def read_err() -> None:
            for line in wp.stderr:
                if "lorascope watch: following" in line:
                    ready.set()
                if line.startswith("watch: "):
                    parts = line.split()
                    try:
                        analyses.append((time.time(), float(parts[3].rstrip("s,")),
                                         float(parts[5].rstrip("s"))))
                    except (IndexError, ValueError):
                        pass
        threads = [threading.Thread(target=read_out, daemon=True),
                   threading.Thread(target=read_err, daemon=True)]
        for t in threads:
            t.start()
        if not ready.wait(120):
            wp.kill()
            raise SystemExit("watch did not start")
        proc = psutil.Process(wp.pid)

        def cpu() -> float:
            c = proc.cpu_times()
            return c.user + c.system

        wr = subprocess.Popen([sys.executable, __file__, "--writer", str(run), "--points", str(points),
                               "--batch", str(a.batch), "--live", str(a.live), "--after", str(a.after),
                               "--idle", str(a.idle)], stdout=subprocess.PIPE, text=True, env=env)
        marks: dict[str, tuple[float, float, dict]] = {}
        rss = [0]
        for line in wr.stdout:
            m = json.loads(line)
            marks[m["phase"]] = (time.time(), cpu(), m)
            rss[0] = max(rss[0], proc.memory_info().rss)
        wr.wait()
        wp.send_signal(signal.SIGINT)
        wp.wait(timeout=600)
        for t in threads:
            t.join(timeout=30)

        def rate(p, q) -> float:
            (t0, c0, _), (t1, c1, _) = marks[p], marks[q]
            return (c1 - c0) / (t1 - t0)

        nan = marks["nan"][2]
        ev = next((e for e in events if e.get("event") == "appeared"
                   and e["finding"]["rule"] == "loss.nonfinite"), None)
        latency = None if ev is None else ev["time"] - nan["wall"]
        live_an = [x for x in analyses if marks["live"][0] <= x[0] <= marks["idle"][0]]
        return {
            "points": points, "mode": mode,
            "latency_s": latency,
            "finding_step": None if ev is None else ev["finding"]["step"], "nan_step": nan["step"],
            "grow_s": marks["live"][0] - marks["grow"][0],
            "cpu_grow": rate("grow", "live"), "cpu_live": rate("live", "idle"),
            "cpu_idle": rate("idle", "end"),
            "analysis_live_median_s": statistics.median(x[2] for x in live_an) if live_an else None,
            "read_live_median_s": statistics.median(x[1] for x in live_an) if live_an else None,
            "analyses_live": len(live_an),
            "rss_mb": rss[0] / 2**20,
        }


def analyze_time(points: int, a) -> float:
    """``lorascope analyze`` on a finished folder of the same size (the writer's own run,
    written again without the live phases)."""
    with tempfile.TemporaryDirectory(prefix="bench-watch-an-") as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        subprocess.run([sys.executable, __file__, "--writer", str(run), "--points", str(points),
                        "--batch", str(a.batch), "--live", "0", "--after", "0", "--idle", "0"],
                       check=True, stdout=subprocess.DEVNULL, env=env)
        best = None
        for _ in range(2):
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-m", "lorascope.cli", "analyze", str(run), "--format", "json",
                            "--no-html"], stdout=subprocess.DEVNULL, env=env)
            dt = time.monotonic() - t0
            best = dt if best is None else min(best, dt)
        return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--writer", type=Path)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--modes", default="notify,poll")
    ap.add_argument("--batch", type=int, default=500, help="steps between flushes while growing")
    ap.add_argument("--live", type=float, default=10.0)
    ap.add_argument("--after", type=float, default=5.0)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--no-analyze", action="store_true")
    a = ap.parse_args()
    if a.writer:
        writer(a.writer, a.points, a.batch, a.live, a.after, a.idle)
        return
    print(f"# load before: {os.getloadavg()}", flush=True)
    rows = []
    for n in (int(x) for x in a.sizes.split(",")):
        for mode in a.modes.split(","):
            r = one(n, mode, a)
            r["load"] = os.getloadavg()[0]
            rows.append(r)
            print(json.dumps(r), flush=True)
        if not a.no_analyze:
            t = analyze_time(n, a)
            print(json.dumps({"points": n, "analyze_s": t, "load": os.getloadavg()[0]}), flush=True)
    print(f"# load after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
