"""Trainer stdout/stderr captured to a file: ``train.log``, ``*.log``,
LLaMA-Factory ``running_log.txt``, ``logs/*.txt``.

Two things come out of a text log:

* :class:`LogEvent` records for what matters to a post-mortem (the base model was or was
  not loaded, how many parameters are trainable, out-of-memory, NaN warnings,
  tracebacks), each with its file and 1-based line;
* curves, where the trainer printed them: HF Trainer / LLaMA-Factory print one
  ``{'loss': 2.1, 'grad_norm': ..., 'learning_rate': ..., 'epoch': 0.1}`` line per
  logging step *without the step number* (steps are then synthetic: the ordinal times
  the logging interval when the log reveals it, ``facts["steps_synthetic"] = True``);
  kohya sd-scripts' progress bar carries the real step and ``avr_loss``.

Harmless noise is ignored on purpose: TensorFlow/XLA "E0000 ... Unable to register
cuDNN factory" lines are not errors, and out-of-memory means ``CUDA out of memory`` /
``OutOfMemoryError``, not any line with an "E" in it.
"""
from __future__ import annotations

import copy
import math
import re
from array import array
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lorascope.ingest._lines import MAX_LINE, LineTail, ReadStats
from lorascope.model import ConfigValue, LogEvent, Parsed, RawSeries, Source
from lorascope.trainers import hf_trainer, kohya, lora_scripts

KIND = "text_log"
MAX_EVENTS_PER_KIND = 200
MAX_TEXT = 300
MAX_TRACEBACK_LINES = 5000      # a traceback longer than this is closed without exception

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_RANK = re.compile(r"^\s*\[(?:rank|default)\d*\]:\s?")
_RICH_SRC = re.compile(r"\s{2,}[\w.-]+\.py:\d+\s*$")
_NUM = r"-?[0-9][0-9,]*"


def _int(s: str) -> int:
    return int(s.replace(",", ""))


def _float(s: str) -> float | None:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


# -- event patterns -----------------------------------------------------------------
# Each: (kind, regex, data builder or None).  The builder returns the event's data dict,
# or None to drop the match.

HEAD_NAMES = {"classifier", "score", "lm_head", "qa_outputs", "pooler", "pre_classifier",
              "cls", "v_head", "summary", "head", "heads", "classification_head",
              "proj_out", "embed_out", "logits_proj", "lm_loss", "output_layer"}
MODEL_FILE_RE = re.compile(
    r"(\.safetensors|\.ckpt|\.bin|\.pth?|\.gguf|config\.json|model[^/\\]*|checkpoint[^/\\]*"
    r"|pretrained[^/\\]*|diffusion[^/\\]*|stable[-_]?diffusion[^/\\]*)['\"]?$", re.I)


def _model_path(m: re.Match, line: str) -> dict | None:
    path = m.group(1)
    # only paths that name a model (a weights or config file, a model-ish folder)
    if MODEL_FILE_RE.search(path) or re.search(r"models?[/\\]", path, re.I):
        return {"path": path}
    return None


def _oom(m: re.Match, line: str) -> dict:
    d: dict[str, Any] = {}
    t = re.search(r"Tried to allocate ([0-9.]+ ?[KMGT]i?B)", line)
    if t:
        d["tried"] = t.group(1)
    g = re.search(r"GPU (\d+)", line)
    if g:
        d["gpu"] = int(g.group(1))
    c = re.search(r"([0-9.]+ ?[KMGT]i?B) total capacity|has a total capacity of ([0-9.]+ ?[KMGT]i?B)", line)
    if c:
        d["capacity"] = c.group(1) or c.group(2)
    d["device"] = ("cpu" if "CPUAllocator" in line else "mps" if "MPS" in line else "cuda")
    return d


def _peft_params(m: re.Match, line: str) -> dict:
    tr, tot = _int(m.group(1)), _int(m.group(2))
    pct = _float(m.group(3))
    return {"trainable": tr, "total": tot,
            "percent": pct if pct is not None else (100.0 * tr / tot if tot else 0.0)}


def _count_params(m: re.Match, line: str) -> dict:
    return {"trainable": _int(m.group(1)), "total": None, "percent": None}


def _lora_modules(part: str) -> Callable[[re.Match, str], dict]:
    def build(m: re.Match, line: str) -> dict:
        return {"modules": int(m.group(1)), "part": part}
    return build


PATTERNS: list[tuple[str, re.Pattern, Callable[[re.Match, str], dict | None] | None]] = [
    # -- the base model was loaded
    ("base_model_loaded", re.compile(r"loading weights file (\S+)(?: from cache at (\S+))?"),
     lambda m, line: {"path": m.group(2) or m.group(1)}),
    ("base_model_loaded", re.compile(r"All model checkpoint weights were used when initializing (\w+)"),
     lambda m, line: {"model": m.group(1)}),
    ("base_model_loaded", re.compile(r"All the weights of (\w+) were initialized from the model checkpoint at (\S+?)\.?$"),
     lambda m, line: {"model": m.group(1), "path": m.group(2)}),
    ("base_model_loaded", re.compile(r"load StableDiffusion checkpoint: (.+)$"),
     lambda m, line: {"path": m.group(1).strip()}),
    ("base_model_loaded", re.compile(r"load Diffusers pretrained models: (.+)$"),
     lambda m, line: {"path": m.group(1).strip()}),
    ("base_model_loaded", re.compile(r"loading (u-net|vae|text encoder): <All keys matched successfully>"),
     lambda m, line: {"part": m.group(1)}),
    ("base_model_loaded", re.compile(r"Loading checkpoint shards: 100%"), None),
    # -- the base model was not loaded
    ("base_model_not_loaded", re.compile(r"(\S{1,1000}) is not a local folder and is not a valid model identifier"),
     lambda m, line: {"path": m.group(1).strip("'\"")}),
    ("base_model_not_loaded", re.compile(r"Can't load (?:the )?(model|config|configuration|tokenizer|weights|feature extractor|processor)\b[^']*'([^']+)'"),
     lambda m, line: {"what": m.group(1), "path": m.group(2)}),
    ("base_model_not_loaded", re.compile(r"[Nn]o file named (.+?) found in directory (\S+)"),
     lambda m, line: {"path": m.group(2).rstrip(".")}),
    ("base_model_not_loaded", re.compile(r"model is not found as a file or in Hugging Face.*?:\s*(\S+)\s*$"),
     lambda m, line: {"path": m.group(1)}),
    ("base_model_not_loaded", re.compile(r"No such file or directory: ['\"]([^'\"]+)['\"]"), _model_path),
    ("base_model_not_loaded", re.compile(r"We couldn't connect to 'https://huggingface\.co'"), None),
    ("base_model_not_loaded", re.compile(r"(RepositoryNotFoundError|GatedRepoError)\b"),
     lambda m, line: {"error": m.group(1)}),
    # -- trainable parameters
    ("trainable_params", re.compile(rf"trainable params: ({_NUM}) \|\| all params: ({_NUM}) \|\| trainable%: ([-0-9.eE+]+|nan)"),
     _peft_params),
    ("trainable_params", re.compile(rf"Number of trainable parameters = ({_NUM})"), _count_params),
    ("trainable_params", re.compile(rf"(?:number of trainable parameters|Total trainable parameters):\s*({_NUM})"),
     _count_params),
    ("trainable_params", re.compile(r"create LoRA for U-Net: (\d+) modules"), _lora_modules("unet")),
    ("trainable_params", re.compile(r"create LoRA for Text Encoder(?: \d+)?: (\d+) modules"),
     _lora_modules("text_encoder")),
    ("no_trainable_params", re.compile(r"optimizer got an empty parameter list"),
     lambda m, line: {"reason": "empty optimizer parameter list"}),
    ("no_trainable_params", re.compile(r"element 0 of tensors does not require grad and does not have a grad_fn"),
     lambda m, line: {"reason": "loss does not require grad"}),
    # -- out of memory
    ("oom", re.compile(r"CUDA out of memory|(?:torch\.(?:cuda\.)?)?OutOfMemoryError|CUDA error: out of memory"
                       r"|DefaultCPUAllocator: can't allocate memory|MPS backend out of memory"), _oom),
    # -- NaN / Inf warnings
    ("nonfinite_warning", re.compile(r"NaN or Inf found in input tensor"), lambda m, line: {"what": "grad"}),
    ("nonfinite_warning", re.compile(r"(?i)\bloss\b[^\n,]{0,30}?(?:\b(?:is|became|was)\b|=|:)\s*(?:a\s+)?(nan|inf|-inf|infinity)\b(?!')"),
     lambda m, line: {"what": "loss"}),
    ("nonfinite_warning", re.compile(r"(?i)\b(?:nan|inf) (?:loss|detected in loss)\b"), lambda m, line: {"what": "loss"}),
    ("nonfinite_warning", re.compile(r"Gradient overflow\.\s+Skipping step"), lambda m, line: {"what": "grad_overflow"}),
]

# lower-case substrings one of which a line must hold for each pattern to be tried
NEEDLES: list[tuple[str, ...]] = [
    ("loading weights file",), ("all model checkpoint weights",), ("all the weights of",),
    ("load stablediffusion",), ("load diffusers",), ("all keys matched",), ("checkpoint shards",),
    ("is not a local folder",), ("can't load",), ("o file named",), ("model is not found",),
    ("no such file or directory",), ("couldn't connect",), ("repositorynotfound", "gatedrepo"),
    ("trainable params:",), ("number of trainable parameters",),
    ("number of trainable parameters", "total trainable parameters"), ("create lora for u-net",),
    ("create lora for text encoder",), ("empty parameter list",), ("does not require grad",),
    ("out of memory", "outofmemoryerror", "can't allocate memory"), ("nan or inf found",),
    ("nan", " inf", "=inf", "infinity"), ("nan loss", "inf loss", "detected in loss"),
    ("gradient overflow",),
]
# each trainer module's own event lines (lorascope.trainers.<name>.LOG_EVENTS)
PATTERNS += lora_scripts.LOG_EVENTS
NEEDLES += lora_scripts.LOG_NEEDLES
assert len(NEEDLES) == len(PATTERNS)
# Substring tests on the lower-cased line are far cheaper than one big case-insensitive
# regex alternation (which Python's re does not optimise): most lines pass no gate.
EVENT_NEEDLES = tuple(sorted({n for ns in NEEDLES for n in ns}))
MISC_NEEDLES = ("some weights of", "load report", "num epochs", "batch size", "accumulation steps",
                "optimization steps", "logging_steps", "saving model checkpoint", "num examples",
                "num train images")

NEWLY_INIT_RE = re.compile(r"Some weights of (\S+) were not initialized from the model checkpoint at (\S+)"
                           r"(?: and are newly initialized)?(?:[^:\[]*)?:?\s*(\[.*)?$")
LOAD_REPORT_RE = re.compile(r"(\w{1,200}) LOAD REPORT from: (\S+)")
TRACEBACK_RE = re.compile(r"Traceback \(most recent call last\):")

# -- curves ---------------------------------------------------------------------------
DICT_RE = re.compile(r"\{'[^{}]{1,4000}\}")
PAIR_RE = re.compile(r"'([^'\\]{1,100})':\s*([^,{}]+?)\s*(?=,|\})")
SUMMARY_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos"}
TRAIN_KEYS = {"loss", "learning_rate", "grad_norm"}
SKIP_DICT_KEYS = {"epoch", "step", "total_flos", "num_input_tokens_seen"}
SKIP_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second")
KOHYA_BAR_RE = kohya.LOG_BAR
LOG_STEPS_RE = re.compile(r"\blogging_steps\s*[=:]\s*(\d+)")
SAVE_RE = re.compile(r"Saving model checkpoint to \S*checkpoint-(\d+)")

# -- run shape the log reveals ------------------------------------------------------------
# what each trainer's banner says about the run's shape (lorascope.trainers.<name>)
HF_SHAPE = hf_trainer.LOG_SHAPE + kohya.LOG_SHAPE
# the lines a trainer prints when its training is over
END_LINES = (hf_trainer.LOG_END, kohya.LOG_END)
PLANNED_RES = (hf_trainer.LOG_PLANNED, kohya.LOG_PLANNED)


def _clean(line: str) -> str:
    if "\x1b" in line:
        line = _ANSI.sub("", line)
    if ".py:" in line:
        line = _RICH_SRC.sub("", line)      # rich logging's right-aligned "file.py:123"
    return _RANK.sub("", line)


def _parse_dict(text: str) -> dict[str, float] | None:
    """A printed Python dict of numbers (``nan``/``inf`` allowed) -> {key: float}.
    Non-numeric values (strings) are left out; None when it holds no number."""
    out: dict[str, float] = {}
    for k, v in PAIR_RE.findall(text):
        v = v.strip()
        if v.startswith(("'", '"')):
            continue
        if v.startswith("tensor(") and v.endswith(")"):
            v = v[7:-1]
        f = _float(v) if v not in ("True", "False", "None") else None
        if f is not None:
            out[k] = f
    return out or None


class _Collector:
    """Events, bounded per kind."""

    def __init__(self, rel: str):
        self.rel = rel
        self.events: list[LogEvent] = []
        self.counts: dict[str, int] = {}

    def add(self, kind: str, line: int, text: str, data: dict | None = None) -> None:
        n = self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        if n < MAX_EVENTS_PER_KIND:
            self.events.append(LogEvent(kind=kind, file=self.rel, line=line,
                                        text=text.strip()[:MAX_TEXT], data=data or {}))


def _init_data(model: str, path: str, names: list[str]) -> dict:
    """Newly initialized weights: only a task head (expected) or layers of the body?"""
    head_only = None
    if names:
        head_only = all(any(part in HEAD_NAMES for part in n.split(".")[:-1] or [n]) for n in names)
    return {"model": model, "path": path, "count": len(names), "names": names[:10],
            "head_only": head_only}


def _report_init(ev: "_Collector", lineno: int, text: str, data: dict) -> None:
    ev.add("weights_not_initialized", lineno, text, data)
    if data["head_only"] is False:
        ev.add("base_model_not_loaded", lineno, text,
               {"path": data["path"], "newly_initialized": data["count"]})


class _State:
    """What one pass over the lines collects."""

    def __init__(self, rel: str):
        self.ev = _Collector(rel)
        self.dicts = _Dicts()
        self.saves: list[tuple[int, int]] = []     # (checkpoint step, train dict lines before it)
        self.n_train = 0
        self.log_steps: int | None = None
        self.bar: dict[int, float] = {}            # kohya progress bar: step -> avr_loss
        self.bar_total: int | None = None
        self.planned: int | None = None
        self.views: int | None = None               # kohya: images x repeats of one epoch
        self.banners: list[int] = []                # lines of HF's "Running training" banner
        self.in_training_banner = False
        self.shape: dict[str, tuple[int, str]] = {}
        self.lora_modules: dict[str, tuple[int, int, str]] = {}   # part -> (modules, line, text)
        self.tb: tuple[int, str] | None = None     # open traceback: (line, text)
        self.tb_len = 0
        self.report: tuple | None = None           # open LOAD REPORT: (line, text, model, missing, path)
        self.trainer: str | None = None
        self.finished: int | None = None          # line of the trainer's "training is over"

    # -- one line ---------------------------------------------------------------------
    def line(self, lineno: int, line: str) -> None:
        if self.tb is not None:
            self._traceback(lineno, line)
        if "Traceback (" in line and TRACEBACK_RE.search(line):
            self.tb, self.tb_len = (lineno, line), 0
        low = line.lower()
        if "***** " in line:                 # HF's banners: training, evaluation, prediction
            self.in_training_banner = hf_trainer.LOG_BANNER in line
            if self.in_training_banner:
                self.banners.append(lineno)
        if self.trainer is None or self.trainer == "hf-trainer":
            self._trainer(line, low)
        if any(n in low for n in EVENT_NEEDLES):
            self._events(lineno, line, low)
        if self.report is not None:
            self._report_row(line)
        if any(n in low for n in MISC_NEEDLES):
            self._misc(lineno, line)
        if "{'" in line:
            self._dicts(lineno, line)
        if ("completed" in low or "model saved" in low) and any(e in line for e in END_LINES):
            self.finished = lineno
        if "avr_loss=" in line:
            for bm in KOHYA_BAR_RE.finditer(line):
                v = _float(bm.group(3))
                if v is not None:
                    self.bar[int(bm.group(1))] = v
                    self.bar_total = int(bm.group(2))

    def _trainer(self, line: str, low: str) -> None:
        """Which trainer printed this: LLaMA-Factory names its modules (``llamafactory.``)
        and its web UI log; kohya prints bilingual headers; HF Trainer its banner."""
        if "llamafactory" in low or "llama-factory" in low:
            self.trainer = "llamafactory"
        elif any(m in line for m in kohya.LOG_TRAINER):
            self.trainer = "kohya"
        elif self.trainer is None and "***** Running training *****" in line:
            self.trainer = "hf-trainer"

    def _traceback(self, lineno: int, line: str) -> None:
        self.tb_len += 1
        if line[:1] in (" ", "\t") and self.tb_len < MAX_TRACEBACK_LINES:
            return          # "  File ...", source lines
        start, text = self.tb
        if TRACEBACK_RE.search(line):
            self.ev.add("traceback", start, text, {"exception": None})
        else:
            self.ev.add("traceback", start, text,
                        {"exception": line.strip()[:MAX_TEXT], "exception_line": lineno})
        self.tb = None

    def _events(self, lineno: int, line: str, low: str) -> None:
        ev = self.ev
        for (kind, rx, build), needles in zip(PATTERNS, NEEDLES):
            if not any(n in low for n in needles):
                continue
            m = rx.search(line)
            if not m:
                continue
            data = build(m, line) if build else {}
            if data is None:
                continue
            if kind == "trainable_params" and "part" in data:
                self.lora_modules[data["part"]] = (data["modules"], lineno, line)
            ev.add(kind, lineno, line, data)
            if kind == "trainable_params" and data.get("trainable") == 0:
                ev.add("no_trainable_params", lineno, line, dict(data, reason="0 trainable parameters"))

    def _report_row(self, line: str) -> None:
        cols = [c.strip() for c in line.split("|")]
        if len(cols) >= 2 and not line.lstrip().startswith("Notes"):
            if cols[1] == "MISSING":
                self.report[3].append(cols[0])
        elif not set(line.strip()) <= set("-+"):
            self.close_report()

    def close_report(self) -> None:
        r = self.report
        if r is not None and r[3]:
            _report_init(self.ev, r[0], r[1], _init_data(r[2], r[4], r[3]))
        self.report = None

    def _misc(self, lineno: int, line: str) -> None:
        if "Some weights of" in line:                      # transformers 4.x
            m = NEWLY_INIT_RE.search(line)
            if m:
                names = re.findall(r"'([^']+)'", m.group(3) or "")
                _report_init(self.ev, lineno, line, _init_data(m.group(1), m.group(2).rstrip(":"), names))
        if "LOAD REPORT" in line:                          # transformers 5.x table follows
            m = LOAD_REPORT_RE.search(line)
            if m:
                self.close_report()
                self.report = (lineno, line, m.group(1), [], m.group(2))
        for rx, key, orig in HF_SHAPE:
            m = rx.search(line)
            if m and key == "num_train_items" and not self.in_training_banner:
                continue            # an evaluation / prediction banner's count
            if m and key not in self.shape:
                self.shape[key] = (_int(m.group(1)), orig)
        for rx in PLANNED_RES:
            m = rx.search(line)
            if m:
                self.planned = _int(m.group(1))
        m = kohya.LOG_VIEWS.search(line)
        if m and self.views is None:
            self.views = _int(m.group(1))
        if self.log_steps is None:
            m = LOG_STEPS_RE.search(line)
            if m:
                self.log_steps = int(m.group(1))
        m = SAVE_RE.search(line)
        if m:
            self.saves.append((int(m.group(1)), self.n_train))

    def _dicts(self, lineno: int, line: str) -> None:
        for dm in DICT_RE.finditer(line):
            vals = _parse_dict(dm.group(0))
            if not vals:
                continue
            if SUMMARY_KEYS & vals.keys():
                self.dicts.add("summary", vals, lineno)
            elif any(k.startswith("eval_") for k in vals):
                self.dicts.add("eval", vals, lineno)
            elif TRAIN_KEYS & vals.keys():
                self.dicts.add("train", vals, lineno)
                self.n_train += 1

    def finish(self) -> None:
        if self.tb is not None:
            self.ev.add("traceback", self.tb[0], self.tb[1], {"exception": None})
            self.tb = None
        self.close_report()
        # kohya: LoRA injected into nothing (U-Net and text encoder)
        unet = self.lora_modules.get("unet")
        te = self.lora_modules.get("text_encoder")
        if unet and unet[0] == 0 and (te is None or te[0] == 0):
            self.ev.add("no_trainable_params", unet[1], unet[2],
                        {"modules": 0, "reason": "LoRA created for 0 modules"})


def parse(path: Path, rel: str) -> Parsed:
    r = Reader(rel)
    r.read(path, final=True)
    return r.parsed(final=True)


class Reader:
    """A text log read incrementally: each :meth:`read` parses the lines appended since
    the last one (a line still being written waits), :meth:`parsed` gives what was read
    so far without ending the reading (``lorascope watch``); ``parse`` is one read and
    one final ``parsed``."""

    def __init__(self, rel: str) -> None:
        self.rel = rel
        self.st = _State(rel)
        self.stats = ReadStats()
        self.tail = LineTail(MAX_LINE, stats=self.stats)
        self.error: str | None = None

    def read(self, path: Path, final: bool = False) -> bool:
        """Parse the lines appended since the last read; True when lines were added."""
        before = self.stats.lines
        try:
            for lineno, raw, _cut in self.tail.read(path, final=final):
                line = _clean(raw)
                if line.strip():
                    self.st.line(lineno, line)
        except OSError as e:
            self.error = f"cannot read ({e.strerror or e})"
        return self.stats.lines > before

    def parsed(self, final: bool = False) -> Parsed:
        """What was read so far.  ``final``: the log is complete (an open traceback or
        load report is closed for good); else they are closed on a copy."""
        if final:
            st = self.st
        else:
            st = copy.copy(self.st)
            ev = st.ev = copy.copy(self.st.ev)
            ev.events, ev.counts = list(ev.events), dict(ev.counts)
        st.finish()
        return _result(st, self.stats, self.rel, self.error)


def _result(st: "_State", stats: ReadStats, rel: str, error: str | None) -> Parsed:
    src = Source(path=rel, kind=KIND)
    parsed = Parsed(source=src)
    if error:
        src.problems.append(error)
    ev = st.ev

    if stats.lines == 0:
        src.problems.append("empty file")
    if stats.long_lines:
        src.problems.append(f"{stats.long_lines} lines longer than {MAX_LINE} characters were cut")
    if stats.stopped_at_bytes:
        src.problems.append(f"only the first {stats.stopped_at_bytes} bytes were read")
    for kind, n in ev.counts.items():
        if n > MAX_EVENTS_PER_KIND:
            src.problems.append(f"{n} {kind} events, only the first {MAX_EVENTS_PER_KIND} kept")

    parsed.events = sorted(ev.events, key=lambda e: e.line)
    f = parsed.facts
    f["lines"] = stats.lines
    f["event_counts"] = dict(ev.counts)
    # a log holding several trainings (one "Running training" banner each): the printed
    # step-less curves restart with each
    restarts = st.banners[1:] if len(st.banners) > 1 else []
    if restarts:
        f["run_starts"] = list(st.banners)
    _series_from_dicts(st.dicts, st.saves, st.log_steps, st.planned, parsed, restarts)
    trainer = st.trainer
    if rel.rsplit("/", 1)[-1] == "running_log.txt":
        trainer = "llamafactory"            # the LLaMA-Factory web UI's capture of stdout
    if trainer:
        f["trainer"] = trainer
        if trainer == "llamafactory":
            f["task"] = "llm"
        elif trainer == "kohya":
            f["task"] = "sd"
    if st.bar:
        steps = np.asarray(sorted(st.bar), dtype=np.int64)
        parsed.series.append(RawSeries(tag="loss/average", steps=steps,
                                       values=np.asarray([st.bar[s] for s in steps.tolist()], dtype=np.float64),
                                       source=rel))
        f.setdefault("trainer", "kohya")
        f.setdefault("task", "sd")
    planned = st.planned if st.planned is not None else st.bar_total
    if planned:
        f["planned_steps"] = planned
    if st.views:
        f["train_views"] = st.views
    if st.finished is not None:
        f["training_finished"] = st.finished
    for key, (v, orig) in st.shape.items():
        if v > 0:
            parsed.config.append(ConfigValue(key, v, rel, orig))
    src.records = len(parsed.events) + sum(len(x.steps) for x in parsed.series)
    return parsed


def read_lines(lines, rel: str) -> tuple[list[LogEvent], list[ConfigValue], dict]:
    """Events, banner values and facts (``planned_steps``, ``train_views``, ``trainer``)
    of console text another container holds (a W&B run's captured output): the same
    line parser as :func:`parse`, no curves (the container has its own)."""
    st = _State(rel)
    for lineno, raw in enumerate(lines, 1):
        line = _clean(raw[:MAX_LINE])
        if line.strip():
            st.line(lineno, line)
    st.finish()
    facts: dict = {}
    planned = st.planned if st.planned is not None else st.bar_total
    if planned:
        facts["planned_steps"] = planned
    if st.views:
        facts["train_views"] = st.views
    if st.trainer:
        facts["trainer"] = st.trainer
    config = [ConfigValue(key, v, rel, orig) for key, (v, orig) in st.shape.items() if v > 0]
    return sorted(st.ev.events, key=lambda e: e.line), config, facts


def _interval(saves: list[tuple[int, int]], log_steps: int | None, planned: int | None,
              n_train: int, finished: bool) -> tuple[int, str] | None:
    """The logging interval: printed (``logging_steps=10``), else the one that makes
    every "Saving model checkpoint to .../checkpoint-N" line agree with the number of
    loss lines printed before it, else planned steps / loss lines of a finished run."""
    if log_steps and log_steps > 0:
        return log_steps, "logging_steps"
    obs = [(n, k) for n, k in saves if k > 0]
    if obs:
        n0, k0 = obs[0]
        lo, hi = n0 // (k0 + 1) + 1, n0 // k0
        fits = [i for i in range(max(1, lo), min(hi, lo + 100_000) + 1)
                if all(n // i == k for n, k in obs) and all(n % i == 0 for n, _ in obs)]
        if fits:
            return fits[-1], "checkpoints"
    if finished and planned and n_train and planned % n_train == 0:
        return planned // n_train, "planned_steps"
    return None


class _Dicts:
    """The printed metric dicts, compactly (a log of millions of lines stays within about
    its own size): one row per train / eval dict, its kind and its own ``step`` when it
    has one, and one (row, value) column pair per key; summary dicts only update facts."""

    def __init__(self) -> None:
        self.kinds = array("b")               # 0 train, 1 eval
        self.steps = array("q")               # the dict's own step, or _NO_STEP
        self.lines = array("q")               # the line it was printed on
        self.cols: dict[str, tuple[array, array]] = {}
        self.order: dict[str, None] = {}      # series in order of first appearance
        self.n_train = 0
        self.summary: dict[str, float] = {}
        self.finished = False
        self.all_steps = True

    def add(self, kind: str, vals: dict[str, float], lineno: int = 0) -> None:
        if kind == "summary":
            self.finished = True
            for k in ("train_loss", "train_runtime"):
                if k in vals:
                    self.summary[k] = vals[k]
            return
        row = len(self.kinds)
        self.kinds.append(0 if kind == "train" else 1)
        self.lines.append(lineno)
        self.n_train += kind == "train"
        st = vals.get("step")
        if st is None or not math.isfinite(st) or abs(st) > 2 ** 62:
            self.all_steps = False
            self.steps.append(_NO_STEP)
        else:
            self.steps.append(int(st))
        if "epoch" in vals:
            self.order.setdefault("epoch", None)
        for k, v in vals.items():
            if k in SKIP_DICT_KEYS and k != "epoch" or k.endswith(SKIP_SUFFIXES):
                continue
            cols = self.cols.get(k)
            if cols is None:
                cols = self.cols[k] = (array("q"), array("d"))
                self.order.setdefault(k, None)
            cols[0].append(row)
            cols[1].append(v)

    def __len__(self) -> int:
        return len(self.kinds) + bool(self.summary or self.finished)


_NO_STEP = -(2 ** 63)


def _series_from_dicts(dicts: _Dicts, saves, log_steps, planned, parsed: Parsed,
                       restarts: list[int] = ()) -> None:
    rel = parsed.source.path
    f = parsed.facts
    if "train_loss" in dicts.summary:
        f["final_train_loss"] = dicts.summary["train_loss"]
    if "train_runtime" in dicts.summary:
        f["train_runtime"] = dicts.summary["train_runtime"]
    if not len(dicts.kinds):
        return
    kinds = np.frombuffer(dicts.kinds, np.int8)
    lines = np.frombuffer(dicts.lines, np.int64)
    seg = np.searchsorted(np.asarray(sorted(restarts), dtype=np.int64), lines, side="left")
    if dicts.all_steps:
        row_step = np.frombuffer(dicts.steps, np.int64)
    else:
        found = _interval(saves, log_steps, planned, dicts.n_train, dicts.finished)
        interval = found[0] if found else 1
        f["steps_synthetic"] = True
        f["logging_interval"] = interval
        f["logging_interval_from"] = found[1] if found else "unknown (ordinal)"
        # a train dict is the next logging step; an eval dict sits at the last one; a new
        # training printed into the same log (``restarts``: its banner lines) counts anew
        cs = np.cumsum(kinds == 0, dtype=np.int64)
        first_row = np.searchsorted(seg, seg, side="left")          # each training's first row
        row_step = (cs - np.concatenate([[0], cs])[first_row]) * interval
    for tag in dicts.order:
        rows, vals = dicts.cols[tag]
        r = np.frombuffer(rows, np.int64)
        v = np.frombuffer(vals, np.float64)
        steps = row_step[r]
        pos = lines[r].astype(np.float64)
        if tag == "epoch":                   # the first epoch value at each step of each training
            _, first = np.unique(np.stack([seg[r], steps]), axis=1, return_index=True)
            keep = np.sort(first)
            steps, v, pos = steps[keep], v[keep], pos[keep]
        parsed.series.append(RawSeries(tag=tag, steps=steps.copy(), values=v.copy(), source=rel,
                                       positions=pos))
