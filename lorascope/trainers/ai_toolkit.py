"""ostris ai-toolkit (``python run.py config/my_lora.yaml``, or its web UI): the job YAML,
its training folder and its file naming.  Read at ostris/ai-toolkit (commit 27a03a91):
``config/examples/train_lora_flux_24gb.yaml``, ``toolkit/config_modules.py``,
``jobs/process/BaseSDTrainProcess.py``, ``toolkit/logging_aitk.py``,
``ui/cron/actions/startJob.ts``.

The job::

    job: extension
    config:
      name: my_first_lora_v1
      process:
        - type: sd_trainer              # diffusion_trainer (UI), ui_trainer (older UI)
          training_folder: output
          log_dir: logs                 # optional: TensorBoard (loss keys, "lr")
          network: {type: lora, linear: 16, linear_alpha: 16}   # rank / alpha also read
          save: {dtype: float16, save_every: 250, max_step_saves_to_keep: 4}
          datasets: [{folder_path: /path/to/images, caption_ext: txt, resolution: [512, 768, 1024]}]
          train: {batch_size: 1, steps: 2000, gradient_accumulation_steps: 1, lr: 1e-4,
                  optimizer: adamw8bit, lr_scheduler: constant, max_grad_norm: 1.0, ...}
          model: {name_or_path: black-forest-labs/FLUX.1-dev, is_flux: true}
          sample: {sample_every: 250, prompts: [...]}
          logging: {log_every: 1, use_ui_logger: true}     # the UI's defaults
    meta: {name: "[name]", version: "1.0"}

The training folder ``<training_folder>/<name>/`` holds ``config.yaml`` (the job as
run), ``<name>_<step:09d>.safetensors`` every ``save_every`` steps (metadata
``training_info`` = ``{"step": N, "epoch": E}``, ``ss_output_name``), ``<name>.safetensors``
at the end, ``samples/<time>__<step:09d>_<i>.jpg``, ``optimizer.pt``; the UI adds
``log.txt`` (the console, earlier ones moved to ``logs/<n>_log.txt``), ``loss_log.db``
(the UI logger: SQLite, read by :mod:`lorascope.ingest.aitk`) and ``.job_config.json``.

Steps: ``for step in range(start, train.steps)``; the loop index is the logged step
(``loss``, ``lr`` to TensorBoard; ``loss/loss``, ``learning_rate`` to the UI logger and
W&B), nothing is logged at the first step; ``train.steps`` optimizer steps are planned
(each one ``gradient_accumulation`` micro-batches).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lorascope.trainers import DataCount, Layout, Plan, _walk
from lorascope.trainers._keys import (Key, Out, enum_str, lower_str, parse_resolution, to_bool,
                                      to_float, to_int, to_number, to_str)

P = "config.process.0."
KEYS = (
    Key("learning_rate", (P + "train.lr", P + "train.unet_lr"), to_float),
    Key("batch_size", (P + "train.batch_size",), to_int),
    Key("train_batch_size_per_device", (P + "train.batch_size",), to_int, write=False),
    Key("grad_accum", (P + "train.gradient_accumulation_steps", P + "train.gradient_accumulation"), to_int),
    Key("max_steps", (P + "train.steps",), to_int),
    Key("lora_rank", (P + "network.linear", P + "network.rank"), to_int),
    Key("lora_alpha", (P + "network.linear_alpha", P + "network.alpha"), to_number),
    Key("lora_dropout", (P + "network.dropout",), to_float),
    Key("max_grad_norm", (P + "train.max_grad_norm",), to_float),
    Key("optimizer", (P + "train.optimizer",), lower_str),
    Key("lr_scheduler", (P + "train.lr_scheduler",), enum_str),
    Key("weight_decay", (P + "train.optimizer_params.weight_decay",), to_float),
    Key("gradient_checkpointing", (P + "train.gradient_checkpointing",), to_bool),
    Key("mixed_precision", (P + "train.dtype",), lower_str),
    Key("base_model", (P + "model.name_or_path",), to_str),
    Key("train_data_dir", (P + "datasets.0.folder_path",), to_str),
    Key("resolution", (P + "datasets.0.resolution",), parse_resolution),
    Key("save_steps", (P + "save.save_every",), to_int),
    Key("seed", (P + "train.seed", P + "sample.seed"), to_int, write=False),
    Key("logging_dir", (P + "log_dir",), to_str, write=False),
    Key("output_dir", (P + "training_folder",), to_str, write=False),
)
TRAINER_TYPES = {"sd_trainer", "diffusion_trainer", "ui_trainer", "trainer"}
PATH_KEYS = (P + "model.name_or_path", P + "datasets.0.folder_path", P + "training_folder")
# <name>_000000250.safetensors: the step of a save
SAVE_FILE_RE = re.compile(r"_(\d{9})$")
SAMPLE_FILE_RE = re.compile(r"__(\d{9})_\d+$")


def process(doc: dict) -> dict | None:
    cfg = doc.get("config")
    procs = cfg.get("process") if isinstance(cfg, dict) else None
    if isinstance(procs, list) and procs and isinstance(procs[0], dict):
        return procs[0]
    return None


def get(doc: Any, dotted: str) -> Any:
    return _walk(doc, dotted.split("."))


def detect(doc: dict, flat: dict, rel: str) -> bool:
    proc = process(doc)
    if proc is None:
        return False
    return (proc.get("type") in TRAINER_TYPES or "job" in doc) and (
        isinstance(proc.get("train"), dict) or isinstance(proc.get("network"), dict))


def read(out: Out, doc: dict, flat: dict, facts: dict, path: Path, rel: str) -> None:
    for k in KEYS:
        if not k.read:
            continue
        for name in k.names:
            val = k.conv(get(doc, name))
            if val is not None:
                out.put(k.norm, val, name)
                break
    proc = process(doc) or {}
    name = get(doc, "config.name")
    if isinstance(name, str) and name.strip():
        facts["output_name"] = name.strip()
    ds = proc.get("datasets")
    if isinstance(ds, list):
        reps = [to_int(d.get("num_repeats")) for d in ds if isinstance(d, dict)]
        reps = [r for r in reps if r and r > 0]
        if reps:
            facts["num_repeats"] = max(reps)
    model = proc.get("model") if isinstance(proc.get("model"), dict) else {}
    facts["task"] = "sd"
    if model.get("arch") or model.get("is_flux"):
        facts["model_arch"] = str(model.get("arch") or "flux")


def planned(cfg: dict, data: DataCount) -> Plan | None:
    """``train.steps`` (ai-toolkit counts steps, not epochs; default 1000)."""
    ms = to_int(cfg.get("max_steps"))
    if ms and ms > 0:
        return Plan(ms, f"train.steps {ms}")
    return Plan(1000, "train.steps not set: ai-toolkit's default 1000")


def replay(edit, plan, out_dir: Path) -> None:
    """A new training folder (``training_folder`` under --out, TensorBoard beside it),
    ``train.steps`` = the window's end, and the LoRA saved at the window's start copied
    into the new training folder under its own name: ai-toolkit resumes from the latest
    ``<name>_<step>.safetensors`` it finds there (and its ``training_info`` step)."""
    import shutil
    edit.set(P + "training_folder", str(out_dir))
    if edit.find(P + "log_dir"):
        edit.set(P + "log_dir", str(out_dir / "logs"))
    edit.set(P + "train.steps", plan.end)
    if plan.checkpoint is not None:
        name = get(edit.doc, "config.name") or "lora"
        dest = out_dir / str(name)
        dest.mkdir(parents=True, exist_ok=True)
        src = Path(plan.checkpoint.path)
        if src.is_file():
            shutil.copy2(src, dest / f"{name}_{plan.start:09d}.safetensors")


LAYOUT = Layout(name="ai-toolkit", trainer="ai-toolkit", task="sd", keys=KEYS, detect=detect,
                read=read, implied=(("grad_accum", 1), ("max_grad_norm", 1.0)), planned=planned,
                path_keys=PATH_KEYS, replay=replay,
                doc="ostris ai-toolkit job YAML (config.process[].network / train / datasets)")
