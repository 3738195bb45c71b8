"""LyCORIS LoHa and LoKr layers (kohya-style names: ``lora_unet_..._to_q.hada_w1_a``).

A LoCon layer is an ordinary down/up pair (``safetensors.py`` reads it, with its
``lora_mid`` Tucker core); LoHa and LoKr store factors whose product is the update:

* LoHa: ``dW = (hada_w1_a @ hada_w1_b) * (hada_w2_a @ hada_w2_b) * alpha / rank``
  (element-wise product), rank = ``hada_w1_b.shape[0]``.  Its norm is computed exactly by
  forming the two products a block of rows at a time (memory: one block).
* LoKr: ``dW = kron(W1, W2) * scale`` where each ``W`` is stored whole (``lokr_w1``) or as
  ``lokr_w1_a @ lokr_w1_b``; ``||kron(W1, W2)|| = ||W1|| * ||W2||``.  ``scale`` is
  ``alpha / rank`` when a factor is decomposed (rank = that factor's inner size), else 1,
  and such a layer has no rank and no alpha (LyCORIS stores its lora_dim as the alpha).

These are the conventions of the programs that apply the files (LyCORIS when it loads a
state dict, ComfyUI, A1111).  ``zero`` and ``mean_abs`` describe the factor LyCORIS starts
at zero (``hada_w2_a``; ``lokr_w2`` or ``lokr_w2_b``), the counterpart of a LoRA up
weight.  Tucker variants (``hada_t1``/``hada_t2``, ``lokr_t2``) are listed with their
rank and alpha but no norm.  The factors are read with ``pread`` after the tensor scan,
which has already counted their non-finite values (they count as 0 in norms).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lorascope.ingest._tensorscan import TensorInfo, read_small
from lorascope.model import Module, TensorStat

LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
TUCKER = ("hada_t1", "hada_t2", "lokr_t2")
KEYS = frozenset(LOHA + LOKR + TUCKER)
MAX_FACTOR = 1 << 24            # elements of one factor read into memory (as float64)
BLOCK = 1 << 22                 # elements of an update formed at a time (LoHa)
MAX_UPDATE = 1 << 28            # elements of a LoHa update we form at all (16k x 16k)
MAX_WORK = 1 << 34              # multiply-adds spent on one layer's norm (a few seconds)


@dataclass
class Layer:
    name: str
    kind: str                   # "loha" | "lokr"
    parts: dict[str, TensorInfo] = field(default_factory=dict)
    alpha_t: TensorInfo | None = None


def group(tensors: list[TensorInfo]) -> tuple[dict[str, Layer], set[str]]:
    """LoHa / LoKr layers by name, and the tensor names they use (alphas included)."""
    layers: dict[str, Layer] = {}
    for t in tensors:
        name, _, leaf = t.name.rpartition(".")
        if leaf in KEYS and name:
            kind = "loha" if leaf.startswith("hada") else "lokr"
            layer = layers.setdefault(name, Layer(name, kind))
            layer.parts[leaf] = t
    if not layers:
        return layers, set()
    used = {t.name for layer in layers.values() for t in layer.parts.values()}
    by_name = {t.name: t for t in tensors}
    for name, layer in layers.items():
        a = by_name.get(name + ".alpha")
        if a is not None:
            layer.alpha_t = a
            used.add(a.name)
    return layers, used


def _values(fd: int, t: TensorInfo) -> np.ndarray | None:
    """A factor as a float64 matrix (non-finite values as 0), or None if it is too large
    or cannot be read."""
    a = read_small(fd, t, MAX_FACTOR) if t.shape else None
    if a is None:
        return None
    a[~np.isfinite(a)] = 0.0
    return a.reshape(t.shape[0], -1)


def _product_norm(fd: int, a: TensorInfo | None, b: TensorInfo | None,
                  whole: TensorInfo | None, stats: dict[str, TensorStat]) -> float | None:
    """||W|| of a LoKr factor stored whole or as a @ b."""
    if whole is not None:
        s = stats.get(whole.name)
        return s.norm if s is not None else None
    if a is None or b is None:
        return None
    x, y = _values(fd, a), _values(fd, b)
    if x is None or y is None or x.shape[1] != y.shape[0]:
        return None
    if x.shape[1] * (x.size + y.size) > MAX_WORK:
        return None                            # a rank no real layer has: bounded time
    gx, gy = x.T @ x, y @ y.T                 # ||x y||^2 = <x^T x, y y^T>
    return math.sqrt(max(float(np.vdot(gx, gy)), 0.0))


def _loha_norm(fd: int, p: dict[str, TensorInfo]) -> float | None:
    w = [_values(fd, p[k]) for k in LOHA]
    if any(x is None for x in w):
        return None
    w1a, w1b, w2a, w2b = w
    if not (w1a.shape[1] == w1b.shape[0] and w2a.shape[1] == w2b.shape[0]
            and w1a.shape[0] == w2a.shape[0] and w1b.shape[1] == w2b.shape[1]):
        return None
    if (w1a.shape[0] * w1b.shape[1] > MAX_UPDATE
            or w1a.shape[0] * w1b.shape[1] * (w1a.shape[1] + w2a.shape[1]) > MAX_WORK):
        return None                            # no real layer is this large: bounded time
    rows = max(1, BLOCK // max(1, w1b.shape[1]))
    total = 0.0
    for i in range(0, w1a.shape[0], rows):
        h = (w1a[i:i + rows] @ w1b) * (w2a[i:i + rows] @ w2b)
        total += float(np.vdot(h, h))
    return math.sqrt(total)


def module(layer: Layer, fd: int, alpha: float | None, stats: dict[str, TensorStat]) -> Module:
    """The :class:`Module` of one LoHa / LoKr layer."""
    p = layer.parts
    nonfinite = sum(stats[t.name].nonfinite for t in p.values() if t.name in stats)
    tucker = any(k in p for k in TUCKER)
    if layer.kind == "loha":
        rank = p["hada_w1_b"].shape[0] if "hada_w1_b" in p and p["hada_w1_b"].shape else None
        zero_part = p.get("hada_w2_a")
        norm = None if tucker or not all(k in p for k in LOHA) else _loha_norm(fd, p)
    else:
        inner = p.get("lokr_w1_b") or p.get("lokr_w2_b")
        rank = inner.shape[0] if inner is not None and inner.shape else None
        zero_part = p.get("lokr_w2") or p.get("lokr_w2_b")
        n1 = _product_norm(fd, p.get("lokr_w1_a"), p.get("lokr_w1_b"), p.get("lokr_w1"), stats)
        n2 = None if tucker else _product_norm(fd, p.get("lokr_w2_a"), p.get("lokr_w2_b"),
                                               p.get("lokr_w2"), stats)
        norm = n1 * n2 if n1 is not None and n2 is not None else None
    if layer.kind == "lokr" and rank is None:
        # both factors whole: no scaling (LyCORIS then stores alpha = its lora_dim, which
        # says nothing about the run's network_alpha)
        alpha = None
    if norm is not None and alpha is not None and rank:
        norm *= alpha / rank
    z = stats.get(zero_part.name) if zero_part is not None else None
    return Module(name=layer.name, rank=rank, alpha=alpha,
                  norm=norm if norm is not None and math.isfinite(norm) else None,
                  mean_abs=z.mean_abs if z is not None else None,
                  zero=bool(z is not None and z.zero), nonfinite=nonfinite)
