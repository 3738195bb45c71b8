"""Comparing the runs of a batch (`analyze RUN_DIR RUN_DIR ...`): which failed, and how
their settings differ.

Built from the report documents alone (CONTRACT §2), so the index page and the batch
JSON (``comparison`` inside ``lorascope.batch/1``) say the same thing:

- runs are ranked by verdict (failed, warning, healthy), then by their number of
  critical, warning and info findings (more first), then by path;
- ``keys``: the settings that differ across the runs, in a fixed order (the trainer,
  then the report's normalized config keys), a key whose value is the same in every
  run left out (an unset key is a value: ``null``);
- a failed run's value of such a key is *marked* when no run that did not fail has it:
  a number outside the range of theirs, any other value none of theirs equals.  With
  no run that did not fail there is nothing to compare with, and nothing is marked.
"""
from __future__ import annotations

from typing import Any

VERDICT_RANK = {"failed": 0, "warning": 1, "healthy": 2}
SEVERITIES = ("critical", "warning", "info")
# the settings compared, in this order (CONTRACT §2's config keys, the trainer first)
KEYS = ("trainer", "task", "learning_rate", "lora_rank", "lora_alpha", "batch_size", "grad_accum",
        "epochs", "max_steps", "num_train_items", "lr_scheduler", "warmup_steps", "max_grad_norm",
        "resolution", "eval_strategy")
LABELS = {"learning_rate": "lr", "lora_rank": "rank", "lora_alpha": "alpha", "batch_size": "batch",
          "grad_accum": "grad accum", "num_train_items": "dataset size", "lr_scheduler": "scheduler",
          "warmup_steps": "warmup", "max_grad_norm": "grad clip", "max_steps": "max steps",
          "eval_strategy": "eval"}


def display_names(paths: list[str]) -> list[str]:
    """Run paths without the folder they all share (``out/a``, ``out/b``: ``a``, ``b``)."""
    import os
    if len(paths) < 2:
        return list(paths)
    try:
        common = os.path.commonpath(paths)
    except ValueError:                     # absolute and relative paths mixed
        return list(paths)
    out = []
    for p in paths:
        rest = p[len(common):].lstrip("/\\") if common and p.startswith(common) else p
        out.append(rest or os.path.basename(p.rstrip("/\\")) or p)
    return out


def counts(doc: dict) -> dict[str, int]:
    return {s: sum(1 for f in doc["findings"] if f["severity"] == s) for s in SEVERITIES}


def rank_key(doc: dict) -> tuple:
    c = counts(doc)
    return (VERDICT_RANK.get(doc["verdict"], 3), -c["critical"], -c["warning"], -c["info"],
            str(doc["run"]["path"]))


def setting(doc: dict, key: str) -> Any:
    if key in ("trainer", "task"):
        return doc["run"].get(key)
    return doc["run"].get("config", {}).get(key)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


def _hashable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), _hashable(x)) for k, x in v.items()))
    if _is_number(v):
        return ("n", float(v))
    return (type(v).__name__, v)


def _marked(v: Any, reference: list) -> bool:
    """``v`` (a failed run's value) is not among the values of the runs that did not fail."""
    if not reference:
        return False
    nums = [r for r in reference if _is_number(r)]
    if _is_number(v) and nums:
        return not (min(nums) <= v <= max(nums))
    return not any(_same(v, r) for r in reference)


def comparison(docs: list[dict]) -> dict:
    """The batch's comparison: ``keys`` (the settings that differ) and ``runs`` ranked,
    each ``{"report": i, "path", "rank", "verdict", "critical", "warning", "info",
    "top": {"rule", "step", "title"} | None, "settings": {key: value}, "marked": [key]}``
    (``report``: the index of the run's document in ``reports``)."""
    keys = [k for k in KEYS if len({_hashable(setting(d, k)) for d in docs}) > 1]
    order = sorted(range(len(docs)), key=lambda i: rank_key(docs[i]))
    reference = {k: [setting(d, k) for d in docs if d["verdict"] != "failed"] for k in keys}
    runs = []
    for rank, i in enumerate(order, 1):
        d = docs[i]
        top = next((f for s in SEVERITIES for f in d["findings"] if f["severity"] == s), None)
        settings = {k: setting(d, k) for k in keys}
        marked = [k for k in keys if d["verdict"] == "failed" and _marked(settings[k], reference[k])]
        runs.append({"report": i, "path": d["run"]["path"], "rank": rank, "verdict": d["verdict"],
                     **counts(d),
                     "top": None if top is None else {"rule": top["rule"], "step": top["step"],
                                                      "title": top["title"]},
                     "settings": settings, "marked": marked})
    return {"keys": keys, "runs": runs}
