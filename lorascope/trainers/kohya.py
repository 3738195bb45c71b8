"""kohya-ss sd-scripts (``train_network.py``): training TOML, dataset TOML, ``ss_*``
metadata of its LoRA files, its console lines and its file naming.

Checked against kohya-ss/sd-scripts (commit 48d368fa): ``train_network.py`` computes
``max_train_steps = max_train_epochs * ceil(len(train_dataloader) / num_processes /
gradient_accumulation_steps)`` when ``max_train_epochs`` is given, else keeps
``max_train_steps`` (default 1600); ``len(train_dataloader)`` is the number of batches of
one epoch, each image counted ``num_repeats`` times (``N_name`` folder prefix, or
``num_repeats`` of a dataset-TOML subset; fine-tuning datasets read a ``meta_lat.json``
/ ``meta_clean.json`` whose entries are the images).  Files: ``EPOCH_FILE_NAME =
"{}-{:06d}"``, ``STEP_FILE_NAME = "{}-step{:08d}"``, state folders ``<name>-state`` /
``<name>-{:06d}-state`` / ``<name>-step{:08d}-state``; ``ss_steps`` in the metadata is
the global step of the save.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from lorascope.trainers import DataCount, Layout, Plan
from lorascope.ingest import _json
from lorascope.safe_open import read_text
from lorascope.trainers._keys import (Key, Out, common, enum_str, epochs_and_steps, find,
                                      lower_str, parse_resolution, read_table, to_bool,
                                      to_float, to_int, to_number, to_str, warmup)

MAX_META_JSON = 1024 * 1024        # size cap for JSON strings inside ss_* metadata
MAX_META_FILE = 64 * 1024 * 1024   # meta_lat.json / meta_clean.json read at most this large
DEFAULT_MAX_TRAIN_STEPS = 1600     # train_util.add_training_arguments: --max_train_steps default

# -- the training TOML -------------------------------------------------------------------

KEYS = (
    Key("learning_rate", ("learning_rate", "unet_lr"), to_float, read=False),
    Key("batch_size", ("train_batch_size",), to_int),
    Key("train_batch_size_per_device", ("train_batch_size",), to_int, write=False),
    Key("grad_accum", ("gradient_accumulation_steps",), to_int),
    Key("epochs", ("max_train_epochs",), to_number, read=False),
    Key("max_steps", ("max_train_steps",), to_int, read=False),
    Key("lora_rank", ("network_dim",), to_int),
    Key("lora_alpha", ("network_alpha",), to_number),
    Key("warmup_steps", ("lr_warmup_steps",), to_int, read=False),
    Key("resolution", ("resolution",), parse_resolution),
    Key("lr_scheduler", ("lr_scheduler",), enum_str),
    Key("base_model", ("pretrained_model_name_or_path",), to_str),
    Key("train_data_dir", ("train_data_dir",), to_str),
    Key("network_module", ("network_module",), to_str),
    Key("optimizer", ("optimizer_type",), to_str),
    Key("lora_dropout", ("network_dropout",), to_float),
    Key("lr_scheduler_num_cycles", ("lr_scheduler_num_cycles", "lr_restart_cycles"), to_int),
    Key("save_steps", ("save_every_n_steps",), to_int),
    Key("max_grad_norm", ("max_grad_norm",), to_float),
    Key("seed", ("seed",), to_int),
    Key("gradient_checkpointing", ("gradient_checkpointing",), to_bool),
    Key("output_dir", ("output_dir",), to_str, write=False),
    Key("logging_dir", ("logging_dir",), to_str, write=False),
    Key("sample_prompts", ("sample_prompts",), to_str, write=False),
    Key("sample_every_n_steps", ("sample_every_n_steps",), to_int, write=False),
    Key("sample_every_n_epochs", ("sample_every_n_epochs",), to_int, write=False),
)
KEY_NAMES = {
    "network_module", "network_dim", "network_alpha", "unet_lr", "text_encoder_lr",
    "max_train_epochs", "max_train_steps", "train_batch_size", "lr_warmup_steps",
    "output_name", "save_model_as", "train_data_dir", "reg_data_dir", "dataset_config",
    "caption_extension", "save_every_n_epochs", "network_train_unet_only", "clip_skip",
    "optimizer_type", "lr_scheduler_num_cycles", "cache_latents",
}
PATH_KEYS = ("pretrained_model_name_or_path", "train_data_dir", "reg_data_dir",
             "dataset_config", "vae", "sample_prompts", "in_json")


def detect(doc: dict, flat: dict, rel: str) -> bool:
    leaf = {k.rsplit(".", 1)[-1] for k in flat}
    return len(leaf & KEY_NAMES) >= 2 or "network_module" in leaf


def read(out: Out, doc: dict, flat: dict, facts: dict, path: Path, rel: str) -> None:
    lr_hit = None
    for n in ("unet_lr", "learning_rate"):
        hit = find(flat, n)
        if hit is not None and to_float(hit[1]) is not None:
            lr_hit = hit
            break
    if lr_hit:
        out.put("learning_rate", to_float(lr_hit[1]), lr_hit[0])
    epochs_and_steps(out, flat, ["max_train_epochs"], ["max_train_steps"], True)
    warmup(out, flat, ["lr_warmup_steps"])
    read_table(out, flat, KEYS)
    # sd-scripts validation (newer versions): validation_split > 0 turns it on
    vs = find(flat, "validation_split")
    if vs is not None and (to_float(vs[1]) or 0) > 0:
        every = find(flat, "validate_every_n_steps")
        out.put("eval_strategy", "steps" if every and to_int(every[1]) else "epoch", vs[0])
        if every and to_int(every[1]):
            out.put("eval_steps", to_int(every[1]), every[0])
    common(out, flat)
    name = find(flat, "output_name")
    if name is not None and to_str(name[1]):
        facts["output_name"] = to_str(name[1])
    # fine-tuning metadata (meta_lat.json / meta_clean.json): its entries are the images
    meta = find(flat, "in_json")
    if meta is not None and to_str(meta[1]):
        n = count_meta_json(_resolve(to_str(meta[1]), path, rel))
        if n:
            out.put("num_train_items", n, meta[0])


def _resolve(value: str, path: Path, rel: str) -> Path:
    p = Path(value)
    if p.is_absolute():
        return p
    for base in (path.parent, _run_dir(path, rel)):
        if (base / p).exists():
            return base / p
    return path.parent / p


def _run_dir(path: Path, rel: str) -> Path:
    p = path
    for _ in Path(rel).parts:
        p = p.parent
    return p


def planned(cfg: dict, data: DataCount) -> Plan | None:
    """kohya's step count: epochs x ceil(batches / devices / accumulation), where one
    epoch is ceil(images x repeats / batch) batches (one bucket; buckets only add
    batches, so this never over-counts); else max_train_steps (default 1600).  None when
    epochs are set but the dataset size is unknown."""
    ep = to_number(cfg.get("epochs"))
    if ep is not None and ep > 0:
        views = data.views
        if views is None and data.items:
            views = int(math.ceil(data.items * (data.repeats or 1)))
        bs = to_int(cfg.get("batch_size")) or 1
        ga = to_int(cfg.get("grad_accum")) or 1
        nd = to_int(cfg.get("num_devices")) or 1
        if not views:
            return None
        batches = math.ceil(views / max(1, bs))
        per = math.ceil(batches / max(1, nd) / max(1, ga))
        if data.items and data.repeats and abs(data.items * data.repeats - views) < 0.5:
            what = f"{data.items} images x {data.repeats:g} repeats"
        elif data.items and views == data.items:
            what = f"{data.items} images"
        else:
            what = f"{views} images x repeats"
        return Plan(int(ep * per), f"{ep:g} epochs x ceil({what} / batch {bs}"
                    + (f" / {nd} devices" if nd > 1 else "") + (f" / accumulation {ga}" if ga > 1 else "")
                    + f") = {int(ep)} x {per} steps")
    ms = to_int(cfg.get("max_steps"))
    if ms and ms > 0:
        return Plan(ms, f"max_train_steps {ms}")
    return Plan(DEFAULT_MAX_TRAIN_STEPS, f"neither max_train_epochs nor max_train_steps set: "
                f"kohya's default max_train_steps {DEFAULT_MAX_TRAIN_STEPS}")


def replay(edit, plan, out_dir: Path) -> None:
    """A window of training: new output/logging dirs, max_train_steps = the window's end
    (epochs dropped), resumed from the save before the symptom: a ``--save_state``
    folder when there is one for that step (``resume``), else the LoRA file saved there
    (``network_weights``) with ``initial_step`` (sd-scripts skips the steps already done,
    so the logged steps continue)."""
    edit.put("output_dir", str(out_dir))
    edit.put("logging_dir", str(out_dir / "logs"))
    edit.pop("max_train_epochs")
    edit.put("max_train_steps", plan.end)
    if plan.checkpoint is None:
        return
    state = state_folder(plan.run_dir, plan.start)
    if state is not None:
        edit.put("resume", str(state))
        return
    ck = plan.checkpoint.path
    if ck.is_dir():          # an HF-style folder: its adapter file, if any
        cands = sorted(ck.glob("*.safetensors"))
        ck = cands[0] if cands else ck
    edit.put("network_weights", str(ck.resolve()))
    edit.put("initial_step", plan.start)


LAYOUT = Layout(name="kohya", trainer="kohya", task="sd", keys=KEYS, detect=detect, read=read,
                implied=(("grad_accum", 1),), planned=planned, path_keys=PATH_KEYS,
                replay=replay, doc="kohya-ss sd-scripts training TOML (flat or sectioned)")


# -- the dataset TOML -------------------------------------------------------------------

def detect_dataset(doc: dict, flat: dict, rel: str) -> bool:
    return isinstance(doc.get("datasets"), list) and any(isinstance(d, dict) for d in doc["datasets"])


def read_dataset(out: Out, doc: dict, flat: dict, facts: dict, path: Path, rel: str) -> None:
    """[general] / [[datasets]] / [[datasets.subsets]]: inner levels override outer ones.
    The images of each subset's ``image_dir`` are counted (a directory listing) with
    its ``num_repeats``: the dataset size kohya's step count uses."""
    general = doc.get("general") if isinstance(doc.get("general"), dict) else {}
    datasets = [d for d in doc.get("datasets", []) if isinstance(d, dict)]
    res = bs = None
    dirs: list[tuple[str, str]] = []
    repeats: list[int] = []
    items = views = 0
    counted = True
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
            r = to_int(sub.get("num_repeats", ds.get("num_repeats", general.get("num_repeats", 1))))
            r = r if r and r > 0 else 1
            repeats.append(r)
            meta = to_str(sub.get("metadata_file"))
            n = count_meta_json(_resolve(meta, path, rel)) if meta else None
            if d:
                dirs.append((f"datasets.{i}.subsets.{j}.image_dir", d))
                if n is None:
                    n = count_images(_resolve(d, path, rel))
            if n is None:
                counted = False
                continue
            items += n
            views += n * r
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
    if counted and items:
        out.put("num_train_items", items, "datasets.subsets (images counted)")
        facts["train_views"] = views


DATASET = Layout(name="kohya-dataset", trainer=None, task="sd", keys=(), detect=detect_dataset,
                 read=read_dataset, path_keys=("image_dir", "metadata_file"),
                 doc="kohya-ss sd-scripts dataset TOML ([general], [[datasets]], [[datasets.subsets]])")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".avif")   # train_util.IMAGE_EXTENSIONS
MAX_LISTED = 200_000


def count_images(d: Path) -> int | None:
    """Images directly in a folder (kohya globs one level), or None when it is not there."""
    try:
        if not d.is_dir():
            return None
        n = 0
        with os.scandir(d) as it:
            for e in it:
                if n >= MAX_LISTED:
                    break
                if e.name.lower().endswith(IMAGE_EXTS) and e.is_file():
                    n += 1
        return n
    except OSError:
        return None


def count_meta_json(p: Path | None) -> int | None:
    """Entries of a fine-tuning metadata file (meta_lat.json / meta_clean.json: one key
    per image; a .jsonl: one line per image), or None when it cannot be read."""
    if p is None:
        return None
    try:
        if not p.is_file() or p.stat().st_size > MAX_META_FILE:
            return None
        text = read_text(p, MAX_META_FILE)
    except OSError:
        return None
    if p.suffix.lower() == ".jsonl":
        return sum(1 for line in text.splitlines() if line.strip()) or None
    try:
        doc = _json.loads(text)
    except ValueError:                       # NestedTooDeep too
        return None
    return len(doc) if isinstance(doc, dict) and doc else None


META_JSON_NAMES = {"meta_lat.json", "meta_clean.json", "meta_cap.json", "meta_cap_dd.json"}
# a kohya DreamBooth concept folder: "<repeats>_<name>"
CONCEPT_DIR_RE = re.compile(r"^(\d+)_(.+)$")


# -- ss_* metadata of a saved LoRA ------------------------------------------------------

def _meta_json(meta: dict[str, str], key: str) -> Any:
    raw = meta.get(key)
    if not isinstance(raw, str) or not raw or len(raw) > MAX_META_JSON:
        return None
    try:
        return _json.loads(raw)
    except ValueError:
        return None


# ss_* key -> normalized key; kohya writes every value as a string
METADATA_KEYS = (
    Key("learning_rate", ("ss_unet_lr", "ss_learning_rate"), to_float),
    Key("batch_size", ("ss_batch_size_per_device",), to_int),
    Key("train_batch_size_per_device", ("ss_batch_size_per_device",), to_int),
    Key("grad_accum", ("ss_gradient_accumulation_steps",), to_int),
    Key("epochs", ("ss_num_epochs",), to_number),
    Key("max_steps", ("ss_max_train_steps",), to_int),
    Key("lora_rank", ("ss_network_dim",), to_int),
    Key("lora_alpha", ("ss_network_alpha",), to_number),
    Key("max_grad_norm", ("ss_max_grad_norm",), to_float),
    Key("resolution", ("ss_resolution",), parse_resolution),
    Key("lr_scheduler", ("ss_lr_scheduler",), enum_str),
    Key("network_module", ("ss_network_module",), to_str),
    # kohya keeps only the model's file name: a name, not a path that could be checked
    Key("base_model_name", ("ss_sd_model_name",), to_str),
    Key("seed", ("ss_seed",), to_int),
    Key("mixed_precision", ("ss_mixed_precision",), lower_str),
    Key("optimizer", ("ss_optimizer",), to_str),
    Key("lora_dropout", ("ss_network_dropout",), to_float),
    Key("gradient_checkpointing", ("ss_gradient_checkpointing",), to_bool),
)


def read_metadata(meta: dict[str, str], rel: str, facts: dict | None) -> list:
    """Normalized config from ``ss_*`` metadata (never raises; unusable values skipped).

    ``facts``, when given, gets ``trainer="kohya"``, ``task="sd"``, ``num_repeats`` (the
    largest subset repeat count), ``train_views`` (images x repeats of one epoch) and
    ``output_name`` / ``session`` when the metadata reveals them."""
    if not isinstance(meta, dict):
        return []
    m = {k: v for k, v in meta.items() if isinstance(k, str) and k.startswith("ss_")}
    if not m:
        return []
    out = Out(rel)
    read_table(out, m, METADATA_KEYS)
    if "ss_lr_warmup_steps" in m:
        warmup(out, {"ss_lr_warmup_steps": m["ss_lr_warmup_steps"]}, ["ss_lr_warmup_steps"])

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
    # ss_num_train_images counts repeats, so it is the views of one epoch.
    dirs = _meta_json(m, "ss_dataset_dirs")
    repeats: list[int] = []
    views = None
    if isinstance(dirs, dict) and dirs:
        rows = [v for v in dirs.values() if isinstance(v, dict)]
        counts = [to_int(v.get("img_count")) for v in rows]
        reps = [to_int(v.get("n_repeats")) for v in rows]
        repeats = [r for r in reps if r and r > 0]
        if counts and all(c is not None and c >= 0 for c in counts) and sum(counts) > 0:
            out.put("num_train_items", int(sum(counts)), "ss_dataset_dirs")
            if all(r and r > 0 for r in reps):
                views = sum(c * r for c, r in zip(counts, reps))
    n_views = to_int(m.get("ss_num_train_images"))
    if views is None and n_views:
        views = n_views
    if not out.has("num_train_items") and n_views and not repeats:
        out.put("num_train_items", n_views, "ss_num_train_images")

    if facts is not None:
        facts.setdefault("trainer", "kohya")
        facts.setdefault("task", "sd")
        if repeats:
            facts["num_repeats"] = max(repeats)
        if views:
            facts["train_views"] = views
        name = to_str(m.get("ss_output_name"))
        if name:
            facts.setdefault("output_name", name)
        session = to_str(m.get("ss_session_id")) or to_str(m.get("ss_training_started_at"))
        if session:
            facts["session"] = session
        started = to_float(m.get("ss_training_started_at"))
        if started:
            facts["started_at"] = started
    return out.list()


# -- console lines ---------------------------------------------------------------------
# train_network.py's banner (the English half of each bilingual line)
_N = r"-?[0-9][0-9,]*"
LOG_SHAPE = [
    (re.compile(rf"num epochs / epoch\S*: ({_N})"), "epochs", "num epochs"),
    (re.compile(rf"batch size per device / \S+: ({_N})\s*$"), "batch_size", "batch size per device"),
    (re.compile(rf"gradient accumulation steps / \S+ = ({_N})"), "grad_accum", "gradient accumulation steps"),
]
LOG_PLANNED = re.compile(rf"total optimization steps / \S+: ({_N})")
LOG_VIEWS = re.compile(rf"num train images \* repeats / \S+: ({_N})")
# the tqdm bar: "steps:  40%|████  | 120/300 [00:30<00:45, avr_loss=0.123]"
LOG_BAR = re.compile(r"(\d{1,12})/(\d{1,12}) \[[^\]\r]*?avr_loss=([-+0-9.eE]+|nan|inf)")
LOG_TRAINER = ("学習開始", "sd-scripts")
# train_network.py after its last save: the training is over (lorascope watch stops on it)
LOG_END = "model saved."

# -- file naming -------------------------------------------------------------------------
EPOCH_FILE_RE = re.compile(r"-(\d{6})$")             # <output_name>-000005
STEP_FILE_RE = re.compile(r"-step(\d{8})$", re.I)   # <output_name>-step00000100
STATE_DIR_RE = re.compile(r"-(?:step)?(\d{6,8})-state$")


def state_folder(run_dir: Path, step: int) -> Path | None:
    """The ``--save_state`` folder saved at a step (``*-step00000100-state``)."""
    for p in Path(run_dir).rglob("*-state"):
        m = STATE_DIR_RE.search(p.name)
        if p.is_dir() and m and int(m.group(1)) == step and len(m.group(1)) == 8:
            return p.resolve()
    return None


def _meta_int(v: Any) -> int | None:
    f = to_float(v)
    return int(f) if f is not None and f == int(f) and 0 <= f <= 2 ** 62 else None


def file_step(metadata: dict[str, str], positive: bool = True) -> int | None:
    """The optimizer step a kohya LoRA file was saved at: its ``ss_steps`` metadata
    (train_network.py writes the global step there on every save); ``positive``: a
    step of 0 (a save before training) counts as unknown."""
    step = _meta_int(metadata.get("ss_steps"))
    return None if step is None or (positive and step == 0) else step


def file_epoch(metadata: dict[str, str]) -> int | None:
    return _meta_int(metadata.get("ss_epoch"))


# -- sample images (train_util.sample_image_inference) ------------------------------------
# Saved to ``<output_dir>/sample/`` as
#   f"{output_name + '_' if output_name else ''}{num_suffix}_{i:02d}_{ts}{seed_suffix}.png"
# with num_suffix = f"e{epoch:06d}" at an epoch's end (epoch + 1; "e000000" for
# --sample_at_first) or f"{steps:06d}" every sample_every_n_steps, i the prompt's position
# in the prompts file (blank and "#" lines skipped), ts = strftime("%Y%m%d%H%M%S") local
# time, seed_suffix = f"_{seed}" when the prompt sets --d.  That order holds since
# 2024-02-03 (sd-scripts 1567ce1e); from 2023-02-28 (82707654) the timestamp came first,
# f"{name_}{ts}_{num_suffix}_{i:02d}{seed_suffix}.png"; the first version (dd523c94,
# one day) wrote "_" after the output name even when there was none.  Same names in
# sdxl, sd3, flux, lumina and hunyuan trainers (their *_train_utils).
SAMPLE_DIR = "sample"
_NUM = r"(?P<num>e\d{6}|\d{6,})"
SAMPLE_NAME_RES = (
    re.compile(rf"^(?:(?P<name>.*?)_)?{_NUM}_(?P<idx>\d{{2,}})_(?P<ts>\d{{14}})(?:_(?P<seed>\d+))?\.png$"),
    re.compile(rf"^(?:(?P<name>.*?)_)?(?P<ts>\d{{14}})_{_NUM}_(?P<idx>\d{{2,}})(?:_(?P<seed>\d+))?\.png$"),
)


def sample_name(name: str) -> dict | None:
    """{"step" | "epoch", "index", "seed", "written", "output_name"} from a sample file
    name, or None when kohya did not name it."""
    for rx in SAMPLE_NAME_RES:
        m = rx.match(name)
        if m is None:
            continue
        num = m.group("num")
        out: dict = {"index": int(m.group("idx")), "written": m.group("ts"),
                     "seed": int(m.group("seed")) if m.group("seed") else None,
                     "output_name": m.group("name") or None}
        if num.startswith("e"):
            out["epoch"] = int(num[1:])
        else:
            out["step"] = int(num)
        return out
    return None


def prompt_line(line: str) -> dict:
    """train_util.line_to_prompt_dict: "a cat --n ugly --w 512 --h 768 --d 42 --s 28 --l 7"
    -> {"prompt", "negative_prompt", "width", "height", "seed", "sample_steps", "scale"}."""
    parts = line.split(" --")
    out: dict = {"prompt": parts[0]}
    for part in parts:
        for key, rx, conv in _PROMPT_OPTS:
            m = rx.match(part)
            if m:
                try:
                    out[key] = conv(m.group(1))
                except ValueError:
                    pass
                break
    return out


_PROMPT_OPTS = (
    ("width", re.compile(r"w (\d+)", re.I), int),
    ("height", re.compile(r"h (\d+)", re.I), int),
    ("seed", re.compile(r"d (\d+)", re.I), int),
    ("sample_steps", re.compile(r"s (\d+)", re.I), lambda v: max(1, min(1000, int(v)))),
    ("scale", re.compile(r"l ([\d.]+)", re.I), float),
    ("negative_prompt", re.compile(r"n (.+)", re.I), str),
)


def prompts_from(text: str, suffix: str) -> list[dict] | None:
    """The prompts of a ``sample_prompts`` file (train_util.load_prompts): ``.txt`` one per
    line (blank lines and lines starting with "#" skipped) in the syntax of
    :func:`prompt_line`; ``.toml`` ``[prompt]`` defaults with ``[[prompt.subset]]`` entries;
    ``.json`` a list of strings or objects.  None when the document is not one of these."""
    import tomllib
    suffix = suffix.lower()
    if suffix == ".toml":
        try:
            doc = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, ValueError, RecursionError):
            return None
        base = doc.get("prompt") if isinstance(doc.get("prompt"), dict) else None
        subs = base.get("subset") if base is not None else None
        if not isinstance(subs, list):
            return None
        defaults = {k: v for k, v in base.items() if k != "subset"}
        items: list = [dict(defaults, **s) for s in subs if isinstance(s, dict)]
    elif suffix == ".json":
        try:
            items = _json.loads(text)
        except ValueError:
            return None
        if not isinstance(items, list):
            return None
    else:
        items = [ln.strip() for ln in text.splitlines(keepends=True)
                 if ln.strip() and not ln.startswith("#")]
    out = []
    for it in items:
        if isinstance(it, str):
            out.append(prompt_line(it))
        elif isinstance(it, dict):
            d = {k: it.get(k) for k in ("prompt", "negative_prompt", "width", "height", "seed",
                                        "sample_steps", "scale")}
            d["seed"] = to_int(d["seed"])
            out.append(d)
        else:
            out.append({})
    return out
