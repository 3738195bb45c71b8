"""Built-in replay backend for HF Trainer / PEFT / LLaMA-Factory-style LLM LoRA runs.

torch, transformers and peft are imported lazily (inside functions), so planning and
the external-command backend work without them.

How a replay resumes, without unpickling anything from the user's run
--------------------------------------------------------------------------
* A *sanitised copy* of the checkpoint is made under ``--out``: ``adapter_model.safetensors``,
  ``adapter_config.json`` and ``trainer_state.json`` (JSON; its ``log_history`` emptied so the
  new output holds only the replayed window). ``optimizer.pt``, ``scheduler.pt``,
  ``rng_state.pth`` and ``training_args.bin`` are never read nor copied.
* The model is the local base model plus the checkpoint's adapter
  (``PeftModel.from_pretrained(..., is_trainable=True)``); transformers' ``Trainer`` is then
  resumed from the sanitised copy, so ``global_step`` continues from the checkpoint step (the
  curves overlay) and the data order is the original one (same seed, the sampler
  fast-forwarded past the batches already seen).
* The optimizer is fresh (AdamW moments start at zero: its first update is about
  lr x sign(gradient) for every weight, where the original run's moments, built since step 0,
  damped it). Near an instability this matters: on fixtures/runs/hf-lr-diverge (lr ~0.065 at
  step 26, no clipping) the baseline replay matches the original loss at step 26 exactly but
  jumps to ~4.7 at step 27 where the original logged 2.79; the fix's small learning rate is
  hardly affected. So a baseline that blows up sooner, or differently, than the original is
  expected, and a baseline the detectors do not call the same symptom makes the verdict
  inconclusive, never fixed. The scheduler is built for the
  original run's total steps and advanced to the checkpoint step at train begin, so the
  learning rate continues where the original schedule was (with the fixed peak rate).
* Training stops after the window's last step (a callback), saving a checkpoint there.

Prompt formatting, tokenisation and cutoff follow ``fixtures/tinyllm.py`` (the trainer our
LLM fixtures come from): ``### Instruction:/### Input:/### Response:`` prompt, BOS + prompt +
answer + EOS, cut at ``cutoff_len``, labels on the prompt too when ``train_on_prompt``.
``cutoff_len``, ``train_on_prompt`` and the dataset come from the user's launch config
(LLaMA-Factory keys); HF's training_args.json does not record them, and where nothing does,
the defaults (1024, False, the one training JSON in the run) may train on other tokens
than the original run did: ``verify.check_reproduction`` then answers ``inconclusive``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lorascope.rerun.plan import Plan, RerunError, base_model_path, config_file_dir, resolve_path

PROMPT = "### Instruction:\n{instruction}\n### Input:\n{input}\n### Response:\n"
MAX_DATA_BYTES = 512 * 1024 * 1024
MAX_CONFIG_BYTES = 4 * 1024 * 1024


@dataclass
class ReplayResult:
    label: str                     # "baseline" | "fixed"
    out_dir: Path
    ok: bool
    error: str | None = None
    first_step: int | None = None
    last_step: int | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


# -- data ----------------------------------------------------------------------------------

def format_prompt(rec: dict[str, str]) -> str:
    return PROMPT.format(instruction=rec["instruction"], input=rec.get("input", "") or "")


def encode(tokenizer, rec: dict[str, str], cutoff_len: int, train_on_prompt: bool) -> dict:
    """One alpaca record -> input_ids / attention_mask / labels (tinyllm's layout)."""
    prompt_ids = tokenizer(format_prompt(rec), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(rec["output"], add_special_tokens=False)["input_ids"]
    ids = [tokenizer.bos_token_id] + prompt_ids + answer_ids + [tokenizer.eos_token_id]
    labels = list(ids) if train_on_prompt else (
        [-100] * (1 + len(prompt_ids)) + answer_ids + [tokenizer.eos_token_id])
    ids, labels = ids[:cutoff_len], labels[:cutoff_len]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def _to_alpaca(obj: Any) -> dict[str, str] | None:
    if not isinstance(obj, dict):
        return None
    if "instruction" in obj and "output" in obj:
        return {"instruction": str(obj["instruction"]), "input": str(obj.get("input") or ""),
                "output": str(obj["output"])}
    conv = obj.get("conversations") or obj.get("messages")
    if isinstance(conv, list):              # sharegpt / openai messages: first user turn
        user = next((m for m in conv if isinstance(m, dict) and
                     (m.get("from") or m.get("role")) in ("human", "user")), None)
        bot = next((m for m in conv if isinstance(m, dict) and
                    (m.get("from") or m.get("role")) in ("gpt", "assistant")), None)
        if user and bot:
            return {"instruction": str(user.get("value", user.get("content", ""))),
                    "input": "", "output": str(bot.get("value", bot.get("content", "")))}
    return None


def load_records(path: Path) -> list[dict[str, str]]:
    """Alpaca (instruction/input/output) or sharegpt records from a JSON list or JSONL."""
    if path.stat().st_size > MAX_DATA_BYTES:
        raise RerunError(f"{path}: dataset larger than {MAX_DATA_BYTES >> 20} MiB")
    text = path.read_text(encoding="utf-8-sig")
    try:
        doc = json.loads(text)
        rows = doc if isinstance(doc, list) else [doc]
    except ValueError:
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    raise RerunError(f"{path}: line {i} is not JSON") from None
    recs = [r for r in (_to_alpaca(x) for x in rows) if r is not None]
    if not recs:
        raise RerunError(f"{path}: no alpaca or sharegpt records")
    return recs


TRAINER_FILES = {"trainer_state.json", "adapter_config.json", "training_args.json", "config.json",
                 "all_results.json", "train_results.json", "eval_results.json", "trainer_log.jsonl",
                 "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json", "dataset_info.json", "predict_results.json"}


def dataset_in_run(run_dir: Path) -> Path | None:
    """HF Trainer configs do not name the dataset (the script does): fall back to one
    alpaca / sharegpt JSON(L) file kept inside the run directory, `train` in its name
    preferred. Only the run's own top two levels are searched, outside checkpoints."""
    cands = []
    for p in sorted(list(run_dir.glob("*.json*")) + list(run_dir.glob("*/*.json*"))):
        if p.name in TRAINER_FILES or p.suffix not in (".json", ".jsonl") \
                or p.parent.name.startswith("checkpoint-") or p.stat().st_size > 512 * 2**20:
            continue
        try:
            load_records(p)
        except RerunError:
            continue
        cands.append(p)
    train = [p for p in cands if "train" in p.name.lower()]
    pick = train or cands
    return pick[0] if len(pick) == 1 else None


def dataset_paths(run) -> list[Path]:
    files = run.config.get("dataset_files") or []
    if not files:
        found = dataset_in_run(Path(run.path))
        if found is None:
            raise RerunError("the run's config does not name its dataset (dataset_files) and the "
                             "run holds no single training JSON; use --cmd with your trainer")
        print(f"lorascope: the config names no dataset; using {found} from the run directory",
              file=sys.stderr)
        return [found]
    out = []
    for f in files:
        p = resolve_path(f, Path(run.path), config_file_dir(run, "dataset_files"))
        if p is None or not p.is_file():
            raise RerunError(f"dataset file not found: {f}")
        out.append(p)
    return out


# -- settings -----------------------------------------------------------------------------

def raw_config(run) -> dict:
    """The user's launch config: the YAML/JSON document that named the dataset or the
    cutoff length, else the one that set the learning rate (for keys the normalized config
    does not carry, e.g. train_on_prompt, data_seed)."""
    o = next((run.config.origins[k] for k in ("dataset_files", "cutoff_len", "learning_rate",
                                                "base_model") if k in run.config.origins), None)
    if o is None or not o.file:
        return {}
    p = Path(run.path) / o.file
    try:
        if p.suffix.lower() not in (".yaml", ".yml", ".json") or p.stat().st_size > MAX_CONFIG_BYTES:
            return {}
        doc = yaml.safe_load(p.read_text(encoding="utf-8-sig"))
    except (OSError, yaml.YAMLError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def settings(run, plan: Plan, fix: dict[str, Any]) -> dict[str, Any]:
    """Training settings: the run's config overlaid with `fix` (normalized keys)."""
    cfg = dict(run.config.values)
    cfg.update(fix)
    raw = raw_config(run)

    def g(key, default):
        v = cfg.get(key)
        return default if v is None else v

    s = {
        "learning_rate": float(g("learning_rate", 2e-4)),
        "batch_size": int(g("train_batch_size_per_device", g("batch_size", 8))),
        "grad_accum": int(g("grad_accum", 1)),
        "max_grad_norm": float(g("max_grad_norm", 1.0)),
        "warmup_steps": int(g("warmup_steps", 0)),
        "warmup_ratio": float(g("warmup_ratio", 0.0)),
        "lr_scheduler": str(g("lr_scheduler", "linear")),
        "weight_decay": float(g("weight_decay", 0.0)),
        "seed": int(g("seed", 42)),
        "logging_steps": g("logging_steps", 1),
        "save_steps": g("save_steps", None),
        "cutoff_len": int(g("cutoff_len", 1024)),
        "optimizer": g("optimizer", None),
        "lora_rank": int(g("lora_rank", 8)),
        "lora_alpha": g("lora_alpha", 16),
        "lora_dropout": float(g("lora_dropout", 0.0)),
        "target_modules": g("target_modules", None),
        "gradient_checkpointing": bool(g("gradient_checkpointing", False)),
        "train_on_prompt": bool(raw.get("train_on_prompt", False)),
        "data_seed": raw.get("data_seed") if isinstance(raw.get("data_seed"), int) else None,
        "max_steps": plan.planned,
        "epochs": cfg.get("epochs"),
    }
    if s["data_seed"] is None:
        s["data_seed"] = s["seed"]
    if s["warmup_steps"] and s["warmup_ratio"]:
        s["warmup_ratio"] = 0.0
    return s


# -- the replay ---------------------------------------------------------------------------

def sanitized_checkpoint(src: Path, dst: Path) -> Path:
    """Adapter safetensors + adapter config + trainer_state.json (log_history emptied)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copy2(src / name, dst / name)
    st = src / "trainer_state.json"
    if st.is_file():
        try:
            state = json.loads(st.read_text(encoding="utf-8"))
        except ValueError:
            state = None
        if isinstance(state, dict):
            state["log_history"] = []
            state["best_model_checkpoint"] = None
            (dst / "trainer_state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
    return dst


def pick_device(device: str) -> str:
    if device in ("auto", "cuda"):
        try:
            import torch
        except ImportError as e:
            raise RerunError(f"the built-in backend needs torch: {e}") from None
        if torch.cuda.is_available():
            return "cuda"
        if device == "cuda":
            raise RerunError("--device cuda: no CUDA device available")
    return "cpu"


def replay(run, plan: Plan, fix: dict[str, Any], out_dir: Path, device: str,
           label: str = "fixed", data_files: list[Path] | None = None) -> ReplayResult:
    """Train the plan's window with `fix` applied into out_dir (a normal HF output dir).
    `data_files`: the dataset as `dataset_paths(run)` resolved it (found anew when None)."""
    import time
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    res = ReplayResult(label=label, out_dir=out_dir, ok=False)
    try:
        _train(run, plan, fix, out_dir, device, res, data_files)
        res.ok = True
    except RerunError:
        raise
    except Exception as e:  # a failed training is a verdict (inconclusive), not a crash
        if os.environ.get("LORASCOPE_DEBUG"):
            raise
        res.error = f"{type(e).__name__}: {e}"[:300]
    res.seconds = time.perf_counter() - t0
    return res


def _train(run, plan: Plan, fix, out_dir: Path, device: str, res: ReplayResult,
           data_files: list[Path] | None = None) -> None:
    try:
        import torch
        import transformers
        from peft import LoraConfig, PeftModel, get_peft_model
        from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq,
                                  Trainer, TrainerCallback, TrainingArguments, set_seed)
    except ImportError as e:
        raise RerunError(f"the built-in backend needs torch, transformers and peft: {e}") from None

    base = base_model_path(run, plan)
    data_files = data_files or dataset_paths(run)
    s = settings(run, plan, fix)
    transformers.logging.set_verbosity_warning()
    set_seed(s["seed"])

    tok_dirs = [base] + ([plan.checkpoint.path] if plan.checkpoint else []) + [Path(run.path)]
    tokenizer = None
    for d in tok_dirs:
        if (d / "tokenizer_config.json").is_file() or (d / "tokenizer.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(str(d))
            break
    if tokenizer is None:
        raise RerunError(f"no tokenizer beside the base model ({base})")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    resume = None
    if plan.checkpoint is not None:
        resume = sanitized_checkpoint(plan.checkpoint.path,
                                      out_dir / "_resume" / f"checkpoint-{plan.start}")
        model = PeftModel.from_pretrained(model, str(resume), is_trainable=True)
    else:
        tm = s["target_modules"] or ["q_proj", "v_proj"]
        if tm == ["all"]:
            tm = "all-linear"
        model = get_peft_model(model, LoraConfig(
            task_type="CAUSAL_LM", r=s["lora_rank"], lora_alpha=s["lora_alpha"],
            lora_dropout=s["lora_dropout"], target_modules=tm))

    records = [r for f in data_files for r in load_records(f)]
    train_ds = [encode(tokenizer, r, s["cutoff_len"], s["train_on_prompt"]) for r in records]

    out_dir.mkdir(parents=True, exist_ok=True)
    kw: dict[str, Any] = dict(
        output_dir=str(out_dir), learning_rate=s["learning_rate"], seed=s["seed"],
        data_seed=s["data_seed"], per_device_train_batch_size=s["batch_size"],
        gradient_accumulation_steps=s["grad_accum"], max_grad_norm=s["max_grad_norm"],
        warmup_steps=s["warmup_steps"], lr_scheduler_type=s["lr_scheduler"],
        weight_decay=s["weight_decay"], logging_strategy="steps",
        logging_steps=s["logging_steps"] or 1, report_to=["tensorboard"],
        use_cpu=(device == "cpu"),
        dataloader_num_workers=0, disable_tqdm=True, save_total_limit=None)
    if s["gradient_checkpointing"]:
        kw["gradient_checkpointing"] = True
    if s["warmup_ratio"]:
        kw["warmup_ratio"] = s["warmup_ratio"]
    if s["optimizer"]:
        kw["optim"] = s["optimizer"]
    if s["max_steps"]:
        kw["max_steps"] = max(int(s["max_steps"]), plan.end)
    elif s["epochs"]:
        kw["num_train_epochs"] = float(s["epochs"])
    else:
        kw["max_steps"] = plan.end
    if s["save_steps"]:
        kw.update(save_strategy="steps", save_steps=s["save_steps"])
    else:
        kw.update(save_strategy="no")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out_dir / "runs")
    args = TrainingArguments(**kw)
    (out_dir / "training_args.json").write_text(args.to_json_string() + "\n", encoding="utf-8")

    start, end = plan.start, plan.end

    class Window(TrainerCallback):
        """Advance the fresh scheduler to the checkpoint step; stop after the window."""

        def on_train_begin(self, args, state, control, lr_scheduler=None, **kw):
            if lr_scheduler is not None and state.global_step > 0:
                import warnings
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for _ in range(state.global_step):
                        lr_scheduler.step()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step >= end:
                control.should_training_stop = True
                control.should_save = True
                control.should_log = True
            return control

    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds,
                      processing_class=tokenizer, data_collator=collator,
                      callbacks=[Window()])
    import contextlib
    # Trainer prints its log dicts on stdout; stdout is reserved for the JSON document
    with contextlib.redirect_stdout(sys.stderr):
        try:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        finally:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        trainer.save_model()
        trainer.save_state()
    shutil.rmtree(out_dir / "_resume", ignore_errors=True)
    steps = [h["step"] for h in trainer.state.log_history if "loss" in h]
    res.first_step = min(steps) if steps else None
    res.last_step = trainer.state.global_step
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    res.extra["nonfinite_losses"] = sum(1 for v in losses if not math.isfinite(v))
    print(f"lorascope: {res.label} replay trained steps {start + 1}-{trainer.state.global_step} "
          f"on {device}", file=sys.stderr)
