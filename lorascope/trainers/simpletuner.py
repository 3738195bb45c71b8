"""SimpleTuner (``simpletuner train``, ``train.sh``): ``config/config.json`` (or
``config.toml``; every key a command-line option, ``"--learning_rate": "1e-4"`` — TOML
keys may leave the ``--`` out), its TensorBoard and checkpoint layout.  Read at
bghira/SimpleTuner (commit bc8e6ab7): ``config/config.json.example``,
``simpletuner/helpers/configuration/{json_file,toml_file,cli_utils,cmd_args}.py``,
``simpletuner/helpers/training/trainer.py``.

Outputs under ``--output_dir``: ``checkpoint-<step>/`` (``pytorch_lora_weights.safetensors``
and accelerate's training state) every ``--checkpoint_step_interval`` steps,
``pytorch_lora_weights.safetensors`` at the end, and TensorBoard (``--report_to
tensorboard``) in ``<output_dir>/<logging_dir, default logs>/<tracker_project_name>/``
with ``train_loss``, ``optimization_loss``, ``learning_rate``, ``epoch`` (and
``grad_norm``) logged through accelerate at ``step=global_step`` (1 after the first
optimizer step).  ``--max_train_steps`` > 0 overrides ``--num_train_epochs``.
(``config.env``, the shell dialect, is not read.)
"""
from __future__ import annotations

from pathlib import Path

from lorascope.trainers import DataCount, Layout, Plan
from lorascope.trainers._keys import (Key, Out, enum_str, epochs_and_steps, find, lower_str,
                                      parse_resolution, read_table, to_bool, to_float, to_int,
                                      to_number, to_str, warmup)


def _k(norm: str, name: str, conv, **kw) -> Key:
    return Key(norm, (f"--{name}", name), conv, **kw)


KEYS = (
    _k("learning_rate", "learning_rate", to_float),
    _k("batch_size", "train_batch_size", to_int),
    _k("train_batch_size_per_device", "train_batch_size", to_int, write=False),
    _k("grad_accum", "gradient_accumulation_steps", to_int),
    _k("epochs", "num_train_epochs", to_number, read=False),
    _k("max_steps", "max_train_steps", to_int, read=False),
    _k("lora_rank", "lora_rank", to_int),
    _k("lora_alpha", "lora_alpha", to_number),
    _k("lora_dropout", "lora_dropout", to_float),
    _k("warmup_steps", "lr_warmup_steps", to_int, read=False),
    _k("lr_scheduler", "lr_scheduler", enum_str),
    _k("max_grad_norm", "max_grad_norm", to_float),
    _k("resolution", "resolution", parse_resolution),
    _k("base_model", "pretrained_model_name_or_path", to_str),
    _k("optimizer", "optimizer", lower_str),
    _k("mixed_precision", "mixed_precision", lower_str),
    _k("seed", "seed", to_int),
    _k("save_steps", "checkpoint_step_interval", to_int),
    _k("eval_steps", "validation_step_interval", to_int),
    _k("gradient_checkpointing", "gradient_checkpointing", to_bool),
    _k("output_dir", "output_dir", to_str, write=False),
    _k("logging_dir", "logging_dir", to_str, write=False),
)
KEY_NAMES = {"model_family", "data_backend_config", "checkpoint_step_interval", "lora_type",
             "validation_step_interval", "tracker_project_name", "resolution_type",
             "aspect_bucket_rounding", "checkpointing_steps", "validation_prompt", "model_type"}
PATH_KEYS = ("--pretrained_model_name_or_path", "--data_backend_config", "--lycoris_config",
             "pretrained_model_name_or_path", "data_backend_config", "lycoris_config")


def detect(doc: dict, flat: dict, rel: str) -> bool:
    names = {str(k).lstrip("-") for k in doc}
    dashed = sum(1 for k in doc if str(k).startswith("--"))
    return len(names & KEY_NAMES) >= 2 or (dashed >= 3 and len(names & {"model_family", "lora_type",
                                                                         "data_backend_config"}) >= 1)


def read(out: Out, doc: dict, flat: dict, facts: dict, path: Path, rel: str) -> None:
    epochs_and_steps(out, flat, ["--num_train_epochs", "num_train_epochs"],
                     ["--max_train_steps", "max_train_steps"], False)
    warmup(out, flat, ["--lr_warmup_steps", "lr_warmup_steps"])
    read_table(out, flat, KEYS)
    old = find(flat, "--checkpointing_steps") or find(flat, "checkpointing_steps")
    if old is not None:
        out.put("save_steps", to_int(old[1]), old[0])
    facts["task"] = "sd"
    fam = find(flat, "--model_family") or find(flat, "model_family")
    if fam is not None and to_str(fam[1]):
        facts["model_arch"] = to_str(fam[1])


def planned(cfg: dict, data: DataCount) -> Plan | None:
    ms = to_int(cfg.get("max_steps"))
    if ms and ms > 0:
        return Plan(ms, f"--max_train_steps {ms}")
    return None


def replay(edit, plan, out_dir: Path) -> None:
    """A new ``--output_dir`` (its logs follow it), ``--max_train_steps`` = the window's
    end with ``--num_train_epochs`` 0, and ``--resume_from_checkpoint`` = the
    ``checkpoint-<step>`` folder before the symptom (SimpleTuner restores its own
    training state from it); with no checkpoint it starts from scratch."""
    def key(name: str) -> str:
        return edit.find(f"--{name}") or edit.find(name) or f"--{name}"
    edit.set(key("output_dir"), str(out_dir))
    edit.set(key("max_train_steps"), plan.end)
    edit.set(key("num_train_epochs"), 0)
    if plan.checkpoint is not None and Path(plan.checkpoint.path).is_dir():
        edit.set(key("resume_from_checkpoint"), str(Path(plan.checkpoint.path).resolve()))
    else:
        k = edit.find("--resume_from_checkpoint") or edit.find("resume_from_checkpoint")
        if k:
            edit.pop(k)


LAYOUT = Layout(name="simpletuner", trainer="simpletuner", task="sd", keys=KEYS, detect=detect,
                read=read, implied=(("grad_accum", 1),), planned=planned, path_keys=PATH_KEYS,
                replay=replay, doc="SimpleTuner config.json / config.toml (--learning_rate, --lora_rank, ...)")
