"""LLaMA-Factory: its YAML (``llamafactory-cli train x.yaml`` / LLaMA Board's
``training_args.yaml``), ``dataset_info.json`` lookup, and its step count.

LLaMA-Factory passes the TrainingArguments keys through to HF ``Trainer``
(:mod:`lorascope.trainers.hf_trainer`) and adds its own: ``model_name_or_path``,
``lora_rank``, ``lora_target``, ``cutoff_len``, ``dataset`` + ``dataset_dir``,
``val_size`` (held out with ``train_test_split``: ``ceil(val_size x n)`` examples),
``max_samples``.  Its ``trainer_log.jsonl`` is read by :mod:`lorascope.ingest.llamafactory`;
``running_log.txt`` holds HF's banner (``Num examples = 80``: the training split).
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from lorascope.trainers import DataCount, Layout, Plan, hf_trainer
from lorascope.ingest import _json
from lorascope.safe_open import is_regular, read_text
from lorascope.trainers._keys import Key, Out, find, read_table, str_list, to_float, to_int, to_number, to_str

MAX_BYTES = 4 * 1024 * 1024
DATA_FILE_EXTS = (".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt", ".tsv")

OWN_KEYS = (
    Key("base_model", ("model_name_or_path",), to_str),
    Key("lora_rank", ("lora_rank",), to_int),
    Key("lora_alpha", ("lora_alpha",), to_number),
    Key("lora_dropout", ("lora_dropout",), to_float),
    Key("target_modules", ("lora_target",), str_list),
    Key("cutoff_len", ("cutoff_len",), to_int),
    Key("val_size", ("val_size",), to_float),
    Key("max_samples", ("max_samples",), to_int),
)
KEYS = OWN_KEYS + tuple(k for k in hf_trainer.KEYS if k.norm not in {o.norm for o in OWN_KEYS})
KEY_NAMES = {
    "stage", "finetuning_type", "lora_target", "lora_rank", "template", "cutoff_len",
    "dataset_dir", "val_size", "max_samples", "adapter_name_or_path", "quantization_bit",
    "plot_loss", "preprocessing_num_workers",
}


def detect(doc: dict, flat: dict, rel: str) -> bool:
    top = set(doc)
    return bool(top & {"stage", "finetuning_type", "lora_target", "template", "dataset_dir",
                       "cutoff_len"}) and len(top & KEY_NAMES) >= 2


def read(out: Out, doc: dict, flat: dict, facts: dict, path: Path, rel: str) -> None:
    hf_trainer.read_common(out, flat)
    read_table(out, flat, OWN_KEYS)
    hit = find(flat, "dataset")
    if hit is not None:
        names = str_list(hit[1]) or []
        if names:
            facts["dataset_names"] = names
        ddir = find(flat, "dataset_dir")
        files = dataset_files(names, to_str(ddir[1]) if ddir else "data", path, rel)
        if files:
            out.put("dataset_files", files, hit[0])
    ms = find(flat, "max_samples")
    if ms is not None and to_int(ms[1]):
        facts["max_samples"] = to_int(ms[1])


def _run_dir(path: Path, rel: str) -> Path:
    p = path
    for _ in PurePosixPath(rel).parts:
        p = p.parent
    return p


def dataset_files(names: list[str], ddir: str | None, path: Path, rel: str) -> list[str]:
    """Dataset names -> file paths via dataset_info.json, when that file can be found.

    Names that look like files are kept as paths under ``dataset_dir``; other names are
    hub / registry names and are not paths."""
    ddir = ddir or "data"
    if ddir.upper() == "ONLINE":
        return []
    info: dict = {}
    run_dir = _run_dir(path, rel)
    bases = [Path(ddir)] if os.path.isabs(ddir) else [path.parent / ddir, run_dir / ddir]
    for b in bases:
        f = b / "dataset_info.json"
        try:
            if is_regular(f) and f.stat().st_size <= MAX_BYTES:
                loaded = _json.loads(read_text(f, MAX_BYTES))
                if isinstance(loaded, dict):
                    info = loaded
                    break
        except (OSError, ValueError, RecursionError):
            continue
    files: list[str] = []
    for n in names:
        entry = info.get(n)
        fname = None
        if isinstance(entry, dict) and isinstance(entry.get("file_name"), str):
            fname = entry["file_name"]
        elif n.lower().endswith(DATA_FILE_EXTS):
            fname = n
        if fname:
            files.append(fname if os.path.isabs(fname) else str(PurePosixPath(ddir) / fname))
    return files


def planned(cfg: dict, data: DataCount) -> Plan | None:
    """HF's count over the training split: ``max_samples`` caps the records, then
    ``val_size`` of them are held out (``ceil(val_size x n)``)."""
    n = data.items
    if n and data.views is None and not data.split:
        cap = to_int(cfg.get("max_samples"))
        if cap and cap > 0:
            n = min(n, cap)
        n = hf_trainer.minus_val_size(n, cfg.get("val_size"))
    return hf_trainer.planned(cfg, data, train_items=n)


LAYOUT = Layout(name="llamafactory", trainer="llamafactory", task="llm", keys=KEYS, detect=detect,
                read=read, implied=(("grad_accum", 1),), planned=planned,
                path_keys=hf_trainer.PATH_KEYS, replay=hf_trainer.replay,
                doc="LLaMA-Factory YAML (stage, finetuning_type, lora_target, cutoff_len, ...)")
