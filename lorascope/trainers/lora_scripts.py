"""lora-scripts, in its two dialects.

* The YAML dialect of the seed articles (``../shared/seeds``): one flat YAML per run,
  ``python train.py --config configs/my_lora_config.yaml``::

      train_data_dir: ./data/style_train         # images + metadata.csv (file_name,text)
      metadata_path: ./data/style_train/metadata.csv
      base_model: ./models/Stable-diffusion/v1-5-pruned.safetensors
      task_type: sd                              # sd | llm
      lora_rank: 8
      lora_alpha: 16
      target_modules: ["q_proj", "v_proj"]
      batch_size: 4
      gradient_accumulation_steps: 1             # the articles also write grad_accumulation_steps
      epochs: 10
      learning_rate: 2e-4                        # a string to YAML 1.1: read as a number
      resolution: 512
      save_steps: 100
      output_dir: ./output/my_style_lora         # TensorBoard logs in <output_dir>/logs

  The console log goes to ``logs/train.log``; checkpoints every ``save_steps`` to
  ``<output_dir>/checkpoint-<step>/`` (one LoRA safetensors inside), the final LoRA to
  ``<output_dir>/<name>.safetensors``.  The articles' trainer counts one epoch as one
  pass over the images (no repeats) and has no gradient accumulation unless it is
  configured.  ``max_steps`` (cap the run) and ``resume_from_checkpoint`` (a
  ``checkpoint-<step>`` folder) are what ``rerun`` writes for a replay window.
* Akegarasu's lora-scripts TOML: kohya sd-scripts argument names in lora-scripts' own
  sections (``[model_arguments]``, ``[training_arguments]``, ... or ``[model]``,
  ``[training]``, ...), or the GUI's flat ``config/autosave/<time>.toml``; it runs
  sd-scripts, so its keys, steps and files are kohya's.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from lorascope.trainers import DataCount, Layout, Plan, kohya
from lorascope.trainers._keys import (Key, Out, common, enum_str, epochs_and_steps,
                                      lower_str, parse_resolution, read_table, str_list, to_float,
                                      to_int, to_number, to_str, warmup)

# -- the seed articles' YAML ------------------------------------------------------------------

KEYS = (
    Key("learning_rate", ("learning_rate", "lr"), to_float),
    Key("batch_size", ("batch_size", "train_batch_size"), to_int),
    Key("train_batch_size_per_device", ("batch_size", "train_batch_size"), to_int, write=False),
    Key("grad_accum", ("gradient_accumulation_steps", "grad_accumulation_steps"), to_int),
    Key("epochs", ("epochs", "num_epochs"), to_number, read=False),
    Key("max_steps", ("max_steps",), to_int, read=False),
    Key("lora_rank", ("lora_rank", "rank"), to_int),
    Key("lora_alpha", ("lora_alpha", "alpha"), to_number),
    Key("lora_dropout", ("lora_dropout",), to_float),
    Key("target_modules", ("target_modules",), str_list),
    Key("base_model", ("base_model", "pretrained_model_name_or_path"), to_str),
    Key("train_data_dir", ("train_data_dir", "data_dir"), to_str),
    Key("metadata_path", ("metadata_path",), to_str),
    Key("resolution", ("resolution",), parse_resolution),
    Key("save_steps", ("save_steps",), to_int),
    Key("logging_steps", ("logging_steps", "log_steps"), to_int),
    Key("warmup_steps", ("warmup_steps", "lr_warmup_steps"), to_int, read=False),
    Key("lr_scheduler", ("lr_scheduler", "lr_scheduler_type", "scheduler"), enum_str),
    Key("max_grad_norm", ("max_grad_norm", "max_norm", "clip_grad_norm"), to_float),
    Key("cutoff_len", ("max_seq_length", "max_length", "cutoff_len"), to_int),
    Key("optimizer", ("optimizer", "optimizer_type"), lower_str),
    Key("seed", ("seed",), to_int),
    Key("output_dir", ("output_dir",), to_str, write=False),
    Key("logging_dir", ("logging_dir", "log_dir"), to_str, write=False),
)
MARKERS = {"base_model", "metadata_path", "task_type", "train_data_dir"}
SEED_KEYS = {k for key in KEYS for k in key.names} | {"task_type"}
TASKS = {"sd": "sd", "llm": "llm", "image": "sd", "text": "llm"}
DATA_FILE_EXTS = (".json", ".jsonl", ".csv", ".parquet", ".txt", ".tsv")
PATH_KEYS = ("base_model", "train_data_dir", "metadata_path", "data_dir")
# console lines: the articles tell their readers to look for these two
LOG_EVENTS = [
    ("base_model_loaded", re.compile(r"Successfully loaded base model:?\s*(\S*)"),
     lambda m, line: {"path": m.group(1)} if m.group(1) else {}),
    ("base_model_not_loaded", re.compile(r"base model not found at (\S+?);?(?:\s|$)"),
     lambda m, line: {"path": m.group(1)}),
]
LOG_NEEDLES = [("successfully loaded base model",), ("base model not found",)]
# checkpoints: <output_dir>/checkpoint-<step>/<file>.safetensors
CHECKPOINT_DIR_RE = re.compile(r"^checkpoint-(\d+)$")


def detect_yaml(doc: dict, flat: dict, rel: str) -> bool:
    top = set(doc)
    tt = doc.get("task_type")
    if isinstance(tt, str) and tt.strip().lower() in TASKS:
        return True
    return bool(top & MARKERS) and "model_name_or_path" not in top and len(top & SEED_KEYS) >= 4 \
        and bool(top & {"lora_rank", "epochs", "batch_size"})


def read_yaml(out: Out, doc: dict, flat: dict, facts: dict, path: Path, rel: str) -> None:
    tt = doc.get("task_type")
    task = TASKS.get(tt.strip().lower()) if isinstance(tt, str) else None
    epochs_and_steps(out, flat, ["epochs", "num_epochs"], ["max_steps"], False)
    warmup(out, flat, ["warmup_steps", "lr_warmup_steps"])
    read_table(out, flat, KEYS)
    common(out, flat)
    tdd = out.values.get("train_data_dir")
    if task is None:
        task = "sd" if (out.has("resolution") or out.has("metadata_path")) else None
    if task == "llm" and tdd is not None and str(tdd.value).lower().endswith(DATA_FILE_EXTS):
        out.put("dataset_files", [tdd.value], tdd.orig_key)
    if task:
        facts["task"] = task


def planned_yaml(cfg: dict, data: DataCount) -> Plan | None:
    """epochs x ceil(samples / (batch x accumulation)), or max_steps when set."""
    ms = to_int(cfg.get("max_steps"))
    if ms and ms > 0:
        return Plan(ms, f"max_steps {ms}")
    ep = to_number(cfg.get("epochs"))
    n = data.items
    if ep is None or ep <= 0 or not n:
        return None
    bs = to_int(cfg.get("batch_size")) or 1
    ga = to_int(cfg.get("grad_accum")) or 1
    per = math.ceil(n / max(1, bs * ga))
    return Plan(int(math.ceil(ep * per)), f"{ep:g} epochs x ceil({n} samples / batch {bs}"
                + (f" / accumulation {ga}" if ga > 1 else "") + f") = {ep:g} x {per} steps")


def replay_yaml(edit, plan, out_dir: Path) -> None:
    """New output dir (its logs follow it), ``max_steps`` = the window's end (the epochs
    stay: the schedule keeps its length, training stops at max_steps),
    ``resume_from_checkpoint`` = the ``checkpoint-<step>`` folder before the symptom."""
    edit.put("output_dir", str(out_dir))
    edit.put("max_steps", plan.end)
    edit.pop("resume_from_checkpoint")
    if plan.checkpoint is not None:
        edit.put("resume_from_checkpoint", str(Path(plan.checkpoint.path).resolve()))


YAML = Layout(name="lora-scripts-yaml", trainer="lora-scripts", task=None, keys=KEYS,
              detect=detect_yaml, read=read_yaml, implied=(("grad_accum", 1),),
              planned=planned_yaml, path_keys=PATH_KEYS, replay=replay_yaml,
              doc="lora-scripts YAML of the seed articles (base_model, task_type, lora_rank, ...)")

# -- Akegarasu's TOML ----------------------------------------------------------------------

SECTIONS = {
    "model_arguments", "dataset_arguments", "additional_network_arguments",
    "optimizer_arguments", "training_arguments", "saving_arguments",
    "sample_prompt_arguments", "model", "dataset", "additional_network", "optimizer",
    "training", "saving", "sample_prompt", "others", "network", "data",
}
TRAINING_SECTIONS = {"model_arguments", "training_arguments", "additional_network_arguments",
                     "model", "training", "additional_network", "optimizer_arguments",
                     "optimizer", "saving_arguments", "saving"}


def is_lora_scripts_toml(doc: dict, flat: dict, rel: str) -> bool:
    sections = {k for k, v in doc.items() if isinstance(v, dict)}
    if sections and sections <= SECTIONS | {"metadata"} and sections & TRAINING_SECTIONS:
        return True
    return "/autosave/" in f"/{rel.lower()}" or "lr_restart_cycles" in flat


def detect_toml(doc: dict, flat: dict, rel: str) -> bool:
    return kohya.detect(doc, flat, rel) and is_lora_scripts_toml(doc, flat, rel)


TOML = Layout(name="lora-scripts", trainer="lora-scripts", task="sd", keys=kohya.KEYS,
              detect=detect_toml, read=kohya.read, implied=kohya.LAYOUT.implied,
              planned=kohya.planned, path_keys=kohya.PATH_KEYS, replay=kohya.replay,
              doc="Akegarasu lora-scripts TOML (kohya keys in lora-scripts sections)")
