"""Hugging Face ``transformers.Trainer``: ``TrainingArguments`` dumps
(``training_args.json``, TRL configs), its console banner and its ``checkpoint-N/`` folders.

Steps (transformers 4.4x-5.x ``Trainer._inner_training_loop``): one epoch is
``ceil(len(dataloader) / gradient_accumulation_steps)`` optimizer steps, the dataloader
holding ``ceil(examples / (per-device batch x devices))`` batches; ``max_steps > 0``
overrides ``num_train_epochs``.  ``trainer_state.json`` itself is read by
:mod:`lorascope.ingest.trainer_state`.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from lorascope.trainers import DataCount, Layout, Plan
from lorascope.trainers._keys import (Key, Out, common, enum_str, epochs_and_steps, eval_strategy,
                                      find, read_table, str_list, to_bool, to_float, to_int,
                                      to_number, warmup)

KEYS = (
    Key("learning_rate", ("learning_rate",), to_float),
    Key("batch_size", ("per_device_train_batch_size",), to_int),
    Key("train_batch_size_per_device", ("per_device_train_batch_size",), to_int, write=False),
    Key("grad_accum", ("gradient_accumulation_steps",), to_int),
    Key("epochs", ("num_train_epochs",), to_number, read=False),
    Key("max_steps", ("max_steps",), to_int, read=False),
    Key("warmup_steps", ("warmup_steps",), to_int, read=False),
    Key("warmup_ratio", ("warmup_ratio",), to_float),
    Key("lr_scheduler", ("lr_scheduler_type",), enum_str),
    Key("eval_strategy", ("eval_strategy", "evaluation_strategy"), eval_strategy, read=False),
    Key("logging_steps", ("logging_steps",), to_number),
    Key("eval_steps", ("eval_steps",), to_number),
    Key("save_steps", ("save_steps",), to_number),
    Key("label_names", ("label_names",), str_list),
    Key("optimizer", ("optim",), enum_str),
    Key("weight_decay", ("weight_decay",), to_float),
    Key("cutoff_len", ("max_seq_length", "max_length"), to_int),
    Key("max_grad_norm", ("max_grad_norm",), to_float),
    Key("seed", ("seed",), to_int),
    Key("gradient_checkpointing", ("gradient_checkpointing",), to_bool),
    Key("lora_rank", ("lora_rank",), to_int, read=False),
    Key("lora_alpha", ("lora_alpha",), to_number, read=False),
    Key("lora_dropout", ("lora_dropout",), to_float, read=False),
)
KEY_NAMES = {
    "per_device_train_batch_size", "gradient_accumulation_steps", "lr_scheduler_type",
    "adam_beta1", "adam_epsilon", "logging_strategy", "save_strategy", "num_train_epochs",
}
PATH_KEYS = ("model_name_or_path", "dataset_dir", "adapter_name_or_path", "train_file",
             "tokenizer_name_or_path")


def read_common(out: Out, flat: dict) -> None:
    """TrainingArguments keys (also read for LLaMA-Factory, which passes them through)."""
    epochs_and_steps(out, flat, ["num_train_epochs"], ["max_steps"], False)
    warmup(out, flat, ["warmup_steps"])
    read_table(out, flat, KEYS)
    for n in ("eval_strategy", "evaluation_strategy"):
        hit = find(flat, n)
        if hit is not None:
            out.put("eval_strategy", eval_strategy(hit[1]), hit[0])
            break
    common(out, flat)


def detect(doc: dict, flat: dict, rel: str) -> bool:
    return len(set(doc) & KEY_NAMES) >= 2


def read(out: Out, doc: dict, flat: dict, facts: dict, path: Path, rel: str) -> None:
    read_common(out, flat)


def minus_val_size(n: int, val_size) -> int:
    """The records left for training when ``val_size`` of n are held out: a fraction takes
    ``ceil(val_size x n)``, a count of 1 or more takes that many (LLaMA-Factory, axolotl)."""
    vs = to_float(val_size)
    if vs and 0 < vs < 1:
        return n - math.ceil(vs * n)
    if vs and vs >= 1:
        return n - int(vs)
    return n


def planned(cfg: dict, data: DataCount, train_items: int | None = None) -> Plan | None:
    ms = to_int(cfg.get("max_steps"))
    if ms and ms > 0:
        return Plan(ms, f"max_steps {ms}")
    ep = to_number(cfg.get("epochs"))
    n = train_items if train_items is not None else data.items
    if ep is None or ep <= 0 or not n:
        return None
    bs = to_int(cfg.get("batch_size")) or 8
    ga = to_int(cfg.get("grad_accum")) or 1
    nd = to_int(cfg.get("num_devices")) or 1
    batches = math.ceil(n / max(1, bs * nd))
    per = math.ceil(batches / max(1, ga))
    return Plan(int(math.ceil(ep * per)), f"{ep:g} epochs x ceil(ceil({n} examples / batch {bs}"
                + (f" x {nd} devices" if nd > 1 else "") + f") / accumulation {ga}) = {ep:g} x {per} steps")


def replay(edit, plan, out_dir: Path) -> None:
    """New output / logging dirs, max_steps = the window's end (epochs dropped), and
    ``resume_from_checkpoint`` = a sanitised copy of the checkpoint (adapter and
    trainer_state.json only: no optimizer, scheduler or RNG pickles)."""
    from lorascope.rerun.backend_hf import sanitized_checkpoint
    edit.set("output_dir", str(out_dir))
    edit.set("logging_dir", str(out_dir / "runs"))
    edit.pop("num_train_epochs")
    edit.set("max_steps", plan.end)
    edit.set("overwrite_output_dir", True)
    edit.pop("adapter_name_or_path")
    if plan.checkpoint is not None:
        ck = sanitized_checkpoint(plan.checkpoint.path, out_dir / "_resume" / f"checkpoint-{plan.start}")
        edit.set("resume_from_checkpoint", str(ck))


LAYOUT = Layout(name="hf-trainer", trainer="hf-trainer", task=None, keys=KEYS, detect=detect,
                read=read, implied=(("grad_accum", 1),), planned=planned, path_keys=PATH_KEYS,
                replay=replay, doc="HF TrainingArguments dump (training_args.json, TRL configs)")

# -- console lines (Trainer's "***** Running training *****" banner) -------------------------
_N = r"-?[0-9][0-9,]*"
LOG_SHAPE = [
    (re.compile(rf"Num Epochs = ({_N})"), "epochs", "Num Epochs"),
    (re.compile(rf"Instantaneous batch size per device = ({_N})"), "batch_size",
     "Instantaneous batch size per device"),
    (re.compile(rf"Gradient Accumulation steps = ({_N})"), "grad_accum", "Gradient Accumulation steps"),
    (re.compile(rf"Num examples = ({_N})"), "num_train_items", "Num examples"),
]
LOG_PLANNED = re.compile(rf"Total optimization steps = ({_N})")
LOG_BANNER = "***** Running training *****"
# printed when train() returns: the training is over (lorascope watch stops on it)
LOG_END = "Training completed. Do not forget to share your model"

# -- file naming ---------------------------------------------------------------------------
CHECKPOINT_DIR_RE = re.compile(r"^checkpoint-(\d+)$")
CHECKPOINT_FILE_RE = re.compile(r"(?:^|/)checkpoint-(\d+)/[^/]*$")
