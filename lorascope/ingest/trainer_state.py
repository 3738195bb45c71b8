"""HF Trainer ``trainer_state.json`` (top level and inside ``checkpoint-N/``).

The file is what ``TrainerState.save_to_json`` writes: sorted keys, ``indent=2``, bare
``NaN`` / ``Infinity`` for non-finite floats (Python's json writes and reads them).
``log_history`` is a list of dicts, one per ``Trainer.log`` call: training entries
(``loss``, ``learning_rate``, ``grad_norm``, ``epoch``, ``step``), evaluation entries
(``eval_*``), TRL extras (``rewards/chosen``, ``kl``...), and at the end one summary
entry (``train_runtime``, ``train_loss``, ``total_flos``...).
"""
from __future__ import annotations

import math
import os
import re
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from lorascope.ingest import _json
from lorascope.ingest._lines import ProblemLog
from lorascope.ingest._lines import json_int as _int
from lorascope.ingest._lines import json_number as _num
from lorascope.model import ConfigValue, Parsed, RawSeries, Source
from lorascope.safe_open import open_file

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
_SEP = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")
SUMMARY_SET = frozenset(SUMMARY_KEYS)
TOP_SCALAR_RE = re.compile(r'^  "(\w+)": (-?[0-9.eE+-]+|null|true|false|"[^"\n]*"|NaN|Infinity|-Infinity),?\s*$',
                           re.M)


class _Text:
    """The file as text (UTF-8, BOM dropped, bad bytes replaced), read in pieces; notes
    whether any byte had to be replaced."""

    def __init__(self, fh):
        import codecs
        self.fh = fh
        self.dec = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self.replaced = False

    def read(self, n: int) -> str:
        raw = self.fh.read(n)
        text = self.dec.decode(raw, final=not raw)
        if "\ufffd" in text:
            self.replaced = True
        return text


def _stream(ts: _json.TextStream, state: dict, hist: "_History") -> None:
    """The top-level object, key by key, ``log_history`` entry by entry (never held
    whole).  Raises ValueError (with what was read kept) on invalid JSON."""
    if not ts.take("{"):
        if ts.peek() is None:
            raise EOFError
        state["__top__"] = ts.value()            # a list, a number: reported by the caller
        return
    first = True
    while True:
        if ts.take("}"):
            return
        if not first and not ts.take(","):
            raise ValueError(f"expected ',' or '}}' at character {ts.offset()}")
        first = False
        key = ts.value()
        if not isinstance(key, str) or not ts.take(":"):
            raise ValueError(f"expected a key at character {ts.offset()}")
        if key == "log_history" and ts.take("["):
            hist.started()
            if not ts.take("]"):
                while True:
                    # entries are reduced to numbers, so their nesting needs no walk
                    hist.add(ts.value(check_depth=False))
                    m = _SEP.match(ts.buf, ts.pos)    # the common case, in one regex call
                    if m is not None and m.end() < len(ts.buf):
                        ts.pos = m.end()
                        if m.group(1) == "]":
                            break
                        continue
                    if ts.take("]"):
                        break
                    if not ts.take(","):
                        raise ValueError(f"expected ',' or ']' at character {ts.offset()}")
            continue
        state[key] = ts.value()


def _salvage_scalars(ts: _json.TextStream, state: dict) -> None:
    """Top-level scalars (as HF writes them, one per line) after the point where the
    JSON broke, piece by piece."""
    tail = ""
    for piece in ts.rest():
        text = tail + piece
        cut = text.rfind("\n") + 1
        for m in TOP_SCALAR_RE.finditer(text[:cut]):
            if m.group(1) not in state:
                try:
                    state[m.group(1)] = _json.loads(m.group(2))
                except ValueError:
                    pass
        tail = text[cut:][-4096:]


def parse(path: Path, rel: str) -> Parsed:
    """Stream the file: memory stays within the columns kept (16 bytes a number) and
    one log entry, whatever the file's size."""
    src = Source(path=rel, kind=KIND)
    parsed = Parsed(source=src)
    problems = ProblemLog()
    parsed.facts["trainer"] = "hf-trainer"
    m = CHECKPOINT_RE.search(rel)
    if m:
        parsed.facts["checkpoint_step"] = int(m.group(1))
    try:
        fh = open_file(path)
    except OSError as e:
        src.problems.append(f"cannot read ({e.strerror or e})")
        return parsed
    state: dict[str, Any] = {}
    hist = _History(parsed, ProblemLog(), rel)     # its problems go after the facts
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size > MAX_BYTES:
            src.problems.append(f"file is {size} bytes, larger than {MAX_BYTES}: not read")
            return parsed
        text = _Text(fh)
        ts = _json.TextStream(text)
        try:
            _stream(ts, state, hist)
        except EOFError:
            src.problems.append("empty file")
            return parsed
        except _json.NestedTooDeep as e:
            src.problems.append(f"{e}: not read")
            return parsed
        except ValueError as e:
            _salvage_scalars(ts, state)
            src.problems.append(f"not valid JSON ({str(e)[:120]}); salvaged {hist.n} log_history entries")
        except MemoryError:
            src.problems.append(f"out of memory after {hist.n} log_history entries of this "
                                f"{size}-byte file: not read")
            return parsed
    if text.replaced:
        problems.add("bytes that are not UTF-8 (replaced)")
    if "__top__" in state:
        src.problems.append(f"top level is {_kind(state['__top__'])}, not an object")
        return parsed
    _facts(state, parsed, problems, rel)
    if not hist.seen:
        _history_value(state.get("log_history"), hist, problems)
    hist.finish()
    for text_ in hist.problems.kept:
        problems.add(text_)
    problems.more += hist.problems.more
    src.problems.extend(problems.out())
    return parsed


def _kind(v: Any) -> str:
    return {dict: "dict", list: "list", str: "str", bool: "bool", int: "int",
            float: "float", type(None): "NoneType"}.get(type(v), type(v).__name__)


def _short(v: Any) -> str:
    """A value in a problem message: scalars as written, containers by kind and size
    (never str() of a nested value)."""
    if isinstance(v, (list, dict)):
        return f"a {_kind(v)} of {len(v)}"
    return str(v)[:40]


def _facts(state: dict, parsed: Parsed, problems: ProblemLog, rel: str) -> None:
    f = parsed.facts

    def intfact(key: str, fact: str, cfg: str | None = None, positive: bool = True) -> None:
        if key not in state or state[key] is None:
            return
        v = _int(state[key])
        if v is None:
            problems.add(f"{key} is not an integer: {_short(state[key])}")
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
            problems.add(f"num_train_epochs is not a number: {_short(ep)}")
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


def _history_value(hist: Any, acc: "_History", problems: ProblemLog) -> None:
    """log_history when it was not a list streamed entry by entry."""
    if hist is None:
        problems.add("no log_history")
    elif not isinstance(hist, list):
        problems.add(f"log_history is {_kind(hist)}, not a list")
    else:
        acc.started()
        for e in hist:
            acc.add(e)


class _History:
    """``log_history`` entries, one at a time, into one pair of columns (int64 steps,
    float64 values) per key."""

    def __init__(self, parsed: Parsed, problems: ProblemLog, rel: str):
        self.parsed, self.problems, self.rel = parsed, problems, rel
        self.points: dict[str, tuple[array, array]] = {}
        self.route: dict[str, str | None] = {}       # key -> its tag, or None: not a curve
        self.epoch_seen: set[int] = set()
        self.n = 0
        self.no_step = 0
        self.seen = False

    def started(self) -> None:
        self.seen = True

    def _add(self, tag: str, step: int, value: float) -> None:
        cols = self.points.get(tag)
        if cols is None:
            cols = self.points[tag] = (array("q"), array("d"))
        cols[0].append(step)
        cols[1].append(value)

    def add(self, e: Any) -> None:
        i = self.n
        self.n += 1
        problems, f = self.problems, self.parsed.facts
        if not isinstance(e, dict):
            problems.add(f"log_history[{i}] is {_kind(e)}, not an object")
            return
        if not SUMMARY_SET.isdisjoint(e):
            tl = _num(e.get("train_loss"))
            if tl is not None:
                f["final_train_loss"] = tl
            rt = _num(e.get("train_runtime"))
            if rt is not None:
                f["train_runtime"] = rt
            st = _int(e.get("step"))
            if st is not None:
                f["summary_step"] = st
            return
        if "step" not in e:
            self.no_step += 1
            return
        step = _int(e["step"])
        if step is None or step < 0:
            problems.add(f"log_history[{i}].step is not a step number: {_short(e['step'])}")
            return
        ep = e.get("epoch")
        if ep is not None:
            v = _num(ep)
            if v is None:
                problems.add(f"log_history[{i}].epoch is not a number: {_short(ep)}")
            elif step not in self.epoch_seen:
                self.epoch_seen.add(step)
                self._add("epoch", step, v)
        has_lr = "learning_rate" in e
        route, points = self.route, self.points
        for k, val in e.items():
            tag = route.get(k, False)
            if tag is False:
                tag = route[k] = None if (k in SKIP_KEYS or k.endswith(SKIP_SUFFIXES)) else k
            if tag is None:
                continue
            if type(val) is float:
                v = val
            else:
                v = _num(val)
                if v is None:
                    if val is None or (isinstance(val, str) and k not in CORE_KEYS):
                        continue        # remaining_time: "59h:30m", a null metric
                    problems.add(f"log_history[{i}].{k} is {_kind(val)}, not a number")
                    continue
            if k == "lr" and not has_lr:
                tag = "learning_rate"
            cols = points.get(tag)
            if cols is None:
                cols = points[tag] = (array("q"), array("d"))
            cols[0].append(step)
            cols[1].append(v)

    def finish(self) -> None:
        f = self.parsed.facts
        f["log_history_len"] = self.n
        if self.seen:
            self.parsed.source.records = self.n
        if self.no_step:
            f["entries_without_step"] = self.no_step
        for tag, (s, v) in self.points.items():
            self.parsed.series.append(RawSeries(tag=tag, steps=np.frombuffer(s, dtype=np.int64).copy(),
                                                values=np.frombuffer(v, dtype=np.float64).copy(),
                                                source=self.rel))
