"""axolotl (``axolotl train config.yml``): its YAML, read at axolotl-ai-cloud/axolotl
(commit 067b021c, ``examples/llama-3/lora-1b.yml``, ``src/axolotl/utils/schemas/``)::

    base_model: NousResearch/Llama-3.2-1B
    datasets: [{path: teknium/GPT4-LLM-Cleaned, type: alpaca}]
    val_set_size: 0.1                # a share (< 1) or a count of held-out samples
    output_dir: ./outputs/lora-out
    adapter: lora                    # lora | qlora
    sequence_len: 2048
    sample_packing: true
    lora_r: 16
    lora_alpha: 32
    lora_dropout: 0.05
    lora_target_modules: [q_proj, v_proj, ...]   # or lora_target_linear: true
    gradient_accumulation_steps: 2
    micro_batch_size: 2
    num_epochs: 1                    # max_steps, when set, overrides it (HF semantics)
    optimizer: adamw_8bit
    lr_scheduler: cosine
    learning_rate: 0.0002
    warmup_ratio: 0.1                # or warmup_steps
    evals_per_epoch: 4 / eval_steps, saves_per_epoch: 1 / save_steps, logging_steps: 1

axolotl builds HF ``TrainingArguments`` from it and trains with HF ``Trainer``: its
``output_dir`` holds HF's ``checkpoint-N/`` (``trainer_state.json``, adapter), TensorBoard
under ``output_dir/runs`` (``use_tensorboard: true``), W&B (``wandb_project``), MLflow
(``use_mlflow``), and the model card ``README.md`` carrying the YAML.  The steps are HF's
(:mod:`lorascope.trainers.hf_trainer`) over the training split; with ``sample_packing``
the number of packed batches depends on the token lengths, so no count is made.
"""
from __future__ import annotations

from pathlib import Path

from lorascope.trainers import DataCount, Layout, Plan, hf_trainer
from lorascope.trainers._keys import (Key, Out, common, enum_str, epochs_and_steps, eval_strategy,
                                      find, read_table, str_list, to_bool, to_float, to_int,
                                      to_number, to_str, warmup)

KEYS = (
    Key("learning_rate", ("learning_rate",), to_float),
    Key("batch_size", ("micro_batch_size",), to_int),
    Key("train_batch_size_per_device", ("micro_batch_size",), to_int, write=False),
    Key("grad_accum", ("gradient_accumulation_steps",), to_int),
    Key("epochs", ("num_epochs",), to_number, read=False),
    Key("max_steps", ("max_steps",), to_int, read=False),
    Key("lora_rank", ("lora_r",), to_int),
    Key("lora_alpha", ("lora_alpha",), to_number),
    Key("lora_dropout", ("lora_dropout",), to_float),
    Key("target_modules", ("lora_target_modules",), str_list),
    Key("base_model", ("base_model",), to_str),
    Key("warmup_steps", ("warmup_steps",), to_int, read=False),
    Key("warmup_ratio", ("warmup_ratio",), to_float),
    Key("lr_scheduler", ("lr_scheduler",), enum_str),
    Key("cutoff_len", ("sequence_len",), to_int),
    Key("val_size", ("val_set_size",), to_float),
    Key("optimizer", ("optimizer",), enum_str),
    Key("weight_decay", ("weight_decay",), to_float),
    Key("max_grad_norm", ("max_grad_norm",), to_float),
    Key("logging_steps", ("logging_steps",), to_number),
    Key("eval_steps", ("eval_steps",), to_number),
    Key("save_steps", ("save_steps",), to_number),
    Key("seed", ("seed",), to_int),
    Key("gradient_checkpointing", ("gradient_checkpointing",), to_bool),
    Key("output_dir", ("output_dir",), to_str, write=False),
)
KEY_NAMES = {"micro_batch_size", "num_epochs", "lora_r", "sequence_len", "val_set_size", "adapter",
             "lora_target_modules", "lora_target_linear", "sample_packing", "wandb_project",
             "evals_per_epoch", "saves_per_epoch", "lora_model_dir", "special_tokens"}
PATH_KEYS = ("base_model", "lora_model_dir", "dataset_prepared_path")
DATA_FILE_EXTS = (".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt")


def detect(doc: dict, flat: dict, rel: str) -> bool:
    top = set(doc)
    return "base_model" in top and len(top & KEY_NAMES) >= 3


def read(out: Out, doc: dict, flat: dict, facts: dict, path: Path, rel: str) -> None:
    epochs_and_steps(out, flat, ["num_epochs"], ["max_steps"], False)
    warmup(out, flat, ["warmup_steps"])
    read_table(out, flat, KEYS)
    if not out.has("target_modules") and to_bool(doc.get("lora_target_linear")):
        out.put("target_modules", ["all-linear"], "lora_target_linear")
    vs = to_float(doc.get("val_set_size"))
    if vs and vs > 0:
        every = find(flat, "eval_steps")
        out.put("eval_strategy", eval_strategy("steps" if every or doc.get("evals_per_epoch") else "epoch"),
                "val_set_size")
    ds = doc.get("datasets")
    if isinstance(ds, list):
        files = [str(d["path"]) for d in ds[:100] if isinstance(d, dict) and isinstance(d.get("path"), str)
                 and d["path"].lower().endswith(DATA_FILE_EXTS)]
        if files:
            out.put("dataset_files", files, "datasets")
    if to_bool(doc.get("sample_packing")):
        out.put("sample_packing", True, "sample_packing")
    common(out, flat)
    facts["task"] = "llm"


def planned(cfg: dict, data: DataCount) -> Plan | None:
    """HF's count over the training split: ``val_set_size`` (a share or a count) held
    out first.  None with sample packing (batches hold a variable number of samples)."""
    if cfg.get("sample_packing"):
        ms = to_int(cfg.get("max_steps"))
        return Plan(ms, f"max_steps {ms}") if ms and ms > 0 else None
    n = data.items
    if n and not data.split:
        n = hf_trainer.minus_val_size(n, cfg.get("val_size"))
    return hf_trainer.planned(cfg, data, train_items=n)


def replay(edit, plan, out_dir: Path) -> None:
    """HF's replay in axolotl's keys: new ``output_dir``, ``max_steps`` = the window's
    end (``num_epochs`` dropped: max_steps overrides it anyway), and
    ``resume_from_checkpoint`` = a sanitised copy of the checkpoint (adapter and
    trainer_state.json only)."""
    from lorascope.rerun.backend_hf import sanitized_checkpoint
    edit.set("output_dir", str(out_dir))
    edit.pop("num_epochs")
    edit.set("max_steps", plan.end)
    edit.pop("lora_model_dir")
    if plan.checkpoint is not None:
        ck = sanitized_checkpoint(plan.checkpoint.path, out_dir / "_resume" / f"checkpoint-{plan.start}")
        edit.set("resume_from_checkpoint", str(ck))
    else:
        edit.pop("resume_from_checkpoint")


LAYOUT = Layout(name="axolotl", trainer="axolotl", task="llm", keys=KEYS, detect=detect, read=read,
                implied=(("grad_accum", 1),), planned=planned, path_keys=PATH_KEYS, replay=replay,
                doc="axolotl YAML (base_model, adapter, lora_r, micro_batch_size, num_epochs, ...)")
