"""HF Trainer ``trainer_state.json`` (top level and inside ``checkpoint-N/``).

The file is what ``TrainerState.save_to_json`` writes: sorted keys, ``indent=2``, bare
``NaN`` / ``Infinity`` for non-finite floats (Python's json writes and reads them).
``log_history`` is a list of dicts, one per ``Trainer.log`` call: training entries
(``loss``, ``learning_rate``, ``grad_norm``, ``epoch``, ``step``), evaluation entries
(``eval_*``), TRL extras (``rewards/chosen``, ``kl``...), and at the end one summary
entry (``train_runtime``, ``train_loss``, ``total_flos``...).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from lorascope.ingest import _json
from lorascope.ingest._lines import ProblemLog, read_bounded
from lorascope.ingest._lines import json_int as _int
from lorascope.ingest._lines import json_number as _num
from lorascope.model import ConfigValue, Parsed, RawSeries, Source

KIND = "trainer_state"
MAX_BYTES = 1024 * 1024 * 1024        # a trainer_state.json larger than this is not read
MAX_EPOCHS = 1e6                      # num_train_epochs above this means "max_steps rules"
SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second",
                "total_flos")
# per-step numbers that are bookkeeping, not metrics
SKIP_KEYS = {"step", "epoch", "total_flos", "num_input_tokens_seen"}
SKIP_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second")
CORE_KEYS = {"loss", "eval_loss", "learning_rate", "lr", "grad_norm"}
CHECKPOINT_RE = re.compile(r"(?:^|/)checkpoint-(\d+)/[^/]*$")
# a top-level scalar line as HF writes it (indent=2), for salvaging a truncated file
TOP_SCALAR_RE = re.compile(r'^  "(\w+)": (-?[0-9.eE+-]+|null|true|false|"[^"\n]*"|NaN|Infinity|-Infinity),?\s*$',
                           re.M)


def _salvage(text: str) -> dict:
    """What can be read from a file that is not valid JSON (usually cut short):
    top-level scalars and the complete entries of ``log_history``."""
    out: dict[str, Any] = {}
    for m in TOP_SCALAR_RE.finditer(text):
        try:
            out[m.group(1)] = _json.loads(m.group(2))
        except ValueError:
            pass
    i = text.find('"log_history"')
    if i >= 0:
        j = text.find("[", i)
        entries = []
        if j >= 0:
            dec = json.JSONDecoder()
            pos = j + 1
            n = len(text)
            while pos < n:
                while pos < n and text[pos] in " \t\r\n,":
                    pos += 1
                if pos >= n or text[pos] == "]":
                    break
                try:
                    obj, pos = _json.raw_decode(dec, text, pos)
                except ValueError:
                    break
                entries.append(obj)
        out["log_history"] = entries
    return out


def parse(path: Path, rel: str) -> Parsed:
    src = Source(path=rel, kind=KIND)
    parsed = Parsed(source=src)
    problems = ProblemLog()
    parsed.facts["trainer"] = "hf-trainer"
    m = CHECKPOINT_RE.search(rel)
    if m:
        parsed.facts["checkpoint_step"] = int(m.group(1))
    raw = read_bounded(path, src.problems, MAX_BYTES)
    if raw is None:
        return parsed
    text = raw.decode("utf-8-sig", errors="replace")
    if "\ufffd" in text:
        problems.add("bytes that are not UTF-8 (replaced)")
    try:
        state = _json.loads(text)
    except _json.NestedTooDeep as e:
        src.problems.append(f"{e}: not read")
        return parsed
    except ValueError as e:
        state = _salvage(text)
        n = len(state.get("log_history", []))
        src.problems.append(f"not valid JSON ({str(e)[:120]}); salvaged {n} log_history entries")
    if not isinstance(state, dict):
        src.problems.append(f"top level is {type(state).__name__}, not an object")
        return parsed

    _facts(state, parsed, problems, rel)
    _history(state.get("log_history"), parsed, problems, rel)
    src.problems.extend(problems.out())
    return parsed


def _facts(state: dict, parsed: Parsed, problems: ProblemLog, rel: str) -> None:
    f = parsed.facts

    def intfact(key: str, fact: str, cfg: str | None = None, positive: bool = True) -> None:
        if key not in state or state[key] is None:
            return
        v = _int(state[key])
        if v is None:
            problems.add(f"{key} is not an integer: {str(state[key])[:40]}")
            return
        f[fact] = v
        if cfg and (v > 0 or not positive):
            parsed.config.append(ConfigValue(cfg, v, rel, key))

    intfact("global_step", "state_global_step")
    intfact("max_steps", "planned_steps", "max_steps")
    intfact("logging_steps", "logging_steps", "logging_steps")
    intfact("eval_steps", "eval_steps", "eval_steps")
    intfact("save_steps", "save_steps", "save_steps")
    intfact("train_batch_size", "train_batch_size", "batch_size")
    if f.get("planned_steps") is not None and f["planned_steps"] <= 0:
        del f["planned_steps"]

    ep = state.get("num_train_epochs")
    if ep is not None:
        v = _num(ep)
        if v is None:
            problems.add(f"num_train_epochs is not a number: {str(ep)[:40]}")
        elif math.isfinite(v) and 0 < v <= MAX_EPOCHS:
            epochs = int(v) if v == int(v) else v
            f["num_train_epochs"] = epochs
            parsed.config.append(ConfigValue("epochs", epochs, rel, "num_train_epochs"))
        # else: int64 max (max_steps rules) or nonsense: unknown
    e = _num(state.get("epoch"))
    if e is not None and math.isfinite(e):
        f["state_epoch"] = e
    bmc = state.get("best_model_checkpoint")
    if isinstance(bmc, str):
        f["best_model_checkpoint"] = bmc
    bm = _num(state.get("best_metric"))
    if bm is not None:
        f["best_metric"] = bm


def _history(hist: Any, parsed: Parsed, problems: ProblemLog, rel: str) -> None:
    f = parsed.facts
    if hist is None:
        f["log_history_len"] = 0
        problems.add("no log_history")
        return
    if not isinstance(hist, list):
        f["log_history_len"] = 0
        problems.add(f"log_history is {type(hist).__name__}, not a list")
        return
    f["log_history_len"] = len(hist)
    parsed.source.records = len(hist)
    points: dict[str, tuple[list[int], list[float]]] = {}
    epoch_seen: set[int] = set()
    no_step = 0

    def add(tag: str, step: int, value: float) -> None:
        s, v = points.setdefault(tag, ([], []))
        s.append(step)
        v.append(value)

    for i, e in enumerate(hist):
        if not isinstance(e, dict):
            problems.add(f"log_history[{i}] is {type(e).__name__}, not an object")
            continue
        if any(k in e for k in SUMMARY_KEYS):
            tl = _num(e.get("train_loss"))
            if tl is not None:
                f["final_train_loss"] = tl
            rt = _num(e.get("train_runtime"))
            if rt is not None:
                f["train_runtime"] = rt
            st = _int(e.get("step"))
            if st is not None:
                f["summary_step"] = st
            continue
        if "step" not in e:
            no_step += 1
            continue
        step = _int(e["step"])
        if step is None or step < 0:
            problems.add(f"log_history[{i}].step is not a step number: {str(e['step'])[:40]}")
            continue
        ep = e.get("epoch")
        if ep is not None:
            v = _num(ep)
            if v is None:
                problems.add(f"log_history[{i}].epoch is not a number: {str(ep)[:40]}")
            elif step not in epoch_seen:
                epoch_seen.add(step)
                add("epoch", step, v)
        has_lr = "learning_rate" in e
        for k, val in e.items():
            if k in SKIP_KEYS or k.endswith(SKIP_SUFFIXES):
                continue
            v = _num(val)
            if v is None:
                if val is None or (isinstance(val, str) and k not in CORE_KEYS):
                    continue        # remaining_time: "59h:30m", a null metric
                problems.add(f"log_history[{i}].{k} is {type(val).__name__}, not a number")
                continue
            tag = "learning_rate" if (k == "lr" and not has_lr) else k
            add(tag, step, v)
    if no_step:
        f["entries_without_step"] = no_step

    for tag, (s, v) in points.items():
        parsed.series.append(RawSeries(tag=tag, steps=np.asarray(s, dtype=np.int64),
                                       values=np.asarray(v, dtype=np.float64), source=rel))
