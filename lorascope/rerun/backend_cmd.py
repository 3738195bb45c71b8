"""External-command replay backend: the user's own trainer with a patched config.

`--cmd "llamafactory-cli train {config}"`: the run's own config file (the one that set the
learning rate, per ``Config.origins``) is rewritten in its own format (YAML for
LLaMA-Factory / HF / lora-scripts, TOML for kohya / lora-scripts, JSON for HF argument
dumps).  Its trainer layout (:mod:`lorascope.trainers`, the module ingest read it with)
says how:

* the fix, each normalized key mapped back to the key(s) as the user wrote them (the
  original key, and other spellings of the same setting the file holds), else the
  layout's name for it;
* data fixes (``exclude_files``, see :mod:`lorascope.rerun.data_fix`): the trainer's image
  folder (``train_data_dir``, or a dataset TOML's ``image_dir``) replaced by a filtered
  copy under --out, the original never touched;
* the layout's ``replay``: a new output (and logging) dir under --out, the window's end as
  the trainer's step cap (epochs removed) and the resume settings: HF / LLaMA-Factory
  ``resume_from_checkpoint`` pointing at a sanitised copy of the checkpoint (adapter +
  trainer_state.json only: no optimizer, scheduler or RNG pickles, so the fixed learning
  rate is not overwritten by the restored optimizer state). kohya: ``resume`` when a
  ``*-state`` folder exists for that step, else an adapter-only resume:
  ``network_weights`` = the LoRA file saved at that step and ``initial_step`` = that
  step. lora-scripts YAML: ``resume_from_checkpoint`` = the ``checkpoint-<step>``
  folder, ``max_steps`` = the window's end. With no save before the symptom, training
  starts from scratch;
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

from lorascope import trainers
from lorascope.rerun.backend_hf import ReplayResult
from lorascope.rerun.plan import Plan, RerunError


def _config_source(run) -> tuple[Path, str]:
    # a trainer's own config file; not a tracker's record of the run (W&B, MLflow)
    configs = {s.path for s in run.sources if s.kind == "config"}
    for key in ("learning_rate", "base_model", "max_steps", "epochs"):
        o = run.config.origins.get(key)
        if o is not None and o.file and not o.derived and not o.file.endswith("adapter_config.json") \
                and o.file in configs:
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


def _absolutize(edit: trainers.Edit, keys: tuple[str, ...], bases: list[Path]) -> None:
    for name in keys:
        k = edit.find(name)
        if k is None:
            continue
        v = trainers._walk(edit.doc, k.split("."))
        if isinstance(v, str) and v and not os.path.isabs(v):
            for b in bases:
                if (b / v).exists():
                    edit.set(k, str((b / v).resolve()))
                    edit.touched.pop()
                    break


def layout_of(doc: dict, rel: str) -> trainers.Layout:
    """The trainer layout of the user's config (the module ingest read it with)."""
    from lorascope.ingest.config import _flatten
    lay = trainers.detect(doc, _flatten(doc), rel)
    if lay is None or lay.replay is None:
        raise RerunError(f"{rel}: not a trainer config lorascope knows how to patch for a replay "
                         f"({'recognised as ' + lay.name if lay else 'no known layout'})")
    return lay


def write_fix(edit: trainers.Edit, layout: trainers.Layout, run, rel: str, key: str, value: Any) -> None:
    """Set one normalized setting in the user's config under the key(s) as the user wrote
    them: the key the value was read from, and every other spelling of the same setting
    the file holds (kohya ``unet_lr`` and ``learning_rate``); a setting the file lacks
    gets the trainer's own name for it."""
    names = [n for k in layout.keys if k.norm == key and k.write for n in k.names]
    present = [edit.find(n) for n in names if edit.find(n)]
    o = run.config.origins.get(key)
    if o is not None and o.file == rel and not o.derived and o.orig_key not in present:
        present.insert(0, o.orig_key)
    if present:
        for k in dict.fromkeys(present):
            edit.set(k, value)
    elif names:
        edit.put(names[0], value)
    else:
        print(f"lorascope: fix key {key} has no known name in {rel}; set as is", file=sys.stderr)
        edit.set(key, value)


def patch_config(run, plan: Plan, fix: dict[str, Any], out_dir: Path) -> Path:
    """Write the run's config, patched for this replay, into out_dir; return its path."""
    from lorascope.rerun.data_fix import DATA_FIX_KEYS, apply_exclude_files

    src, rel = _config_source(run)
    doc = _load(src)
    layout = layout_of(doc, rel)
    edit = trainers.Edit(doc)
    for key, value in fix.items():
        if key in DATA_FIX_KEYS:
            continue
        write_fix(edit, layout, run, rel, key, value)
        if key == "warmup_steps":
            edit.pop("warmup_ratio")
    bases = [src.parent, Path(run.path), Path.cwd()]
    _absolutize(edit, layout.path_keys, bases)
    out_dir = Path(out_dir).resolve()
    if fix.get("exclude_files"):
        apply_exclude_files(run, doc, src, rel, [str(f) for f in fix["exclude_files"]], out_dir,
                            lambda d, n: trainers.Edit(d).find(n),
                            lambda d, k, v: trainers.Edit(d).set(k, v))
    layout.replay(edit, plan, out_dir)
    target = out_dir / ("lorascope-rerun-config" + src.suffix.lower())
    _dump(doc, target)
    return target


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
