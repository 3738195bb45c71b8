"""``lorascope inspect``: what is inside LoRA checkpoint files (CONTRACT §6).

:func:`inspect_files` builds the ``lorascope.inspect/1`` document, one entry per
argument in order; :func:`render_inspect_text` prints it as a table in the spirit of
kohya's ``check_lora_weights.py`` and lora-inspector; :func:`exit_status` is the
status the CLI returns (0; 1 when a file has a zero or non-finite module or could be
read only in part; 2 when no argument could be read in full).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lorascope.ingest.safetensors import read
from lorascope.model import Checkpoint, _jsonable

SCHEMA = "lorascope.inspect/1"
# metadata keys worth a line in the text table, in this order
HIGHLIGHT_KEYS = (
    "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
    "ss_base_model_version", "ss_sd_model_name", "ss_learning_rate", "ss_unet_lr",
    "ss_text_encoder_lr", "ss_lr_scheduler", "ss_optimizer", "ss_mixed_precision",
    "ss_max_train_steps", "ss_steps", "ss_epoch", "ss_num_epochs", "ss_num_train_images",
    "ss_batch_size_per_device", "ss_gradient_accumulation_steps", "ss_max_grad_norm",
    "ss_resolution", "ss_seed", "ss_output_name", "format", "modelspec.architecture",
    "modelspec.title",
)
MAX_META_VALUE = 80          # characters of one metadata value shown in the text table
MAX_NAME = 72                # characters of a module name shown in the text table


def _file_entry(arg: Path) -> dict[str, Any]:
    shown = str(arg)
    if not arg.exists():
        return _unreadable(shown, "no such file")
    if not arg.is_file():
        return _unreadable(shown, "not a file")
    r = read(arg, arg.as_posix())
    ck = r.checkpoint
    entry = _checkpoint_entry(shown, ck)
    entry["readable"] = r.readable
    entry["truncated"] = ck.truncated
    return entry


def _unreadable(shown: str, why: str) -> dict[str, Any]:
    return {"path": shown, "format": "unknown", "size_bytes": None, "dtype": None,
            "rank": None, "alpha": None, "step": None, "target_modules": [], "metadata": {},
            "modules": [], "zero_modules": [], "nonfinite_modules": [], "problems": [why],
            "readable": False, "truncated": False}


def _num_or_none(v: Any) -> Any:
    """_jsonable of a module's number, with the common cases (a finite float, None)
    first: a large adapter has 20k modules."""
    if v is None or (type(v) is float and math.isfinite(v)):
        return v
    return _jsonable(v)


def _checkpoint_entry(shown: str, ck: Checkpoint) -> dict[str, Any]:
    mods = [{"name": m.name, "rank": m.rank, "alpha": _num_or_none(m.alpha),
             "norm": _num_or_none(m.norm), "mean_abs": _num_or_none(m.mean_abs),
             "zero": bool(m.zero), "nonfinite": int(m.nonfinite)} for m in ck.modules]
    return {
        "path": shown, "format": ck.format, "size_bytes": ck.size_bytes, "dtype": ck.dtype,
        "rank": ck.rank, "alpha": _jsonable(ck.alpha), "step": ck.step,
        "target_modules": list(ck.target_modules), "metadata": dict(ck.metadata),
        "modules": mods,
        "zero_modules": [m.name for m in ck.modules if m.zero],
        "nonfinite_modules": [m.name for m in ck.modules if m.nonfinite],
        "problems": list(ck.problems),
    }


def inspect_files(paths: list[Path]) -> dict:
    """The ``lorascope.inspect/1`` document for these files (one entry each, in order).

    Beyond CONTRACT §6 each entry carries ``step``, ``target_modules``, ``readable``
    (false when the file or its header could not be read) and ``truncated`` (the file is
    cut short or its header unreadable: tensors lie outside it)."""
    return {"schema": SCHEMA, "files": [_file_entry(Path(p)) for p in paths]}


def _complete(f: dict) -> bool:
    return bool(f.get("readable")) and not f.get("truncated")


def exit_status(doc: dict) -> int:
    """2 when no file could be read in full (a truncated file is not a readable one), 1
    when a file has a zero or non-finite module or could be read only in part, else 0."""
    files = doc.get("files", [])
    if not files or not any(_complete(f) for f in files):
        return 2
    if any(f["zero_modules"] or f["nonfinite_modules"] or not _complete(f) for f in files):
        return 1
    return 0


# -- text ----------------------------------------------------------------------------

def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        if 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def _short(name: str, width: int = MAX_NAME) -> str:
    if len(name) <= width:
        return name
    half = (width - 3) // 2
    return name[:half] + "..." + name[-(width - 3 - half):]


def render_inspect_text(doc: dict) -> str:
    """A readable report of an inspect document: a summary per file, metadata
    highlights, then one row per adapted layer with zero / non-finite layers marked.
    Strings from the file (names, metadata keys and values, problems) are shown with
    control and bidi characters escaped (:func:`~lorascope.report.safe.visible`)."""
    from lorascope.report.safe import visible_tree
    doc = visible_tree(doc)
    out: list[str] = []
    for f in doc.get("files", []):
        out.append(f"{f['path']}")
        out.append(f"  format {f['format']}   size {_size(f['size_bytes'])}   dtype {f['dtype'] or '-'}"
                   f"   rank {_num(f['rank'])}   alpha {_num(f['alpha'])}"
                   + (f"   step {f['step']}" if f.get("step") is not None else ""))
        mods = f["modules"]
        if f.get("target_modules"):
            out.append(f"  {len(mods)} LoRA layers on: {', '.join(f['target_modules'])}")
        meta = f.get("metadata") or {}
        shown = [k for k in HIGHLIGHT_KEYS if k in meta]
        if shown:
            out.append("  metadata:")
            for k in shown:
                v = str(meta[k])
                if len(v) > MAX_META_VALUE:
                    v = v[:MAX_META_VALUE - 3] + "..."
                out.append(f"    {k} = {v}")
            rest = len(meta) - len(shown)
            if rest > 0:
                out.append(f"    (+{rest} more keys; --format json shows all)")
        if f.get("truncated"):
            out.append("  !! the file is cut short or its header unreadable: it could not be read in full")
        for p in f.get("problems", []):
            out.append(f"  problem: {p}")
        nz, nn = len(f["zero_modules"]), len(f["nonfinite_modules"])
        if mods:
            if nz and not f.get("truncated"):
                out.append(f"  !! {nz} of {len(mods)} layers have an all-zero up/B weight (never learned)")
            if nn:
                out.append(f"  !! {nn} of {len(mods)} layers hold NaN/Inf values")
            w = min(MAX_NAME, max(len("layer"), *(len(m["name"]) for m in mods)))
            out.append(f"  {'layer':<{w}}  {'rank':>5} {'alpha':>7} {'norm':>10} {'mean|w|':>10}")
            for m in mods:
                flag = ""
                if m["zero"]:
                    flag += "  ZERO"
                if m["nonfinite"]:
                    flag += f"  NaN/Inf x{m['nonfinite']}"
                out.append(f"  {_short(m['name'], w):<{w}}  {_num(m['rank']):>5} {_num(m['alpha']):>7}"
                           f" {_num(m['norm']):>10} {_num(m['mean_abs']):>10}{flag}")
        elif f.get("readable"):
            out.append("  no LoRA layers in this file")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"
