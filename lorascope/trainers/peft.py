"""PEFT ``adapter_config.json`` (written beside every PEFT adapter): rank, alpha, target
modules, base model.  Not a trainer: it says what was adapted, not how it was trained."""
from __future__ import annotations

from pathlib import Path

from lorascope.trainers import Layout
from lorascope.trainers._keys import Key, Out, read_table, str_list, to_float, to_int, to_number, to_str

KEYS = (
    Key("lora_rank", ("r",), to_int),
    Key("lora_alpha", ("lora_alpha",), to_number),
    Key("lora_dropout", ("lora_dropout",), to_float),
    Key("target_modules", ("target_modules",), str_list),
    Key("base_model", ("base_model_name_or_path",), to_str),
)
SD_MODULES = ("to_q", "to_k", "to_v", "to_out.0")


def detect(doc: dict, flat: dict, rel: str) -> bool:
    return "peft_type" in doc or {"r", "target_modules", "lora_alpha"} <= set(doc)


def read(out: Out, doc: dict, flat: dict, facts: dict, path: Path, rel: str) -> None:
    read_table(out, flat, KEYS)
    tt = str(flat.get("task_type") or "").upper()
    if tt in ("CAUSAL_LM", "SEQ_2_SEQ_LM"):
        facts["task"] = "llm"
    else:
        tm = out.values.get("target_modules")
        if tm and any(t in SD_MODULES for t in tm.value):
            facts["task"] = "sd"


LAYOUT = Layout(name="peft", trainer=None, task=None, keys=KEYS, detect=detect, read=read,
                doc="PEFT adapter_config.json")
