"""The typed picture of a run that every stage after ingestion reads.

Data flows one way: ``discover`` lists files, ``ingest.<format>.parse`` turns one
file into a :class:`Parsed`, ``build`` merges all of them into one :class:`Run`,
rules turn the Run into :class:`Finding` records, ``diagnose`` links them, and the
renderers print them.  Nothing after ``build`` knows which trainer wrote a file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

ROLES = ("train_loss", "eval_loss", "lr", "grad_norm", "other")

# Normalized config keys printed in the report (CONTRACT §2), in order.
CONTRACT_CONFIG_KEYS = (
    "learning_rate", "batch_size", "grad_accum", "epochs", "max_steps", "lora_rank",
    "lora_alpha", "warmup_steps", "max_grad_norm", "resolution", "lr_scheduler",
    "eval_strategy", "num_train_items",
)
# Further normalized keys parsers may fill; they are used by rules and `rerun`,
# not printed in the report's `config` object.
EXTRA_CONFIG_KEYS = (
    "base_model",          # path or hub id of the base model
    "train_data_dir",      # kohya / lora-scripts image folder
    "dataset_files",       # list of JSON/JSONL dataset files (LLM)
    "output_dir", "logging_dir",
    "target_modules",      # list[str]
    "cutoff_len",          # max sequence length (LLM)
    "logging_steps", "eval_steps", "save_steps",
    "label_names", "seed", "optimizer", "mixed_precision", "warmup_ratio",
    "weight_decay", "lora_dropout", "network_module", "gradient_checkpointing",
    "lr_scheduler_num_cycles", "train_batch_size_per_device", "num_devices",
)


@dataclass
class Source:
    """One file that was read, what it held and what was wrong with it."""

    path: str                      # relative to the run directory (posix)
    kind: str                      # see discover.KINDS
    records: int = 0
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"path": self.path, "kind": self.kind, "records": self.records,
                "problems": list(self.problems)}


@dataclass
class RawSeries:
    """Scalars of one tag as one file wrote them (before roles and merging)."""

    tag: str                       # the name in the file: "loss/current", "train/loss", "loss"
    steps: np.ndarray              # int64
    values: np.ndarray             # float64, may hold nan/inf
    source: str                    # Source.path it came from
    wall_times: np.ndarray | None = None   # float64 seconds, when the file has them


@dataclass
class Series:
    """One curve of the run after merging and role assignment."""

    name: str                      # "train/loss", "eval/loss", "loss/current", ...
    role: str                      # one of ROLES
    steps: np.ndarray              # int64, sorted ascending, unique
    values: np.ndarray             # float64
    sources: list[str] = field(default_factory=list)

    @property
    def nonfinite(self) -> int:
        return int((~np.isfinite(self.values)).sum())

    def to_json(self) -> dict:
        n = int(len(self.steps))
        return {"name": self.name, "role": self.role, "points": n,
                "first_step": int(self.steps[0]) if n else None,
                "last_step": int(self.steps[-1]) if n else None,
                "nonfinite": self.nonfinite}


@dataclass
class ConfigValue:
    key: str                       # normalized key (CONTRACT_CONFIG_KEYS or EXTRA_CONFIG_KEYS)
    value: Any
    file: str                      # Source.path
    orig_key: str                  # the key as the trainer wrote it, dotted for nesting


@dataclass
class Config:
    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, ConfigValue] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        v = self.values.get(key)
        return default if v is None else v

    def to_json(self) -> dict:
        return {k: _jsonable(self.values.get(k)) for k in CONTRACT_CONFIG_KEYS}


@dataclass
class LogEvent:
    """Something a trainer's text log said, with where it said it."""

    kind: str   # base_model_loaded | base_model_not_loaded | trainable_params | no_trainable_params
                # | oom | nonfinite_warning | traceback | weights_not_initialized | error
    file: str
    line: int                      # 1-based
    text: str                      # the line (trimmed to 300 chars)
    data: dict = field(default_factory=dict)   # e.g. {"trainable": 0, "total": 1234}


@dataclass
class TensorStat:
    name: str
    dtype: str                     # safetensors dtype string: F32, F16, BF16, I64, ...
    shape: tuple[int, ...]
    nonfinite: int = 0
    zero: bool = False             # every element == 0
    abs_max: float = 0.0
    norm: float = 0.0              # Frobenius norm (over finite elements)
    mean_abs: float = 0.0


@dataclass
class Module:
    """One adapted layer: a down/up (A/B) pair and its alpha."""

    name: str
    rank: int | None
    alpha: float | None
    norm: float | None             # Frobenius norm of up @ down * alpha / rank (or of up)
    mean_abs: float | None         # mean |w| of the up weight
    zero: bool                     # up (B) weight all zero
    nonfinite: int                 # non-finite elements in down + up


@dataclass
class Checkpoint:
    path: str                      # Source.path of the safetensors file
    step: int | None               # training step it was saved at, when known
    format: str                    # kohya | peft | diffusers | unknown
    size_bytes: int
    dtype: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    tensors: list[TensorStat] = field(default_factory=list)
    modules: list[Module] = field(default_factory=list)
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class DataItem:
    """One sample of a dataset: an image with its caption, or a text record."""

    file: str | None               # path relative to the run dir (images) or the dataset file
    caption: str | None = None     # image caption / text joined for text datasets
    index: int | None = None       # row / record number
    exists: bool = True
    disk_name: str | None = None   # the name found on disk when only the case differs
    width: int | None = None
    height: int | None = None
    error: str | None = None       # decode error
    degenerate: str | None = None  # "constant" | "black" | "white"
    length: int | None = None      # text length in characters
    control_chars: int = 0
    tokens: int | None = None      # approximate token count of a text record (no tokenizer)


@dataclass
class Dataset:
    kind: str                      # "images" | "text"
    root: str                      # directory or file, as given (may be outside the run)
    manifest: str | None = None    # metadata.csv path, when there is one
    encoding: str | None = None    # detected encoding of the manifest
    bom: bool = False
    items: list[DataItem] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    records: int | None = None     # samples in the dataset; may exceed len(items) for huge
                                   # text sets, where only flagged records keep an item


@dataclass
class Parsed:
    """What one parser got out of one file."""

    source: Source
    series: list[RawSeries] = field(default_factory=list)
    config: list[ConfigValue] = field(default_factory=list)
    events: list[LogEvent] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    datasets: list[Dataset] = field(default_factory=list)
    # Facts that are neither curves nor config, e.g.
    #   trainer: "kohya" | "lora-scripts" | "llamafactory" | "hf-trainer" | "diffusers"
    #   task: "sd" | "llm"
    #   planned_steps: int, epochs: [(step, epoch_float), ...] as RawSeries tag "epoch",
    #   state_global_step: int, log_history_len: int, checkpoint_step: int
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepInfo:
    first: int | None = None
    last: int | None = None
    planned: int | None = None

    def to_json(self) -> dict:
        return {"first": self.first, "last": self.last, "planned": self.planned}


@dataclass
class Run:
    path: str                      # as the user named it
    name: str
    trainer: str = "unknown"
    task: str = "unknown"
    sources: list[Source] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    config: Config = field(default_factory=Config)
    steps: StepInfo = field(default_factory=StepInfo)
    epoch_boundaries: list[int] = field(default_factory=list)   # first step of epochs 2, 3, ...
    checkpoints: list[Checkpoint] = field(default_factory=list)
    datasets: list[Dataset] = field(default_factory=list)
    events: list[LogEvent] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def by_role(self, role: str) -> list[Series]:
        return [s for s in self.series if s.role == role]

    def primary(self, role: str) -> Series | None:
        """The best series for a role: the one with the most points."""
        cands = self.by_role(role)
        return max(cands, key=lambda s: len(s.steps)) if cands else None


@dataclass
class Cause:
    rule: str
    confidence: float
    text: str

    def to_json(self) -> dict:
        return {"rule": self.rule, "confidence": round(float(self.confidence), 2),
                "text": self.text}


@dataclass
class Finding:
    rule: str
    severity: str                  # critical | warning | info
    title: str
    step: int | None = None
    step_range: list[int] | None = None
    evidence: list[str] = field(default_factory=list)
    causes: list[Cause] = field(default_factory=list)
    fix: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    # not in the JSON: data for the HTML report (e.g. the series name, change points)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "rule": self.rule, "severity": self.severity, "title": self.title,
            "step": None if self.step is None else int(self.step),
            "step_range": None if self.step_range is None else [int(x) for x in self.step_range],
            "evidence": list(self.evidence),
            "causes": [c.to_json() for c in self.causes],
            "fix": {k: _jsonable(v) for k, v in self.fix.items()},
            "files": list(self.files),
        }


SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}


def _jsonable(v: Any) -> Any:
    """Numbers as plain Python numbers; non-finite floats become None (strict JSON)."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if np.isfinite(f) else None
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v
