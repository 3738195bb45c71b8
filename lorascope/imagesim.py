"""How two images compare, and the sample timelines of a run.

An image is reduced once, where it is decoded (:mod:`lorascope.ingest.samples` for the
samples a trainer generated, :mod:`lorascope.ingest.dataset` for the training images),
to a :class:`~lorascope.model.Signature`:

* ``phash``: the 64-bit DCT perceptual hash of ``imagehash.phash`` (8x8 low frequencies of
  a 32x32 grey copy against their median): stable under resizing, blur, noise and colour
  changes; two unrelated pictures differ in about half of the 64 bits;
* ``tiny``: a 32x32 RGB copy.  Its zero-mean correlation with another image's tells near
  copies apart from pictures that merely share a palette or a style, and tolerates the
  colour casts, blur, noise and small offsets a diffusion model adds when it reproduces
  an image (the best of the offsets within ``MAX_SHIFT`` pixels, 6% of the side, is
  taken).

Two images are *near-identical* when that correlation reaches a threshold from the
catalog (``rules/samples.toml``).  It decides alone: on the flat backgrounds SD samples
often have, the hash's low-frequency coefficients sit near their median and noise flips
them (a memorised green triangle on black was 32 bits from its training image), while
the correlation stays above 0.94 for such copies and below 0.65 for same-style pictures
(bench/bench_samples.py).  The hash measures how much a prompt's picture changed between
two steps (drift), together with the correlation.  The same signature serves
memorisation (a sample against the training images), collapse (samples of different
prompts against each other) and drift (one prompt's consecutive samples).

:func:`strips` groups a run's samples into timelines: one per prompt and seed (or per
TensorBoard tag), ordered by step.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from lorascope.model import SampleImage, Signature

TINY = 32                  # side of the RGB copy kept in a signature
MAX_SHIFT = 2              # offsets (in TINY pixels, 1/32 of the side each) tried by correlation
COARSE = 8                 # the candidate search compares TINY/COARSE-times smaller copies
HASH_BITS = 64
NOISE_SIDE = 64            # the noise test runs on a grey copy about this size


# -- signatures (computed where an image is decoded) --------------------------------------

def signature(im) -> Signature:
    """The signature of a decoded Pillow image (any mode, any size)."""
    import imagehash
    from PIL import Image

    rgb = im if im.mode == "RGB" else im.convert("RGB")
    ph = imagehash.phash(rgb)
    bits = np.packbits(ph.hash.flatten().astype(np.uint8))
    tiny = rgb.resize((TINY, TINY), Image.BOX)
    return Signature(phash=int.from_bytes(bits.tobytes(), "big"), tiny=tiny.tobytes())


def noise_score(im) -> float:
    """Lag-one autocorrelation of the grey levels (mean over rows and columns) of a copy
    about ``NOISE_SIDE`` pixels wide: near 1 for pictures (neighbouring pixels alike), near 0
    for the static a broken decoder or a diverged model paints."""
    from PIL import Image

    g = im.convert("L")
    side = max(g.size)
    if side > NOISE_SIDE:
        f = NOISE_SIDE / side
        g = g.resize((max(2, round(g.width * f)), max(2, round(g.height * f))), Image.BOX)
    a = np.asarray(g, dtype=np.float64)
    if a.shape[0] < 2 or a.shape[1] < 2:
        return 1.0
    a = a - a.mean()
    var = float((a * a).mean())
    if var < 1e-9:
        return 1.0
    cx = float((a[:, 1:] * a[:, :-1]).mean()) / var
    cy = float((a[1:, :] * a[:-1, :]).mean()) / var
    return (cx + cy) / 2


# -- comparisons ------------------------------------------------------------------------

def _tiny(sig: Signature) -> np.ndarray:
    return np.frombuffer(sig.tiny, np.uint8).reshape(TINY, TINY, 3).astype(np.float32)


def hamming(a: int, b: int) -> int:
    return int((a ^ b).bit_count())


@lru_cache(maxsize=8192)
def _prepared(sig: Signature) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The copy centred per channel, its 2-D FFT (zero-padded to twice the side: no wrap
    around) and the integral image of its squared values (summed over channels)."""
    x = _tiny(sig).astype(np.float64)
    x -= x.mean(axis=(0, 1))
    f = np.fft.rfft2(x, s=(2 * TINY, 2 * TINY), axes=(0, 1))
    e = np.zeros((TINY + 1, TINY + 1))
    e[1:, 1:] = (x * x).sum(axis=2).cumsum(0).cumsum(1)
    return x, f, e


def _energy(e: np.ndarray, d0: int, d1: int) -> float:
    """Sum of the squared values over rows/columns [max(0, d), n + min(0, d))."""
    r0, r1 = max(0, d0), TINY + min(0, d0)
    c0, c1 = max(0, d1), TINY + min(0, d1)
    return float(e[r1, c1] - e[r0, c1] - e[r1, c0] + e[r0, c0])


def correlation(a: Signature, b: Signature, max_shift: int = MAX_SHIFT) -> float:
    """Best normalised correlation of the two 32x32 RGB copies (each channel centred on
    its own mean: a colour cast or a brightness change costs little, a different picture
    does) over offsets of up to ``max_shift`` pixels, each offset's overlap normalised by
    its own energy.  1: the same picture.  All offsets at once, by FFT."""
    x, fx, ex = _prepared(a)
    y, fy, ey = _prepared(b)
    if ex[-1, -1] < 1e-6 or ey[-1, -1] < 1e-6:
        # a flat copy: alike only when both are flat
        return 1.0 if ex[-1, -1] < 1e-6 and ey[-1, -1] < 1e-6 else 0.0
    if max_shift == 0:
        return float((x * y).sum() / np.sqrt(ex[-1, -1] * ey[-1, -1]))
    cc = np.fft.irfft2(fx * np.conj(fy), s=(2 * TINY, 2 * TINY), axes=(0, 1)).sum(axis=2)
    best = -1.0
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            # cc[dy, dx] = sum over i, j of x[i + dy, j + dx] * y[i, j]
            den = _energy(ex, dy, dx) * _energy(ey, -dy, -dx)
            if den > 1e-9:
                best = max(best, float(cc[dy % (2 * TINY), dx % (2 * TINY)]) / np.sqrt(den))
    return best


def coarse(sigs: Sequence[Signature]) -> np.ndarray:
    """(n, 192) unit vectors of 8x8 copies (channels centred): their dot products find
    the candidate pairs :func:`correlation` then confirms, without comparing every pair
    at full size."""
    if not sigs:
        return np.zeros((0, COARSE * COARSE * 3), np.float32)
    k = TINY // COARSE
    a = np.stack([_tiny(s) for s in sigs]).reshape(len(sigs), COARSE, k, COARSE, k, 3).mean(axis=(2, 4))
    a = a - a.mean(axis=(1, 2), keepdims=True)
    a = a.reshape(len(sigs), -1)
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    return (a / np.maximum(norm, 1e-6)).astype(np.float32)


def near_pairs(a: Sequence[Signature], b: Sequence[Signature], min_corr: float,
               coarse_margin: float = 0.25, same: bool = False,
               b_coarse: np.ndarray | None = None) -> list[tuple[int, int, float]]:
    """(i, j, correlation) of every a[i], b[j] whose :func:`correlation` is at least
    ``min_corr`` (``same``: a is b, each unordered pair once; ``b_coarse``: ``coarse(b)``
    when the caller keeps it)."""
    if not len(a) or not len(b):
        return []
    va = coarse(a)
    vb = None if same else (b_coarse if b_coarse is not None else coarse(b))
    out = []
    step = 2048
    for lo in range(0, len(a), step):
        d = va[lo:lo + step] @ (vb if vb is not None else va).T
        ii, jj = np.nonzero(d >= min_corr - coarse_margin)
        for i, j in zip((ii + lo).tolist(), jj.tolist()):
            if same and j <= i:
                continue
            c = correlation(a[i], b[j])
            if c >= min_corr:
                out.append((i, j, c))
    return out


def change(a: Signature, b: Signature) -> float:
    """How much one picture changed into the other, 0 (same) .. ~1 (unrelated): the
    perceptual-hash distance as a share of the bits unrelated pictures differ in (32),
    averaged with one minus the shift-free correlation of the copies (clipped to 0..1)."""
    h = min(1.0, hamming(a.phash, b.phash) / (HASH_BITS / 2))
    c = min(1.0, max(0.0, 1.0 - correlation(a, b, max_shift=0)))
    return (h + c) / 2


# -- timelines --------------------------------------------------------------------------

@dataclass
class Strip:
    """The samples of one prompt (and seed) over the run, ordered by step."""

    key: tuple
    label: str                      # "prompt 0 (seed 42)", "validation/0", ...
    prompt: str | None
    seed: int | None
    samples: list[SampleImage]

    @property
    def steps(self) -> list[int]:
        return [s.step for s in self.samples if s.step is not None]


def strip_key(s: SampleImage) -> tuple:
    if s.prompt_index is not None:
        return ("p", s.prompt_index, s.seed if s.seed is not None else -1)
    return ("t", s.tag or "", s.seed if s.seed is not None else -1)


def _label(s: SampleImage) -> str:
    if s.prompt_index is not None:
        base = f"prompt {s.prompt_index}"
    else:
        base = s.tag or "samples"
    return base + (f" (seed {s.seed})" if s.seed is not None else "")


def strips(samples: Sequence[SampleImage]) -> list[Strip]:
    """One strip per prompt and seed (TensorBoard: per tag), samples ordered by step;
    samples whose step is unknown are left out."""
    groups: dict[tuple, list[SampleImage]] = {}
    for s in samples:
        if s.step is None:
            continue
        groups.setdefault(strip_key(s), []).append(s)
    out = []
    for key in sorted(groups, key=lambda k: (k[0], str(k[1]), k[2])):
        ss = sorted(groups[key], key=lambda s: (s.step, s.file))
        first = ss[0]
        prompt = next((s.prompt for s in ss if s.prompt), None)
        out.append(Strip(key, _label(first), prompt, first.seed, ss))
    return out


def sample_steps(strips_: Sequence[Strip]) -> list[int]:
    """Every step at which some strip has a sample, ascending."""
    return sorted({s.step for st in strips_ for s in st.samples if s.step is not None})
