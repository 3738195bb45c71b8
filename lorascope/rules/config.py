"""config.* rules: settings in the run's configuration that are risky in themselves.

They read only ``run.config`` (normalized keys, each with its origin; values the trainer
implies by leaving a key out through ``Config.effective``), ``run.task``, ``run.data``
(the dataset size and per-image repeats), ``run.steps`` and, for
``config.missing_path``, the file system around ``run.path``. Thresholds live in
``rules/config.toml``; the SD thresholds follow the seed articles (``../shared/seeds``).
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from lorascope.model import Finding, Run
from lorascope.rules.registry import Params, rule

_SD_HINT_KEYS = ("resolution", "network_module", "train_data_dir")


# -- helpers --------------------------------------------------------------------------

def _task(run: Run) -> str:
    if run.task in ("sd", "llm"):
        return run.task
    if any(run.config.get(k) is not None for k in _SD_HINT_KEYS):
        return "sd"
    return "llm"


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _where(run: Run, key: str) -> str:
    o = run.config.origin(key)
    return "config" if o is None else o.where()


def _files(run: Run, *keys: str) -> list[str]:
    out: list[str] = []
    for k in keys:
        o = run.config.origins.get(k)
        if o is not None and o.file and o.file not in out:
            out.append(o.file)
    return out


def _ev(run: Run, key: str, value: Any | None = None) -> str:
    v = run.config.get(key) if value is None else value
    return f"{key} = {_fmt(v)} ({_where(run, key)})"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return repr(v) if isinstance(v, str) else str(v)


def _items(run: Run) -> int | None:
    n = run.data.items
    if n is None:
        n = _num(run.config.get("num_train_items"))
    if n is None:
        n = next((len(ds.items) for ds in run.datasets if ds.items), None)
    return int(n) if n is not None and n > 0 else None


def _items_source(run: Run) -> str:
    if run.data.items is not None:
        return f"{run.data.items} training samples ({run.data.items_from or 'config'})"
    if run.config.get("num_train_items") is not None:
        return _ev(run, "num_train_items")
    for ds in run.datasets:
        if ds.items:
            return f"{len(ds.items)} items in dataset {ds.root}"
    return "dataset size unknown"


def _repeats(run: Run) -> float:
    return float(run.data.repeats) if run.data.repeats and run.data.repeats > 0 else 1.0


def _logged_lr(run: Run, p: Params) -> tuple[float | None, bool]:
    """(learning rate, whether it is the peak of the logged series rather than a config
    value).  A logged peak is used only for runs that evidently train a LoRA (a rank in
    the config, LoRA layers in a checkpoint): the ranges are LoRA ranges, and P-tuning or
    full fine-tunes log rates far outside them on purpose."""
    lr = _num(run.config.get("learning_rate"))
    o = run.config.origins.get("learning_rate")
    derived = o is not None and o.derived is not None
    if lr is not None and derived and run.config.get("lora_rank") is None \
            and not any(c.modules for c in run.checkpoints):
        return None, True
    return lr, derived


def _adaptive(run: Run, p: Params) -> bool:
    opt = str(run.config.get("optimizer") or "").lower()
    return any(a in opt for a in p.get("adaptive_optimizers", []))


def _effective_batch(run: Run, *, known_accum: bool = False) -> tuple[int, int, int, int] | None:
    """(effective batch, batch, accumulation, devices).  ``known_accum``: None when the
    run does not reveal its accumulation (e.g. only trainer_state.json, which does not
    record it, names the batch)."""
    bs = _num(run.config.get("batch_size"))
    if bs is None or bs <= 0:
        return None
    ga = _num(run.config.effective("grad_accum"))
    if ga is None and known_accum:
        return None
    nd = _num(run.config.get("num_devices")) or 1
    ga, nd = max(int(ga or 1), 1), max(int(nd), 1)
    return int(bs) * ga * nd, int(bs), ga, nd


def _planned_steps(run: Run) -> int | None:
    if run.steps.planned:
        return int(run.steps.planned)
    ms = _num(run.config.get("max_steps"))
    return int(ms) if ms and ms > 0 else None


# -- learning rate --------------------------------------------------------------------

@rule("config.lr_high", needs=("config",))
def config_lr_high(run: Run, p: Params) -> list[Finding]:
    """The configured learning rate is above the usual range for LoRA.

    ## What it detects
    A ``learning_rate`` (for kohya the UNet rate, ``unet_lr``, when set) strictly above
    ``sd_max_lr`` for image runs or ``llm_max_lr`` for language-model runs. Runs with an
    adaptive optimizer (Prodigy, D-Adaptation), whose rate is a multiplier, are skipped.

    ## Why it matters
    Too large a step makes the loss spike, oscillate or diverge, often after a good start,
    and can push fp16 activations to Inf. It is the most common cause of a LoRA that
    "fried" its base model.

    ## Example
    ``unet_lr = 5e-3`` in a kohya TOML: ``learning_rate = 0.005 (train.toml: unet_lr) is
    above 0.001``.

    ## Fix
    ``{"learning_rate": 1e-4}`` (SD) or ``{"learning_rate": 2e-4}`` (LLM): the catalog's
    typical rate.

    When no config names the rate, the peak of the logged learning-rate series stands in
    for it (a lower bound of the configured rate), for runs that evidently train a LoRA.
    """
    lr, _ = _logged_lr(run, p)
    if lr is None or _adaptive(run, p):
        return []
    task = _task(run)
    limit = float(p[f"{task}_max_lr"])
    if lr <= limit:
        return []
    typical = float(p[f"{task}_typical_lr"])
    return [p.finding(
        title=f"Learning rate {lr:g} is above the usual {task.upper()} LoRA range (<= {limit:g})",
        evidence=[f"{_ev(run, 'learning_rate')} is above {limit:g}",
                  f"typical {task.upper()} LoRA learning rate: {typical:g}"],
        fix={"learning_rate": typical},
        files=_files(run, "learning_rate"),
    )]


@rule("config.lr_low", needs=("config",))
def config_lr_low(run: Run, p: Params) -> list[Finding]:
    """The configured learning rate is so low that the adapter barely moves.

    ## What it detects
    A positive ``learning_rate`` below ``sd_min_lr`` / ``llm_min_lr`` (1e-6), skipping
    adaptive optimizers (Prodigy, D-Adaptation). A rate of exactly 0 is reported too.

    ## Why it matters
    LoRA's B/up matrix starts at zero. At such a rate it stays near zero for the whole run:
    the loss does not move (a plateau) and the saved adapter changes nothing.

    ## Example
    ``learning_rate: 1.0e-7`` in a LLaMA-Factory YAML.

    ## Fix
    ``{"learning_rate": 2e-4}`` (LLM) or ``{"learning_rate": 1e-4}`` (SD).

    When no config names the rate, the peak of the logged learning-rate series stands in
    for it, for runs that evidently train a LoRA; a schedule sampled at logging steps
    peaks below the configured rate, so the logged peak must be below ``logged_margin``
    times the limit.
    """
    lr, derived = _logged_lr(run, p)
    if lr is None or lr < 0 or _adaptive(run, p):
        return []
    task = _task(run)
    limit = float(p[f"{task}_min_lr"]) * (float(p["logged_margin"]) if derived else 1.0)
    if lr >= limit:
        return []
    typical = float(p[f"{task}_typical_lr"])
    return [p.finding(
        title=f"Learning rate {lr:g} is too low for LoRA to learn (< {limit:g})",
        evidence=[f"{_ev(run, 'learning_rate')} is below {limit:g}",
                  f"typical {task.upper()} LoRA learning rate: {typical:g}"],
        fix={"learning_rate": typical},
        files=_files(run, "learning_rate"),
    )]


# -- batch, capacity, epochs ----------------------------------------------------------

@rule("config.small_batch", needs=("config",))
def config_small_batch(run: Run, p: Params) -> list[Finding]:
    """The effective batch is 1-2 samples and gradient accumulation is off.

    ## What it detects
    ``batch_size x grad_accum x num_devices <= max_effective_batch`` with ``grad_accum``
    unset or 1 (a training config that leaves accumulation out means the trainer's
    default, 1). For image (SD) runs, where batch 1 is the usual kohya default, the
    finding is reported at ``sd_severity`` (info). When the run does not reveal its
    accumulation (the batch size is known only from `trainer_state.json`, which does not
    record it, and no training config was found), nothing is reported.

    ## Why it matters
    One or two samples per optimizer step give a very noisy gradient: the loss oscillates
    and a single odd sample can cause a spike, especially at higher learning rates.

    ## Example
    ``per_device_train_batch_size: 1`` and no ``gradient_accumulation_steps`` in a
    LLaMA-Factory YAML.

    ## Fix
    ``{"grad_accum": N}`` so that the effective batch reaches the target (16 LLM, 4 SD);
    alternatively raise the batch size if memory allows.
    """
    eb = _effective_batch(run, known_accum=True)
    if eb is None:
        return []
    eff, bs, ga, nd = eb
    if eff > int(p["max_effective_batch"]) or ga > 1:
        return []
    task = _task(run)
    target = int(p[f"{task}_target_effective_batch"])
    accum = max(2, math.ceil(target / (bs * nd)))
    sev = p.get("sd_severity") if task == "sd" else None
    ev = [f"{_ev(run, 'batch_size')}, grad_accum = {ga} ({_where(run, 'grad_accum')})"
          + f", devices = {nd}: effective batch {eff}"]
    if task == "sd":
        ev.append("batch 1-2 is common for SD LoRA; it mainly matters with a high lr")
    return [p.finding(
        title=f"Effective batch size is {eff} without gradient accumulation",
        severity=sev if sev in ("critical", "warning", "info") else None,
        evidence=ev,
        fix={"grad_accum": accum},
        files=_files(run, "batch_size", "grad_accum"),
    )]


@rule("config.rank_capacity", needs=("config",))
def config_rank_capacity(run: Run, p: Params) -> list[Finding]:
    """The LoRA rank is high for the number of training samples.

    ## What it detects
    ``lora_rank >= <task>_min_rank`` and dataset size ``< lora_rank x
    <task>_min_items_per_rank`` (SD: 64 and 2 images per rank; LLM: 32 and 20 samples per
    rank). The dataset size is ``num_train_items`` from the config, else the number of
    items of the first dataset read; without either the rule is silent.

    ## Why it matters
    Capacity far beyond what the data can constrain lets the adapter memorise the
    training samples: SD LoRAs copy backgrounds and poses, LLM adapters recite training
    answers and generalise worse (the eval loss rises early).

    ## Example
    ``network_dim = 128`` with 25 images: 25 < 128 x 2.

    ## Fix
    Lower the rank (about dataset size / items-per-rank, e.g. 16 for 30 images) or add
    data. Rank changes the adapter's shape and cannot be applied when resuming, so the
    finding carries no automatic fix.
    """
    rank, n = _num(run.config.get("lora_rank")), _items(run)
    if rank is None or n is None:
        return []
    task = _task(run)
    per = float(p[f"{task}_min_items_per_rank"])
    if rank < float(p[f"{task}_min_rank"]) or n >= rank * per:
        return []
    suggest = 2 ** max(2, int(math.floor(math.log2(max(n / per, 4)))))
    return [p.finding(
        title=f"LoRA rank {int(rank)} is high for {n} training samples",
        evidence=[_ev(run, "lora_rank"), _items_source(run),
                  f"{task.upper()} rule of thumb: at least {per:g} samples per rank "
                  f"(rank {int(rank)} -> {int(rank * per)}); a rank near {suggest} fits"],
        files=_files(run, "lora_rank", "num_train_items"),
    )]


@rule("config.epochs_high", needs=("config",))
def config_epochs_high(run: Run, p: Params) -> list[Finding]:
    """The number of passes over the data is high for the dataset size.

    ## What it detects
    SD runs, by the seed articles' table for a trainer that shows each image once per
    epoch (lora-scripts, kohya with 1 repeat): more than ``sd_small_max_epochs`` (15)
    epochs for fewer than ``sd_small_items`` (50) images, more than
    ``sd_medium_max_epochs`` (12) for up to ``sd_medium_items`` (100), more than
    ``sd_large_max_epochs`` (8) above; with the size unknown the loosest limit applies
    and the finding is only `info`. kohya runs with per-image repeats (``N_name``
    folders, ``num_repeats``): views per image ``epochs x repeats`` above
    ``sd_max_views``. LLM runs: ``epochs`` above ``llm_max_epochs`` (5), or above
    ``llm_max_epochs_small`` (10) when the dataset has fewer than ``llm_small_items``
    samples or its size is unknown (then only `info`). When only ``max_steps`` is set,
    the passes it implies (``max_steps x effective batch / dataset size``) are used.

    ## Why it matters
    Many passes over the same samples memorise them: the train loss keeps falling while
    the eval loss rises (overfit), SD LoRAs lose flexibility and reproduce their
    training images.

    ## Example
    ``epochs: 30`` in a lora-scripts YAML over 40 images (at most 15), or
    ``num_train_epochs: 30`` over 5000 samples.

    ## Fix
    ``{"epochs": N}``: the table's limit (SD), sd_target_views / repeats (kohya with
    repeats) or 3 (LLM); keep the checkpoint where the eval loss was lowest.
    """
    task = _task(run)
    n = _items(run)
    rep = _repeats(run)
    ep = _num(run.config.get("epochs"))
    ep_ev = _ev(run, "epochs") if ep is not None else None
    if ep is None:
        ms, eb = _num(run.config.get("max_steps")), _effective_batch(run)
        if not (ms and eb and n):
            return []
        # each step shows `effective batch` samples of n x repeats per epoch
        ep = ms * eb[0] / (n * rep)
        ep_ev = (f"{_ev(run, 'max_steps')} x effective batch {eb[0]} / ({n} samples"
                 + (f" x {rep:g} repeats" if rep != 1 else "") + f") = {ep:.1f} epochs")
    if ep <= 0:
        return []
    files = _files(run, "epochs", "max_steps")
    if task == "sd" and rep > 1:
        views = ep * rep
        limit = float(p["sd_max_views"])
        if views <= limit:
            return []
        target = max(1, int(round(float(p["sd_target_views"]) / rep)))
        return [p.finding(
            title=f"Each image is seen about {views:g} times ({ep:g} epochs x {rep:g} repeats)",
            evidence=[ep_ev, f"repeats per image = {rep:g} ({_items_source(run)})",
                      f"more than {limit:g} views per image"],
            fix={"epochs": target}, files=files,
        )]
    if task == "sd":
        if n is not None and n < int(p["sd_small_items"]):
            limit, size = int(p["sd_small_max_epochs"]), f"fewer than {int(p['sd_small_items'])} images"
        elif n is not None and n <= int(p["sd_medium_items"]):
            limit, size = int(p["sd_medium_max_epochs"]), f"{int(p['sd_small_items'])}-{int(p['sd_medium_items'])} images"
        elif n is not None:
            limit, size = int(p["sd_large_max_epochs"]), f"more than {int(p['sd_medium_items'])} images"
        else:
            limit, size = int(p["sd_small_max_epochs"]), "any dataset size"
        if ep <= limit:
            return []
        return [p.finding(
            title=f"{ep:g} epochs is high for " + (f"{n} images" if n else "an SD LoRA (dataset size unknown)"),
            severity=None if n else "info",
            evidence=[ep_ev, _items_source(run),
                      f"at most {limit} epochs for {size} (lora-scripts rule of thumb: <50 images "
                      f"<= 15, 50-100: 10-12, >100: 5-8)"],
            fix={"epochs": limit}, files=files,
        )]
    small = n is None or n < int(p["llm_small_items"])
    limit = float(p["llm_max_epochs_small"] if small else p["llm_max_epochs"])
    if ep <= limit:
        return []
    # without the dataset size the epoch count alone is a hint, not a finding
    return [p.finding(
        title=f"{ep:g} epochs is high for "
              + (f"{n} samples" if n else "an LLM LoRA run (dataset size unknown)"),
        severity=None if n else "info",
        evidence=[ep_ev, _items_source(run),
                  f"more than {limit:g} epochs for a dataset of this size"],
        fix={"epochs": int(p["llm_target_epochs"])},
        files=files,
    )]


# -- schedule and clipping ------------------------------------------------------------

@rule("config.no_warmup", needs=("config",))
def config_no_warmup(run: Run, p: Params) -> list[Finding]:
    """No learning-rate warmup although the learning rate is high.

    ## What it detects
    The config says warmup is zero (``warmup_steps = 0`` and no ``warmup_ratio``, or
    ``warmup_ratio = 0`` and no steps) while ``learning_rate >= <task>_min_lr`` (SD 5e-4,
    LLM 2e-4). Unset warmup, or adaptive optimizers, are not reported.

    ## Why it matters
    Adam's moment estimates are poor for the first steps; a full-size step on them can
    produce an early loss spike the run never recovers from.

    ## Example
    ``learning_rate: 3.0e-4`` with ``warmup_steps: 0`` in a LLaMA-Factory YAML.

    ## Fix
    ``{"warmup_steps": 5% of the planned steps}``; when the planned steps are unknown,
    ``{"warmup_ratio": 0.05}``.
    """
    lr = _num(run.config.get("learning_rate"))
    if lr is None or _adaptive(run, p):
        return []
    ws = run.config.values.get("warmup_steps")
    wr = run.config.values.get("warmup_ratio")
    ws, wr = _num(ws), _num(wr)
    if ws is None and wr is None:
        return []
    if (ws or 0) > 0 or (wr or 0) > 0:
        return []
    task = _task(run)
    limit = float(p[f"{task}_min_lr"])
    if lr < limit:
        return []
    frac = float(p["warmup_fraction"])
    planned = _planned_steps(run)
    if planned:
        fix: dict[str, Any] = {"warmup_steps": max(1, int(round(planned * frac)))}
    else:
        fix = {"warmup_ratio": frac}
    key = "warmup_steps" if ws is not None else "warmup_ratio"
    return [p.finding(
        title=f"No warmup at learning rate {lr:g}",
        evidence=[_ev(run, key), _ev(run, "learning_rate") + f" (>= {limit:g})"]
        + ([f"planned steps: {planned}"] if planned else []),
        fix=fix,
        files=_files(run, key, "learning_rate"),
    )]


@rule("config.no_grad_clip", needs=("config",))
def config_no_grad_clip(run: Run, p: Params) -> list[Finding]:
    """Gradient clipping is turned off.

    ## What it detects
    ``max_grad_norm`` set to 0 or a negative number (kohya sd-scripts: 0 disables
    clipping; HF Trainer skips clipping for 0). An unset value is not reported: every
    supported trainer defaults to 1.0.

    ## Why it matters
    Without clipping one outlier batch or an fp16 overflow moves the adapter by an
    unbounded step: loss spikes, gradient explosions and NaN weights follow.

    ## Example
    ``max_grad_norm = 0.0`` in a lora-scripts TOML, or ``ss_max_grad_norm: "0.0"`` in a
    kohya LoRA's metadata.

    ## Fix
    ``{"max_grad_norm": 1.0}``.
    """
    v = _num(run.config.get("max_grad_norm"))
    if v is None or v > 0:
        return []
    return [p.finding(
        title="Gradient clipping is disabled",
        evidence=[_ev(run, "max_grad_norm") + " turns clipping off"],
        fix={"max_grad_norm": float(p["fix_max_grad_norm"])},
        files=_files(run, "max_grad_norm"),
    )]


@rule("config.low_resolution", needs=("config",))
def config_low_resolution(run: Run, p: Params) -> list[Finding]:
    """The image training resolution is below 384 px.

    ## What it detects
    ``resolution`` (the larger side; kohya "512,768" counts as 768) below
    ``min_resolution``. Language-model runs are not checked.

    ## Why it matters
    Stable Diffusion models were trained at 512 px (SD 1.x) or 1024 px (SDXL). A LoRA
    trained on tiny images learns blurry, low-detail features and degrades generations at
    the model's native size.

    ## Example
    ``resolution = "256,256"`` in a kohya TOML.

    ## Fix
    ``{"resolution": 512}`` (use 1024 for SDXL); keep source images at least that large.
    """
    if run.task == "llm":
        return []
    res = _num(run.config.get("resolution"))
    limit = float(p["min_resolution"])
    if res is None or res <= 0 or res >= limit:
        return []
    return [p.finding(
        title=f"Training resolution {int(res)} px is below {int(limit)} px",
        evidence=[_ev(run, "resolution")],
        fix={"resolution": int(p["fix_resolution"])},
        files=_files(run, "resolution"),
    )]


# -- paths ----------------------------------------------------------------------------

_HUB_PART = re.compile(r"^[A-Za-z0-9][\w.\-]*$")
_FILE_EXTS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".json", ".jsonl", ".csv",
              ".parquet", ".txt", ".gguf", ".arrow", ".tsv")


def is_hub_id(s: str) -> bool:
    """``org/name`` (or a bare ``name``) that is not a file path."""
    if not s or s.startswith(("/", "./", "../", "~", ".\\", "..\\")) or "\\" in s:
        return False
    if re.match(r"^[A-Za-z]:", s):
        return False
    parts = s.split("/")
    if len(parts) > 2 or not all(_HUB_PART.match(x) for x in parts):
        return False
    return not s.lower().endswith(_FILE_EXTS)


def _is_windows_path(s: str) -> bool:
    return bool(re.match(r"^[A-Za-z]:[\\/]", s)) or s.startswith("\\\\")


def _check_path(value: str, run: Run, origin_file: str | None) -> tuple[bool, bool]:
    """(exists, local): whether the path exists, and whether it evidently belongs to
    this machine (so that its absence is a real error, not a foreign path)."""
    run_dir = Path(run.path)
    if _is_windows_path(value):
        if os.name == "nt":
            p = Path(value)
            return p.exists(), p.parent.exists()
        return False, False
    expanded = os.path.expanduser(value)
    if os.path.isabs(expanded):
        p = Path(expanded)
        try:
            if p.exists():
                return True, True
            parent = p.parent
            return False, parent.exists() and len(parent.parts) >= 3
        except OSError:
            return False, False
    bases = [run_dir]
    if origin_file:
        cfg_dir = (run_dir / origin_file).parent
        if cfg_dir != run_dir:
            bases.append(cfg_dir)
    rel = Path(value.replace("\\", "/"))
    first = next((x for x in rel.parts if x not in (".", "..")), None)
    local = False
    for b in bases:
        try:
            if (b / rel).exists():
                return True, True
            if first and ".." not in rel.parts and (b / first).exists():
                local = True
        except OSError:
            continue
    return False, local


@rule("config.missing_path", needs=("config",))
def config_missing_path(run: Run, p: Params) -> list[Finding]:
    """The base model, data directory or dataset file named in the config does not exist.

    ## What it detects
    ``base_model``, ``train_data_dir``, ``metadata_path`` (lora-scripts) and each of
    ``dataset_files`` that is a path (not a hub id like ``meta-llama/Llama-2-7b-hf``) and
    exists neither as given (absolute) nor relative to the run directory or to the folder
    of the config file that named it. kohya's ``ss_sd_model_name`` metadata names only a
    file name and is not read as a path.

    Severity: a path from another machine (``/root/autodl-tmp/...``, ``C:\\Users\\...``)
    is expected to be missing when a run is analyzed elsewhere, so it is reported at the
    catalog's ``foreign_severity`` (info) with a note. It is **critical** when the log
    shows that the base model did not load (``base_model_not_loaded`` event), or when the
    path evidently belongs to this machine: its parent directory exists here, or (relative
    path) its first folder exists beside the run or the config file.

    ## Why it matters
    Trainers given a missing base model either crash or silently start from random
    weights; a missing data folder means training on nothing or on the wrong data.

    ## Example
    ``pretrained_model_name_or_path = "./sd-models/modle.safetensors"`` where the run
    folder holds ``sd-models/model.safetensors``.

    ## Fix
    Point the config at the real location (or copy the model / data there) and rerun.
    No automatic fix: the right path is the user's to choose.
    """
    failed_load = any(e.kind == "base_model_not_loaded" for e in run.events)
    out: list[Finding] = []
    for key in ("base_model", "train_data_dir", "metadata_path", "dataset_files"):
        raw = run.config.get(key)
        if raw is None:
            continue
        origin = run.config.origins.get(key)
        values = raw if isinstance(raw, (list, tuple)) else [raw]
        for v in values:
            if not isinstance(v, str) or not v.strip():
                continue
            v = v.strip()
            if is_hub_id(v) and key == "base_model":
                continue
            if key != "base_model" and "/" not in v and "\\" not in v \
                    and not v.lower().endswith(_FILE_EXTS):
                continue        # a bare dataset name, not a path
            exists, local = _check_path(v, run, origin.file if origin else None)
            if exists:
                continue
            where = f"{origin.file}: {origin.orig_key}" if origin else "config"
            critical = local or (key == "base_model" and failed_load)
            ev = [f"{key} = {v!r} ({where}) does not exist"]
            if key == "base_model" and failed_load:
                ev.append("the log reports that the base model was not loaded")
            if not critical:
                ev.append("the path is not on this machine; expected when the run was "
                          "trained elsewhere, check it on the training machine")
            sev = p.severity if critical else p.get("foreign_severity", "info")
            label = {"base_model": "Base model", "train_data_dir": "Training data directory",
                     "metadata_path": "Image metadata file", "dataset_files": "Dataset file"}[key]
            out.append(p.finding(
                title=f"{label} {v} does not exist"
                      + ("" if critical else " on this machine"),
                severity=sev if sev in ("critical", "warning", "info") else None,
                evidence=ev,
                files=[origin.file] if origin else [],
            ))
    return out
