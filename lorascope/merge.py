"""Comparing series in near-linear time (for ``build``).

Three comparisons of the builder looked at every pair: dropping a curve that one
trainer wrote to two files (event file and trainer_state.json), finding event files
of different runs that all start at the beginning (a reused log folder), and finding
trainer states that log different losses at the same steps.  With thousands of tags
or files that was minutes.  Here each series is compared only with *candidates*:

* copies (:func:`drop_copies`): a series can only repeat one of the same role and, for
  role ``other``, the same base name (``train/x`` and ``x``).  Inside that group the
  candidates are those with the same steps signature (first step, last step, number
  of points: the usual copy) and those with the same base name (a copy cut short);
  at most :data:`MAX_CANDIDATES` of each are compared.
* runs starting together (:func:`start_pairs`): event files are taken in order of
  their first step; each is compared with at most :data:`MAX_CANDIDATES` earlier ones
  that start within a logging interval of it, skipping files that copy one already
  seen, and the search stops once :data:`MAX_EVIDENCE` pairs are found.
* trainer states (:func:`states_disagree`): one vectorised comparison per state and
  tag (``np.intersect1d``).

Hostile inputs (tens of thousands of series of one role with the same steps) can make
a real copy go unnoticed past the candidate cap: it is then kept as a separate series,
which costs nothing but a line in the report.
"""
from __future__ import annotations

import bisect

import numpy as np

from lorascope.model import RawSeries, Series

MAX_CANDIDATES = 64          # series or files compared with each one, at most
MAX_EVIDENCE = 10            # pieces of evidence of a mixed run that are enough


def copies(a: RawSeries, b: RawSeries) -> bool:
    """One run's curve written by two writers (event file and trainer state, trainer
    state and trainer_log.jsonl): equal values wherever both logged a step."""
    common, ia, ib = np.intersect1d(a.steps, b.steps, return_indices=True)
    if len(common) == 0:
        return False
    va, vb = a.values[ia], b.values[ib]
    fin = np.isfinite(va) & np.isfinite(vb)
    return bool(np.isclose(va[fin], vb[fin], rtol=2e-3, atol=1e-6).mean() >= 0.9) if fin.any() else True


def same_curve(a: Series, b: Series) -> bool:
    """b repeats a: the same steps (or a subset) with the same values."""
    if len(b.steps) > len(a.steps) or not np.isin(b.steps, a.steps).all():
        return False
    av = a.values[np.searchsorted(a.steps, b.steps)]
    both_nan = ~np.isfinite(av) & ~np.isfinite(b.values)
    close = np.isclose(av, b.values, rtol=2e-3, atol=1e-6)
    return bool((close | both_nan).all())


def base(name: str) -> str:
    n = name.split(" ")[0].lower()
    return n[6:] if n.startswith("train/") else n


def _signature(s: Series) -> tuple:
    n = len(s.steps)
    return (n, int(s.steps[0]), int(s.steps[-1])) if n else (0,)


def drop_copies(series: list[Series]) -> list[Series]:
    """One trainer writes the same curve to several files (HF: event file and
    trainer_state.json; LLaMA-Factory: trainer_log.jsonl too): keep the first.

    A series is dropped when it repeats (:func:`same_curve`) an earlier kept series of
    its role (of role ``other``: with the same base name) that shares its steps
    signature or its base name."""
    kept: list[Series] = []
    by_sig: dict[tuple, list[Series]] = {}
    by_base: dict[tuple, list[Series]] = {}
    for s in series:
        b = base(s.name)
        group = (s.role, b) if s.role == "other" else (s.role,)
        sig_key = group + _signature(s)
        base_key = (s.role, b)
        seen: set[int] = set()
        dup = False
        for bucket in (by_sig.get(sig_key, ()), by_base.get(base_key, ())):
            for k in bucket[:MAX_CANDIDATES]:
                if id(k) in seen:
                    continue
                seen.add(id(k))
                if same_curve(k, s):
                    dup = True
                    break
            if dup:
                break
        if dup:
            continue
        kept.append(s)
        by_sig.setdefault(sig_key, []).append(s)
        by_base.setdefault(base_key, []).append(s)
    return kept


def _interval(r: RawSeries) -> int:
    if len(r.steps) < 2:
        return 1
    return max(1, int(np.median(np.diff(np.sort(r.steps)))))


def start_pairs(tag: str, raws: list[RawSeries], limit: int = MAX_EVIDENCE) -> list[str]:
    """Evidence that several files log this (train loss) tag from the beginning: pairs
    of files from different sources whose first steps lie within a logging interval
    (of the file listed first) and that are not copies of one another."""
    items = []
    for i, r in enumerate(raws):
        if len(r.steps):
            items.append((int(r.steps.min()), int(r.steps.max()), (_interval(r), i), r))
    items.sort(key=lambda it: it[0])
    widest = max((it[2][0] for it in items), default=1)
    reps: list[tuple] = []           # files that copy no earlier one, in order of first step
    rep_starts: list[int] = []
    ev: list[str] = []
    for b0, b1, ib, b in items:
        lo = bisect.bisect_left(rep_starts, b0 - widest)
        copy = False
        checked = 0
        for k in range(len(reps) - 1, lo - 1, -1):       # nearest start first
            a0, a1, ia, a = reps[k]
            if a.source == b.source:
                continue
            if checked >= MAX_CANDIDATES:
                break
            checked += 1
            (x0, x1, (ix, _), x), (y0, y1, _, y) = sorted(((a0, a1, ia, a), (b0, b1, ib, b)),
                                                           key=lambda it: it[2][1])
            if abs(x0 - y0) > ix:
                continue
            if copies(a, b):
                copy = True
                break
            first = min(a0, b0)
            if min(a1, b1) > first:
                ev.append(f"{x.source} (steps {x0}-{x1}) and {y.source} (steps {y0}-{y1}) "
                          f"both start at step {first}: two runs in one log directory")
                if len(ev) >= limit:
                    return ev
        if not copy:
            reps.append((b0, b1, ib, b))
            rep_starts.append(b0)
    return ev


def states_disagree(winner: list[RawSeries], others: dict[str, list[RawSeries]],
                    is_loss, winner_path: str) -> list[str]:
    """Trainer states (other than the winner) that log a different loss than the winner
    at two or more of the same steps: another run in the same output directory."""
    wl = {r.tag: r for r in winner}
    out: list[str] = []
    for tag, raws in others.items():
        w = wl.get(tag)
        if w is None or not is_loss(tag):
            continue
        for r in raws:
            common, iw, ir = np.intersect1d(w.steps, r.steps, return_indices=True)
            if not len(common):
                continue
            wv, rv = w.values[iw], r.values[ir]
            fin = np.isfinite(wv) & np.isfinite(rv)
            diff = fin & (np.abs(rv - wv) > 1e-3 * np.maximum(1.0, np.abs(rv)))
            hits = np.flatnonzero(diff)
            if len(hits) >= 2:
                # the first differing step in the other state's own order
                first = int(common[hits][np.argmin(ir[hits])])
                out.append(f"{r.source} and {winner_path} log different losses at the same "
                           f"steps (e.g. step {first}): two runs in one output directory")
                break
    return out
