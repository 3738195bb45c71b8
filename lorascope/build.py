"""Parsed pieces -> one Run.

This is the last place that knows trainers and file layouts: it picks the parser
for each file, merges configs by precedence, gives series their roles, finds
epoch boundaries and runs mixed into one directory, and loads the datasets the
config names.  Everything downstream reads only the :class:`~lorascope.model.Run`.
"""
from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from lorascope import discover, merge, safe_open
from lorascope.ingest import _json
from lorascope.model import Config, Parsed, RawSeries, Run, Series, Source, StepInfo

# kind -> (module, function) of the parser that reads it
PARSERS: dict[str, tuple[str, str]] = {
    "tfevents": ("lorascope.ingest.tfevents", "parse"),
    "trainer_state": ("lorascope.ingest.trainer_state", "parse"),
    "trainer_log": ("lorascope.ingest.llamafactory", "parse"),
    "results": ("lorascope.ingest.llamafactory", "parse_results"),
    "text_log": ("lorascope.ingest.textlog", "parse"),
    "config": ("lorascope.ingest.config", "parse"),
    "model_config": ("lorascope.build", "parse_model_config"),
    "safetensors": ("lorascope.ingest.safetensors", "parse"),
}

# Tag name -> role.  Order matters: the first pattern that matches wins, and among
# several series of one role the builder lists preferred names first.
ROLE_PATTERNS: list[tuple[str, re.Pattern]] = [
    ("eval_loss", re.compile(r"^(eval|val|valid|validation|test)[/_]loss$|^loss/(val|validation|eval)$")),
    ("train_loss", re.compile(r"^(train/)?loss$|^train[/_]loss$|^loss/(current|step|train)$|^training[/_]loss$")),
    ("lr", re.compile(r"^(train/)?(learning_rate|lr)$|^lr/.+|^lr$")),
    ("grad_norm", re.compile(r"^(train/)?(grad_norm|gradient_norm|grad-norm)$|^grad_norm/.+")),
]
RUNNING_AVERAGE_TAGS = {"loss/average", "loss/avr", "loss/moving_average"}
EPOCH_TAGS = {"epoch", "train/epoch"}
# kohya's per-epoch mean loss: older versions log `loss/epoch`, newer `loss/epoch_average`
KOHYA_EPOCH_TAGS = {"loss/epoch", "loss/epoch_average"}
TRAINER_RANK = {"kohya": 0, "lora-scripts": 0, "llamafactory": 1, "diffusers": 2, "hf-trainer": 3}
SD_TRAINERS = {"kohya", "lora-scripts", "diffusers"}


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
    cfg = Config()
    for p in sorted(parsed, key=_config_priority):
        for cv in p.config:
            if cv.value is None or cv.key in cfg.values:
                continue
            cfg.values[cv.key] = cv.value
            cfg.origins[cv.key] = cv
    return cfg


# -- series ------------------------------------------------------------------------

def role_of(tag: str) -> str:
    t = tag.lower()
    for role, pat in ROLE_PATTERNS:
        if pat.search(t):
            return role
    return "other"


def _merge_raw(raws: list[RawSeries]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Concatenate one tag's points from several files; later files win on overlap."""
    def start(r: RawSeries) -> float:
        if r.wall_times is not None and len(r.wall_times):
            return float(r.wall_times[0])
        return 0.0
    raws = sorted(raws, key=start)
    steps = np.concatenate([r.steps.astype(np.int64) for r in raws]) if raws else np.zeros(0, np.int64)
    vals = np.concatenate([r.values.astype(np.float64) for r in raws]) if raws else np.zeros(0)
    if len(steps) == 0:
        return steps, vals, []
    # keep the last occurrence of each step (a resumed run rewrites the tail)
    rev_steps = steps[::-1]
    _, idx = np.unique(rev_steps, return_index=True)
    keep = len(steps) - 1 - idx
    keep.sort()
    steps, vals = steps[keep], vals[keep]
    order = np.argsort(steps, kind="stable")
    return steps[order], vals[order], sorted({r.source for r in raws})


def _restarts(r: RawSeries) -> list[int]:
    """Indices where steps go back to the start inside one file.

    A step counter that goes back only a little is a resume from a checkpoint
    or two processes writing one log, not a second run: only a fall back to
    (near) the first step counts.
    """
    s = r.steps
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


def detect_mixed(groups: dict[str, list[RawSeries]], states: list[Parsed]) -> list[str]:
    """Evidence that logs of several runs share this directory."""
    ev: list[str] = []
    for tag, raws in groups.items():
        if role_of(tag) != "train_loss":
            continue
        for r in raws:
            rs = _restarts(r)
            if rs:
                i = rs[0]
                ev.append(f"{r.source}: tag {tag} goes back from step {int(r.steps[i-1])} "
                          f"to step {int(r.steps[i])} ({len(rs)} restart(s) in one file)")
        # both start at the beginning: two runs (a resume starts later); near-linear
        if len(ev) < merge.MAX_EVIDENCE:
            ev.extend(merge.start_pairs(tag, raws, merge.MAX_EVIDENCE - len(ev)))
    plans = {}
    for p in states:
        ms = p.facts.get("planned_steps")
        if ms:
            plans.setdefault(int(ms), []).append(p.source.path)
    if len(plans) > 1:
        desc = "; ".join(f"max_steps {k} in {', '.join(v[:3])}" for k, v in sorted(plans.items()))
        ev.append(f"trainer states plan different runs: {desc}")
    return ev[:10]


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


def build_series(parsed: list[Parsed], facts: dict) -> list[Series]:
    states = [p for p in parsed if p.source.kind == "trainer_state"]
    winner = _pick_state(states)
    if winner is not None:
        # the most complete state speaks for the run's plan and progress
        for k in ("planned_steps", "state_global_step", "num_train_epochs", "logging_steps"):
            if winner.facts.get(k) is not None:
                facts[k] = winner.facts[k]
        facts["state_source"] = winner.source.path
    groups: dict[str, list[RawSeries]] = {}
    state_groups: dict[str, list[RawSeries]] = {}
    for p in parsed:
        if p.source.kind == "trainer_state" and p is not winner:
            for r in p.series:
                state_groups.setdefault(r.tag, []).append(r)
            continue
        for r in p.series:
            key = r.tag if p.source.kind == "tfevents" else f"{p.source.kind}:{r.tag}"
            groups.setdefault(key, []).append(r)
    by_tag: dict[str, list[RawSeries]] = {}
    for raws in groups.values():
        for r in raws:
            by_tag.setdefault(r.tag, []).append(r)
    mixed = detect_mixed(by_tag, states)
    # trainer states that disagree with the winner on the same steps are another run
    if winner is not None:
        mixed += merge.states_disagree(winner.series, state_groups,
                                       lambda tag: role_of(tag) == "train_loss", winner.source.path)
    if mixed:
        facts["mixed_evidence"] = mixed

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
        steps, vals, srcs = _merge_raw(raws)
        if len(steps) == 0:
            continue
        name = tag
        if name in names_seen:
            name = f"{tag} ({kind or 'tfevents'})"
        names_seen.add(name)
        role = role_of(tag)
        if tag.lower() in RUNNING_AVERAGE_TAGS:
            role = "other"
        series.append(Series(name=name, role=role, steps=steps, values=vals, sources=srcs))
    series = merge.drop_copies(series)        # near-linear: lorascope/merge.py
    # only a running average logged: use it, and say so
    if not any(s.role == "train_loss" for s in series):
        for s in series:
            if s.name.lower() in RUNNING_AVERAGE_TAGS:
                s.role = "train_loss"
                facts["loss_running_average"] = True
                break
    # preferred first within a role: most points, then tfevents over json copies
    series.sort(key=lambda s: (["train_loss", "eval_loss", "lr", "grad_norm", "other"].index(s.role),
                               -len(s.steps), "(" in s.name, _secondary(s.name), s.name))
    return series


# -- epochs ------------------------------------------------------------------------

def epoch_boundaries(series: list[Series], last_step: int | None, facts: dict) -> list[int]:
    """First optimizer step of each epoch after the first."""
    ep = next((s for s in series if s.name.split(" ")[0].lower() in EPOCH_TAGS), None)
    if ep is not None and len(ep.steps) >= 2:
        ok = np.isfinite(ep.values) & (ep.values > 0) & (ep.steps > 0)
        if ok.sum() >= 2:
            spe = float(np.median(ep.steps[ok] / ep.values[ok]))
            max_ep = float(np.nanmax(ep.values[ok]))
            if spe >= 1 and max_ep >= 1:
                facts["steps_per_epoch"] = spe
                return [int(round(k * spe)) + 1 for k in range(1, int(np.floor(max_ep + 1e-6)) + 1)
                        if last_step is None or round(k * spe) + 1 <= last_step]
    # kohya loss/epoch: older versions log it at step = epoch number, newer at the global step
    le = next((s for s in series if s.name.split(" ")[0].lower() in KOHYA_EPOCH_TAGS), None)
    if le is not None and len(le.steps) >= 1 and last_step:
        st = le.steps
        if st.max() < last_step / 2 and np.array_equal(st, np.arange(st[0], st[0] + len(st))):
            n_ep = int(st.max())
            spe = last_step / max(1, n_ep)
            facts["steps_per_epoch"] = spe
            return [int(round(k * spe)) + 1 for k in range(1, n_ep)]
        facts["steps_per_epoch"] = float(np.median(np.diff(np.concatenate([[0], st])))) if len(st) else None
        return [int(s) + 1 for s in st if s < last_step]
    spe = facts.get("steps_per_epoch")
    if spe and last_step:
        return [int(round(k * spe)) + 1 for k in range(1, int(last_step // spe) + 1)
                if round(k * spe) + 1 <= last_step]
    return []


# -- the run -----------------------------------------------------------------------

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


def load_datasets(run: Run, run_dir: Path, found_csvs: list[str], jobs: int | None,
                  progress: bool) -> None:
    try:
        ds_mod = importlib.import_module("lorascope.ingest.dataset")
    except ImportError:
        return
    cfg = run.config
    roots: list[Path] = []
    tdd = cfg.get("train_data_dir")
    origin = cfg.origins.get("train_data_dir")
    for v in (tdd if isinstance(tdd, list) else [tdd]):
        r = _resolve(v, run_dir, origin.file if origin else None) if v else None
        if r is not None and r.is_dir():
            why = _not_a_dataset_folder(r, run_dir)
            if why:
                run.sources.append(Source(str(v), "dataset_images", 0, [why]))
                continue
            roots.append(r.resolve())
    for rel in found_csvs:
        d = (run_dir / rel).parent.resolve()
        if not any(d == r or r in d.parents for r in roots):
            roots.append(d)
    for r in roots:
        ds, src = ds_mod.load_image_dataset(r, run_dir, jobs=jobs, progress=progress)
        _note_outside(src, r, run_dir)
        run.datasets.append(ds)
        run.sources.append(src)
    files = cfg.get("dataset_files") or []
    origin = cfg.origins.get("dataset_files")
    for v in (files if isinstance(files, list) else [files]):
        r = _resolve(v, run_dir, origin.file if origin else None)
        if r is not None and safe_open.special(r):
            run.sources.append(Source(str(v), "dataset_text", 0,
                                      [f"resolves into {safe_open.special(r)}: never read"]))
            continue
        if r is not None and r.is_file():
            ds, src = ds_mod.load_text_dataset(r.resolve(), run_dir, cutoff_len=cfg.get("cutoff_len"))
            _note_outside(src, r, run_dir)
            run.datasets.append(ds)
            run.sources.append(src)


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


def _note_outside(src: Source, path: Path, run_dir: Path) -> None:
    try:
        path.resolve().relative_to(run_dir.resolve())
    except ValueError:
        src.problems.append("read from outside the run directory, as the config names it")


def build_run(run_dir: Path | str, *, jobs: int | None = None, progress: bool = False) -> Run:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise Unreadable(f"{run_dir}: no such directory")
    if not run_dir.is_dir():
        raise Unreadable(f"{run_dir}: not a directory")
    if safe_open.special(run_dir):
        raise Unreadable(f"{run_dir}: resolves into {safe_open.special(run_dir)}: never read")
    parsed, walk_problems, files = parse_all(run_dir)
    counts: dict[str, int] = {}
    for f in files:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    name = run_dir.resolve().name or str(run_dir)
    run = Run(path=str(run_dir), name=name)
    facts: dict = {"file_counts": counts}
    if walk_problems:
        facts["walk_problems"] = walk_problems
    run.sources = [p.source for p in parsed]
    # what the walk could not read: a folder it could not list, a link into /proc
    run.sources += [Source(w.rel, w.kind, 0, [w.reason]) for w in walk_problems
                    if isinstance(w, discover.WalkProblem)]
    if not any(p.source.records > 0 for p in parsed) and not any(p.checkpoints for p in parsed):
        if not counts:
            raise Unreadable(f"{run_dir}: empty directory")
        why = next((f"; {s.path}: {s.problems[0]}" for s in run.sources if s.problems), "")
        raise Unreadable(f"{run_dir}: nothing readable (no event file, trainer state, log, "
                         f"config or checkpoint with content){why}")
    run.config = merge_config(parsed)
    facts_list = [p.facts for p in sorted(parsed, key=_config_priority)]
    run.series = build_series(parsed, facts)
    for p in parsed:
        for k, v in p.facts.items():
            facts.setdefault(k, v)
    for p in parsed:
        run.events.extend(p.events)
        for ck in p.checkpoints:
            if ck.format == "unknown" and not ck.modules and not ck.problems:
                facts.setdefault("other_weights", []).append(ck.path)
            else:
                run.checkpoints.append(ck)
    run.checkpoints.sort(key=lambda c: (c.step is None, c.step or 0, c.path))

    # trainer and task
    trainer = _choose(facts_list, "trainer", TRAINER_RANK)
    if trainer == "llamafactory" and not any(
            p.facts.get("trainer") == "llamafactory" and p.source.kind in ("trainer_log", "text_log")
            for p in parsed) and any(p.source.kind == "trainer_state" for p in parsed):
        # a LLaMA-Factory-style YAML alone does not make the run LLaMA-Factory's: its
        # LogCallback always writes trainer_log.jsonl; without it HF Trainer ran the config
        trainer = "hf-trainer"
    if trainer is None and any(s.name.lower().startswith(("loss/current", "loss/average", "lr/unet"))
                               for s in run.series):
        trainer = "kohya"
    run.trainer = trainer or "unknown"
    task = _choose(facts_list, "task")
    if task is None:
        if run.trainer in SD_TRAINERS or any(c.format in ("kohya", "diffusers") for c in run.checkpoints):
            task = "sd"
        elif run.trainer == "llamafactory" or any(c.format == "peft" for c in run.checkpoints) \
                or any(p.source.path.endswith("adapter_config.json") for p in parsed):
            task = "llm"
    run.task = task or "unknown"

    # steps
    tl = run.primary("train_loss")
    all_steps = [s.steps for s in run.series if len(s.steps) and s.role != "other"]
    if tl is not None and len(tl.steps):
        first, last = int(tl.steps[0]), int(tl.steps[-1])
    elif all_steps:
        first = int(min(a[0] for a in all_steps))
        last = int(max(a[-1] for a in all_steps))
    else:
        first = last = None
    gs = facts.get("state_global_step")
    if gs and (last is None or gs > last) and not facts.get("steps_synthetic"):
        last = int(gs)
    planned = facts.get("planned_steps") or run.config.get("max_steps")
    if planned is not None:
        try:
            planned = int(planned)
            if planned <= 0 or planned > 10**9:
                planned = None
        except (TypeError, ValueError):
            planned = None
    run.steps = StepInfo(first, last, planned)
    run.epoch_boundaries = epoch_boundaries(run.series, last, facts)
    run.facts = facts

    csvs = [f.rel for f in files if f.kind == "dataset_csv"]
    load_datasets(run, run_dir, csvs, jobs, progress)
    if run.datasets and run.config.values.get("num_train_items") is None:
        n = sum(len(d.items) for d in run.datasets)
        if n:
            run.config.values["num_train_items"] = n
    return run

