"""Helpers for the `lorascope watch` tests: a finished fixture run written again, record
by record, as its trainer wrote it; a watch subprocess whose JSON events are collected
as they arrive; and the first step from which a rule shows on the run's prefix."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LATE = ("train.log", "running_log.txt", "trainer_state.json", "all_results.json",
        "train_results.json", "trainer_log.jsonl")


def frames(data: bytes) -> list[int]:
    """End offsets of the TFRecord frames of an event file."""
    out, pos = [], 0
    while pos + 12 <= len(data):
        pos += struct.unpack_from("<Q", data, pos)[0] + 16
        if pos <= len(data):
            out.append(pos)
    return out


def _late(rel: Path) -> bool:
    """Files a trainer writes during or after training: written after the curves."""
    return rel.name in LATE or rel.suffix == ".safetensors" and rel.parts[0] in ("output",) \
        or any(p.startswith("checkpoint-") for p in rel.parts)


class Replay:
    """Writes ``src`` into ``dst`` as a trainer would: its configs and data first, then
    its event files grown ``batch`` records at a time every ``pause`` seconds (the last
    record of each batch cut in two writes, as a writer's buffer may leave it), then its
    logs, states and saved adapters."""

    def __init__(self, src: Path, dst: Path, batch: int = 20, pause: float = 0.05) -> None:
        self.src, self.dst, self.batch, self.pause = Path(src), Path(dst), batch, pause
        self.events = sorted(self.src.rglob("events.out.tfevents.*"))
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()
        self.done = threading.Event()

    def start_tree(self) -> None:
        for p in sorted(self.src.rglob("*")):
            rel = p.relative_to(self.src)
            if p.is_dir() or p in self.events or _late(rel):
                continue
            (self.dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, self.dst / rel)

    def grow(self, limit: int | None = None) -> None:
        """Write the event files (up to ``limit`` records of each, all of them without)."""
        datas = {e: e.read_bytes() for e in self.events}
        ends = {e: frames(d) for e, d in datas.items()}
        fhs = {}
        for e in self.events:
            out = self.dst / e.relative_to(self.src)
            out.parent.mkdir(parents=True, exist_ok=True)
            fhs[e] = open(out, "wb")
        try:
            n = max(len(v) for v in ends.values())
            if limit is not None:
                n = min(n, limit)
            written = {e: 0 for e in self.events}
            for k in range(self.batch, n + self.batch, self.batch):
                if self.stop.is_set():
                    return
                for e in self.events:
                    fr = ends[e]
                    upto = fr[min(k, len(fr)) - 1]
                    if upto > written[e]:
                        chunk = datas[e][written[e]:upto]
                        half = max(1, len(chunk) - 7)
                        fhs[e].write(chunk[:half])       # a record cut at the live end ...
                        fhs[e].flush()
                        fhs[e].write(chunk[half:])       # ... completed by the next write
                        fhs[e].flush()
                        written[e] = upto
                time.sleep(self.pause)
        finally:
            for fh in fhs.values():
                fh.close()

    def finish_tree(self) -> None:
        for p in sorted(self.src.rglob("*")):
            rel = p.relative_to(self.src)
            if p.is_file() and _late(rel):
                (self.dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, self.dst / rel)

    def run(self, finish: bool = True) -> None:
        self.grow()
        if finish and not self.stop.is_set():
            self.finish_tree()
        self.done.set()

    def start(self, finish: bool = True) -> "Replay":
        self.start_tree()
        self.thread = threading.Thread(target=self.run, args=(finish,), daemon=True)
        self.thread.start()
        return self


class WatchProc:
    """``lorascope watch RUN --format json ...`` in a subprocess; its events, each with
    the time it arrived, collected by a thread."""

    def __init__(self, run_dir: Path, *args: str, env: dict | None = None) -> None:
        e = dict(os.environ)
        e.pop("LORASCOPE_STRICT", None)
        e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
        e.update(env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "lorascope.cli", "watch", str(run_dir),
                                      "--format", "json", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=e, cwd=str(ROOT))
        self.events: list[dict] = []
        self.lines: list[str] = []
        self.stderr = ""
        self.ready = threading.Event()          # it said it follows the folder
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()
        self._e = threading.Thread(target=self._read_err, daemon=True)
        self._e.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            ev = json.loads(line)
            ev["_arrived"] = time.time()
            self.events.append(ev)

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            self.stderr += line
            if "lorascope watch: following" in line:
                self.ready.set()

    def wait_for(self, pred, timeout: float) -> dict | None:
        end = time.time() + timeout
        while time.time() < end:
            for ev in list(self.events):
                if pred(ev):
                    return ev
            if self.proc.poll() is not None and not self._t.is_alive():
                break
            time.sleep(0.02)
        return next((ev for ev in list(self.events) if pred(ev)), None)

    def summary(self) -> str:
        """The events in short, for an assertion message."""
        out = []
        for e in self.events:
            if e["event"] == "final":
                out.append(f"final {e['reason']} {e['detail']} rc={e['exit_status']}")
            else:
                out.append(f"{e['event']} at {e['at_step']} {e['finding']['rule']}@{e['finding']['step']}"
                           + (" (provisional)" if e["provisional"] else ""))
        return "\n".join(out) + "\n" + self.stderr[-500:]

    def finish(self, timeout: float = 60) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._t.join(timeout=10)
        self._e.join(timeout=10)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def first_showing(run_dir: Path, rule: str, firm: bool = False) -> int | None:
    """The first step from which ``rule`` shows (``firm``: not provisional) when the run
    is judged on its points up to that step, as `watch` judges it."""
    from lorascope.pipeline import _analyse
    from lorascope.build import build_run
    from lorascope.rules.registry import load_catalog
    from lorascope.watch.live import live_findings
    run = build_run(run_dir)
    cat = load_catalog()
    tl = run.primary("train_loss")
    for s in tl.steps.tolist():
        ser = tuple(replace(x, steps=x.steps[x.steps <= s], values=x.values[x.steps <= s])
                    for x in run.series)
        ser = tuple(x for x in ser if len(x.steps))
        r = replace(run, series=ser, steps=replace(run.steps, last=int(s)))
        shown, prov = live_findings(_analyse(r, cat).findings, r)
        if any(f.rule == rule and not (firm and id(f) in prov) for f in shown):
            return int(s)
    return None


def wall_time_of(run_dir: Path, tag: str, step: int) -> float:
    """When the trainer wrote the ``tag`` point of ``step`` (the event record's wall time)."""
    from lorascope.ingest import tfevents
    for ev in sorted(Path(run_dir).rglob("events.out.tfevents.*")):
        p = tfevents.parse(ev, ev.name)
        for r in p.series:
            if r.tag == tag:
                hit = np.flatnonzero(r.steps == step)
                if len(hit):
                    return float(r.wall_times[hit[0]])
    raise LookupError(f"no {tag} point at step {step}")
