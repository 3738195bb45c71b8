"""The typed picture of a run that every stage after ingestion reads.

Data flows one way: ``discover`` lists files, ``ingest.<format>.parse`` turns one
file into a :class:`Parsed`, ``build`` splits a folder into its runs and merges the
pieces of each into one frozen :class:`Run`, rules turn a Run into :class:`Finding`
records, ``diagnose`` links them, and the renderers print them.  Nothing after
``build`` knows which trainer wrote a file: a Run holds typed values (each config
value with the file and key it came from, or how it was derived), never file kinds or
trainer facts for rules to dig out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, TypedDict

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
    "metadata_path",       # lora-scripts: the metadata.csv of the images
    "val_size", "max_samples",  # LLaMA-Factory: held-out share, record cap
    "base_model_name",     # a model named only by its file name (kohya ss_sd_model_name)
    "sample_packing",      # axolotl: several samples packed per sequence (no step count)
    "sample_prompts",      # kohya / lora-scripts: the file of prompts sample images are made from
    "sample_every_n_steps", "sample_every_n_epochs",
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
    # where each point sits in its file (line number, record index): splits one file
    # holding several trainings consistently across tags; wall_times serve when absent
    positions: np.ndarray | None = None


@dataclass(frozen=True)
class Series:
    """One curve of the run after merging and role assignment."""

    name: str                      # "train/loss", "eval/loss", "loss/current", ...
    role: str                      # one of ROLES
    steps: np.ndarray              # int64, sorted ascending, unique
    values: np.ndarray             # float64
    sources: tuple[str, ...] = ()
    # per point, when known (the Python API's tidy frame): seconds since the epoch (NaN
    # where the file has none), and the index into ``sources`` of the file it came from.
    # Dropped (None) when a copy changes the points without them.
    wall_times: np.ndarray | None = field(default=None, repr=False, compare=False)
    point_sources: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        for name in ("wall_times", "point_sources"):
            v = getattr(self, name)
            if v is not None and len(v) != len(self.steps):
                object.__setattr__(self, name, None)

    @property
    def nonfinite(self) -> int:
        return int((~np.isfinite(self.values)).sum())

    def to_json(self) -> dict:
        n = int(len(self.steps))
        return {"name": self.name, "role": self.role, "points": n,
                "first_step": int(self.steps[0]) if n else None,
                "last_step": int(self.steps[-1]) if n else None,
                "nonfinite": self.nonfinite}


@dataclass(frozen=True)
class ConfigValue:
    key: str                       # normalized key (CONTRACT_CONFIG_KEYS or EXTRA_CONFIG_KEYS)
    value: Any
    file: str                      # Source.path ("" when derived from no single file)
    orig_key: str                  # the key as the trainer wrote it, dotted for nesting
    # how a value no config file states was obtained, e.g. "peak of the logged
    # learning_rate series" or "lora-scripts default"; None: written in `file`
    derived: str | None = None

    def where(self) -> str:
        """"train.toml: unet_lr", or the derivation."""
        if self.derived:
            return f"{self.derived} ({self.file})" if self.file else self.derived
        return f"{self.file}: {self.orig_key}"


def _frozen_map(m: Mapping | None) -> Mapping:
    return MappingProxyType(dict(m or {}))


@dataclass(frozen=True)
class Config:
    """Normalized settings, each with its origin.  ``implied``: what the trainer uses
    where its training config leaves a key out (not printed in the report)."""

    values: Mapping[str, Any] = field(default_factory=dict)
    origins: Mapping[str, ConfigValue] = field(default_factory=dict)
    implied: Mapping[str, ConfigValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("values", "origins", "implied"):
            object.__setattr__(self, name, _frozen_map(getattr(self, name)))

    def get(self, key: str, default: Any = None) -> Any:
        v = self.values.get(key)
        return default if v is None else v

    def effective(self, key: str, default: Any = None) -> Any:
        """The value, else the one the trainer implies by leaving the key out."""
        v = self.values.get(key)
        if v is None and key in self.implied:
            v = self.implied[key].value
        return default if v is None else v

    def origin(self, key: str) -> ConfigValue | None:
        return self.origins.get(key) or self.implied.get(key)

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
    truncated: bool = False        # cut short or unreadable: tensors outside the file, bad header


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
    signature: "Signature | None" = None   # images, when the run has samples to compare


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
    views: int | None = None       # samples of one epoch counting kohya N_name repeats


@dataclass(frozen=True)
class Signature:
    """What an image is reduced to for comparing it with others (see lorascope.imagesim)."""

    phash: int                     # 64-bit DCT perceptual hash (imagehash.phash)
    tiny: bytes                    # 32x32 RGB copy, row-major uint8


@dataclass
class SampleImage:
    """One image a trainer generated while it trained (a sample / validation image)."""

    file: str                      # path relative to the run dir; TensorBoard: "<event file>#<tag>@<step>"
    step: int | None               # optimizer step it was made after (None: unknown)
    epoch: int | None = None       # the epoch it was made after, when its name gives only that
    prompt_index: int | None = None    # position of its prompt in the prompts file
    seed: int | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    tag: str | None = None         # TensorBoard tag (the timeline key when no prompt index)
    width: int | None = None
    height: int | None = None
    error: str | None = None       # could not be decoded
    blank: str | None = None       # "black" | "white" | "constant" | "noise"
    noise: float | None = None     # lag-one autocorrelation of the grey levels (imagesim.noise_score)
    signature: Signature | None = None
    thumb: bytes | None = None     # JPEG, longer side ingest.samples.THUMB_SIDE pixels


@dataclass
class EncodedImage:
    """An image summary of an event file, still encoded (decoded by ingest.samples)."""

    tag: str
    step: int
    wall_time: float
    data: bytes
    source: str


class ParseFacts(TypedDict, total=False):
    """What a parser learned beyond curves, config and events (ingest -> build only;
    build turns these into typed :class:`Run` fields, rules never see them)."""

    trainer: str               # "kohya" | "lora-scripts" | "llamafactory" | "hf-trainer" | "diffusers"
    task: str                  # "sd" | "llm"
    layout: str                # the lorascope.trainers layout of a config file
    planned_steps: int         # the trainer's own total (trainer_state max_steps, LF total_steps,
                               # "Total optimization steps", kohya's progress bar)
    state_global_step: int     # trainer_state.json global_step
    state_epoch: float         # trainer_state.json epoch
    num_train_epochs: float
    log_history_len: int
    checkpoint_step: int       # the checkpoint-N folder a file sits in
    checkpoint_epoch: int
    logging_steps: int
    num_repeats: int           # kohya per-image repeats
    train_views: int           # kohya: images x repeats of one epoch
    steps_synthetic: bool      # text-log curves numbered by their order, not by a step
    logging_interval: int
    run_starts: list[int]      # text log: lines where each of several trainings began
    planned_at: list[tuple[float, int]]   # (position, planned total) where a log's total changed
    session: str               # kohya ss_session_id / ss_training_started_at
    started_at: float          # kohya ss_training_started_at (seconds)
    output_name: str
    training_finished: int     # text log: line where the trainer said its training is over


@dataclass
class Parsed:
    """What one parser got out of one file."""

    source: Source
    series: list[RawSeries] = field(default_factory=list)
    config: list[ConfigValue] = field(default_factory=list)
    events: list[LogEvent] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    datasets: list[Dataset] = field(default_factory=list)
    facts: ParseFacts = field(default_factory=dict)     # see ParseFacts
    images: list[EncodedImage] = field(default_factory=list)   # TensorBoard image summaries


@dataclass(frozen=True)
class StepInfo:
    """Optimizer steps: first and last seen, planned, and how each is known."""

    first: int | None = None
    last: int | None = None
    planned: int | None = None
    planned_from: str | None = None     # "checkpoint-40/trainer_state.json: max_steps",
                                        # "5 epochs x ceil(240 images x repeats / batch 4) ..."
    last_exact: bool = False            # last is the trainer's own step counter, not a logged point
    last_from_checkpoint: bool = False  # only a saved checkpoint's state shows progress: the run
                                        # may have gone on after that save
    per_epoch: float | None = None      # optimizer steps per epoch, when the logs reveal it
    epochs_done: float | None = None    # the epoch counter at the last step
    logging_interval: int | None = None

    def to_json(self) -> dict:
        return {"first": self.first, "last": self.last, "planned": self.planned}


@dataclass(frozen=True)
class DataSize:
    """How much the run trained on, and where that number comes from."""

    items: int | None = None            # unique samples (images / records)
    repeats: float | None = None        # per-sample repeats of one epoch (kohya), None: 1
    items_from: str | None = None

    @property
    def views(self) -> int | None:
        """Samples of one epoch, repeats included."""
        if self.items is None:
            return None
        return int(round(self.items * (self.repeats or 1)))


@dataclass(frozen=True)
class RunRef:
    """Another run found in the same folder (see Run.others)."""

    id: str
    sources: tuple[str, ...]
    steps: StepInfo


@dataclass(frozen=True)
class Run:
    """One training run, as its files show it.  Frozen: rules read, never write."""

    path: str                      # as the user named it
    name: str
    trainer: str = "unknown"
    task: str = "unknown"
    sources: tuple[Source, ...] = ()
    series: tuple[Series, ...] = ()
    config: Config = field(default_factory=Config)
    steps: StepInfo = field(default_factory=StepInfo)
    epoch_boundaries: tuple[int, ...] = ()   # first step of epochs 2, 3, ...
    checkpoints: tuple[Checkpoint, ...] = ()
    datasets: tuple[Dataset, ...] = ()
    events: tuple[LogEvent, ...] = ()
    data: DataSize = field(default_factory=DataSize)
    # the train_loss series is a running (moving) average, not per-step values
    loss_is_running_average: bool = False
    # curve logs whose writer was killed mid-record (path, problem)
    cut_logs: tuple[tuple[str, str], ...] = ()
    # one folder, several runs: this run's id ("run-2"), the evidence of the mix and
    # the other runs (oldest first); empty when the folder holds one run
    id: str = "run-1"
    latest: bool = True
    mixed: tuple[str, ...] = ()
    others: tuple[RunRef, ...] = ()
    # every file read in the folder, this run's and the others' (the report's
    # run.sources); empty when the folder holds one run (then it is `sources`)
    folder_sources: tuple[Source, ...] = ()
    # images the trainer generated while it trained (sample/, samples/, TensorBoard images)
    samples: tuple[SampleImage, ...] = ()

    def __post_init__(self) -> None:
        for name in ("sources", "series", "epoch_boundaries", "checkpoints", "datasets",
                     "events", "cut_logs", "mixed", "others", "folder_sources", "samples"):
            v = getattr(self, name)
            if not isinstance(v, tuple):
                object.__setattr__(self, name, tuple(v))

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
