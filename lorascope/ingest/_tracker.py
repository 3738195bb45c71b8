"""What the experiment trackers (W&B, MLflow) share: a run's logged configuration turned
into normalized config values with the trainer layouts of :mod:`lorascope.trainers`,
JSON values read safely, and the end-of-training summary keys HF Trainer logs once.

A tracker stores whatever the training script handed it: HF Trainer's
``WandbCallback`` / ``MLflowCallback`` store ``TrainingArguments.to_dict()`` merged
with the model's config (``_name_or_path``, ``architectures``) and, for W&B, the PEFT
config under ``peft_config``; kohya, ai-toolkit and SimpleTuner store their own
argument dicts.  The layout that recognises the document reads it, exactly as if the
same keys stood in a config file; the values keep the tracker file as their origin.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from lorascope import trainers
from lorascope.ingest import _json
from lorascope.model import ConfigValue

MAX_JSON = 1 << 20          # characters of one logged value parsed as JSON
MAX_LITERAL = 10_000        # characters of one MLflow param parsed as a Python literal
# HF Trainer's end-of-training summary: one value each, logged after the last step
HF_SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second",
                   "total_flos", "train_loss")


def json_value(text: str | bytes | None) -> Any:
    """A logged JSON value, or None when it is not JSON (or too large / too deep)."""
    if text is None or len(text) > MAX_JSON:
        return None
    try:
        return _json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None


def literal(text: str) -> Any:
    """An MLflow param: every value is stored as ``str(value)``.  Lists, dicts, numbers
    and None come back as Python values (``ast.literal_eval``: literals only, never code);
    anything else stays the string."""
    s = text.strip()
    if not s or len(s) > MAX_LITERAL:
        return text
    if s[0] in "[{(" or s in ("None", "True", "False"):
        try:
            return ast.literal_eval(s)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return text
    return text


def unwrap_wandb_yaml(doc: dict) -> dict:
    """W&B ``files/config.yaml``: ``key: {desc: ..., value: v}`` -> ``{key: v}``."""
    out: dict = {}
    for k, v in doc.items():
        if not isinstance(k, str) or k == "_wandb" or k == "wandb_version":
            continue
        if isinstance(v, dict) and "value" in v:
            out[k] = v["value"]
    return out


def config_values(doc: dict, path: Path, rel: str) -> tuple[list[ConfigValue], dict]:
    """Normalized values and facts of a tracker's run config (see the module doc)."""
    from lorascope.ingest.config import _flatten

    if not isinstance(doc, dict) or not doc:
        return [], {}
    doc = {str(k): v for k, v in doc.items() if not str(k).startswith("_wandb")}
    flat = _flatten(doc)
    values: list[ConfigValue] = []
    facts: dict = {}
    layout = trainers.detect(doc, flat, rel)
    if layout is not None:
        values, facts = trainers.read(layout, doc, flat, path, rel)
    have = {cv.key for cv in values}

    def put(key: str, value: Any, orig: str) -> None:
        if value is not None and key not in have:
            values.append(ConfigValue(key, value, rel, orig))
            have.add(key)

    # a PEFT config logged beside the training arguments (HF WandbCallback)
    peft = doc.get("peft_config")
    if isinstance(peft, dict):
        adapters = [(k, v) for k, v in peft.items() if isinstance(v, dict)]
        name, sub = adapters[0] if adapters else ("", peft)
        if isinstance(sub, dict):
            pv, pf = trainers.read(trainers.by_name("peft"), sub, _flatten(sub), path, rel)
            prefix = f"peft_config.{name}." if name else "peft_config."
            for cv in pv:
                put(cv.key, cv.value, prefix + cv.orig_key)
            if pf.get("task") and "task" not in facts:
                facts["task"] = pf["task"]
    # the model's own config merged in (HF): its path and its architecture
    nop = doc.get("_name_or_path")
    if isinstance(nop, str) and nop.strip():
        put("base_model", nop.strip(), "_name_or_path")
    archs = doc.get("architectures")
    if isinstance(archs, list) and any(isinstance(a, str) and ("CausalLM" in a or "ConditionalGeneration" in a)
                                       for a in archs):
        facts.setdefault("task", "llm")
    return values, facts
