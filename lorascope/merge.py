"""Dropping copies of a curve in near-linear time (for ``build``).

One trainer writes the same curve to several files (HF: the event file and
trainer_state.json; LLaMA-Factory: trainer_log.jsonl too).  Comparing every pair of
series was minutes with thousands of tags.  Here each series is compared only with
*candidates* (:func:`drop_copies`): a series can only repeat one of the same role and,
for role ``other``, the same base name (``train/x`` and ``x``).  Inside that group the
candidates are those with the same steps signature (first step, last step, number of
points: the usual copy) and those with the same base name (a copy cut short); at most
:data:`MAX_CANDIDATES` of each are compared.  (Which files belong to which run of a
folder is :mod:`lorascope.lineage`'s, near-linear too.)

Hostile inputs (tens of thousands of series of one role with the same steps) can make
a real copy go unnoticed past the candidate cap: it is then kept as a separate series,
which costs nothing but a line in the report.
"""
from __future__ import annotations


import numpy as np

from lorascope.model import Series

MAX_CANDIDATES = 64          # series or files compared with each one, at most


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
    signature or its base name, or (roles other than ``other``) any earlier one of its
    role; at most MAX_CANDIDATES of each kind are compared."""
    kept: list[Series] = []
    by_sig: dict[tuple, list[Series]] = {}
    by_base: dict[tuple, list[Series]] = {}
    by_role: dict[str, list[Series]] = {}
    for s in series:
        b = base(s.name)
        group = (s.role, b) if s.role == "other" else (s.role,)
        sig_key = group + _signature(s)
        base_key = (s.role, b)
        seen: set[int] = set()
        dup = False
        # a loss, eval loss, lr or grad-norm curve may be copied under another name and
        # cut short (eval_loss in trainer_state.json, eval/loss in the event file): any
        # earlier one of its role is a candidate (a run has few of each)
        role_bucket = by_role.get(s.role, ()) if s.role != "other" else ()
        for bucket in (by_sig.get(sig_key, ()), by_base.get(base_key, ()), role_bucket):
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
        by_role.setdefault(s.role, []).append(s)
    return kept


