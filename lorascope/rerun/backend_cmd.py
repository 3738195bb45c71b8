"""External-command replay backend: the user's own trainer with a patched config.

`--cmd "llamafactory-cli train {config}"`: the run's own config file (the one that set the
learning rate, per ``Config.origins``) is rewritten in its own format (YAML for
LLaMA-Factory / HF, TOML for kohya / lora-scripts, JSON for HF argument dumps) with:

* the fix, each normalized key mapped back to the key the trainer spells (the original
  key when the file has it, else the layout's name for it);
* data fixes (``exclude_files``, see :mod:`lorascope.rerun.data_fix`): the trainer's image
  folder (``train_data_dir``, or a dataset TOML's ``image_dir``) replaced by a filtered
  copy under --out, the original never touched;
* resume settings: HF / LLaMA-Factory ``resume_from_checkpoint`` pointing at a sanitised
  copy of the checkpoint under --out (adapter + trainer_state.json only: no optimizer,
  scheduler or RNG pickles, so the fixed learning rate is not overwritten by the restored
  optimizer state; the trainer starts a fresh optimizer and scheduler). kohya:
  ``resume`` when a ``*-state`` folder exists for that step, else an adapter-only resume:
  ``network_weights`` = the LoRA file saved at that step (``<name>-00000N.safetensors``)
  and ``initial_step`` = that step (sd-scripts skips the steps already trained, so the
  logged steps continue); with no save before the symptom, training starts from scratch;
* a new ``output_dir`` / ``logging_dir`` under --out, and ``max_steps`` /
  ``max_train_steps`` set to the window's end (epochs removed);
* relative paths the run's config names (base model, dataset dir, ...) made absolute.

``{config}`` is replaced by the patched file's path; the command's output is streamed to
stderr and to ``<out>/trainer.log``; the output folder is then analyzed like any run.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import yaml

from lorascope.rerun.backend_hf import ReplayResult, sanitized_checkpoint
from lorascope.rerun.plan import Plan, RerunError

HF_KEYS = {
    "learning_rate": "learning_rate", "max_grad_norm": "max_grad_norm",
    "warmup_steps": "warmup_steps", "warmup_ratio": "warmup_ratio",
    "batch_size": "per_device_train_batch_size", "grad_accum": "gradient_accumulation_steps",
    "epochs": "num_train_epochs", "max_steps": "max_steps", "lr_scheduler": "lr_scheduler_type",
    "weight_decay": "weight_decay", "gradient_checkpointing": "gradient_checkpointing",
    "label_names": "label_names", "lora_rank": "lora_rank", "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout", "cutoff_len": "cutoff_len", "optimizer": "optim",
    "eval_steps": "eval_steps", "save_steps": "save_steps", "seed": "seed",
}
KOHYA_KEYS = {
    "learning_rate": "learning_rate", "max_grad_norm": "max_grad_norm",
    "warmup_steps": "lr_warmup_steps", "batch_size": "train_batch_size",
    "grad_accum": "gradient_accumulation_steps", "epochs": "max_train_epochs",
    "max_steps": "max_train_steps", "lr_scheduler": "lr_scheduler", "lora_rank": "network_dim",
    "lora_alpha": "network_alpha", "resolution": "resolution", "optimizer": "optimizer_type",
    "gradient_checkpointing": "gradient_checkpointing", "lora_dropout": "network_dropout",
    "seed": "seed", "save_steps": "save_every_n_steps",
}
PATH_KEYS_HF = ("model_name_or_path", "dataset_dir", "adapter_name_or_path", "train_file",
                "tokenizer_name_or_path")
PATH_KEYS_KOHYA = ("pretrained_model_name_or_path", "train_data_dir", "reg_data_dir",
                   "dataset_config", "vae", "sample_prompts")


def _config_source(run) -> tuple[Path, str]:
    for key in ("learning_rate", "base_model", "max_steps", "epochs"):
        o = run.config.origins.get(key)
        if o is not None and o.file and not o.file.endswith("adapter_config.json"):
            p = Path(run.path) / o.file
            if p.is_file() and p.suffix.lower() in (".yaml", ".yml", ".toml", ".json"):
                return p, o.file
    raise RerunError("no trainer config file found in the run to patch for --cmd")


def _load(path: Path) -> dict:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".toml":
        return tomllib.loads(text)
    if path.suffix.lower() == ".json":
        return json.loads(text)
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise RerunError(f"{path}: not a mapping")
    return doc


def _dump(doc: dict, path: Path) -> None:
    if path.suffix.lower() == ".toml":
        import tomli_w
        path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    elif path.suffix.lower() == ".json":
        path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _set(doc: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = doc
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    node[parts[-1]] = value


def _find_key(doc: dict, name: str) -> str | None:
    """Dotted key of `name` at top level or in one section (kohya / lora-scripts)."""
    if name in doc:
        return name
    for k, v in doc.items():
        if isinstance(v, dict) and name in v:
            return f"{k}.{name}"
    return None


def _pop(doc: dict, name: str) -> None:
    k = _find_key(doc, name)
    if k is None:
        return
    parts = k.split(".")
    node = doc
    for p in parts[:-1]:
        node = node[p]
    node.pop(parts[-1], None)


def _absolutize(doc: dict, keys: tuple[str, ...], bases: list[Path]) -> None:
    for name in keys:
        k = _find_key(doc, name)
        if k is None:
            continue
        node = doc
        for p in k.split(".")[:-1]:
            node = node[p]
        v = node[k.split(".")[-1]]
        if isinstance(v, str) and v and not os.path.isabs(v):
            for b in bases:
                if (b / v).exists():
                    node[k.split(".")[-1]] = str((b / v).resolve())
                    break


def patch_config(run, plan: Plan, fix: dict[str, Any], out_dir: Path) -> Path:
    """Write the run's config, patched for this replay, into out_dir; return its path."""
    from lorascope.rerun.data_fix import DATA_FIX_KEYS, apply_exclude_files

    src, rel = _config_source(run)
    doc = _load(src)
    kohya = src.suffix.lower() == ".toml"
    table = KOHYA_KEYS if kohya else HF_KEYS
    for key, value in fix.items():
        if key in DATA_FIX_KEYS:
            continue
        o = run.config.origins.get(key)
        if o is not None and o.file == rel:
            _set(doc, o.orig_key, value)
            if key == "learning_rate" and kohya and o.orig_key.endswith("unet_lr"):
                k = _find_key(doc, "learning_rate")
                if k:
                    _set(doc, k, value)
        elif key in table:
            _set(doc, _find_key(doc, table[key]) or table[key], value)
        else:
            print(f"lorascope: fix key {key} has no known name in {rel}; set as is", file=sys.stderr)
            _set(doc, key, value)
        if key == "warmup_steps":
            _pop(doc, "warmup_ratio")
    bases = [src.parent, Path(run.path), Path.cwd()]
    _absolutize(doc, PATH_KEYS_KOHYA if kohya else PATH_KEYS_HF, bases)
    out_dir = Path(out_dir).resolve()
    if fix.get("exclude_files"):
        apply_exclude_files(run, doc, src, rel, [str(f) for f in fix["exclude_files"]],
                            out_dir, _find_key, _set)
    if kohya:
        _set(doc, _find_key(doc, "output_dir") or "output_dir", str(out_dir))
        _set(doc, _find_key(doc, "logging_dir") or "logging_dir", str(out_dir / "logs"))
        _pop(doc, "max_train_epochs")
        _set(doc, _find_key(doc, "max_train_steps") or "max_train_steps", plan.end)
        if plan.checkpoint is not None:
            state = _kohya_state(plan)
            if state is not None:
                _set(doc, _find_key(doc, "resume") or "resume", str(state))
            else:
                ck = plan.checkpoint.path
                if ck.is_dir():          # an HF-style folder: its adapter file, if any
                    cands = sorted(ck.glob("*.safetensors"))
                    ck = cands[0] if cands else ck
                _set(doc, _find_key(doc, "network_weights") or "network_weights",
                     str(ck.resolve()))
                _set(doc, _find_key(doc, "initial_step") or "initial_step", plan.start)
    else:
        _set(doc, "output_dir", str(out_dir))
        _set(doc, "logging_dir", str(out_dir / "runs"))
        _pop(doc, "num_train_epochs")
        _set(doc, "max_steps", plan.end)
        _set(doc, "overwrite_output_dir", True)
        _pop(doc, "adapter_name_or_path")
        if plan.checkpoint is not None:
            ck = sanitized_checkpoint(plan.checkpoint.path,
                                      out_dir / "_resume" / f"checkpoint-{plan.start}")
            _set(doc, "resume_from_checkpoint", str(ck))
    target = out_dir / ("lorascope-rerun-config" + src.suffix.lower())
    _dump(doc, target)
    return target


def _kohya_state(plan: Plan) -> Path | None:
    """kohya `--save_state` folder for the checkpoint step (`*-step00000100-state`)."""
    for p in plan.run_dir.rglob("*-state"):
        if p.is_dir() and (f"{plan.start:08d}" in p.name or f"{plan.start:06d}" in p.name):
            return p.resolve()
    return None


def replay(run, plan: Plan, fix: dict[str, Any], out_dir: Path, cmd: str,
           label: str = "fixed") -> ReplayResult:
    out_dir = Path(out_dir)
    res = ReplayResult(label=label, out_dir=out_dir, ok=False)
    cfg = patch_config(run, plan, fix, out_dir)
    if "{config}" not in cmd:
        raise RerunError('--cmd must contain "{config}" where the patched config path goes')
    argv = [a.replace("{config}", str(cfg)) for a in shlex.split(cmd)]
    t0 = time.perf_counter()
    print(f"lorascope: {label}: running {shlex.join(argv)}", file=sys.stderr)
    try:
        with open(out_dir / "trainer.log", "w", encoding="utf-8") as log:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace", bufsize=1)
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stderr.write(line)
                log.write(line)
            rc = proc.wait()
    except FileNotFoundError as e:
        raise RerunError(f"--cmd: cannot run {argv[0]}: {e.strerror}") from None
    res.seconds = time.perf_counter() - t0
    if rc != 0:
        res.error = f"trainer exited with status {rc} (see {out_dir / 'trainer.log'})"
        return res
    res.ok = True
    st = out_dir / "trainer_state.json"
    if st.is_file():
        try:
            res.last_step = int(json.loads(st.read_text(encoding="utf-8")).get("global_step"))
        except (ValueError, TypeError):
            pass
    return res
