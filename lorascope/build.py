"""Parsed pieces -> the runs of a folder, each one frozen :class:`Run`.

This is the last place that knows trainers and file layouts: it picks the parser for
each file, cuts the curve files into the runs they hold (:mod:`lorascope.lineage`),
merges each run's configs by precedence, gives series their roles, finds epoch
boundaries and the planned steps (the trainer's own total, else its formula in
:mod:`lorascope.trainers` over the dataset size), fills the learning rate a run
logged when no config names it, and loads the datasets the config names.  Everything
downstream reads only the :class:`~lorascope.model.Run`.
"""
from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from lorascope import discover, lineage, merge, safe_open, trainers
from lorascope.ingest import _json
from lorascope.model import (Checkpoint, Config, ConfigValue, DataSize, LogEvent, Parsed, RawSeries,
                             Run, RunRef, SampleImage, Series, Source, StepInfo)

# kind -> (module, function) of the parser that reads it
PARSERS: dict[str, tuple[str, str]] = {
    "tfevents": ("lorascope.ingest.tfevents", "parse"),
    "trainer_state": ("lorascope.ingest.trainer_state", "parse"),
    "trainer_log": ("lorascope.ingest.llamafactory", "parse"),
    "results": ("lorascope.ingest.llamafactory", "parse_results"),
    "text_log": ("lorascope.ingest.textlog", "parse"),
    "config": ("lorascope.ingest.config", "parse"),
    "dataset_meta": ("lorascope.ingest.config", "parse_meta_json"),
    "model_config": ("lorascope.build", "parse_model_config"),
    "safetensors": ("lorascope.ingest.safetensors", "parse"),
    "wandb": ("lorascope.ingest.wandb", "parse"),
    "wandb_config": ("lorascope.ingest.wandb", "parse_config_yaml"),
    "wandb_summary": ("lorascope.ingest.wandb", "parse_summary"),
    "mlflow_run": ("lorascope.ingest.mlflow", "parse"),
    "aitk_loss_log": ("lorascope.ingest.aitk", "parse"),
}
CURVE_KINDS = ("tfevents", "trainer_state", "trainer_log", "text_log", "wandb", "mlflow_run",
               "aitk_loss_log")

# Tag name -> role.  Order matters: the first pattern that matches wins, and among
# several series of one role the builder lists preferred names first.
ROLE_PATTERNS: list[tuple[str, re.Pattern]] = [
    # eval_<name>_loss: HF Trainer with a dict of eval datasets (eval/<name>_loss in TensorBoard)
    ("eval_loss", re.compile(r"^(eval|val|valid|validation|test)[/_]loss$|^loss/(val|validation|eval)$"
                             r"|^(eval|val|valid|validation|test)[/_][^/]+[/_]loss$"
                             r"|^loss/validation_step/total_average$")),      # OneTrainer
    # loss/train_step: OneTrainer; loss/loss: ai-toolkit's UI logger and W&B logger
    ("train_loss", re.compile(r"^(train/)?loss$|^train[/_]loss$|^loss/(current|step|train)$|^training[/_]loss$"
                              r"|^loss/train_step$|^loss/loss$")),
    ("lr", re.compile(r"^(train/)?(learning_rate|lr)$|^lr/.+|^lr$")),
    ("grad_norm", re.compile(r"^(train/)?(grad_norm|gradient_norm|grad-norm)$|^grad_norm/.+")),
]
RUNNING_AVERAGE_TAGS = {"loss/average", "loss/avr", "loss/moving_average",
                        "smooth_loss/train_step"}     # OneTrainer's EMA of the loss
EPOCH_TAGS = {"epoch", "train/epoch"}
# kohya's per-epoch mean loss: older versions log `loss/epoch`, newer `loss/epoch_average`
KOHYA_EPOCH_TAGS = {"loss/epoch", "loss/epoch_average"}
TRAINER_RANK = {"kohya": 0, "lora-scripts": 0, "ai-toolkit": 0, "onetrainer": 0, "simpletuner": 0,
                "llamafactory": 1, "axolotl": 1, "diffusers": 2, "hf-trainer": 3}
SD_TRAINERS = {"kohya", "lora-scripts", "diffusers", "ai-toolkit", "onetrainer", "simpletuner"}
# the learning rate of adaptive optimizers (Prodigy, D-Adaptation) is a multiplier: kohya
# logs their real step size as lr/d*lr
ADAPTIVE_LR_TAG = re.compile(r"d\*lr", re.I)


class Unreadable(Exception):
    """The run directory holds nothing lorascope can read (exit 2)."""


def parse_model_config(path: Path, rel: str) -> Parsed:
    """A model's config.json: only its architecture matters (LLM or not)."""
    src = Source(rel, "model_config")
    out = Parsed(src)
    try:
        if path.stat().st_size > 4_000_000:
            src.problems.append("larger than 4 MB, not read")
            return out
        data = _json.loads(safe_open.read_text(path, 4_000_001))
    except (OSError, ValueError) as e:
        src.problems.append(f"not valid JSON ({str(e)[:80]})")
        return out
    if isinstance(data, dict):
        src.records = 1
        archs = data.get("architectures") or []
        if isinstance(archs, list) and any(isinstance(a, str) and (
                "CausalLM" in a or "ConditionalGeneration" in a) for a in archs):
            out.facts["task"] = "llm"
        if "_diffusers_version" in data:
            out.facts["task"] = "sd"
    return out


def _parser_for(kind: str) -> Callable[[Path, str], Parsed] | None:
    spec = PARSERS.get(kind)
    if spec is None:
        return None
    try:
        return getattr(importlib.import_module(spec[0]), spec[1])
    except (ImportError, AttributeError):   # a parser not present in this build
        return None


def parse_all(run_dir: Path) -> tuple[list[Parsed], list[str], list[discover.Found]]:
    files, walk_problems = discover.walk(run_dir)
    parsed: list[Parsed] = []
    root_real = os.path.realpath(run_dir)
    for f in files:
        fn = _parser_for(f.kind)
        if fn is None:
            continue
        real = os.path.realpath(f.path)
        outside = os.path.commonpath([root_real, real]) != root_real
        try:
            p = fn(f.path, f.rel)
        except MemoryError:     # under a memory limit: say so, on this file
            try:
                size = f"{os.stat(f.path).st_size} bytes"
            except OSError:
                size = "size unknown"
            p = Parsed(Source(f.rel, f.kind, 0, [f"out of memory while reading this file ({size}): not read"]))
        except Exception as e:  # a parser bug must not lose the whole run
            p = Parsed(Source(f.rel, f.kind, 0, [f"parser failed: {type(e).__name__}: {str(e)[:120]}"]))
            if os.environ.get("LORASCOPE_STRICT"):
                raise
        if outside:
            p.source.problems.append(f"read through a link to outside the run directory: {real}")
        parsed.append(p)
    return parsed, walk_problems, files


# -- config ------------------------------------------------------------------------

def _config_priority(p: Parsed) -> tuple:
    src = p.source
    name = src.path.rsplit("/", 1)[-1].lower()
    if src.kind == "config" and name != "adapter_config.json":
        rank = 0
    elif src.kind == "config":
        rank = 1
    elif src.kind == "safetensors":
        rank = 2
    else:
        rank = 3
    depth = src.path.count("/")
    # inside checkpoint-N/: the last checkpoint is the most recent copy
    m = re.search(r"checkpoint-(\d+)", src.path)
    return (rank, depth, -(int(m.group(1)) if m else 0), src.path)


def merge_config(parsed: list[Parsed]) -> Config:
    """Every key from the file that knows best: training configs, then adapter configs,
    then checkpoint metadata, then logs and trainer states; shallower files first, and
    of copies inside checkpoint-N/ folders the latest checkpoint's."""
    values: dict = {}
    origins: dict = {}
    for p in sorted(parsed, key=_config_priority):
        for cv in p.config:
            if cv.value is None or cv.key in values:
                continue
            values[cv.key] = cv.value
            origins[cv.key] = cv
    return Config(values=values, origins=origins)


# -- series ------------------------------------------------------------------------

def role_of(tag: str) -> str:
    t = tag.lower()
    for role, pat in ROLE_PATTERNS:
        if pat.search(t):
            return role
    return "other"


def _merge_raw(raws: list[RawSeries]) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Concatenate one tag's points from several files; later files win on overlap.
    Also each kept point's wall time (NaN where unknown) and file (an index into the
    sorted sources)."""
    def start(r: RawSeries) -> float:
        if r.wall_times is not None and len(r.wall_times):
            return float(r.wall_times[0])
        return 0.0
    raws = sorted(raws, key=start)
    srcs = sorted({r.source for r in raws})
    steps = np.concatenate([r.steps.astype(np.int64) for r in raws]) if raws else np.zeros(0, np.int64)
    vals = np.concatenate([r.values.astype(np.float64) for r in raws]) if raws else np.zeros(0)
    if len(steps) == 0:
        return steps, vals, [], np.zeros(0), np.zeros(0, np.int32)
    walls = np.concatenate([r.wall_times.astype(np.float64)
                            if r.wall_times is not None and len(r.wall_times) == len(r.steps)
                            else np.full(len(r.steps), np.nan) for r in raws])
    origin = np.concatenate([np.full(len(r.steps), srcs.index(r.source), np.int32) for r in raws])
    # keep the last occurrence of each step (a resumed run rewrites the tail)
    rev_steps = steps[::-1]
    _, idx = np.unique(rev_steps, return_index=True)
    keep = len(steps) - 1 - idx
    keep.sort()
    steps, vals, walls, origin = steps[keep], vals[keep], walls[keep], origin[keep]
    order = np.argsort(steps, kind="stable")
    return steps[order], vals[order], srcs, walls[order], origin[order]


SOURCE_PREFERENCE = {"": 0, "trainer_state": 1, "trainer_log": 2, "text_log": 3}


def _secondary(name: str) -> bool:
    """Text-encoder learning rates come after the U-Net's / the model's."""
    n = name.lower()
    return "textencoder" in n or "text_encoder" in n or n.endswith("/te") or "/te1" in n or "/te2" in n


def _pick_state(states: list[Parsed]) -> Parsed | None:
    """The most complete trainer_state.json: longest log_history, then latest step."""
    if not states:
        return None
    return max(states, key=lambda p: (p.facts.get("log_history_len", 0),
                                      p.facts.get("state_global_step", 0) or 0,
                                      -p.source.path.count("/")))


# -- one run's curves ---------------------------------------------------------------------

@dataclass
class _Curves:
    series: list[Series]
    running_average: bool = False
    state: Parsed | None = None            # the run's most complete trainer state


def build_series(pieces: list[Parsed]) -> _Curves:
    """One run's curves: its pieces' tags merged across files, roles given, copies
    (one curve written by two writers) dropped, preferred series first."""
    states = [p for p in pieces if p.source.kind == "trainer_state"]
    winner = _pick_state(states)
    groups: dict[str, list[RawSeries]] = {}
    for p in pieces:
        if p.source.kind == "trainer_state" and p is not winner:
            continue        # checkpoints' states repeat a prefix of the most complete one
        for r in p.series:
            key = r.tag if p.source.kind == "tfevents" else f"{p.source.kind}:{r.tag}"
            groups.setdefault(key, []).append(r)
    # curves parsed from printed stdout duplicate the structured logs: keep them only
    # when no event file or trainer state/log gave a curve
    structured = any(role_of(k.rpartition(":")[2]) != "other" for k in groups
                     if not k.startswith("text_log:"))
    series: list[Series] = []
    names_seen: set[str] = set()
    for key, raws in sorted(groups.items(), key=lambda kv: SOURCE_PREFERENCE.get(kv[0].rpartition(":")[0], 9)):
        kind, _, tag = key.rpartition(":")
        if kind == "text_log" and structured:
            continue
        steps, vals, srcs, walls, origin = _merge_raw(raws)
        if len(steps) == 0:
            continue
        name = tag
        if name in names_seen:
            name = f"{tag} ({kind or 'tfevents'})"
        names_seen.add(name)
        role = role_of(tag)
        if tag.lower() in RUNNING_AVERAGE_TAGS:
            role = "other"
        series.append(Series(name=name, role=role, steps=steps, values=vals, sources=srcs,
                             wall_times=walls, point_sources=origin))
    series = merge.drop_copies(series)        # near-linear: lorascope/merge.py
    running = False
    # only a running average logged: use it, and say so
    if not any(s.role == "train_loss" for s in series):
        for i, s in enumerate(series):
            if s.name.lower() in RUNNING_AVERAGE_TAGS:
                series[i] = replace(s, role="train_loss")
                running = True
                break
    # preferred first within a role: most points, then tfevents over json copies
    series.sort(key=lambda s: (["train_loss", "eval_loss", "lr", "grad_norm", "other"].index(s.role),
                               -len(s.steps), "(" in s.name, _secondary(s.name), s.name))
    return _Curves(series, running, winner)


# -- epochs --------------------------------------------------------------------------------

def epoch_boundaries(series: list[Series], last_step: int | None,
                     spe_hint: float | None = None) -> tuple[list[int], float | None]:
    """First optimizer step of each epoch after the first, and the steps per epoch."""
    ep = next((s for s in series if s.name.split(" ")[0].lower() in EPOCH_TAGS), None)
    if ep is not None and len(ep.steps) >= 2:
        ok = np.isfinite(ep.values) & (ep.values > 0) & (ep.steps > 0)
        if ok.sum() >= 2:
            spe = float(np.median(ep.steps[ok] / ep.values[ok]))
            max_ep = float(np.nanmax(ep.values[ok]))
            if spe >= 1 and max_ep >= 1:
                return [int(round(k * spe)) + 1 for k in range(1, int(np.floor(max_ep + 1e-6)) + 1)
                        if last_step is None or round(k * spe) + 1 <= last_step], spe
    # kohya loss/epoch: older versions log it at step = epoch number, newer at the global step
    le = next((s for s in series if s.name.split(" ")[0].lower() in KOHYA_EPOCH_TAGS), None)
    if le is not None and len(le.steps) >= 1 and last_step:
        st = le.steps
        if st.max() < last_step / 2 and np.array_equal(st, np.arange(st[0], st[0] + len(st))):
            n_ep = int(st.max())
            spe = last_step / max(1, n_ep)
            return [int(round(k * spe)) + 1 for k in range(1, n_ep)], spe
        spe = float(np.median(np.diff(np.concatenate([[0], st])))) if len(st) else None
        return [int(s) + 1 for s in st if s < last_step], spe
    spe = spe_hint if ep is None else None
    if spe and last_step:
        return [int(round(k * spe)) + 1 for k in range(1, int(last_step // spe) + 1)
                if round(k * spe) + 1 <= last_step], spe
    return [], None


def _epochs_done(series: list[Series], state: Parsed | None) -> float | None:
    if state is not None and state.facts.get("state_epoch") is not None:
        return float(state.facts["state_epoch"])
    ep = next((s for s in series if s.name.split(" ")[0].lower() in EPOCH_TAGS), None)
    if ep is not None and len(ep.values):
        v = ep.values[np.isfinite(ep.values)]
        return float(v.max()) if len(v) else None
    return None


# -- the run -----------------------------------------------------------------------------

def _choose(facts_list: list[dict], key: str, rank: dict | None = None):
    vals = [f[key] for f in facts_list if f.get(key)]
    if not vals:
        return None
    if rank:
        return min(vals, key=lambda v: rank.get(v, 99))
    return vals[0]


def _resolve(value: str, run_dir: Path, cfg_file: str | None) -> Path | None:
    if not isinstance(value, str) or not value.strip():
        return None
    p = Path(value.strip())
    cands = [p] if p.is_absolute() else [run_dir / p] + (
        [run_dir / Path(cfg_file).parent / p] if cfg_file else [])
    for c in cands:
        if c.exists():
            return c
    return None


def load_datasets(cfg: Config, run_dir: Path, found_csvs: list[str], jobs: int | None,
                  progress: bool, signatures: bool = False) -> tuple[list, list[Source]]:
    """The datasets the config names (and metadata.csv files found in the run)."""
    try:
        ds_mod = importlib.import_module("lorascope.ingest.dataset")
    except ImportError:
        return [], []
    datasets, sources = [], []
    roots: list[Path] = []
    for key in ("train_data_dir", "metadata_path"):
        v0 = cfg.get(key)
        origin = cfg.origins.get(key)
        for v in (v0 if isinstance(v0, list) else [v0]):
            r = _resolve(v, run_dir, origin.file if origin else None) if v else None
            if r is not None and r.is_file() and r.name.lower() == "metadata.csv":
                r = r.parent
            if r is not None and r.is_dir() and r.resolve() not in roots:
                why = _not_a_dataset_folder(r, run_dir)
                if why:
                    sources.append(Source(str(v), "dataset_images", 0, [why]))
                    continue
                roots.append(r.resolve())
    for rel in found_csvs:
        d = (run_dir / rel).parent.resolve()
        if not any(d == r or r in d.parents for r in roots):
            roots.append(d)
    for r in roots:
        ds, src = ds_mod.load_image_dataset(r, run_dir, jobs=jobs, progress=progress,
                                            signatures=signatures)
        _note_outside(src, r, run_dir)
        datasets.append(ds)
        sources.append(src)
    files = cfg.get("dataset_files") or []
    origin = cfg.origins.get("dataset_files")
    for v in (files if isinstance(files, list) else [files]):
        r = _resolve(v, run_dir, origin.file if origin else None)
        if r is not None and safe_open.special(r):
            sources.append(Source(str(v), "dataset_text", 0,
                                  [f"resolves into {safe_open.special(r)}: never read"]))
            continue
        if r is not None and r.is_file():
            ds, src = ds_mod.load_text_dataset(r.resolve(), run_dir, cutoff_len=cfg.get("cutoff_len"))
            _note_outside(src, r, run_dir)
            datasets.append(ds)
            sources.append(src)
    return datasets, sources


def _shown(path: str | Path, run_dir: Path) -> str:
    """A path for the report: relative to the run directory when inside it (the report
    does not depend on where the run lies), as it is otherwise."""
    try:
        rel = Path(path).resolve().relative_to(run_dir.resolve())
        return str(rel) if str(rel) != "." else "."
    except (OSError, ValueError):
        return str(path)


def _not_a_dataset_folder(folder: Path, run_dir: Path) -> str | None:
    """Why a folder a config names cannot be the image dataset: under /proc, /sys or
    /dev, or enclosing the run directory (``train_data_dir = "/"`` or ``..``: its images
    are the whole disk's, and none of them belongs in the report)."""
    root = safe_open.special(folder)
    if root is not None:
        return f"resolves into {root}: never read"
    real, run_real = os.path.realpath(folder), os.path.realpath(run_dir)
    if run_real == real or run_real.startswith(real.rstrip(os.sep) + os.sep):
        return f"{real} encloses the run directory: not read as a dataset folder"
    return None


def load_samples(cfg: Config, run_dir: Path, files: list[discover.Found], parsed: list[Parsed],
                 jobs: int | None, progress: bool) -> tuple[list[SampleImage], list[Source]]:
    """The images the run generated while training, with the prompts of the
    ``sample_prompts`` file the config names (see :mod:`lorascope.ingest.samples`)."""
    tb = [im for p in parsed if p.source.kind == "tfevents" for im in p.images]
    if not files and not tb:
        return [], []
    from lorascope.ingest import samples as smp
    sources: list[Source] = []
    prompts = None
    name = cfg.get("sample_prompts")
    if isinstance(name, str) and name.strip():
        origin = cfg.origins.get("sample_prompts")
        r = _resolve(name, run_dir, origin.file if origin else None)
        if r is None:    # an absolute path of the training machine: a copy in the run folder
            base = name.replace("\\", "/").rsplit("/", 1)[-1]
            r = next((f.path for f in discover.walk(run_dir, max_files=20_000)[0]
                      if f.rel.rsplit("/", 1)[-1] == base), None) if base else None
        if r is not None and Path(r).is_file():
            src = Source(ds_display(Path(r), run_dir), "sample_prompts")
            prompts = smp.read_prompts(Path(r), src)
            _note_outside(src, Path(r), run_dir)
            sources.append(src)
        elif files:
            sources.append(Source(name, "sample_prompts", problems=[
                "the sample_prompts file the config names was not found: samples are told "
                "apart by their prompt number only"]))
    samples, srcs = smp.load_samples(run_dir, files, tb, prompts, jobs=jobs, progress=progress)
    return samples, sources + srcs


def ds_display(path: Path, run_dir: Path) -> str:
    from lorascope.ingest.dataset import _display
    return _display(path, run_dir) or path.name


def _epoch_end(epoch: int, bounds: list[int], per_epoch: float | None, last: int | None,
               epochs: int | None) -> int | None:
    """The optimizer step at the end of an epoch (kohya samples at epoch ends)."""
    if epoch == 0:
        return 0
    if 0 < epoch <= len(bounds):
        return bounds[epoch - 1] - 1
    if per_epoch:
        step = int(round(epoch * per_epoch))
        return step if last is None or step <= last else None
    if last is not None and epochs and epoch == epochs:
        return last
    return None


def _note_outside(src: Source, path: Path, run_dir: Path) -> None:
    try:
        path.resolve().relative_to(run_dir.resolve())
    except ValueError:
        src.problems.append("read from outside the run directory, as the config names it")


def _main_layout(configs: list[Parsed], trainer: str) -> trainers.Layout | None:
    """The trainer layout whose step formula and defaults apply: the highest-priority
    training config's, else the trainer's own."""
    for p in sorted(configs, key=_config_priority):
        lay = trainers.by_name(p.facts.get("layout"))
        if lay is not None and lay.trainer is not None:
            return lay
    return trainers.by_name({"kohya": "kohya", "lora-scripts": "lora-scripts",
                             "hf-trainer": "hf-trainer", "llamafactory": "llamafactory",
                             "axolotl": "axolotl", "ai-toolkit": "ai-toolkit",
                             "onetrainer": "onetrainer", "simpletuner": "simpletuner"}.get(trainer))


def _implied(configs: list[Parsed], values: dict) -> dict[str, ConfigValue]:
    out: dict[str, ConfigValue] = {}
    for p in sorted(configs, key=_config_priority):
        lay = trainers.by_name(p.facts.get("layout"))
        if lay is None or lay.trainer is None:
            continue
        for key, v in lay.implied:
            if values.get(key) is None and key not in out:
                name = trainers.write_name(lay.keys, key) or key
                out[key] = ConfigValue(key, v, p.source.path, name,
                                       derived=f"{lay.trainer} default ({name} not set)")
    return out


def _lr_from_series(series: list[Series], cfg_values: dict) -> ConfigValue | None:
    """The learning rate a run used when no config names it: its logged peak."""
    if any(ADAPTIVE_LR_TAG.search(s.name) for s in series):
        return None
    opt = str(cfg_values.get("optimizer") or "").lower()
    if any(a in opt for a in ("prodigy", "dadapt")):
        return None
    lr = next((s for s in series if s.role == "lr"), None)
    if lr is None:
        return None
    v = lr.values[np.isfinite(lr.values)]
    if not len(v) or v.max() <= 0:
        return None
    peak = float(f"{float(v.max()):.6g}")      # float32 logs: 1e-3 is stored as 0.00100000005
    return ConfigValue("learning_rate", peak, lr.sources[0] if lr.sources else "", lr.name,
                       derived=f"peak of the logged {lr.name} series")


def _planned(cfg: Config, state: Parsed | None, pieces: list[lineage.Piece], logs: list[Parsed],
             layout: trainers.Layout | None, data: DataSize, views: int | None, split: bool
             ) -> tuple[int | None, str | None, float | None]:
    """(planned steps, where they come from, steps per epoch the plan implies)."""
    def ok(v) -> int | None:
        try:
            v = int(v)
        except (TypeError, ValueError):
            return None
        return v if 0 < v <= 10 ** 9 else None

    if state is not None and ok(state.facts.get("planned_steps")):
        return ok(state.facts["planned_steps"]), f"{state.source.path}: max_steps", None
    for p in pieces:
        if p.planned and ok(p.planned):
            what = {"trainer_log": "total_steps", "text_log": "total optimization steps"}.get(
                p.parsed.source.kind, "planned steps")
            return ok(p.planned), f"{p.path}: {what}", None
    for p in logs:
        if ok(p.facts.get("planned_steps")):
            return ok(p.facts["planned_steps"]), f"{p.source.path}: total optimization steps", None
    ms = ok(cfg.get("max_steps"))
    if ms:
        return ms, cfg.origins["max_steps"].where() if "max_steps" in cfg.origins else "config", None
    if layout is not None and layout.planned is not None:
        eff = {k: cfg.effective(k) for k in set(cfg.values) | set(cfg.implied)}
        plan = layout.planned(eff, trainers.DataCount(data.items, data.repeats, views, split))
        if plan is not None and ok(plan.steps):
            ep = cfg.get("epochs")
            spe = plan.steps / ep if isinstance(ep, (int, float)) and ep > 0 and plan.steps else None
            return ok(plan.steps), f"{plan.how} ({layout.trainer or layout.name}'s count)", spe
    return None, None, None


DATASET_KEYS = ("train_data_dir", "metadata_path", "dataset_files", "cutoff_len")


def _cfg_key(cfg: Config, keys: tuple[str, ...]) -> tuple:
    return tuple((k, repr(cfg.get(k)), cfg.origins[k].file if k in cfg.origins else None) for k in keys)


def _stat_key(path: Path, rel: str) -> tuple:
    try:
        st = os.stat(path)
        return rel, st.st_size, st.st_mtime_ns
    except OSError:
        return rel, None, None


def _cached(cache: dict | None, key: tuple, make: Callable):
    """make(), or what it gave for the same key last time (one entry per kind, key[0];
    ``cache`` None: no caching)."""
    if cache is None:
        return make()
    hit = cache.get(key[0])
    if hit is None or hit[0] != key:
        hit = cache[key[0]] = (key, make())
    return hit[1]


@dataclass
class _Share:
    """What one run is built from."""

    pieces: list[lineage.Piece] = field(default_factory=list)
    parsed: list[Parsed] = field(default_factory=list)      # non-curve files it owns
    events: list[LogEvent] = field(default_factory=list)


def _assemble(run_dir: Path, name: str, share: _Share, *, latest: bool, rid: str,
              csvs: list[str], jobs: int | None, progress: bool, order: dict[int, int],
              sample_files: list[discover.Found] = (), cache: dict | None = None) -> Run:
    piece_parsed = [pc.parsed for pc in share.pieces]
    curve_files = [p for p in piece_parsed]
    # text logs carry curves only when nothing structured does (build_series decides)
    everything = curve_files + share.parsed
    configs = [p for p in everything if p.config]
    cfg0 = merge_config(configs)
    curves = build_series(curve_files + [p for p in share.parsed if p.series and p.source.kind in CURVE_KINDS])
    series = curves.series
    facts_list = [p.facts for p in sorted(everything, key=_config_priority)]

    checkpoints: list[Checkpoint] = []
    for p in everything:
        for ck in p.checkpoints:
            if not (ck.format == "unknown" and not ck.modules and not ck.problems):
                checkpoints.append(ck)
    checkpoints.sort(key=lambda c: (c.step is None, c.step or 0, c.path))

    # trainer and task
    trainer = _choose(facts_list, "trainer", TRAINER_RANK)
    if trainer == "llamafactory" and not any(
            p.facts.get("trainer") == "llamafactory" and p.source.kind in ("trainer_log", "text_log")
            for p in everything) and any(p.source.kind == "trainer_state" for p in everything):
        # a LLaMA-Factory-style YAML alone does not make the run LLaMA-Factory's: its
        # LogCallback always writes trainer_log.jsonl; without it HF Trainer ran the config
        trainer = "hf-trainer"
    if trainer is None and any(s.name.lower().startswith(("loss/current", "loss/average", "lr/unet"))
                               for s in series):
        trainer = "kohya"
    trainer = trainer or "unknown"
    task = _choose(facts_list, "task")
    if task is None:
        if trainer in SD_TRAINERS or any(c.format in ("kohya", "diffusers") for c in checkpoints):
            task = "sd"
        elif trainer == "llamafactory" or any(c.format == "peft" for c in checkpoints) \
                or any(p.source.path.endswith("adapter_config.json") for p in everything):
            task = "llm"
    task = task or "unknown"

    # steps seen
    tl = next((s for s in series if s.role == "train_loss"), None)
    all_steps = [s.steps for s in series if len(s.steps) and s.role != "other"]
    if tl is not None and len(tl.steps):
        first, last = int(tl.steps[0]), int(tl.steps[-1])
    elif all_steps:
        first = int(min(a[0] for a in all_steps))
        last = int(max(a[-1] for a in all_steps))
    else:
        first = last = None
    # the most complete trainer state, also one whose log_history is empty (logging_steps
    # longer than the run): it still holds global_step, max_steps and the epoch
    state = curves.state or _pick_state([p for p in everything if p.source.kind == "trainer_state"])
    gs = state.facts.get("state_global_step") if state is not None else None
    synthetic = any(p.facts.get("steps_synthetic") for p in curve_files
                    if p.source.kind == "text_log") and not any(
        p.source.kind != "text_log" for p in curve_files)
    if gs and (last is None or gs > last) and not synthetic:
        last = int(gs)
    progress_files = [p for p in curve_files if p.source.kind != "text_log"]
    from_ckpt = bool(progress_files) and all(
        p.source.kind == "trainer_state" and lineage.CHECKPOINT_RE.search(p.source.path)
        for p in progress_files)

    # datasets (shared by the folder: read for the latest run) and the dataset size
    datasets: list = []
    ds_sources: list[Source] = []
    tb_images = any(p.images for p in everything if p.source.kind == "tfevents")
    if latest:
        signed = bool(sample_files) or tb_images
        key = ("datasets", _cfg_key(cfg0, DATASET_KEYS), tuple(csvs), signed)
        datasets, ds_sources = _cached(cache, key, lambda: load_datasets(
            cfg0, run_dir, csvs, jobs, progress, signatures=signed))
    values = dict(cfg0.values)
    origins = dict(cfg0.origins)
    items, items_from = values.get("num_train_items"), None
    if items is not None and "num_train_items" in origins:
        items_from = origins["num_train_items"].where()
    n_ds = sum(len(d.items) for d in datasets)
    if items is None and n_ds:
        items = n_ds
        roots = ", ".join(_shown(d.root, run_dir) for d in datasets[:2])
        items_from = f"{n_ds} items counted in {roots}"
        values["num_train_items"] = n_ds
        origins["num_train_items"] = ConfigValue("num_train_items", n_ds, datasets[0].manifest or "",
                                                 "", derived=items_from)
    views = next((int(f["train_views"]) for f in facts_list if f.get("train_views")), None)
    if views is None:
        dv = [d.views for d in datasets if d.views]
        views = sum(dv) if dv else None
    repeats = None
    if views and items:
        repeats = views / items
    else:
        rep = next((f["num_repeats"] for f in facts_list if f.get("num_repeats")), None)
        repeats = float(rep) if rep else None
    data = DataSize(items=int(items) if items else None, repeats=repeats, items_from=items_from)

    # the learning rate the run logged, when no config names it
    if values.get("learning_rate") is None:
        cv = _lr_from_series(series, values)
        if cv is not None:
            values["learning_rate"] = cv.value
            origins["learning_rate"] = cv
    cfg = Config(values=values, origins=origins, implied=_implied(configs, values))

    layout = _main_layout(configs, trainer)
    logs = [p for p in share.parsed if p.source.kind in ("text_log", "trainer_log")]
    # HF's "Num examples" in a log is the training split the trainer counted itself
    o = origins.get("num_train_items")
    split = o is not None and any(p.source.path == o.file and p.source.kind == "text_log"
                                  for p in everything)
    planned, planned_from, spe_plan = _planned(cfg, state, share.pieces, logs, layout, data,
                                               views, split)
    bounds, spe = epoch_boundaries(series, last, spe_plan)
    interval = next((int(f["logging_interval"]) for f in facts_list if f.get("logging_interval")), None)
    steps = StepInfo(first=first, last=last, planned=planned, planned_from=planned_from,
                     last_exact=gs is not None and last is not None and int(gs) == last,
                     last_from_checkpoint=from_ckpt, per_epoch=spe,
                     epochs_done=_epochs_done(series, state), logging_interval=interval)

    # the images it generated (shared by the folder, like the datasets: the latest run's)
    samples: list[SampleImage] = []
    smp_sources: list[Source] = []
    if latest or tb_images:
        mine = list(sample_files) if latest else []
        key = ("samples", _cfg_key(cfg0, ("sample_prompts",)), tuple(_stat_key(f.path, f.rel) for f in mine),
               tuple((im.source, im.tag, im.step, len(im.data)) for p in everything
                     if p.source.kind == "tfevents" for im in p.images))
        samples, smp_sources = _cached(cache, key, lambda: load_samples(
            cfg0, run_dir, mine, everything, jobs, progress))
        if cache is not None:      # their steps are set below, per build: copies
            samples = [replace(s) for s in samples]
        ep = cfg.get("epochs")
        for s in samples:
            if s.step is None and s.epoch is not None:
                s.step = _epoch_end(s.epoch, bounds, spe, last,
                                    int(ep) if isinstance(ep, (int, float)) else None)

    sources: list[Source] = []
    seen: set[int] = set()
    for p in everything:
        if id(p.source) not in seen:
            seen.add(id(p.source))
            sources.append(p.source)
    sources.sort(key=lambda s: order.get(id(s), 1 << 30))
    cut = tuple((s.path, prob) for s in sources if s.kind in ("tfevents", "wandb")
                for prob in s.problems if "truncated" in prob)
    return Run(path=str(run_dir), name=name, trainer=trainer, task=task,
               sources=tuple(sources) + tuple(ds_sources) + tuple(smp_sources),
               series=tuple(series), config=cfg,
               steps=steps, epoch_boundaries=tuple(bounds), checkpoints=tuple(checkpoints),
               datasets=tuple(datasets), events=tuple(share.events),
               data=data, loss_is_running_average=curves.running_average, cut_logs=cut,
               id=rid, latest=latest, samples=tuple(samples))


# -- the folder: its runs ------------------------------------------------------------------

@dataclass
class Folder:
    """The runs one folder holds, oldest first; the last is the latest (analysed by
    default)."""

    runs: list[Run]
    evidence: list[str] = field(default_factory=list)

    @property
    def latest(self) -> Run:
        return self.runs[-1]


def _under(path: str, folder: str) -> bool:
    folder = folder.strip("/")
    return not folder or path == folder or path.startswith(folder + "/")


def _owners(parsed: list[Parsed], runs: list[list[lineage.Piece]], run_dir: Path) -> dict[int, int]:
    """id(Parsed) -> index of the run that owns a non-curve file; files not listed are
    the folder's (given to the latest run)."""
    own: dict[int, int] = {}
    if len(runs) < 2:
        return own
    ck_dirs: dict[str, int] = {}
    walls: list[tuple[float, int]] = []
    for i, pieces in enumerate(runs):
        for pc in pieces:
            if pc.parsed.source.kind == "trainer_state" and "/" in pc.path:
                ck_dirs[pc.path.rsplit("/", 1)[0]] = i
            if pc.wall is not None:
                walls.append((pc.wall, i))
    walls.sort()
    root = run_dir.resolve()
    for p in parsed:
        rel = p.source.path
        d = rel.rsplit("/", 1)[0] if "/" in rel else ""
        if d in ck_dirs:                                   # beside its checkpoint's state
            own[id(p)] = ck_dirs[d]
            continue
        started = p.facts.get("started_at")
        if started and walls:                              # a kohya save: its training's start
            after = [(w, i) for w, i in walls if w >= float(started) - 120]
            if after:
                own[id(p)] = after[0][1]
                continue
        outs = [cv for cv in p.config if cv.key in ("output_dir", "logging_dir")
                and isinstance(cv.value, str) and cv.value.strip()]
        hits: set[int] = set()
        for cv in outs:                                    # a config naming its output folder
            base = (run_dir / Path(rel).parent / cv.value) if not os.path.isabs(cv.value) else Path(cv.value)
            try:
                sub = base.resolve().relative_to(root).as_posix()
            except (ValueError, OSError):
                continue
            sub = "" if sub == "." else sub
            if not sub:
                continue
            hits |= {i for i, pieces in enumerate(runs) if any(_under(pc.path, sub) for pc in pieces)}
        if len(hits) == 1:
            own[id(p)] = hits.pop()
    return own


def _split_events(p: Parsed, n_runs: int) -> dict[int, list[LogEvent]]:
    """A text log holding several trainings (one banner each): its events by training,
    the last training's to the latest run, earlier ones to the runs before it."""
    starts = p.facts.get("run_starts") or []
    if n_runs < 2 or len(starts) < 2:
        return {n_runs - 1: list(p.events)}
    out: dict[int, list[LogEvent]] = {}
    for e in p.events:
        seg = sum(1 for s in starts[1:] if e.line >= s)
        idx = max(0, n_runs - len(starts) + seg)
        out.setdefault(idx, []).append(e)
    return out


def _readable(parsed: list[Parsed]) -> bool:
    return any(p.source.records > 0 for p in parsed) or any(
        ck.tensors or ck.modules for p in parsed for ck in p.checkpoints) or any(
        p.facts.get("state_global_step") is not None or p.facts.get("planned_steps") is not None
        for p in parsed if p.source.kind == "trainer_state")


def check_folder(run_dir: Path) -> None:
    """Unreadable unless run_dir is a directory outside /proc, /sys and /dev."""
    if not run_dir.exists():
        raise Unreadable(f"{run_dir}: no such directory")
    if not run_dir.is_dir():
        raise Unreadable(f"{run_dir}: not a directory")
    if safe_open.special(run_dir):
        raise Unreadable(f"{run_dir}: resolves into {safe_open.special(run_dir)}: never read")


def build_folder(run_dir: Path | str, *, jobs: int | None = None, progress: bool = False,
                 pieces: tuple[list[Parsed], list[str], list[discover.Found]] | None = None,
                 cache: dict | None = None) -> Folder:
    """Every run of a folder, oldest first (see :mod:`lorascope.lineage`).

    ``pieces``: what :func:`parse_all` gives, when the caller read the files itself
    (``lorascope watch`` reads them incrementally); ``cache``: a dict kept by the caller
    across builds of the same folder, where the datasets and sample images the run
    names are kept while what they depend on is unchanged."""
    run_dir = Path(run_dir)
    check_folder(run_dir)
    parsed, walk_problems, files = pieces if pieces is not None else parse_all(run_dir)
    name = run_dir.resolve().name or str(run_dir)
    # what the walk could not read: a folder it could not list, a link into /proc
    walked = tuple(Source(w.rel, w.kind, 0, [w.reason]) for w in walk_problems
                   if isinstance(w, discover.WalkProblem))
    if not _readable(parsed) and not any(f.kind == "sample_image" for f in files):
        if not files:
            raise Unreadable(f"{run_dir}: empty directory")
        why = next((f"; {s.path}: {s.problems[0]}" for s in [p.source for p in parsed] + list(walked)
                    if s.problems), "")
        raise Unreadable(f"{run_dir}: nothing readable (no event file, trainer state, log, "
                         f"config or checkpoint with content){why}")
    order = {id(p.source): i for i, p in enumerate(parsed)}
    csvs = [f.rel for f in files if f.kind == "dataset_csv"]

    def is_loss(tag: str) -> bool:
        return role_of(tag) == "train_loss" or tag.lower() in RUNNING_AVERAGE_TAGS

    curve_files = [p for p in parsed if p.source.kind in CURVE_KINDS and p.series]
    structured = any(p.source.kind != "text_log" and any(role_of(r.tag) != "other" for r in p.series)
                     for p in curve_files)
    piece_files = [p for p in curve_files if not (structured and p.source.kind == "text_log")]
    pieces = [pc for p in piece_files for pc in lineage.split(p, is_loss)]
    lin = lineage.group(pieces)
    groups = lin.runs or [[]]
    shares = [_Share(pieces=list(g)) for g in groups]
    owners = _owners([p for p in parsed if p not in piece_files], groups, run_dir)
    latest = len(shares) - 1
    piece_ids = {id(p) for p in piece_files}
    for p in parsed:
        if id(p) in piece_ids and p.source.kind != "text_log":
            if p.events:        # a curve file's own console (a W&B run's captured output)
                i = next((k for k in range(latest, -1, -1)
                          if any(pc.parsed.source is p.source for pc in shares[k].pieces)), latest)
                shares[i].events.extend(p.events)
            continue
        if p.source.kind == "text_log":
            for i, evs in _split_events(p, len(shares)).items():
                shares[i].events.extend(evs)
            if p in piece_files:
                continue
        i = owners.get(id(p), latest)
        shares[i].parsed.append(p)
        if p.events and p.source.kind != "text_log":
            shares[i].events.extend(p.events)
    sample_files = [f for f in files if f.kind == "sample_image"]
    runs = [_assemble(run_dir, name, sh, latest=(i == latest), rid=f"run-{i + 1}", csvs=csvs,
                      jobs=jobs, progress=progress, order=order, sample_files=sample_files,
                      cache=cache)
            for i, sh in enumerate(shares)]
    if walked:
        runs = [replace(r, sources=tuple(r.sources) + walked) for r in runs]
    if len(runs) > 1 or lin.evidence:
        refs = tuple(RunRef(r.id, tuple(s.path for s in sorted(
            r.sources, key=lambda s: s.kind not in CURVE_KINDS)), r.steps) for r in runs)
        seen: dict[int, Source] = {}
        for r in runs:
            for s in r.sources:
                seen.setdefault(id(s), s)
        every = tuple(sorted(seen.values(), key=lambda s: order.get(id(s), 1 << 30)))
        runs = [replace(r, mixed=tuple(lin.evidence), others=tuple(x for x in refs if x.id != r.id),
                        folder_sources=every)
                for r in runs]
    return Folder(runs=runs, evidence=list(lin.evidence))


def build_run(run_dir: Path | str, *, jobs: int | None = None, progress: bool = False) -> Run:
    """The folder's latest run (the one analysed by default)."""
    return build_folder(run_dir, jobs=jobs, progress=progress).latest
