"""What every trainer module uses to describe its configuration keys.

A trainer module lists its keys as :class:`Key` rows: the normalized name
(``model.CONTRACT_CONFIG_KEYS`` / ``model.EXTRA_CONFIG_KEYS``), the spellings the
trainer reads (the first is the one ``rerun`` writes when the user's file lacks the
key) and the converter that turns a raw value into the normalized one.  The same
table serves ``ingest.config`` (reading) and ``rerun.backend_cmd`` (writing back).
Converters never raise: an unusable value is ``None`` and is skipped.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from lorascope.model import ConfigValue


# -- values -------------------------------------------------------------------------

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


def enum_str(v: Any) -> str | None:
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
    s = enum_str(v)
    if s is None or s in ("no", "none", "false", "off"):
        return None
    return s


def str_list(v: Any) -> list[str] | None:
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


def lower_str(v: Any) -> str | None:
    s = to_str(v)
    return s.lower() if s else None


# -- tables -------------------------------------------------------------------------

@dataclass(frozen=True)
class Key:
    """One setting as a trainer spells it.

    ``names``: the keys the trainer reads, in the order they are looked for (the first
    found wins); the first is written by ``rerun`` when the user's file lacks the key.
    ``conv``: raw value -> normalized value (None: unusable).  ``read=False``: the
    trainer module reads this key with its own logic (e.g. epochs vs steps), the row
    only names it for writing.  ``write=False``: never written back by ``rerun``."""

    norm: str
    names: tuple[str, ...]
    conv: Callable[[Any], Any] = to_str
    read: bool = True
    write: bool = True


def write_name(keys: Iterable[Key], norm: str) -> str | None:
    """The key a trainer spells for a normalized setting (for ``rerun``)."""
    for k in keys:
        if k.norm == norm and k.write:
            return k.names[0]
    return None


class Out:
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


def find(flat: dict[str, Any], name: str) -> tuple[str, Any] | None:
    """The value of ``name`` at top level, else in any section (kohya flattens sections)."""
    if name in flat:
        return name, flat[name]
    suffix = "." + name
    for k, v in flat.items():
        if k.endswith(suffix) and k.count(".") == 1:
            return k, v
    return None


def take(out: Out, flat: dict, key: str, names: Iterable[str], conv) -> None:
    for n in names:
        hit = find(flat, n)
        if hit is None:
            continue
        val = conv(hit[1])
        if val is not None:
            out.put(key, val, hit[0])
            return


def read_table(out: Out, flat: dict, keys: Iterable[Key]) -> None:
    """Every readable row of a trainer's key table."""
    for k in keys:
        if k.read:
            take(out, flat, k.norm, k.names, k.conv)


def mixed_precision(out: Out, flat: dict) -> None:
    hit = find(flat, "mixed_precision")
    if hit is not None and to_str(hit[1]):
        out.put("mixed_precision", str(hit[1]).strip().lower(), hit[0])
        return
    for name in ("bf16", "fp16"):
        hit = find(flat, name)
        if hit is not None and to_bool(hit[1]):
            out.put("mixed_precision", name, hit[0])
            return
    hit = find(flat, "fp16") or find(flat, "bf16")
    if hit is not None:
        out.put("mixed_precision", "no", hit[0])


# Keys most trainers spell the same way.
COMMON_KEYS = (
    Key("grad_accum", ("gradient_accumulation_steps",), to_int),
    Key("max_grad_norm", ("max_grad_norm",), to_float),
    Key("seed", ("seed",), to_int),
    Key("output_dir", ("output_dir",), to_str),
    Key("logging_dir", ("logging_dir",), to_str),
    Key("gradient_checkpointing", ("gradient_checkpointing",), to_bool),
)


def common(out: Out, flat: dict) -> None:
    read_table(out, flat, COMMON_KEYS)
    mixed_precision(out, flat)


def warmup(out: Out, flat: dict, names: Iterable[str]) -> None:
    """warmup_steps, or warmup_ratio when a trainer wrote a ratio (<1 float) there."""
    for n in names:
        hit = find(flat, n)
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


def epochs_and_steps(out: Out, flat: dict, epoch_names, step_names,
                     epochs_override_steps: bool) -> None:
    """HF: max_steps > 0 overrides num_train_epochs; kohya: epochs override steps."""
    ep = st = None
    for n in epoch_names:
        hit = find(flat, n)
        if hit is not None and to_number(hit[1]) is not None:
            ep = (hit[0], to_number(hit[1]))
            break
    for n in step_names:
        hit = find(flat, n)
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
