"""A real (tiny) kohya-style LoRA trainer for `lorascope rerun --cmd` tests.

    python tests/trainers/sd_train.py CONFIG.toml

Reads a kohya sd-scripts style TOML (the keys fixtures/make_sd.py writes in
fixtures/runs/sd-*/config.toml, plus ``max_train_steps``, ``network_weights`` and
``initial_step``) and trains with fixtures/make_sd.py's own training loop: the same
model, data loading, LoRA modules, TensorBoard tags (``loss/current``, ``loss/average``,
``lr/*``, ``loss/epoch_average``) and kohya-named safetensors
(``<output_name>-00000N.safetensors`` per ``save_every_n_epochs``, ``<output_name>.safetensors``
at the end). Relative paths in the config are taken relative to the config's folder.
The console log goes to ``<output_dir>/train.log``; stdout gets one line per phase.
Exit status 1 (traceback on stderr and in train.log) when training fails.
"""
from __future__ import annotations

import sys
import tomllib
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "fixtures"))

import make_sd  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: sd_train.py CONFIG.toml", file=sys.stderr)
        return 2
    cfg_path = Path(argv[0]).resolve()
    cfg = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    out_dir = (cfg_path.parent / cfg.get("output_dir", ".")).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "train.log"
    print(f"sd_train: training from {cfg_path} (log: {log_path})", flush=True)
    with open(log_path, "w", encoding="utf-8") as log:
        print(f"Loading settings from {cfg_path.name}...", file=log)
        try:
            make_sd.train_config(cfg, cfg_path.parent, log)
        except Exception:
            log.flush()
            traceback.print_exc(file=log)
            traceback.print_exc(file=sys.stderr)
            return 1
    print("sd_train: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
