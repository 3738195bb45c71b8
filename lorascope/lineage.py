"""Which curves belong to which training run: one folder, several runs.

Users point several trainings at one output directory (a fixed ``--output_dir``, a
fixed TensorBoard dir, a notebook cell run twice).  The files then hold pieces of
several runs side by side, and reading them as one picture mixes their numbers.  Here
the curve files are cut into *pieces* and the pieces grouped into *runs*:

* a **piece** is one writer's uninterrupted log: a trainer state, a LLaMA-Factory
  ``trainer_log.jsonl``, an event file, or a part of one of them after its step
  counter went back to the start (a second training written into the same file; the
  cut is made at the same place in the file for every tag, by the points' positions:
  wall times, line numbers);
* two pieces are **copies** of one run when their train-loss values agree wherever both
  logged a step (HF writes each loss to the event file and to ``trainer_state.json``,
  LLaMA-Factory to ``trainer_log.jsonl`` too) and they do not plan different totals;
* a piece that starts late (after the first logging steps) **continues** the run it
  agrees with, or the latest earlier run planned for the same total (a resume from a
  checkpoint writes a new event file that starts at the checkpoint's step);
* pieces that start at the beginning with different losses, or that plan different
  totals, are **different runs**.

The work is linear in the number of pieces for pieces that start at the beginning (a
hash of the first logged value finds the candidates) and at most
:data:`MAX_RUNS` comparisons for each late piece.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from lorascope.model import Parsed, RawSeries

MAX_RUNS = 50                 # runs told apart in one folder; beyond, pieces join the nearest
RTOL, ATOL = 2e-3, 6e-5       # copies: relative tolerance, and half the 4-decimal rounding of HF
CHECKPOINT_RE = re.compile(r"(?:^|/)checkpoint-(\d+)/")


@dataclass
class Piece:
    """One writer's uninterrupted log."""

    parsed: Parsed                 # source, the sliced series, the piece's facts
    key: RawSeries | None          # the train-loss curve used to compare pieces
    first: int | None
    last: int | None
    planned: int | None
    wall: float | None             # wall time of its first point, when the file has them
    segment: int = 0               # index of the piece within its file
    restart: tuple[int, int] | None = None   # (step before, step after) the cut that began it

    @property
    def path(self) -> str:
        return self.parsed.source.path

    @property
    def checkpoint(self) -> int | None:
        m = CHECKPOINT_RE.search(self.path)
        return int(m.group(1)) if m else None

    @property
    def interval(self) -> int:
        if self.key is None or len(self.key.steps) < 2:
            return 1
        d = np.diff(np.sort(self.key.steps.astype(np.float64)))
        d = d[d > 0]
        return max(1, int(min(np.median(d), 2 ** 62))) if len(d) else 1


@dataclass
class Lineage:
    """The runs of one folder, oldest first, and why they were told apart."""

    runs: list[list[Piece]] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)


# -- pieces ---------------------------------------------------------------------------------

def restarts(steps: np.ndarray) -> list[int]:
    """Indices where a step counter goes back to the start inside one file.

    A step counter that goes back only a little is a resume from a checkpoint or two
    processes writing one log, not a second run: only a fall back to (near) the first
    step counts."""
    s = steps
    if len(s) < 3:
        return []
    d = np.diff(s.astype(np.float64))      # float: steps near the int64 limits must not wrap
    back = np.nonzero(d < 0)[0] + 1
    if not len(back):
        return []
    first, span = int(s.min()), int(s.max()) - int(s.min())
    interval = max(1, int(min(np.median(np.abs(d)), 2 ** 62)))
    near_start = first + max(2 * interval, span // 20)
    return [int(i) for i in back if s[i] <= near_start and s[i - 1] > near_start]


def _positions(r: RawSeries) -> np.ndarray | None:
    if r.positions is not None and len(r.positions) == len(r.steps):
        return r.positions
    if r.wall_times is not None and len(r.wall_times) == len(r.steps):
        return r.wall_times
    return None


def _slice(r: RawSeries, keep: np.ndarray) -> RawSeries:
    return RawSeries(tag=r.tag, steps=r.steps[keep], values=r.values[keep], source=r.source,
                     wall_times=None if r.wall_times is None else r.wall_times[keep],
                     positions=None if r.positions is None else r.positions[keep])


def key_series(series: list[RawSeries], is_train_loss) -> RawSeries | None:
    """The curve pieces are compared on: the longest train-loss tag."""
    cands = [r for r in series if is_train_loss(r.tag) and len(r.steps)]
    return max(cands, key=lambda r: len(r.steps)) if cands else None


def split(p: Parsed, is_train_loss) -> list[Piece]:
    """One file's pieces: cut where its train-loss step counter restarts."""
    series = [r for r in p.series if len(r.steps)]
    key = key_series(series, is_train_loss)
    cuts: list[float] = []
    marks: list[tuple[int, int]] = []
    if key is not None:
        pos = _positions(key)
        if pos is not None:
            for i in restarts(key.steps):
                cuts.append(float(pos[i]))
                marks.append((int(key.steps[i - 1]), int(key.steps[i])))
    if not cuts:
        return [_piece(p, series, is_train_loss)]
    parts: list[list[RawSeries]] = [[] for _ in range(len(cuts) + 1)]
    for r in series:
        pos = _positions(r)
        if pos is None:                      # cannot place its points: the last piece's
            parts[-1].append(r)
            continue
        seg = np.searchsorted(np.asarray(cuts), pos, side="right")
        for k in range(len(parts)):
            keep = seg == k
            if keep.any():
                parts[k].append(_slice(r, keep))
    out = []
    bounds = [-math.inf] + cuts + [math.inf]
    for k, rs in enumerate(parts):
        sub = Parsed(source=p.source, series=rs, facts=dict(p.facts))
        piece = _piece(sub, rs, is_train_loss, segment=k)
        piece.restart = marks[k - 1] if k else None
        # the file's planned total is its last training's; a per-position record of the
        # total (LLaMA-Factory's total_steps) gives each piece its own
        at = [v for pos, v in p.facts.get("planned_at", []) if bounds[k] <= pos < bounds[k + 1]]
        piece.planned = at[-1] if at else (piece.planned if k == len(parts) - 1 else None)
        out.append(piece)
    return out


def _piece(p: Parsed, series: list[RawSeries], is_train_loss, segment: int = 0) -> Piece:
    key = key_series(series, is_train_loss)
    base = key if key is not None else max(series, key=lambda r: len(r.steps), default=None)
    first = last = None
    if base is not None and len(base.steps):
        first, last = int(base.steps.min()), int(base.steps.max())
    planned = p.facts.get("planned_steps")
    walls = [float(r.wall_times[0]) for r in series if r.wall_times is not None and len(r.wall_times)]
    return Piece(parsed=p, key=key, first=first, last=last,
                 planned=int(planned) if planned else None,
                 wall=min(walls) if walls else None, segment=segment)


# -- grouping -------------------------------------------------------------------------------

def copies(a: RawSeries, b: RawSeries) -> bool | None:
    """One run's curve written by two writers: equal values wherever both logged a step.
    None when they share no step (no evidence either way)."""
    common, ia, ib = np.intersect1d(a.steps, b.steps, return_indices=True)
    if len(common) == 0:
        return None
    va, vb = a.values[ia], b.values[ib]
    fin = np.isfinite(va) & np.isfinite(vb)
    if not fin.any():
        return True
    return bool(np.isclose(va[fin], vb[fin], rtol=RTOL, atol=ATOL).mean() >= 0.9)


def _plans_agree(a: int | None, b: int | None) -> bool:
    return a is None or b is None or a == b


def _bucket(v: float) -> int | None:
    """Hash of a loss value such that close values land in the same or a neighbouring bucket."""
    if not math.isfinite(v):
        return None
    return int(math.floor(math.log(abs(v) + ATOL * 10) / math.log1p(4 * RTOL)))


class _Run:
    def __init__(self, piece: Piece):
        self.pieces: list[Piece] = []
        self.rep: Piece | None = None          # the piece with the longest curve
        self.add(piece)

    def add(self, piece: Piece) -> None:
        self.pieces.append(piece)
        if piece.key is not None and (self.rep is None or len(piece.key.steps) > len(self.rep.key.steps)):
            self.rep = piece

    @property
    def planned(self) -> int | None:
        return next((p.planned for p in self.pieces if p.planned), None)

    @property
    def first(self) -> int | None:
        v = [p.first for p in self.pieces if p.first is not None]
        return min(v) if v else None

    @property
    def last(self) -> int | None:
        v = [p.last for p in self.pieces if p.last is not None]
        return max(v) if v else None

    @property
    def wall(self) -> float | None:
        v = [p.wall for p in self.pieces if p.wall is not None]
        return min(v) if v else None

    def key(self) -> RawSeries | None:
        return self.rep.key if self.rep is not None else None

    def agrees(self, piece: Piece) -> bool | None:
        """Whether a piece's curve is this run's: a copy of its longest curve (None: no
        common step to tell).  A writer never copies itself: another piece of the same
        file is another training."""
        if piece.key is None or self.rep is None:
            return None
        if self.rep.path == piece.path:
            return False
        return copies(self.rep.key, piece.key)


def group(pieces: list[Piece]) -> Lineage:
    """Pieces -> runs, oldest first, with the evidence of the split."""
    lin = Lineage()
    if not pieces:
        return lin
    firsts = [p.first for p in pieces if p.first is not None]
    gmin = min(firsts) if firsts else 0
    runs: list[_Run] = []
    buckets: dict[tuple[int, int], list[_Run]] = {}

    def early(p: Piece) -> bool:
        if p.first is None:
            return False
        span = max(0, (p.last or p.first) - gmin)
        return p.first <= gmin + max(2 * p.interval, span // 20)

    # 1. pieces that start at the beginning: copies join, others are new runs
    for p in sorted((p for p in pieces if early(p) and p.key is not None),
                    key=lambda p: (p.wall is None, p.wall or 0, p.path)):
        cand: list[_Run] = []
        b = None
        if p.key is not None and len(p.key.steps):
            i = int(np.argmin(p.key.steps))
            b = _bucket(float(p.key.values[i]))
        if b is not None:
            for d in (-1, 0, 1):
                cand.extend(buckets.get((int(p.key.steps.min()), b + d), []))
        hit = next((r for r in cand if _plans_agree(r.planned, p.planned) and r.agrees(p)), None)
        if hit is not None:
            hit.add(p)
        else:
            hit = _Run(p)
            runs.append(hit)
        if b is not None:
            buckets.setdefault((int(p.key.steps.min()), b), []).append(hit)
    # 2. pieces that start later: resumes of the run they agree with, else of the latest
    #    earlier run planned for the same total
    for p in sorted((p for p in pieces if not early(p) and p.key is not None),
                    key=lambda p: (p.first or 0, p.path)):
        cands = [r for r in reversed(runs[-MAX_RUNS:]) if _plans_agree(r.planned, p.planned)
                 and not (r.wall is not None and p.wall is not None and r.wall > p.wall)
                 and (r.first or 0) < (p.first or 0)]
        # the run it repeats (a resume re-logs the steps after its checkpoint), else the
        # latest one it can continue: a resume's re-done steps need not match exactly
        best = next((r for r in cands if r.agrees(p)), None) or (cands[0] if cands else None)
        if best is None:
            runs.append(_Run(p))
        else:
            best.add(p)
    # 3. pieces without a train-loss curve (an eval-only file, a summary) tell no run
    #    apart: they join the run that was writing when they began
    for p in (p for p in pieces if p.key is None):
        best = None
        if p.wall is not None:
            timed = [r for r in runs if r.wall is not None]
            before = [r for r in timed if r.wall <= p.wall]
            best = max(before, key=lambda r: r.wall) if before else (
                min(timed, key=lambda r: r.wall) if timed else None)
        if best is None:
            best = next((r for r in reversed(runs) if _plans_agree(r.planned, p.planned)), None)
        if best is None:
            runs.append(_Run(p))
        else:
            best.add(p)
    runs = _ordered(runs)
    lin.runs = [r.pieces for r in runs]
    lin.evidence = _evidence(pieces, runs)
    return lin


def _ordered(runs: list[_Run]) -> list[_Run]:
    """Oldest first: by the wall time of their first point when every run has one; else
    the run holding top-level (not checkpoint-N/) logs is the latest, then by the latest
    checkpoint and the last step."""
    if all(r.wall is not None for r in runs):
        return sorted(runs, key=lambda r: r.wall)

    def key(r: _Run):
        top = any(p.checkpoint is None for p in r.pieces)
        ck = max((p.checkpoint or 0 for p in r.pieces), default=0)
        return (top, ck, r.last or 0, r.wall or 0.0)
    return sorted(runs, key=key)


def describe(pieces: list[Piece]) -> str:
    first = [p.first for p in pieces if p.first is not None]
    last = [p.last for p in pieces if p.last is not None]
    planned = next((p.planned for p in pieces if p.planned), None)
    where = ", ".join(dict.fromkeys(p.path for p in pieces))
    if len(where) > 160:
        where = where[:157] + "..."
    rng = f"steps {min(first)}-{max(last)}" if first and last else "no steps"
    return rng + (f" of {planned} planned" if planned else "") + f" ({where})"


def _evidence(pieces: list[Piece], runs: list[_Run]) -> list[str]:
    ev: list[str] = []
    for p in pieces:
        if p.restart is not None and p.key is not None:
            ev.append(f"{p.path}: tag {p.key.tag} goes back from step {p.restart[0]} to step "
                      f"{p.restart[1]} (a second training written into the same file)")
    if len(runs) < 2:
        return ev[:10]
    for i, (a, b) in enumerate(zip(runs, runs[1:]), 1):
        why = []
        if a.planned and b.planned and a.planned != b.planned:
            why.append(f"planned for {a.planned} and {b.planned} steps")
        ka, kb = a.key(), b.key()
        if ka is not None and kb is not None and copies(ka, kb) is False:
            common = np.intersect1d(ka.steps, kb.steps)
            s = int(common[0]) if len(common) else None
            if s is not None:
                va = float(ka.values[np.searchsorted(ka.steps, s)]) if np.all(np.diff(ka.steps) >= 0) else None
                vb = float(kb.values[np.searchsorted(kb.steps, s)]) if np.all(np.diff(kb.steps) >= 0) else None
                if va is not None and vb is not None:
                    why.append(f"different losses at step {s} ({va:.4g} vs {vb:.4g})")
        if a.first is not None and b.first is not None and abs(a.first - b.first) <= max(
                2, min(p.interval for p in a.pieces + b.pieces) * 2):
            why.append(f"both start at step {min(a.first, b.first)}")
        ev.append(f"run-{i} ({describe(a.pieces)}) and run-{i + 1} ({describe(b.pieces)}): "
                  + ("; ".join(why) if why else "two trainings"))
    return ev[:10]
