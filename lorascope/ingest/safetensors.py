"""LoRA adapter checkpoints in safetensors files (kohya, PEFT and diffusers layouts).

The file is an 8-byte little-endian header length, a JSON header
``{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}}``
and the tensor bytes.  We read the header ourselves so that every number in it is
bound-checked before it sizes anything (a hostile or truncated file becomes a problem
string, never an exception or a large allocation), then compute statistics from the
bytes read with ``preadv``, without torch (:mod:`lorascope.ingest._tensorscan`: batched,
from the raw bits, one pass, in threads):

* per tensor (:class:`TensorStat`): non-finite count, all-zero, abs max, Frobenius norm
  and mean |w| over the finite elements;
* per adapted layer (:class:`Module`): the Frobenius norm of the effective update
  ``up @ down * alpha / rank`` computed *exactly without forming the product* from the
  two rank x rank Gram matrices, ``||B A||_F^2 = sum((B^T B) * (A A^T))``; the Grams are
  accumulated during the same single pass over the bytes.  Conv LoRA (down
  ``[r, in, kh, kw]``, up ``[out, r, 1, 1]``) is reshaped to 2-D first.  Where the
  product is not a plain matrix product (an up kernel larger than 1x1, shapes that do
  not chain, rank above :data:`MAX_GRAM_RANK`) the norm is that of the up weight alone
  (CONTRACT §6).  Non-finite elements count as 0 in norms; a missing alpha counts as
  ``alpha == rank`` (scale 1); PEFT's ``use_rslora`` scales by ``alpha / sqrt(rank)``.

Budget: the tensors of LoRA layers are always scanned; other tensors (a full model's
weights, PEFT ``modules_to_save``) only while their total stays under
``stats_budget`` bytes (:data:`STATS_BUDGET`, 2 GiB), so a 15 GB full fine-tune is
listed but not read.  A file of a full model (no LoRA key anywhere) is not an error:
its format is ``unknown`` and the parse facts say ``no_lora_modules``.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lorascope.ingest import _json, _lycoris
from lorascope.ingest._tensorscan import NUMPY_DTYPES, Table, TensorInfo, read_small, scalar, scalars, scan_table
from lorascope.model import Checkpoint, Module, Parsed, Source, TensorStat
from lorascope.safe_open import open_file, read_text
from lorascope.trainers import ai_toolkit, hf_trainer, kohya, onetrainer

KIND = "safetensors"
MAX_HEADER = 100 * 1024 * 1024        # a header longer than this is refused
MAX_TENSORS = 1_000_000               # tensor entries kept from one header
MAX_DIMS = 16
MAX_PROBLEMS = 8                      # problem strings kept per file before summarising
STATS_BUDGET = 2 * 1024 ** 3          # bytes of non-LoRA tensors scanned per file
MAX_GRAM_RANK = 4096
MAX_MID = 1 << 24                     # elements of a LoCon Tucker core read into memory
MAX_MID_WORK = 1 << 33                # multiply-adds of its norm (k * rank^3; real: ~2e7)
MAX_ADAPTER_CONFIG = 10 * 1024 * 1024

# safetensors dtype -> bits per element
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

# suffix -> (role, style); checked in order, first match wins
SUFFIXES = (
    (".lora_down.weight", "down", "kohya"),
    (".lora_up.weight", "up", "kohya"),
    (".lora_mid.weight", "mid", "kohya"),      # LyCORIS LoCon with a Tucker (CP) core
    (".lora.down.weight", "down", "diffusers"),
    (".lora.up.weight", "up", "diffusers"),
    (".lora_linear_layer.down.weight", "down", "diffusers"),
    (".lora_linear_layer.up.weight", "up", "diffusers"),
    (".lora_A.weight", "down", "peft"),
    (".lora_B.weight", "up", "peft"),
    (".lora_embedding_A", "down", "peft"),
    (".lora_embedding_B", "up", "peft"),
)
ADAPTER_NAMED_RE = re.compile(r"^(.+)\.lora_(A|B)\.[A-Za-z0-9_-]+\.weight$")
DIFFUSERS_PREFIXES = ("unet", "text_encoder", "text_encoder_2", "text_encoder_3",
                      "transformer", "prior", "decoder")
# LyCORIS algorithms we list but do not analyse (LoCon, LoHa and LoKr are analysed)
LYCORIS_RE = re.compile(r"\.(oft_blocks|oft_diag|oft_R|boft_R|boft_blocks|diff|diff_b|w_norm|b_norm)$")
STEP_NAME_RE = re.compile(r"[-_]step-?0*(\d+)$", re.I)
TRAILING_NUM_RE = re.compile(r"[-_](\d+)$")
# kohya names are underscore-joined paths: the layer names we recognise at their end
KOHYA_LEAVES = sorted((
    "to_q", "to_k", "to_v", "to_out_0", "proj_in", "proj_out", "ff_net_0_proj", "ff_net_2",
    "q_proj", "k_proj", "v_proj", "out_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    "fc1", "fc2", "conv1", "conv2", "conv_shortcut", "time_emb_proj", "conv_in", "conv_out",
    "qkv", "proj", "linear1", "linear2", "img_attn_qkv", "img_attn_proj", "txt_attn_qkv",
    "txt_attn_proj", "img_mlp_0", "img_mlp_2", "txt_mlp_0", "txt_mlp_2", "img_mod_lin",
    "txt_mod_lin", "modulation_lin", "to_add_out", "add_q_proj", "add_k_proj", "add_v_proj",
    "norm1_linear", "norm1_context_linear", "norm_linear", "proj_mlp", "mlp_fc1", "mlp_fc2",
    "conv", "linear", "attn_qkv", "attn_proj",
), key=len, reverse=True)
_KOHYA_LEAF_SET = frozenset(KOHYA_LEAVES)
_KOHYA_LEAF_PARTS = max(leaf.count("_") for leaf in KOHYA_LEAVES) + 1


# -- header ------------------------------------------------------------------------

@dataclass
class Header:
    size: int
    metadata: dict[str, str] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    ok: bool = False               # the header itself could be read


class _Problems:
    """Problem strings of one file, the first MAX_PROBLEMS kept, the rest counted."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.extra = 0
        self.cut = False           # the file is cut short or its header unreadable

    def add(self, text: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(text)
        else:
            self.extra += 1

    def out(self) -> list[str]:
        return self.items + ([f"... and {self.extra} more problems"] if self.extra else [])


def _clip(v: Any) -> str:
    """A header value for a problem string: a 400-digit dimension stays short."""
    s = str(v)
    return s if len(s) <= 80 else s[:77] + "..."


def read_header(path: Path, problems: _Problems) -> Header:
    """The parsed, bound-checked header of a safetensors file.  Tensors that fail a
    check are left out with a problem; a header that cannot be read leaves ok False."""
    try:
        size = path.stat().st_size
    except OSError as e:
        problems.add(f"cannot stat file ({e.strerror})")
        return Header(0)
    h = Header(size)
    if size < 8:
        problems.cut = True
        problems.add(f"not a safetensors file: {size} bytes, shorter than the 8-byte header length")
        return h
    try:
        with open_file(path) as f:
            head = f.read(8)
            if len(head) < 8:
                problems.cut = True
                problems.add("the file shrank below 8 bytes while read")
                return h
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or n > size - 8:
                problems.cut = True
                problems.add(f"header length {n} is impossible for a {size}-byte file "
                             f"(limit {min(MAX_HEADER, size - 8)}): not a safetensors file or truncated")
                return h
            raw = f.read(n)
    except OSError as e:
        problems.add(f"cannot read file ({e.strerror})")
        return h
    try:
        # the depth walk is run below on what is kept (the metadata, odd entries): a
        # header of 60k tensors is 200k small lists, and walking them all costs more
        # than parsing them
        doc = _json.loads(raw.decode("utf-8"), walk=False)
    except _json.NestedTooDeep as e:
        problems.cut = True
        problems.add(f"header is not valid JSON ({e})")
        return h
    except (UnicodeDecodeError, ValueError) as e:
        problems.cut = True
        problems.add(f"header is not valid JSON ({str(e)[:80]})")
        return h
    if not isinstance(doc, dict):
        problems.cut = True
        problems.add("header is not a JSON object")
        return h
    data_start = 8 + n
    data_len = size - data_start
    meta = doc.pop("__metadata__", None)
    try:
        if isinstance(meta, dict):
            _json.check_depth(meta, _json.MAX_DEPTH - 1)
            for k, v in meta.items():
                h.metadata[str(k)] = v if isinstance(v, str) else json.dumps(v)
        elif meta is not None:
            _json.check_depth(meta, _json.MAX_DEPTH - 1)
            problems.add("__metadata__ is not an object: ignored")
        h.tensors = _check_tensors(doc, data_start, data_len, problems)
    except _json.NestedTooDeep as e:
        problems.cut = True
        problems.add(f"header is not valid JSON ({e})")
        h.metadata, h.tensors = {}, []
        return h
    h.ok = True
    return h


def _check_tensors(doc: dict, data_start: int, data_len: int, problems: _Problems) -> list[TensorInfo]:
    """The header's tensor entries that pass every check, in order; a problem for each
    other.  NestedTooDeep if a container in an entry nests deeper than the JSON limit.
    (The loop is the common case inlined: 60k entries in a large adapter.)"""
    out: list[TensorInfo] = []
    bits_of = DTYPE_BITS
    for name, info in doc.items():
        if len(out) >= MAX_TENSORS:
            problems.add(f"more than {MAX_TENSORS} tensors: the rest were not read")
            break
        if type(info) is dict and len(info) == 3:
            dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
            if (type(shape) is list and type(offs) is list and len(offs) == 2 and len(shape) <= MAX_DIMS
                    and type(dtype) is str and dtype in bits_of):
                begin, end = offs
                if type(begin) is int and type(end) is int and 0 <= begin <= end <= data_len:
                    numel = 1
                    for d in shape:
                        if type(d) is not int or d < 0:
                            break
                        numel *= d
                    else:
                        nbits = numel * bits_of[dtype]
                        if nbits % 8 == 0 and nbits // 8 == end - begin:
                            out.append(TensorInfo(name, dtype, tuple(shape), data_start + begin, end - begin))
                            continue
        t = _check_tensor(name, info, data_start, data_len, problems)     # why not, in words
        if t is not None:
            out.append(t)
    return out


def _ints(xs: list) -> bool:
    for x in xs:
        if type(x) is not int:     # noqa: E721 - bool is not a dimension
            return False
    return True


def _check_tensor(name: str, info: Any, data_start: int, data_len: int,
                  problems: _Problems) -> TensorInfo | None:
    if not isinstance(info, dict):
        _json.check_depth(info, _json.MAX_DEPTH - 1)
        return _bad(problems, name, "tensor entry is not an object")
    _json.check_depth(info, _json.MAX_DEPTH - 1)
    dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        return _bad(problems, name, f"unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not _ints(shape):
        return _bad(problems, name, "shape is not a list of integers")
    if shape and min(shape) < 0:
        return _bad(problems, name, f"negative dimension in shape {_clip(shape)}")
    if not isinstance(offs, list) or len(offs) != 2 or not _ints(offs):
        return _bad(problems, name, "data_offsets is not a pair of integers")
    begin, end = offs
    if begin < 0 or end < begin or end > data_len:
        if end > data_len and 0 <= begin <= end:
            problems.cut = True
        return _bad(problems, name, f"data_offsets {_clip([begin, end])} lie outside the "
                                    f"{data_len} bytes of tensor data (file truncated?)")
    numel = 0 if 0 in shape else 1
    for d in shape if numel else ():   # Python ints: no overflow; capped by the file size
        numel *= d
        if numel > data_len * 8:
            break
    bits = numel * DTYPE_BITS[dtype]
    if bits % 8 or bits // 8 != end - begin:
        return _bad(problems, name, f"{end - begin} bytes stored but shape {_clip(shape)} of "
                                    f"{dtype} needs {_clip(bits // 8)}")
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, end - begin)


def _bad(problems: _Problems, name: str, text: str) -> None:
    problems.add(f"{name if len(name) <= 120 else name[:117] + '...'}: {text}")


# -- layouts -------------------------------------------------------------------------

@dataclass
class _Pair:
    name: str
    style: str
    down: TensorInfo | None = None
    up: TensorInfo | None = None
    alpha_t: TensorInfo | None = None
    mid: TensorInfo | None = None      # conv core [rank, rank, kh, kw] between down and up
    embedding: bool = False


# the common keys, by their last two (or three) dotted parts: (role, style)
_WEIGHT_ROLES = {"lora_down": ("down", "kohya"), "lora_up": ("up", "kohya"),
                 "lora_mid": ("mid", "kohya"), "lora_A": ("down", "peft"), "lora_B": ("up", "peft")}
_EMBEDDING_ROLES = {"lora_embedding_A": "down", "lora_embedding_B": "up"}


def _split_key(key: str) -> tuple[str, str, str] | None:
    """(layer name, role, style) of a LoRA tensor key, or None.  The common keys are
    taken apart by their last dotted parts; anything else goes through the SUFFIXES
    rules (:func:`_split_key_rules`), which give the same answer for all keys."""
    if "lora" not in key:
        return None
    head, _, last = key.rpartition(".")
    if last == "alpha":
        return None
    if last == "weight":
        name, dot, mid = head.rpartition(".")
        if dot and name:
            rs = _WEIGHT_ROLES.get(mid)
            if rs is not None:
                role, style = rs
                if style == "peft" and name.split(".", 1)[0] in DIFFUSERS_PREFIXES:
                    style = "diffusers"
                return name, role, style
            if mid == "down" or mid == "up":
                name3, dot3, third = name.rpartition(".")
                if dot3 and name3 and (third == "lora" or third == "lora_linear_layer"):
                    return name3, mid, "diffusers"
    elif last in _EMBEDDING_ROLES and head:
        style = "diffusers" if head.split(".", 1)[0] in DIFFUSERS_PREFIXES else "peft"
        return head, _EMBEDDING_ROLES[last], style
    return _split_key_rules(key)


def _split_key_rules(key: str) -> tuple[str, str, str] | None:
    for suf, role, style in SUFFIXES:
        if key.endswith(suf) and len(key) > len(suf):
            name = key[: -len(suf)]
            if style == "peft" and name.split(".", 1)[0] in DIFFUSERS_PREFIXES:
                style = "diffusers"
            return name, role, style
    m = ADAPTER_NAMED_RE.match(key)
    if m:
        return m.group(1), "down" if m.group(2) == "A" else "up", "peft"
    return None


def _group(tensors: list[TensorInfo]) -> tuple[dict[str, _Pair], set[str]]:
    pairs: dict[str, _Pair] = {}
    used: set[str] = set()
    alphas: dict[str, TensorInfo] = {}
    for t in tensors:
        key = t.name
        s = _split_key(key)
        if s is None:
            if key.endswith(".alpha") and key.startswith("lora_"):
                alphas[key[:-6]] = t
            continue
        name, role, style = s
        p = pairs.get(name)
        if p is None:
            p = pairs[name] = _Pair(name, style)
        setattr(p, role, t)
        p.embedding = key.endswith(("lora_embedding_A", "lora_embedding_B"))
        used.add(key)
    for name, t in alphas.items():
        p = pairs.get(name)
        if p is not None:
            p.alpha_t = t
            used.add(t.name)
    return pairs, used


def leaf_name(name: str, style: str) -> str:
    """The adapted layer's own name: ``q_proj``, ``to_out.0``, ``to_k``."""
    if style == "kohya":
        # the longest known leaf the name ends with, after an underscore (a leaf has at
        # most _KOHYA_LEAF_PARTS parts)
        parts = name.rsplit("_", _KOHYA_LEAF_PARTS)
        for k in range(min(_KOHYA_LEAF_PARTS, len(parts) - 1), 0, -1):
            leaf = "_".join(parts[-k:])
            if leaf in _KOHYA_LEAF_SET:
                return leaf
        return "_".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]
    parts = name.split(".")
    if parts[-1].isdigit() and len(parts) > 1:
        return ".".join(parts[-2:])
    return parts[-1]


def _pattern_value(patterns: Any, name: str) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches the end of the
    module name at a dot boundary (or as a regular expression)."""
    if not isinstance(patterns, dict):
        return None
    for pat, v in patterns.items():
        try:
            if re.fullmatch(rf"(.*\.)?(?:{pat})", name):
                return v
        except re.error:
            if name == pat or name.endswith("." + str(pat)):
                return v
    return None


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


class _AlphaSource:
    """Where a module's alpha comes from when the file has no alpha tensor."""

    def __init__(self, fmt: str, metadata: dict[str, str], adapter_config: dict | None,
                 problems: _Problems):
        self.peft = adapter_config if isinstance(adapter_config, dict) else None
        self.diffusers: dict[str, dict] = {}
        self.kohya_alpha = _num(metadata.get("ss_network_alpha"))
        raw = metadata.get("lora_adapter_metadata")
        if raw is not None:
            try:
                d = _json.loads(raw)
            except ValueError:
                d = None
                problems.add("metadata lora_adapter_metadata is not valid JSON: alpha unknown")
            if isinstance(d, dict):
                for k, v in d.items():
                    if "." in k:
                        pre, key = k.split(".", 1)
                        self.diffusers.setdefault(pre, {})[key] = v

    def alpha(self, p: _Pair) -> tuple[float | None, bool]:
        """(alpha, use_rslora)."""
        if p.style == "kohya":
            return self.kohya_alpha, False
        pre, _, rest = p.name.partition(".")
        cfg = self.diffusers.get(pre) if self.diffusers else None
        name = rest
        if cfg is None and self.peft is not None:
            cfg = self.peft
            name = p.name[len("base_model.model."):] if p.name.startswith("base_model.model.") else p.name
        if cfg is None:
            return None, False
        a = _num(_pattern_value(cfg.get("alpha_pattern"), name))
        if a is None:
            a = _num(cfg.get("lora_alpha"))
        return a, bool(cfg.get("use_rslora"))


def load_adapter_config(path: Path, problems: _Problems | None = None) -> dict | None:
    """``adapter_config.json`` beside a PEFT adapter, or None.  Bare NaN is accepted."""
    cfg = path.parent / "adapter_config.json"
    try:
        if not cfg.is_file():
            return None
        if cfg.stat().st_size > MAX_ADAPTER_CONFIG:
            if problems:
                problems.add("adapter_config.json beside the file is too large: ignored")
            return None
        d = _json.loads(read_text(cfg, MAX_ADAPTER_CONFIG + 1))
    except (OSError, ValueError):
        if problems:
            problems.add("adapter_config.json beside the file cannot be read: alpha unknown")
        return None
    return d if isinstance(d, dict) else None


def _json_meta(raw) -> Any:
    """A JSON value stored as a metadata string (small ones only), else None."""
    if not isinstance(raw, str) or len(raw) > 65536:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


# -- step / epoch from the path ------------------------------------------------------

def step_from_path(rel: str, fmt: str) -> tuple[int | None, int | None]:
    """(step, epoch) as the path names them.  ``checkpoint-N/`` and ``-stepN`` are steps;
    kohya's ``name-000005`` is an epoch; a trailing ``-N`` / ``_N`` elsewhere a step."""
    m = hf_trainer.CHECKPOINT_FILE_RE.search(rel)
    if m:
        return int(m.group(1)), None
    stem = rel.rsplit("/", 1)[-1]
    if stem.lower().endswith(".safetensors"):
        stem = stem[: -len(".safetensors")]
    m = STEP_NAME_RE.search(stem)
    if m:
        return int(m.group(1)), None
    m = onetrainer.SAVE_FILE_RE.search(stem)           # <time>-save-<step>-<epoch>-<epoch step>
    if m:
        return int(m.group(1)), int(m.group(2))
    m = ai_toolkit.SAVE_FILE_RE.search(stem)           # <name>_000000250
    if m:
        return int(m.group(1)), None
    if fmt == "kohya":
        m = kohya.EPOCH_FILE_RE.search(stem)
        return (None, int(m.group(1))) if m else (None, None)
    m = TRAILING_NUM_RE.search(stem)
    if m and len(m.group(1)) <= 9:
        return int(m.group(1)), None
    return None, None


# -- reading -------------------------------------------------------------------------

@dataclass
class ReadResult:
    checkpoint: Checkpoint
    readable: bool                 # the header could be read
    facts: dict[str, Any] = field(default_factory=dict)


def _adapter_hints(path: Path, metadata: dict[str, str], tensors: list[TensorInfo],
                   adapter_config: dict | None) -> str | None:
    """The format a file claims to be by its name, metadata or neighbours
    (for files that hold no recognisable LoRA pair), or None for a plain model file."""
    low = path.name.lower()
    if any(k.startswith("ss_") for k in metadata):
        return "kohya"
    if "lora_adapter_metadata" in metadata or low == "pytorch_lora_weights.safetensors":
        return "diffusers"
    if adapter_config is not None or low.startswith("adapter_model"):
        return "peft"
    if any(t.name.startswith("lora_") for t in tensors):
        return "kohya"
    if "lora" in low or "adapter" in low or any("lora" in t.name for t in tensors):
        return "unknown-adapter"
    return None


@contextlib.contextmanager
def _no_gc():
    """The cyclic garbage collector paused: a header of 20k tensors makes 100k small
    objects, and the collections they trigger (each walking the whole heap of the
    analysis so far) cost more than reading the file.  The only cycles made here (the
    down and up jobs of a layer point at each other) are collected once it runs again."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def read(path: Path, rel: str, adapter_config: dict | None = None, *,
         stats_budget: int = STATS_BUDGET) -> ReadResult:
    """Read one safetensors file into a :class:`Checkpoint`; never raises on content."""
    with _no_gc():
        return _read(path, rel, adapter_config, stats_budget)


def _read(path: Path, rel: str, adapter_config: dict | None, stats_budget: int) -> ReadResult:
    problems = _Problems()
    h = read_header(path, problems)
    ck = Checkpoint(path=rel, step=None, format="unknown", size_bytes=h.size, dtype=None,
                    metadata=dict(h.metadata))
    facts: dict[str, Any] = {}
    if not h.ok:
        ck.problems = problems.out()
        ck.truncated = problems.cut
        return ReadResult(ck, False, facts)

    pairs, used = _group(h.tensors)
    lyco, lyco_used = _lycoris.group(h.tensors)
    used |= lyco_used
    styles = Counter(p.style for p in pairs.values() if p.down and p.up)
    styles.update("kohya" if n.startswith("lora_") else "unknown" for n in lyco)
    fmt = styles.most_common(1)[0][0] if styles else "unknown"
    if adapter_config is None and (fmt == "peft" or (not styles and path.name.startswith("adapter_model"))):
        adapter_config = load_adapter_config(path, problems)
    alphas = _AlphaSource(fmt, h.metadata, adapter_config, problems)

    unpaired = [p.name for p in pairs.values() if not (p.down and p.up)]
    if unpaired:
        problems.add(f"{len(unpaired)} LoRA layer(s) have only one of their two weights "
                     f"(first: {unpaired[0][:120]})")

    full = [p for p in pairs.values() if p.down and p.up]
    chains = [_chain(p, problems) for p in full]
    # the table of tensors to scan: a layer's down and up weight side by side (linked
    # when their Gram matrices give the update's norm), then other tensors
    rows: dict[str, int] = {}
    infos: list[TensorInfo] = []
    axis: list[int] = []
    ranks: list[int] = []
    mids: list[tuple[int, TensorInfo, int]] = []
    for p, (rank, chain) in zip(full, chains):
        if p.down.dtype in NUMPY_DTYPES and p.up.dtype in NUMPY_DTYPES:
            rows[p.down.name] = len(infos)
            rows[p.up.name] = len(infos) + 1
            infos += (p.down, p.up)
            if chain:
                axis += (1, 0)
                ranks += (rank, rank)
                if p.mid is not None:
                    mids.append((len(infos) - 2, p.mid, rank))
            else:
                axis += (-1, -1)
                ranks += (0, 0)
    paired = len(infos)
    budget = stats_budget
    skipped = 0
    for t in h.tensors:
        if t.name in rows or t.dtype not in NUMPY_DTYPES:
            continue
        if t.name in used and t.nbytes <= 64:
            pass                       # alpha scalars: always cheap
        elif t.nbytes > budget:
            skipped += 1
            continue
        else:
            budget -= t.nbytes
        rows[t.name] = len(infos)
        infos.append(t)
    if skipped:
        facts["stats_skipped_tensors"] = skipped
    n = len(infos)
    ax = np.full(n, -1, np.int8)
    ax[:paired] = axis
    rk = np.zeros(n, np.int64)
    rk[:paired] = ranks
    partner = np.full(n, -1, np.int64)
    linked = np.flatnonzero(ax[:paired:2] >= 0) * 2          # rows of linked down weights
    partner[linked], partner[linked + 1] = linked + 1, linked

    stats: dict[str, TensorStat] = {}
    modules: list[Module] = []
    try:
        with open_file(path) as f:            # small reads (pread) around the scan
            fd = f.fileno()
            alpha_values = scalars(fd, [p.alpha_t for p in full])
            core = {}
            for d, t, rank in mids:
                m = _mid_core(fd, t, rank)
                if m is None:                  # a broken core: norm of up only
                    ax[d:d + 2], partner[d:d + 2] = -1, -1
                else:
                    core[d] = m
            tab = Table(infos, ax, rk, partner, core)
            scan_table(path, tab)
            nonf, zero, amax, norm, mean = tab.columns()
            cross = tab.cross.tolist()
            for p, (rank, chain), alpha in zip(full, chains, alpha_values):
                if p.down.dtype in NUMPY_DTYPES and p.up.dtype in NUMPY_DTYPES:
                    d = rows[p.down.name]
                    u = d + 1
                    nonfinite = nonf[d] + nonf[u]
                    if p.mid is not None and p.mid.name in rows:
                        nonfinite += nonf[rows[p.mid.name]]
                    modules.append(_module(p, rank, chain, alpha, alphas, cross[d], norm[u],
                                           mean[u], zero[u], nonfinite))
                else:                                        # dtypes we cannot read
                    modules.append(_module(p, rank, chain, alpha, alphas))
            stats = {t.name: TensorStat(t.name, t.dtype, t.shape, nonf[i], zero[i], amax[i], norm[i], mean[i])
                     for i, t in enumerate(infos)}
            for layer in lyco.values():
                alpha = scalar(fd, layer.alpha_t) if layer.alpha_t is not None else None
                if alpha is None and layer.name.startswith("lora_"):
                    alpha = alphas.kohya_alpha
                modules.append(_lycoris.module(layer, fd, alpha, stats))
    except (OSError, ValueError) as e:
        problems.cut = True
        problems.add(f"cannot read tensor data ({e})")
        stats, modules = {}, []

    ck.tensors = [stats.get(t.name) or TensorStat(t.name, t.dtype, t.shape) for t in h.tensors]
    ck.modules = modules
    if modules:
        ck.format = fmt
        ck.rank = _most_common([m.rank for m in modules])
        ck.alpha = _most_common([m.alpha for m in modules])
        lora_dtypes = [t.dtype for p in pairs.values() if p.down and p.up for t in (p.down, p.up)]
        lora_dtypes += [t.dtype for layer in lyco.values() for t in layer.parts.values()]
        ck.dtype = _most_common(lora_dtypes)
        ck.target_modules = sorted({leaf_name(p.name, p.style)
                                    for p in pairs.values() if p.down and p.up}
                                   | {leaf_name(n, "kohya" if n.startswith("lora_") else "peft")
                                      for n in lyco})
        if lyco:
            facts["lycoris_layers"] = len(lyco)
    else:
        ck.dtype = _most_common([t.dtype for t in h.tensors])
        hint = _adapter_hints(path, h.metadata, h.tensors, adapter_config)
        lycoris = sum(1 for t in h.tensors if LYCORIS_RE.search(t.name))
        if lycoris:
            facts["lycoris_layers"] = lycoris
            problems.add(f"{lycoris} LyCORIS tensors of an algorithm lorascope does not "
                         "analyse (OFT, BOFT, full diff, norms)")
        elif not h.tensors:
            ck.format = hint if hint and hint != "unknown-adapter" else "unknown"
            problems.add("file holds no tensors")
        elif hint:
            ck.format = hint if hint != "unknown-adapter" else "unknown"
            problems.add("adapter file holds no LoRA weights (no down/up or A/B pair)")
        else:
            facts["no_lora_modules"] = True    # a full model's weights: not a problem

    step, epoch = step_from_path(rel, ck.format)
    if ck.format == "kohya" or any(k.startswith("ss_") for k in h.metadata):
        ss_steps = kohya.file_step(h.metadata, positive=False)
        ss_epoch = kohya.file_epoch(h.metadata)
        if ss_steps is not None and step is None:
            step = ss_steps
        if ss_epoch is not None and epoch is None:
            epoch = ss_epoch
    if step is None and "training_info" in h.metadata:  # ai-toolkit: {"step": N, "epoch": E}
        info = _json_meta(h.metadata.get("training_info"))
        if isinstance(info, dict) and isinstance(info.get("step"), int) and 0 < info["step"] < 2 ** 62:
            step = info["step"]
    ck.step = step
    if epoch is not None:
        facts["checkpoint_epoch"] = epoch
    ck.problems = problems.out()
    ck.truncated = problems.cut
    return ReadResult(ck, True, facts)


def _most_common(values: list) -> Any:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return Counter(vals).most_common(1)[0][0]


def _chain(p: _Pair, problems: _Problems) -> tuple[int | None, bool]:
    """(rank, whether ``up @ down`` is a plain matrix product whose norm the Gram
    matrices give)."""
    down, up = p.down, p.up
    assert down is not None and up is not None
    if p.embedding:
        # PEFT embedding LoRA: A [r, num_embeddings], B [dim, r]; update (B @ A)^T
        rank = down.shape[0] if down.shape else None
    else:
        rank = down.shape[0] if len(down.shape) >= 2 else None
    up_k = 1
    for d in up.shape[2:]:
        up_k *= d
    if rank is not None and len(up.shape) >= 2 and up.shape[1] != rank:
        problems.add(f"{p.name[:120]}: up {list(up.shape)} and down {list(down.shape)} "
                     "shapes do not chain")
    chain = (rank is not None and rank > 0 and len(up.shape) >= 2 and up.shape[1] == rank
             and up_k == 1 and rank <= MAX_GRAM_RANK)
    if p.mid is not None and chain:
        # the update is up x mid x down per kernel position: the Grams still give its
        # norm (see _mid_core), if the core is [rank, rank, ...] and down is 1x1
        down_k = math.prod(down.shape[2:])
        m = p.mid.shape
        if not (len(m) >= 2 and m[0] == rank and m[1] == rank and down_k == 1
                and p.mid.dtype in NUMPY_DTYPES and p.mid.numel * rank <= MAX_MID_WORK):
            problems.add(f"{p.name[:120]}: mid {list(m)} does not sit between down "
                         f"{list(down.shape)} and up {list(up.shape)}: norm of up only")
            chain = False
    return rank, chain


def _mid_core(fd: int, t: TensorInfo, rank: int) -> np.ndarray | None:
    """A LoCon Tucker core ``[rank, rank, kh, kw]`` as float64 ``[k, rank, rank]`` (one
    r x r matrix per kernel position); None if it cannot be read or is not finite."""
    a = read_small(fd, t, MAX_MID)
    if a is None or not np.isfinite(a).all():
        return None
    return np.ascontiguousarray(a.reshape(rank, rank, -1).transpose(2, 0, 1))


def _module(p: _Pair, rank: int | None, chain: bool, alpha: float | None, alphas: _AlphaSource,
            cross: float | None = None, up_norm: float = 0.0, mean_abs: float | None = None,
            zero: bool = False, nonfinite: int = 0) -> Module:
    """One adapted layer from the statistics of its down and up weights (``cross``: the
    squared norm of ``up @ down``, NaN when the scan could not give it; None: dtypes we
    cannot read)."""
    rslora = False
    if alpha is None:
        alpha, rslora = alphas.alpha(p)
    if cross is None:
        return Module(p.name, rank, alpha, None, None, False, 0)
    if chain and cross == cross:
        norm = math.sqrt(max(cross, 0.0))
        if alpha is not None and rank:
            norm *= alpha / (math.sqrt(rank) if rslora else rank)
    else:
        norm = up_norm
    return Module(p.name, rank, alpha, norm if math.isfinite(norm) else None, mean_abs, zero, nonfinite)


def read_checkpoint(path: Path, rel: str, adapter_config: dict | None = None) -> Checkpoint:
    """One safetensors file as a :class:`Checkpoint` (problems on ``Checkpoint.problems``).
    ``adapter_config``: the PEFT ``adapter_config.json`` dict; when None it is looked for
    beside the file."""
    return read(path, rel, adapter_config).checkpoint


def parse(path: Path, rel: str) -> Parsed:
    """The ingest entry point: one ``*.safetensors`` file of a run directory."""
    r = read(path, rel)
    ck = r.checkpoint
    src = Source(path=rel, kind=KIND, records=len(ck.tensors), problems=list(ck.problems))
    # an unreadable file is kept (ckpt.truncated reports it), with no tensors
    parsed = Parsed(source=src, checkpoints=[ck] if r.readable or ck.truncated else [],
                    facts=dict(r.facts))
    if ck.format in ("kohya", "diffusers"):
        parsed.facts["task"] = "sd"
    elif ck.format == "peft" and any(".layers." in m.name for m in ck.modules):
        parsed.facts["task"] = "llm"
    if ck.metadata:
        try:
            from lorascope.ingest.config import parse_safetensors_metadata
        except ImportError:
            parse_safetensors_metadata = None
        if parse_safetensors_metadata is not None:
            try:
                parsed.config.extend(parse_safetensors_metadata(ck.metadata, rel, parsed.facts) or [])
            except Exception as e:     # another module's bug must not lose this file
                src.problems.append(f"metadata could not be read as config ({type(e).__name__})")
    return parsed
