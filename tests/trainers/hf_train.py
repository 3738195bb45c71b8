"""A real trainer command for the rerun tests: `python tests/trainers/hf_train.py CONFIG.yaml`.

Reads a LLaMA-Factory-style YAML (model_name_or_path, dataset + dataset_dir with
dataset_info.json, lora_*, learning_rate, max_steps, output_dir, resume_from_checkpoint, ...)
and trains it with HF Trainer + PEFT via fixtures/tinyllm.py, writing into output_dir.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fixtures import tinyllm  # noqa: E402
from tests.rerun.llmruns import yaml_to_train_kwargs  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: hf_train.py CONFIG.yaml", file=sys.stderr)
        return 2
    cfg = yaml.safe_load(Path(argv[0]).read_text(encoding="utf-8"))
    out = Path(cfg["output_dir"])
    kw = yaml_to_train_kwargs(cfg, Path(argv[0]).parent)
    kw["output_dir"] = "."
    tinyllm.train(out, log_file=None, **kw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
