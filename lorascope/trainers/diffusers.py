"""diffusers example scripts (``train_text_to_image_lora.py``, ``train_dreambooth_lora.py``):
their argument dumps (``pretrained_model_name_or_path`` + ``rank`` / ``instance_data_dir``)."""
from __future__ import annotations

from pathlib import Path

from lorascope.trainers import Layout
from lorascope.trainers._keys import (Key, Out, common, enum_str, epochs_and_steps, parse_resolution,
                                      read_table, to_float, to_int, to_number, to_str, warmup)

KEYS = (
    Key("base_model", ("pretrained_model_name_or_path",), to_str),
    Key("train_data_dir", ("train_data_dir", "instance_data_dir"), to_str),
    Key("learning_rate", ("learning_rate",), to_float),
    Key("batch_size", ("train_batch_size",), to_int),
    Key("train_batch_size_per_device", ("train_batch_size",), to_int, write=False),
    Key("epochs", ("num_train_epochs",), to_number, read=False),
    Key("max_steps", ("max_train_steps",), to_int, read=False),
    Key("lora_rank", ("rank", "lora_rank"), to_int),
    Key("lora_alpha", ("lora_alpha",), to_number),
    Key("warmup_steps", ("lr_warmup_steps",), to_int, read=False),
    Key("resolution", ("resolution",), parse_resolution),
    Key("lr_scheduler", ("lr_scheduler",), enum_str),
    Key("save_steps", ("checkpointing_steps",), to_int),
)


def detect(doc: dict, flat: dict, rel: str) -> bool:
    top = set(doc)
    return "pretrained_model_name_or_path" in top and bool(
        top & {"instance_data_dir", "rank", "train_data_dir", "dataset_name"}) and (
        "resolution" in top or "instance_prompt" in top)


def read(out: Out, doc: dict, flat: dict, facts: dict, path: Path, rel: str) -> None:
    read_table(out, flat, KEYS)
    # diffusers: max_train_steps, when given, overrides num_train_epochs
    epochs_and_steps(out, flat, ["num_train_epochs"], ["max_train_steps"], False)
    warmup(out, flat, ["lr_warmup_steps"])
    common(out, flat)


LAYOUT = Layout(name="diffusers", trainer="diffusers", task="sd", keys=KEYS, detect=detect,
                read=read, implied=(("grad_accum", 1),),
                doc="diffusers example-script argument dump")
