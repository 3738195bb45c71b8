"""Small real LLM LoRA runs for the rerun tests, made with fixtures/tinyllm.py (HF Trainer +
PEFT), each with the LLaMA-Factory-style YAML a user would have launched it from."""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fixtures import tinyllm  # noqa: E402

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_base(path: Path) -> Path:
    if not (path / "config.json").is_file():
        tinyllm.build_base_model(path, pretrain_steps=200)
    return path


def yaml_config(**over) -> dict:
    cfg = {
        "model_name_or_path": "../base", "stage": "sft", "do_train": True,
        "finetuning_type": "lora", "lora_target": list(ALL_LINEAR), "lora_rank": 8,
        "lora_alpha": 32, "dataset": "train", "dataset_dir": "data", "cutoff_len": 64,
        "train_on_prompt": True, "output_dir": ".", "logging_steps": 1, "save_steps": 5,
        "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
        "learning_rate": 0.2, "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": 100, "max_grad_norm": 0.0, "max_steps": 40, "seed": 42,
        "optim": "adamw_torch", "report_to": "tensorboard",
    }
    cfg.update(over)
    return cfg


def train_from_yaml(run_dir: Path, cfg: dict, **extra) -> Path:
    """Write data + YAML into run_dir and train exactly what the YAML says."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ddir = run_dir / cfg["dataset_dir"]
    tinyllm.write_json(ddir / "train.json", tinyllm.make_records(64, 0))
    tinyllm.write_json(ddir / "dataset_info.json", {"train": {"file_name": "train.json"}})
    (run_dir / "train_lora.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    tinyllm.train(run_dir, **yaml_to_train_kwargs(cfg, run_dir), **extra)
    return run_dir


def yaml_to_train_kwargs(cfg: dict, run_dir: Path) -> dict:
    import json
    ddir = Path(cfg.get("dataset_dir", "data"))
    info = json.loads(((run_dir / ddir) if not ddir.is_absolute() else ddir)
                      .joinpath("dataset_info.json").read_text(encoding="utf-8"))
    name = cfg["dataset"] if isinstance(cfg["dataset"], str) else cfg["dataset"][0]
    tm = cfg["lora_target"]
    kw = dict(base_model=cfg["model_name_or_path"], train_file=str(ddir / info[name]["file_name"]),
              learning_rate=float(cfg["learning_rate"]), seed=int(cfg.get("seed", 42)),
              save_steps=cfg.get("save_steps"), batch_size=int(cfg["per_device_train_batch_size"]),
              grad_accum=int(cfg.get("gradient_accumulation_steps", 1)),
              lora_r=int(cfg["lora_rank"]), lora_alpha=int(cfg["lora_alpha"]),
              target_modules=tm.split(",") if isinstance(tm, str) else list(tm),
              max_grad_norm=float(cfg.get("max_grad_norm", 1.0)),
              warmup_steps=int(cfg.get("warmup_steps", 0)),
              lr_scheduler_type=cfg.get("lr_scheduler_type", "linear"),
              logging_steps=int(cfg.get("logging_steps", 1)),
              cutoff_len=int(cfg.get("cutoff_len", 64)),
              train_on_prompt=bool(cfg.get("train_on_prompt", False)),
              output_dir=cfg.get("output_dir", "."), write_launch_config=False,
              extra_args={"optim": cfg.get("optim", "adamw_torch")})
    if cfg.get("max_steps"):
        kw["max_steps"] = int(cfg["max_steps"])
    else:
        kw["epochs"] = float(cfg.get("num_train_epochs", 1))
    if cfg.get("resume_from_checkpoint"):
        kw["resume_from_checkpoint"] = cfg["resume_from_checkpoint"]
    if cfg.get("logging_dir"):
        kw["logging_dir"] = cfg["logging_dir"]
    return kw
