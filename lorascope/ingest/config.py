"""Training configuration files: YAML, TOML and JSON, and kohya ``ss_*`` metadata.

One file in, normalized :class:`ConfigValue` records out (keys from
``model.CONTRACT_CONFIG_KEYS`` / ``model.EXTRA_CONFIG_KEYS``), each remembering the
file and the dotted key the trainer wrote.  The layouts recognised:

* kohya sd-scripts training TOML (flat, or with sections, which kohya ignores) and its
  dataset TOML (``[general]``, ``[[datasets]]``, ``[[datasets.subsets]]``);
* lora-scripts (Akegarasu) TOML: kohya argument names in lora-scripts' own sections
  (``[model_arguments]``, ``[training_arguments]``, ... or ``[model]``, ``[training]``,
  ...), or the GUI's flat ``config/autosave/<time>.toml``;
* LLaMA-Factory YAML (``stage``, ``finetuning_type``, ``lora_target``, ``cutoff_len``, ...);
* PEFT ``adapter_config.json``;
* HF ``TrainingArguments.to_json_string()`` (``training_args.json``) and TRL configs;
* accelerate's ``default_config.yaml`` (``num_processes``, ``mixed_precision``);
* diffusers example-script argument dumps (``pretrained_model_name_or_path`` + ``rank``).

Anything else parses to nothing, without a problem.  YAML is read with a
``yaml.SafeLoader`` subclass that refuses documents with many aliases (alias bombs);
python tags fail as a problem.  Nothing here raises on bad content.
"""
from __future__ import annotations

import json
import math
import os
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import yaml

from lorascope.ingest import _json
from lorascope.model import ConfigValue, Parsed, Source
from lorascope.safe_open import is_regular, open_file, read_text

MAX_BYTES = 4 * 1024 * 1024        # a training config is a few KB; refuse anything huge
MAX_ALIASES = 200                  # YAML alias references allowed in one document
MAX_DEPTH = 12                     # nesting levels walked when flattening
MAX_KEYS = 20_000                  # flattened keys kept from one document
MAX_META_JSON = 1024 * 1024        # size cap for JSON strings inside ss_* metadata

# Adaptive optimizers whose "learning rate" is a multiplier (1.0 is normal).
ADAPTIVE_OPTIMIZERS = ("prodigy", "dadapt")

LORA_SCRIPTS_SECTIONS = {
    "model_arguments", "dataset_arguments", "additional_network_arguments",
    "optimizer_arguments", "training_arguments", "saving_arguments",
    "sample_prompt_arguments", "model", "dataset", "additional_network", "optimizer",
    "training", "saving", "sample_prompt", "others", "network", "data",
}
KOHYA_KEYS = {
    "network_module", "network_dim", "network_alpha", "unet_lr", "text_encoder_lr",
    "max_train_epochs", "max_train_steps", "train_batch_size", "lr_warmup_steps",
    "output_name", "save_model_as", "train_data_dir", "reg_data_dir", "dataset_config",
    "caption_extension", "save_every_n_epochs", "network_train_unet_only", "clip_skip",
    "optimizer_type", "lr_scheduler_num_cycles", "cache_latents",
}
LLAMAFACTORY_KEYS = {
    "stage", "finetuning_type", "lora_target", "lora_rank", "template", "cutoff_len",
    "dataset_dir", "val_size", "max_samples", "adapter_name_or_path", "quantization_bit",
    "plot_loss", "preprocessing_num_workers",
}
HF_TRAINER_KEYS = {
    "per_device_train_batch_size", "gradient_accumulation_steps", "lr_scheduler_type",
    "adam_beta1", "adam_epsilon", "logging_strategy", "save_strategy", "num_train_epochs",
}
ACCELERATE_KEYS = {"compute_environment", "distributed_type", "num_processes", "machine_rank"}
DATA_FILE_EXTS = (".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt", ".tsv")


class _Refused(Exception):
    """A document this parser will not read (reason in the message)."""


# -- reading ----------------------------------------------------------------------

class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader that counts alias references and refuses documents with too many.

    ``safe_load`` itself shares aliased objects instead of copying them, but anything
    that walks the result (flattening, printing, JSON) expands them exponentially.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Refused(f"YAML has more than {MAX_ALIASES} aliases (alias bomb?)")
        return super().compose_node(parent, index)


def _load_yaml(text: str) -> Any:
    loader = _GuardedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _decode(data: bytes, problems: list[str]) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    for enc in ("gb18030", "cp1252"):
        try:
            text = data.decode(enc)
            problems.append(f"not UTF-8 (read as {enc})")
            return text
        except UnicodeDecodeError:
            continue
    problems.append("not UTF-8 (undecodable bytes replaced)")
    return data.decode("utf-8", errors="replace")


def _short(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return msg[:200] + ("..." if len(msg) > 200 else "")


def _read_document(path: Path, rel: str, problems: list[str]) -> Any:
    """The parsed document, or None (with a problem) when it cannot be read."""
    try:
        with open_file(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_BYTES:
                problems.append(f"{size} bytes: too large for a config file, not read")
                return None
            data = fh.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            problems.append("grew too large for a config file while read, not read")
            return None
    except OSError as e:
        problems.append(f"cannot read ({e.strerror or e})")
        return None
    if not data.strip():
        return None
    text = _decode(data, problems)
    ext = os.path.splitext(rel.lower())[1]
    try:
        if ext == ".toml":
            return _json.check_depth(tomllib.loads(text))
        if ext in (".yaml", ".yml"):
            return _json.check_depth_shared(_load_yaml(text))
        if ext == ".json":
            # Python's json accepts bare NaN / Infinity, as HF writes them.
            return _json.loads(text)
        # unknown extension classified as config: try JSON, then YAML
        try:
            return _json.loads(text)
        except _json.NestedTooDeep:
            raise
        except ValueError:
            return _json.check_depth_shared(_load_yaml(text))
    except _Refused as e:
        problems.append(str(e))
    except _json.NestedTooDeep as e:
        problems.append(f"{e}, not read")
    except tomllib.TOMLDecodeError as e:
        problems.append(f"invalid TOML: {_short(e)}")
    except yaml.constructor.ConstructorError as e:
        problems.append(f"YAML tag not allowed (safe_load only): {_short(e.problem or e)}")
    except yaml.YAMLError as e:
        problems.append(f"invalid YAML: {_short(e)}")
    except json.JSONDecodeError as e:
        problems.append(f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}")
    except RecursionError:
        problems.append("nested too deeply, not read")
    except (ValueError, TypeError, MemoryError) as e:
        problems.append(f"unreadable: {_short(e)}")
    return None


def _flatten(doc: dict) -> dict[str, Any]:
    """{"a.b": leaf}; lists are kept as leaves. Bounded in depth and size."""
    out: dict[str, Any] = {}
    stack: list[tuple[str, Any, int]] = [("", doc, 0)]
    while stack and len(out) < MAX_KEYS:
        prefix, node, depth = stack.pop()
        if isinstance(node, dict) and depth < MAX_DEPTH:
            for k, v in reversed(list(node.items())):
                key = f"{prefix}.{k}" if prefix else str(k)
                stack.append((key, v, depth + 1))
        elif prefix:
            out[prefix] = node
    return out


# -- value normalization --------------------------------------------------------------

def _none(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "null"))


def to_float(v: Any) -> float | None:
    """1e-4, "1e-4", "1.0e-4" -> float; bools, junk and non-finite -> None."""
    if _none(v) or isinstance(v, bool):
        return None
    try:
        f = float(v.strip() if isinstance(v, str) else v)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def to_int(v: Any) -> int | None:
    f = to_float(v)
    if f is None or abs(f) > 2 ** 62:
        return None
    return int(round(f))


def to_number(v: Any) -> int | float | None:
    """An int when the value is integral (epochs 10 / "10" / 10.0 -> 10), else a float."""
    f = to_float(v)
    if f is None:
        return None
    if f.is_integer() and abs(f) <= 2 ** 62:
        return int(f)
    return f


def to_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("true", "yes", "1", "on"):
            return True
        if s in ("false", "no", "0", "off"):
            return False
    return None


def to_str(v: Any) -> str | None:
    if _none(v):
        return None
    if isinstance(v, (str, int, float)) and not isinstance(v, bool):
        return str(v).strip()
    return None


def _enum_str(v: Any) -> str | None:
    """"SchedulerType.COSINE" / "cosine" -> "cosine"."""
    s = to_str(v)
    if s is None:
        return None
    if "." in s and s.split(".", 1)[0].endswith(("Type", "Strategy")):
        s = s.split(".", 1)[1]
    return s.lower()


def parse_resolution(v: Any) -> int | None:
    """The larger side: 512, "512", "512,768", "(512, 768)", [512, 768] -> int."""
    if _none(v) or isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        n = to_int(v)
        return n if n and n > 0 else None
    if isinstance(v, (list, tuple)):
        sides = [to_int(x) for x in v[:3]]
    elif isinstance(v, str):
        sides = [to_int(x) for x in re.findall(r"\d+(?:\.\d+)?", v)[:3]]
    else:
        return None
    sides = [s for s in sides if s and s > 0]
    return max(sides) if sides else None


def eval_strategy(v: Any) -> str | None:
    s = _enum_str(v)
    if s is None or s in ("no", "none", "false", "off"):
        return None
    return s


def _str_list(v: Any) -> list[str] | None:
    """A list of names: ["q_proj", "v_proj"], "q_proj,v_proj", "all", a regex string."""
    if _none(v):
        return None
    if isinstance(v, (list, tuple, set)):
        out = [str(x).strip() for x in v if isinstance(x, (str, int)) and str(x).strip()]
        return sorted(out) if isinstance(v, set) else out
    if isinstance(v, str):
        if any(c in v for c in "()[]*|\\^$"):     # PEFT allows a regex string
            return [v.strip()]
        return [p.strip() for p in v.split(",") if p.strip()]
    return None


# -- emitting -------------------------------------------------------------------------

class _Out:
    """Collects ConfigValues, first writer of a key wins."""

    def __init__(self, rel: str):
        self.rel = rel
        self.values: dict[str, ConfigValue] = {}

    def put(self, key: str, value: Any, orig_key: str) -> None:
        if value is None or key in self.values:
            return
        if isinstance(value, float) and not math.isfinite(value):
            return
        self.values[key] = ConfigValue(key=key, value=value, file=self.rel, orig_key=orig_key)

    def has(self, key: str) -> bool:
        return key in self.values

    def list(self) -> list[ConfigValue]:
        return list(self.values.values())


def _find(flat: dict[str, Any], name: str) -> tuple[str, Any] | None:
    """The value of ``name`` at top level, else in any section (kohya flattens sections)."""
    if name in flat:
        return name, flat[name]
    suffix = "." + name
    for k, v in flat.items():
        if k.endswith(suffix) and k.count(".") == 1:
            return k, v
    return None


def _take(out: _Out, flat: dict, key: str, names: Iterable[str], conv) -> None:
    for n in names:
        hit = _find(flat, n)
        if hit is None:
            continue
        val = conv(hit[1])
        if val is not None:
            out.put(key, val, hit[0])
            return


def _mixed_precision(flat: dict) -> tuple[str, str] | None:
    hit = _find(flat, "mixed_precision")
    if hit is not None and to_str(hit[1]):
        return str(hit[1]).strip().lower(), hit[0]
    for name in ("bf16", "fp16"):
        hit = _find(flat, name)
        if hit is not None and to_bool(hit[1]):
            return name, hit[0]
    if _find(flat, "fp16") is not None or _find(flat, "bf16") is not None:
        return "no", (_find(flat, "fp16") or _find(flat, "bf16"))[0]
    return None


def _common(out: _Out, flat: dict) -> None:
    """Keys most trainers spell the same way."""
    _take(out, flat, "grad_accum", ["gradient_accumulation_steps"], to_int)
    _take(out, flat, "max_grad_norm", ["max_grad_norm"], to_float)
    _take(out, flat, "seed", ["seed"], to_int)
    _take(out, flat, "output_dir", ["output_dir"], to_str)
    _take(out, flat, "logging_dir", ["logging_dir"], to_str)
    _take(out, flat, "gradient_checkpointing", ["gradient_checkpointing"], to_bool)
    mp = _mixed_precision(flat)
    if mp:
        out.put("mixed_precision", mp[0], mp[1])


def _warmup(out: _Out, flat: dict, names: Iterable[str]) -> None:
    """warmup_steps, or warmup_ratio when a trainer wrote a ratio (<1 float) there."""
    for n in names:
        hit = _find(flat, n)
        if hit is None:
            continue
        raw = hit[1]
        f = to_float(raw)
        if f is None:
            continue
        is_float = isinstance(raw, float) or (isinstance(raw, str) and "." in raw)
        if is_float and 0 < f < 1:
            out.put("warmup_ratio", f, hit[0])
        else:
            out.put("warmup_steps", int(f), hit[0])
        return


def _epochs_and_steps(out: _Out, flat: dict, epoch_names, step_names,
                      epochs_override_steps: bool) -> None:
    """HF: max_steps > 0 overrides num_train_epochs; kohya: epochs override steps."""
    ep = st = None
    for n in epoch_names:
        hit = _find(flat, n)
        if hit is not None and to_number(hit[1]) is not None:
            ep = (hit[0], to_number(hit[1]))
            break
    for n in step_names:
        hit = _find(flat, n)
        if hit is not None and to_int(hit[1]) is not None:
            st = (hit[0], to_int(hit[1]))
            break
    if st is not None and st[1] <= 0:
        st = None                       # HF max_steps = -1: not set
    if ep is not None and (ep[1] <= 0 or ep[1] > 1_000_000):
        ep = None                       # int64 max when max_steps rules
    if epochs_override_steps:
        if ep is not None:
            st = None
    elif st is not None:
        ep = None
    if ep is not None:
        out.put("epochs", ep[1], ep[0])
    if st is not None:
        out.put("max_steps", st[1], st[0])


# -- layouts --------------------------------------------------------------------------

def _is_lora_scripts(doc: dict, rel: str) -> bool:
    sections = {k for k, v in doc.items() if isinstance(v, dict)}
    if sections and sections <= LORA_SCRIPTS_SECTIONS | {"metadata"} and (
            sections & {"model_arguments", "training_arguments", "additional_network_arguments",
                        "model", "training", "additional_network", "optimizer_arguments",
                        "optimizer", "saving_arguments", "saving"}):
        return True
    if "/autosave/" in f"/{rel.lower()}" or "lr_restart_cycles" in _flatten(doc):
        return True
    return False


def _kohya(out: _Out, flat: dict, facts: dict) -> None:
    lr_hit = None
    for n in ("unet_lr", "learning_rate"):
        hit = _find(flat, n)
        if hit is not None and to_float(hit[1]) is not None:
            lr_hit = hit
            break
    if lr_hit:
        out.put("learning_rate", to_float(lr_hit[1]), lr_hit[0])
    _take(out, flat, "batch_size", ["train_batch_size"], to_int)
    _take(out, flat, "train_batch_size_per_device", ["train_batch_size"], to_int)
    _epochs_and_steps(out, flat, ["max_train_epochs"], ["max_train_steps"], True)
    _take(out, flat, "lora_rank", ["network_dim"], to_int)
    _take(out, flat, "lora_alpha", ["network_alpha"], to_number)
    _warmup(out, flat, ["lr_warmup_steps"])
    _take(out, flat, "resolution", ["resolution"], parse_resolution)
    _take(out, flat, "lr_scheduler", ["lr_scheduler"], _enum_str)
    _take(out, flat, "base_model", ["pretrained_model_name_or_path"], to_str)
    _take(out, flat, "train_data_dir", ["train_data_dir"], to_str)
    _take(out, flat, "network_module", ["network_module"], to_str)
    _take(out, flat, "optimizer", ["optimizer_type"], to_str)
    _take(out, flat, "lora_dropout", ["network_dropout"], to_float)
    _take(out, flat, "lr_scheduler_num_cycles",
          ["lr_scheduler_num_cycles", "lr_restart_cycles"], to_int)
    _take(out, flat, "save_steps", ["save_every_n_steps"], to_int)
    # sd-scripts validation (newer versions): validation_split > 0 turns it on
    vs = _find(flat, "validation_split")
    if vs is not None and (to_float(vs[1]) or 0) > 0:
        every = _find(flat, "validate_every_n_steps")
        out.put("eval_strategy", "steps" if every and to_int(every[1]) else "epoch", vs[0])
        if every and to_int(every[1]):
            out.put("eval_steps", to_int(every[1]), every[0])
    _common(out, flat)
    name = _find(flat, "output_name")
    if name is not None and to_str(name[1]):
        facts["output_name"] = to_str(name[1])


def _kohya_dataset(out: _Out, doc: dict, facts: dict) -> None:
    """[general] / [[datasets]] / [[datasets.subsets]]: inner levels override outer ones."""
    general = doc.get("general") if isinstance(doc.get("general"), dict) else {}
    datasets = [d for d in doc.get("datasets", []) if isinstance(d, dict)]
    res = bs = None
    dirs: list[tuple[str, str]] = []
    repeats: list[int] = []
    for i, ds in enumerate(datasets[:1000]):
        for scope, where in ((ds, f"datasets.{i}"), (general, "general")):
            if res is None and "resolution" in scope and parse_resolution(scope["resolution"]):
                res = (f"{where}.resolution", parse_resolution(scope["resolution"]))
            if bs is None and "batch_size" in scope and to_int(scope["batch_size"]):
                bs = (f"{where}.batch_size", to_int(scope["batch_size"]))
        subsets = ds.get("subsets", [])
        for j, sub in enumerate(subsets[:1000] if isinstance(subsets, list) else []):
            if not isinstance(sub, dict) or to_bool(sub.get("is_reg")):
                continue
            d = to_str(sub.get("image_dir"))
            if d:
                dirs.append((f"datasets.{i}.subsets.{j}.image_dir", d))
            r = sub.get("num_repeats", ds.get("num_repeats", general.get("num_repeats", 1)))
            r = to_int(r)
            repeats.append(r if r and r > 0 else 1)
    if res:
        out.put("resolution", res[1], res[0])
    if bs:
        out.put("batch_size", bs[1], bs[0])
        out.put("train_batch_size_per_device", bs[1], bs[0])
    if dirs:
        out.put("train_data_dir", dirs[0][1], dirs[0][0])
        facts["image_dirs"] = [d for _, d in dirs]
    if repeats:
        facts["num_repeats"] = max(repeats)


def _llamafactory(out: _Out, flat: dict, facts: dict, path: Path, rel: str) -> None:
    _hf_common(out, flat)
    _take(out, flat, "base_model", ["model_name_or_path"], to_str)
    _take(out, flat, "lora_rank", ["lora_rank"], to_int)
    _take(out, flat, "lora_alpha", ["lora_alpha"], to_number)
    _take(out, flat, "lora_dropout", ["lora_dropout"], to_float)
    _take(out, flat, "target_modules", ["lora_target"], _str_list)
    _take(out, flat, "cutoff_len", ["cutoff_len"], to_int)
    hit = _find(flat, "dataset")
    if hit is not None:
        names = _str_list(hit[1]) or []
        if names:
            facts["dataset_names"] = names
        ddir = _find(flat, "dataset_dir")
        files = _llamafactory_files(names, to_str(ddir[1]) if ddir else "data", path, rel)
        if files:
            out.put("dataset_files", files, hit[0])
    ms = _find(flat, "max_samples")
    if ms is not None and to_int(ms[1]):
        facts["max_samples"] = to_int(ms[1])


def _llamafactory_files(names: list[str], ddir: str | None, path: Path, rel: str) -> list[str]:
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


def _hf_common(out: _Out, flat: dict) -> None:
    _take(out, flat, "learning_rate", ["learning_rate"], to_float)
    _take(out, flat, "batch_size", ["per_device_train_batch_size"], to_int)
    _take(out, flat, "train_batch_size_per_device", ["per_device_train_batch_size"], to_int)
    _epochs_and_steps(out, flat, ["num_train_epochs"], ["max_steps"], False)
    _warmup(out, flat, ["warmup_steps"])
    _take(out, flat, "warmup_ratio", ["warmup_ratio"], to_float)
    _take(out, flat, "lr_scheduler", ["lr_scheduler_type"], _enum_str)
    for n in ("eval_strategy", "evaluation_strategy"):
        hit = _find(flat, n)
        if hit is not None:
            out.put("eval_strategy", eval_strategy(hit[1]), hit[0])
            break
    _take(out, flat, "logging_steps", ["logging_steps"], to_number)
    _take(out, flat, "eval_steps", ["eval_steps"], to_number)
    _take(out, flat, "save_steps", ["save_steps"], to_number)
    _take(out, flat, "label_names", ["label_names"], _str_list)
    _take(out, flat, "optimizer", ["optim"], _enum_str)
    _take(out, flat, "weight_decay", ["weight_decay"], to_float)
    _take(out, flat, "cutoff_len", ["max_seq_length", "max_length"], to_int)
    _common(out, flat)


def _peft(out: _Out, flat: dict, facts: dict) -> None:
    _take(out, flat, "lora_rank", ["r"], to_int)
    _take(out, flat, "lora_alpha", ["lora_alpha"], to_number)
    _take(out, flat, "lora_dropout", ["lora_dropout"], to_float)
    _take(out, flat, "target_modules", ["target_modules"], _str_list)
    _take(out, flat, "base_model", ["base_model_name_or_path"], to_str)
    tt = str(flat.get("task_type") or "").upper()
    if tt in ("CAUSAL_LM", "SEQ_2_SEQ_LM"):
        facts["task"] = "llm"
    else:
        tm = out.values.get("target_modules")
        if tm and any(t in ("to_q", "to_k", "to_v", "to_out.0") for t in tm.value):
            facts["task"] = "sd"


def _diffusers(out: _Out, flat: dict) -> None:
    _take(out, flat, "base_model", ["pretrained_model_name_or_path"], to_str)
    _take(out, flat, "train_data_dir", ["train_data_dir", "instance_data_dir"], to_str)
    _take(out, flat, "learning_rate", ["learning_rate"], to_float)
    _take(out, flat, "batch_size", ["train_batch_size"], to_int)
    _take(out, flat, "train_batch_size_per_device", ["train_batch_size"], to_int)
    _epochs_and_steps(out, flat, ["num_train_epochs"], ["max_train_steps"], False)
    _take(out, flat, "lora_rank", ["rank", "lora_rank"], to_int)
    _take(out, flat, "lora_alpha", ["lora_alpha"], to_number)
    _warmup(out, flat, ["lr_warmup_steps"])
    _take(out, flat, "resolution", ["resolution"], parse_resolution)
    _take(out, flat, "lr_scheduler", ["lr_scheduler"], _enum_str)
    _take(out, flat, "save_steps", ["checkpointing_steps"], to_int)
    _common(out, flat)


def _accelerate(out: _Out, flat: dict) -> None:
    _take(out, flat, "num_devices", ["num_processes"], to_int)
    mp = _find(flat, "mixed_precision")
    if mp is not None and to_str(mp[1]):
        out.put("mixed_precision", to_str(mp[1]).lower(), mp[0])


def _detect(doc: dict, flat: dict, rel: str) -> str | None:
    top = set(doc)
    leaf = {k.rsplit(".", 1)[-1] for k in flat}
    if isinstance(doc.get("datasets"), list) and any(
            isinstance(d, dict) for d in doc["datasets"]):
        return "kohya-dataset"
    if "peft_type" in top or ({"r", "target_modules", "lora_alpha"} <= top):
        return "peft"
    if len(top & ACCELERATE_KEYS) >= 2:
        return "accelerate"
    if len(leaf & KOHYA_KEYS) >= 2 or ("network_module" in leaf):
        return "lora-scripts" if _is_lora_scripts(doc, rel) else "kohya"
    if top & {"stage", "finetuning_type", "lora_target", "template", "dataset_dir",
              "cutoff_len"} and len(top & LLAMAFACTORY_KEYS) >= 2:
        return "llamafactory"
    if len(top & HF_TRAINER_KEYS) >= 2:
        return "hf-trainer"
    if "pretrained_model_name_or_path" in top and (
            top & {"instance_data_dir", "rank", "train_data_dir", "dataset_name"}) and (
            "resolution" in top or "instance_prompt" in top):
        return "diffusers"
    return None


def _run_dir(path: Path, rel: str) -> Path:
    """The run directory: ``path`` with the components of ``rel`` taken off."""
    p = path
    for _ in PurePosixPath(rel).parts:
        p = p.parent
    return p


# -- public ---------------------------------------------------------------------------

def parse(path: Path, rel: str) -> Parsed:
    """Read one config file (kind "config") into normalized ConfigValues.

    ``facts`` may get ``trainer`` ("kohya" | "lora-scripts" | "llamafactory" |
    "hf-trainer" | "diffusers"), ``task`` ("sd" | "llm"), ``layout`` (what was
    recognised), and for kohya datasets ``num_repeats`` / ``image_dirs``; for
    LLaMA-Factory ``dataset_names`` / ``max_samples``; kohya ``output_name``.
    """
    src = Source(path=rel, kind="config")
    parsed = Parsed(source=src)
    try:
        doc = _read_document(Path(path), rel, src.problems)
        if not isinstance(doc, dict):
            return parsed
        flat = _flatten(doc)
        layout = _detect(doc, flat, rel)
        if layout is None:
            return parsed
        out = _Out(rel)
        facts = parsed.facts
        facts["layout"] = layout
        if layout == "kohya-dataset":
            _kohya_dataset(out, doc, facts)
            facts["task"] = "sd"
        elif layout in ("kohya", "lora-scripts"):
            _kohya(out, flat, facts)
            facts["trainer"], facts["task"] = layout, "sd"
        elif layout == "llamafactory":
            _llamafactory(out, flat, facts, Path(path), rel)
            facts["trainer"], facts["task"] = "llamafactory", "llm"
        elif layout == "peft":
            _peft(out, flat, facts)
        elif layout == "hf-trainer":
            _hf_common(out, flat)
            facts["trainer"] = "hf-trainer"
        elif layout == "diffusers":
            _diffusers(out, flat)
            facts["trainer"], facts["task"] = "diffusers", "sd"
        elif layout == "accelerate":
            _accelerate(out, flat)
        parsed.config = out.list()
        src.records = len(parsed.config)
    except Exception as e:  # noqa: BLE001 - a parser never raises on content
        src.problems.append(f"config not understood: {type(e).__name__}: {_short(e)}")
    return parsed


def _meta_json(meta: dict[str, str], key: str) -> Any:
    raw = meta.get(key)
    if not isinstance(raw, str) or not raw or len(raw) > MAX_META_JSON:
        return None
    try:
        return _json.loads(raw)
    except (ValueError, RecursionError):
        return None


def parse_safetensors_metadata(meta: dict[str, str], rel: str,
                               facts: dict | None = None) -> list[ConfigValue]:
    """Normalized config from kohya sd-scripts ``ss_*`` safetensors metadata.

    ``facts``, when given, gets ``trainer="kohya"``, ``task="sd"`` and
    ``num_repeats`` (the largest subset repeat count) when the metadata reveals them.
    Never raises; unusable values are skipped.
    """
    try:
        return _parse_ss(meta, rel, facts)
    except Exception:  # noqa: BLE001
        return []


def _parse_ss(meta: dict[str, str], rel: str, facts: dict | None) -> list[ConfigValue]:
    if not isinstance(meta, dict):
        return []
    m = {k: v for k, v in meta.items() if isinstance(k, str) and k.startswith("ss_")}
    if not m:
        return []
    out = _Out(rel)

    def put(key: str, name: str, conv) -> None:
        if name in m:
            out.put(key, conv(m[name]), name)

    put("learning_rate", "ss_unet_lr", to_float)
    put("learning_rate", "ss_learning_rate", to_float)
    put("batch_size", "ss_batch_size_per_device", to_int)
    put("train_batch_size_per_device", "ss_batch_size_per_device", to_int)
    put("grad_accum", "ss_gradient_accumulation_steps", to_int)
    put("epochs", "ss_num_epochs", to_number)
    put("max_steps", "ss_max_train_steps", to_int)
    put("lora_rank", "ss_network_dim", to_int)
    put("lora_alpha", "ss_network_alpha", to_number)
    if "ss_lr_warmup_steps" in m:
        _warmup(out, {"ss_lr_warmup_steps": m["ss_lr_warmup_steps"]}, ["ss_lr_warmup_steps"])
    put("max_grad_norm", "ss_max_grad_norm", to_float)
    put("resolution", "ss_resolution", parse_resolution)
    put("lr_scheduler", "ss_lr_scheduler", _enum_str)
    put("network_module", "ss_network_module", to_str)
    put("base_model", "ss_sd_model_name", to_str)
    put("seed", "ss_seed", to_int)
    put("mixed_precision", "ss_mixed_precision", lambda v: (to_str(v) or "").lower() or None)
    put("optimizer", "ss_optimizer", to_str)
    put("lora_dropout", "ss_network_dropout", to_float)
    put("gradient_checkpointing", "ss_gradient_checkpointing", to_bool)

    # Several datasets: batch size and resolution live in ss_datasets (a JSON string).
    datasets = _meta_json(m, "ss_datasets")
    if isinstance(datasets, list) and datasets and isinstance(datasets[0], dict):
        d0 = datasets[0]
        out.put("batch_size", to_int(d0.get("batch_size_per_device")),
                "ss_datasets.0.batch_size_per_device")
        out.put("train_batch_size_per_device", to_int(d0.get("batch_size_per_device")),
                "ss_datasets.0.batch_size_per_device")
        out.put("resolution", parse_resolution(d0.get("resolution")), "ss_datasets.0.resolution")

    # Unique images: ss_dataset_dirs {"10_name": {"n_repeats": 10, "img_count": 20}}.
    # ss_num_train_images counts repeats, so it is only the fallback.
    dirs = _meta_json(m, "ss_dataset_dirs")
    repeats: list[int] = []
    if isinstance(dirs, dict) and dirs:
        counts = [to_int(v.get("img_count")) for v in dirs.values() if isinstance(v, dict)]
        repeats = [r for r in (to_int(v.get("n_repeats")) for v in dirs.values()
                               if isinstance(v, dict)) if r and r > 0]
        if counts and all(c is not None and c >= 0 for c in counts) and sum(counts) > 0:
            out.put("num_train_items", int(sum(counts)), "ss_dataset_dirs")
    put("num_train_items", "ss_num_train_images", to_int)

    if facts is not None:
        facts.setdefault("trainer", "kohya")
        facts.setdefault("task", "sd")
        if repeats:
            facts["num_repeats"] = max(repeats)
        name = to_str(m.get("ss_output_name"))
        if name:
            facts.setdefault("output_name", name)
    return out.list()
