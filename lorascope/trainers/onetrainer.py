"""OneTrainer (``python scripts/train.py --config-path config.json``, or its GUI): the
JSON config it saves into its workspace, its TensorBoard tags and file naming.  Read at
Nerogar/OneTrainer (commit 23df3832): ``modules/util/config/TrainConfig.py``,
``modules/trainer/GenericTrainer.py``, ``modules/modelSetup/BaseModelSetup.py``,
``modules/util/TrainProgress.py``.

The config (``TrainConfig.to_pack_dict``; enums as their names)::

    {"__version": 10, "training_method": "LORA", "model_type": "STABLE_DIFFUSION_15",
     "workspace_dir": "workspace/run", "base_model_name": "...",
     "output_model_destination": "models/model.safetensors",
     "learning_rate": 3e-06, "learning_rate_scheduler": "CONSTANT",
     "learning_rate_warmup_steps": 200.0, "epochs": 100, "batch_size": 1,
     "gradient_accumulation_steps": 1, "clip_grad_norm": 1.0, "resolution": "512",
     "lora_rank": 16, "lora_alpha": 1.0, "concept_file_name": "training_concepts/concepts.json",
     "concepts": [{"name": ..., "path": "...", "image_variations": 1, ...}] | null,
     "optimizer": {"optimizer": "ADAMW", ...}, "save_every": 0, "save_every_unit": "NEVER",
     "save_filename_prefix": "", "tensorboard": true, ...}

The workspace ``<workspace_dir>/`` holds ``config/<prefix><%Y-%m-%d_%H-%M-%S>.json`` (a
copy saved at each start), ``tensorboard/<prefix><time>/`` (``loss/train_step``,
``smooth_loss/train_step``, ``lr/<part>``, ``loss/validation_step/...``),
``save/<prefix><time>-save-<global step>-<epoch>-<epoch step>.safetensors``, ``samples/``
and ``backup/``; the final model goes to ``output_model_destination``.

Steps: ``TrainProgress.global_step`` counts batches (starting at 0, incremented after
the batch is logged), so TensorBoard points sit at 0, 1, 2, ... and one epoch is
``ceil(images x repeats / batch_size)`` of them; an optimizer update happens every
``gradient_accumulation_steps`` batches.  A NaN loss stops training
(``RuntimeError("Training loss became NaN ...")``) before it is logged.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from lorascope.trainers import DataCount, Layout, Plan
from lorascope.trainers._keys import (Key, Out, enum_str, find, parse_resolution, read_table, to_bool,
                                      to_float, to_int, to_number, to_str)

KEYS = (
    Key("learning_rate", ("learning_rate",), to_float),
    Key("batch_size", ("batch_size",), to_int),
    Key("train_batch_size_per_device", ("batch_size",), to_int, write=False),
    Key("grad_accum", ("gradient_accumulation_steps",), to_int),
    Key("epochs", ("epochs",), to_number),
    Key("lora_rank", ("lora_rank",), to_int),
    Key("lora_alpha", ("lora_alpha",), to_number),
    Key("max_grad_norm", ("clip_grad_norm",), to_float),
    Key("lr_scheduler", ("learning_rate_scheduler",), enum_str),
    Key("warmup_steps", ("learning_rate_warmup_steps",), to_int),
    Key("lr_scheduler_num_cycles", ("learning_rate_cycles",), to_int),
    Key("resolution", ("resolution",), parse_resolution),
    Key("base_model", ("base_model_name",), to_str),
    Key("optimizer", ("optimizer.optimizer",), enum_str),
    Key("weight_decay", ("optimizer.weight_decay",), to_float),
    Key("seed", ("seed",), to_int, write=False),
    Key("output_dir", ("workspace_dir",), to_str, write=False),
)
KEY_NAMES = {"training_method", "model_type", "workspace_dir", "base_model_name",
             "output_model_destination", "concept_file_name", "learning_rate_scheduler",
             "learning_rate_warmup_steps", "clip_grad_norm", "save_filename_prefix", "__version"}
PATH_KEYS = ("base_model_name", "concept_file_name", "workspace_dir", "cache_dir",
             "output_model_destination")
SAVE_FILE_RE = re.compile(r"-save-(\d+)-(\d+)-(\d+)$")      # <prefix><time>-save-<gs>-<ep>-<es>


def detect(doc: dict, flat: dict, rel: str) -> bool:
    return len(set(doc) & KEY_NAMES) >= 3


def read(out: Out, doc: dict, flat: dict, facts: dict, path: Path, rel: str) -> None:
    read_table(out, flat, KEYS)
    # clip_grad_norm null: clipping off
    if "clip_grad_norm" in doc and doc["clip_grad_norm"] is None:
        out.put("max_grad_norm", 0.0, "clip_grad_norm")
    dtype = find(flat, "train_dtype")
    if dtype is not None and to_str(dtype[1]):
        out.put("mixed_precision", to_str(dtype[1]).lower(), dtype[0])
    concepts = doc.get("concepts")
    if isinstance(concepts, list):
        dirs, reps = [], []
        for i, c in enumerate(concepts[:1000]):
            if not isinstance(c, dict) or to_bool(c.get("enabled")) is False:
                continue
            p = to_str(c.get("path"))
            if p:
                dirs.append((f"concepts.{i}.path", p))
            r = to_float(c.get("repeats"))
            if r and r > 0:
                reps.append(r)
        if dirs:
            out.put("train_data_dir", dirs[0][1], dirs[0][0])
        if reps:
            facts["num_repeats"] = max(reps)
    tm = str(doc.get("training_method") or "").upper()
    facts["task"] = "sd"
    if tm:
        facts["training_method"] = tm


def planned(cfg: dict, data: DataCount) -> Plan | None:
    """epochs x ceil(images x repeats / batch) batches (OneTrainer's step counter counts
    batches)."""
    ep = to_number(cfg.get("epochs"))
    views = data.views or (int(math.ceil(data.items * (data.repeats or 1))) if data.items else None)
    if ep is None or ep <= 0 or not views:
        return None
    bs = to_int(cfg.get("batch_size")) or 1
    per = math.ceil(views / max(1, bs))
    return Plan(int(ep * per), f"{ep:g} epochs x ceil({views} images / batch {bs}) = {ep:g} x {per} steps")


def replay(edit, plan, out_dir: Path) -> None:
    """A new workspace and output file under --out; OneTrainer has no step cap, so the
    epochs are cut to those that cover the window (the whole run when unknown), and it
    restarts from the base model (``continue_last_backup`` needs its own backup folder)."""
    edit.set("workspace_dir", str(out_dir / "workspace"))
    edit.set("output_model_destination", str(out_dir / "model.safetensors"))
    edit.set("continue_last_backup", False)
    ep = to_number(edit.doc.get("epochs"))
    if plan.planned and ep and ep > 0:
        per = plan.planned / ep
        edit.set("epochs", max(1, math.ceil(plan.end / per)))


LAYOUT = Layout(name="onetrainer", trainer="onetrainer", task="sd", keys=KEYS, detect=detect,
                read=read, implied=(("grad_accum", 1),), planned=planned, path_keys=PATH_KEYS,
                replay=replay, doc="OneTrainer JSON config (workspace_dir, training_method, lora_rank, ...)")
