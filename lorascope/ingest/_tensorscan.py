"""Statistics of the tensors of a safetensors file, in one pass over their bytes.

Per tensor: element count, non-finite count, abs max, sum of |x| and of x**2 over the
finite elements, and on request its rank x rank Gram matrix (``B^T B`` of an up weight
``[n, rank]``, ``A A^T`` of a down weight ``[rank, n]``), from which the caller gets the
exact norm of ``B @ A`` without forming it: two linked tensors (a layer's down and up
weight) get ``cross = sum(gram_down * gram_up) = ||up @ down||_F^2`` once both are
scanned, and their Gram matrices are dropped.

The caller describes the tensors as a :class:`Table` (one row per tensor, numpy arrays)
and :func:`scan_table` fills its result arrays.  :class:`Job` / :func:`scan` are the same
for a list of objects.

**The compiled pass.**  When lorascope was installed with a C compiler at hand,
``_scankernel`` (Cython around the loops of ``_scankernel.h``, built by ``hatch_build.py``)
takes a whole span of up to :data:`KERNEL_SPANS` x :data:`BATCH` elements in one call
without the GIL: per tensor, the largest magnitude's bits, the |x| and x**2 sums, and the
Gram matrices of down weights up to rank 64 and of up weights of the :data:`UP_RANKS`,
widening 16-bit values in L1-sized blocks as it goes (float32 lanes, each block's lanes
summed into float64).  Larger or odd ranks get their Gram matrices from BLAS over the
float32 values it widened; a tensor with non-finite or extreme values is recomputed on
the general path below.  Its loops are built for AVX-512, AVX2 and the baseline, chosen
when the module loads.  Without it (``KERNEL`` None) the numpy path below gives the same
statistics (tests run both; ``bench/scan_equivalence.py`` compares them on real files).

How the numpy path stays near the memory bandwidth (``bench/bench_ckpt.py``;
``bench/README.md`` has the numbers):

* **Batches, vectorised.**  LoRA tensors are small (tens to hundreds of KiB) and lie back
  to back, so neighbouring tensors of one dtype are read as one span of up to
  :data:`BATCH` elements (1 MiB of float32: the span, its widened copy and BLAS's
  packing stay in a core's L2 cache).  A span costs a fixed number of numpy calls
  whatever it holds: one widening, two ``maximum.reduceat`` on the raw bits for every
  tensor's maximum, and per group of tensors of one shape (a layer's down weights, its
  up weights) one batched matrix product over a strided view for all their Gram
  matrices, one ``abs`` and one matrix-vector product for all their |x| sums.  Pairs of a
  span get their ``cross`` in one ``einsum``.  Python work per tensor is a few array
  entries.
* **Maxima on the raw bits.**  For BF16, F16 and F32 the largest magnitude is read from
  the stored integers: the largest unsigned value is the largest negative number's
  magnitude plus the sign bit, the largest signed value the largest positive number's
  magnitude.  Magnitude bits at or above the infinity pattern mean a non-finite value;
  only then is the tensor cleaned element by element (rare: a broken adapter).  An
  all-finite tensor needs no ``isfinite`` pass, and zero is ``abs max == 0``.
* **Widening** BF16 is a widening copy and a shift of the 16 bits into the high half of a
  float32; F16 a sign-extending copy, a shift by 13, a mask and a multiplication by
  2**112 (exact for normal and subnormal halves; numpy's own float16 cast is several
  times slower).  F32 is used where it was read.  Other dtypes (F64, integers) go
  through float64, tensor by tensor.  Tensors whose values would overflow or underflow
  float32 squares are summed in float64.
* **Gram products.**  Up to rank :data:`SYRK_RANK` a group's Gram matrices are one
  batched ``sgemm`` call (``np.matmul`` on a 3-D strided view); from there a symmetric
  product (``ssyrk``) per tensor does half the multiply-adds.  This is the one cost
  that grows with the rank (``(rank + 1) / 2`` multiply-adds per element).
* **Threads.**  With a fixed number of numpy calls per span the GIL is held a few
  percent of the time, so :data:`SCAN_WORKERS` threads (one per CPU) take spans from a
  shared counter and scale where forked processes used to be needed; BLAS is held to one
  thread meanwhile.

* **Everything is read with ``preadv``.**  A memory-mapped file that shrinks while it is
  read (a trainer still writing the adapter) kills the process with SIGBUS, which Python
  cannot catch.  Every thread reads its span (or a block of a large tensor) with
  ``preadv`` into its own buffer: a read that comes back short is a problem on the file
  ("truncated, or shrinking while read").

Results do not depend on which thread scanned a tensor, nor on how many there were: the
spans are planned once, every thread computes a span the same way, and its buffers are
64-byte aligned with the values at the file offset's alignment, so BLAS splits its sums
the same way everywhere.

Memory: per thread, one read buffer and one float32 buffer of :data:`BATCH` elements or
the largest tensor scanned whole (up to :data:`WHOLE` elements; larger ones are scanned
in blocks of rows, or of columns for a wide down weight), plus the Gram matrices of
tensors whose partner lies in a span not yet scanned.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import struct
import threading
from dataclasses import dataclass, field

import numpy as np

KERNEL_ABI = 1                         # the compiled pass this code calls (_scankernel.ABI)
try:                                   # the compiled single pass, when it was built
    from lorascope.ingest import _scankernel as KERNEL
except ImportError:                    # no C compiler at install: numpy alone, same numbers
    KERNEL = None
if getattr(KERNEL, "ABI", None) != KERNEL_ABI:   # a module left by an older build
    KERNEL = None

BATCH = 1 << 18                        # float32 elements per span (1 MiB)
KERNEL_SPANS = 16                      # the compiled pass takes spans of this many BATCHes
UP_RANKS = (1, 2, 4, 8, 16, 32, 64)    # up weights whose Gram the compiled pass computes
WHOLE = 1 << 22                        # a larger tensor is scanned in blocks
MAX_GAP = 1 << 16                      # bytes of unscanned data a span may step over
SCAN_WORKERS = 4                       # threads scanning one file (at most one per CPU)
PARALLEL_MIN_BYTES = 32 * 1024 * 1024  # below this, one thread (a second costs ~1 ms)
SYRK_RANK = 48                         # from this rank, Grams are symmetric products
SMALL_READ = 1 << 16                   # scalars closer than this are read in one pread

# dtypes read from their bits: (unsigned view, signed view, sign bit, smallest non-finite
# magnitude)
FAST = {
    "BF16": (np.dtype("<u2"), np.dtype("<i2"), 0x8000, 0x7F80),
    "F16": (np.dtype("<u2"), np.dtype("<i2"), 0x8000, 0x7C00),
    "F32": (np.dtype("<u4"), np.dtype("<i4"), 0x80000000, 0x7F800000),
}
# every dtype we compute statistics for, and how numpy reads its bytes
NUMPY_DTYPES = {
    "F32": "<f4", "F16": "<u2", "BF16": "<u2", "F64": "<f8", "BOOL": "|u1", "U8": "|u1",
    "I8": "|i1", "I16": "<i2", "U16": "<u2", "I32": "<i4", "U32": "<u4", "I64": "<i8",
    "U64": "<u8",
}
F16_KEEP = np.int32(0x8FFFE000 - (1 << 32))   # sign (smeared by the shift) + 15 value bits
F16_SCALE = np.float32(2.0 ** 112)            # float32 exponent bias minus float16's, as 2**n
F16_BIG = 65536.0                              # inf/nan halves widen to this or more
# float32 sums and products stay exact enough while every |x| lies in this range (a
# span's sum of squares stays below 1e36); outside it a tensor is summed in float64
F32_SAFE = (1e-15, 1e15)


def _safe_bits(dtype: str) -> tuple[int, int]:
    """The magnitude bit patterns of the smallest and largest values of ``dtype`` within
    F32_SAFE (patterns of non-negative numbers sort as their values)."""
    if dtype == "F16":
        return 1, 0x7BFF                     # every non-zero finite half is in range
    lo, hi = np.array(F32_SAFE, np.float32)
    a, b = int(lo.view(np.uint32)), int(hi.view(np.uint32))
    if dtype == "BF16":                      # the bf16 patterns just inside the range
        return (a + 0xFFFF) >> 16, b >> 16
    return a if lo >= F32_SAFE[0] else a + 1, b if hi <= F32_SAFE[1] else b - 1


SAFE_BITS = {k: _safe_bits(k) for k in ("F16", "BF16", "F32")}


class TensorInfo:
    """One tensor of the header: name, dtype, shape, absolute byte offset, byte count."""

    __slots__ = ("name", "dtype", "shape", "begin", "nbytes", "numel")

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...], begin: int, nbytes: int):
        self.name, self.dtype, self.shape, self.begin, self.nbytes = name, dtype, shape, begin, nbytes
        self.numel = math.prod(shape)

    def __repr__(self) -> str:
        return f"TensorInfo({self.name!r}, {self.dtype}, {self.shape}, @{self.begin}+{self.nbytes})"


class FileShrank(ValueError):
    """A read came back short: the file is shorter than its header says, or it shrank
    while it was read (a trainer still writing it)."""

    def __init__(self, offset: int, want: int, got: int):
        super().__init__(f"the file ends at byte {offset + got}, before the {want} bytes at "
                         f"{offset} the header names: truncated, or shrinking while read")


# -- what to scan and what comes out ------------------------------------------------

class Table:
    """The tensors to scan, one row each, and their statistics once scanned.

    ``axis``: 0 for an ``[n, rank]`` up weight (Gram ``x^T x``), 1 for a ``[rank, n]``
    down weight (``x x^T``), -1 for no Gram.  ``partner``: the row of the other half of a
    layer (-1: none); a linked pair gets ``cross``.  ``mids``: on a down row, the LoCon
    Tucker core ``[k, rank, rank]`` (float64) between down and up.  ``keep_grams``: keep
    the Gram matrix of rows without a partner in ``grams`` (tests)."""

    def __init__(self, infos: list[TensorInfo], axis=None, rank=None, partner=None,
                 mids: dict[int, np.ndarray] | None = None, keep_grams: bool = False):
        n = len(infos)
        self.infos = infos
        self.begin = np.fromiter((t.begin for t in infos), np.int64, n)
        self.nbytes = np.fromiter((t.nbytes for t in infos), np.int64, n)
        self.numel = np.fromiter((t.numel for t in infos), np.int64, n)
        self.dtypes = [t.dtype for t in infos]
        self.axis = np.full(n, -1, np.int8) if axis is None else np.asarray(axis, np.int8)
        self.rank = np.zeros(n, np.int64) if rank is None else np.asarray(rank, np.int64)
        self.partner = np.full(n, -1, np.int64) if partner is None else np.asarray(partner, np.int64)
        self.mids = mids or {}
        self.grams: dict[int, np.ndarray] | None = {} if keep_grams else None
        # results
        self.count = np.zeros(n, np.int64)
        self.nonfinite = np.zeros(n, np.int64)
        self.abs_max = np.zeros(n)
        self.abs_sum = np.zeros(n)
        self.sq_sum = np.zeros(n)
        self.cross = np.full(n, np.nan)
        # Gram matrices waiting for their partner (scanned in another span)
        self._waiting: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        for a in (self.count, self.nonfinite, self.abs_max, self.abs_sum, self.sq_sum):
            a[:] = 0
        self.cross[:] = np.nan
        self._waiting.clear()
        if self.grams is not None:
            self.grams.clear()

    def columns(self) -> tuple[list, list, list, list, list]:
        """(nonfinite, zero, abs_max, norm, mean_abs) per row, as Python lists: what a
        :class:`~lorascope.model.TensorStat` holds."""
        count, nonf = self.count, self.nonfinite
        fin = count - nonf
        zero = (count > 0) & (nonf == 0) & (self.abs_max == 0.0)
        norm = np.sqrt(np.maximum(self.sq_sum, 0.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(fin > 0, self.abs_sum / np.maximum(fin, 1), 0.0)
        return nonf.tolist(), zero.tolist(), self.abs_max.tolist(), norm.tolist(), mean.tolist()


@dataclass
class Acc:
    """Running statistics of one tensor (the :class:`Job` view of a table row)."""

    nonfinite: int = 0
    abs_max: float = 0.0
    abs_sum: float = 0.0
    sq_sum: float = 0.0
    count: int = 0
    gram: np.ndarray | None = None     # rank x rank, float64

    def stat(self, t: TensorInfo):
        from lorascope.model import TensorStat
        fin = self.count - self.nonfinite
        sq = self.sq_sum
        return TensorStat(t.name, t.dtype, t.shape, self.nonfinite,
                          self.count > 0 and self.nonfinite == 0 and self.abs_max == 0.0,
                          self.abs_max, math.sqrt(sq) if sq > 0 else 0.0,
                          self.abs_sum / fin if fin else 0.0)


@dataclass(eq=False)
class Job:
    """One tensor to scan, as an object: ``axis`` / ``rank`` as in :class:`Table`; two
    jobs linked with :func:`pair` get ``cross``; ``mid`` on a down job is its LoCon
    Tucker core."""

    t: TensorInfo
    axis: int | None = None
    rank: int = 0
    acc: Acc = field(default_factory=Acc)
    partner: Job | None = None
    cross: float | None = None
    done: bool = False
    mid: np.ndarray | None = None


def pair(down: Job, up: Job) -> None:
    down.partner, up.partner = up, down


def scan(path: str | os.PathLike, jobs: list[Job], workers: int | None = None) -> None:
    """Fill every job's ``acc`` (and ``cross`` of linked partners; the Gram matrix of a
    job without a partner stays in ``acc.gram``)."""
    index = {id(j): i for i, j in enumerate(jobs)}
    tab = Table([j.t for j in jobs], [-1 if j.axis is None else j.axis for j in jobs],
                [j.rank for j in jobs],
                [index.get(id(j.partner), -1) if j.partner is not None else -1 for j in jobs],
                {i: j.mid for i, j in enumerate(jobs) if j.mid is not None}, keep_grams=True)
    scan_table(path, tab, workers)
    cross = tab.cross.tolist()
    for i, j in enumerate(jobs):
        j.acc = Acc(int(tab.nonfinite[i]), float(tab.abs_max[i]), float(tab.abs_sum[i]),
                    float(tab.sq_sum[i]), int(tab.count[i]), tab.grams.get(i))
        j.cross = None if math.isnan(cross[i]) else cross[i]
        j.done = True


# -- reading -------------------------------------------------------------------------

def _aligned(nbytes: int) -> np.ndarray:
    """A 64-byte aligned uint8 buffer: BLAS splits its sums by alignment, and results must
    not depend on which thread (or malloc arena) scanned a tensor."""
    raw = np.empty(nbytes + 64, np.uint8)
    skip = -raw.ctypes.data % 64
    return raw[skip:skip + nbytes]


def _pread_into(fd: int, buf: memoryview, offset: int) -> None:
    """Fill ``buf`` from ``offset``; FileShrank when the file ends first."""
    want, got = len(buf), 0
    while got < want:
        n = os.preadv(fd, [buf[got:]], offset + got) if hasattr(os, "preadv") else _pread_copy(fd, buf[got:], offset + got)
        if n <= 0:
            raise FileShrank(offset, want, got)
        got += n


def _pread_copy(fd: int, buf: memoryview, offset: int) -> int:
    data = os.pread(fd, len(buf), offset)
    buf[:len(data)] = data
    return len(data)


def _magnitude_bits(hi_unsigned, hi_signed, sign: int):
    """Largest magnitude bit pattern from the maxima of the unsigned and signed views
    (arrays or scalars).  A negative value ``sign | m`` is the largest unsigned pattern
    of its group; a non-negative ``m`` is the largest signed one."""
    neg = np.asarray(hi_unsigned).astype(np.int64) - sign     # >= 0 iff a negative exists
    pos = np.asarray(hi_signed).astype(np.int64)              # >= 0 iff a non-negative exists
    return np.maximum(neg, pos)


def _bits_to_float(dtype: str, bits: np.ndarray) -> np.ndarray:
    """float64 values of magnitude bit patterns (a signalling NaN pattern widens without
    numpy's "invalid value" warning: such a tensor is cleaned afterwards)."""
    with np.errstate(invalid="ignore"):
        if dtype == "BF16":
            return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        if dtype == "F16":
            return bits.astype(np.uint16).view(np.float16).astype(np.float64)
        return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def _sums(x: np.ndarray, axis: int, rank: int) -> tuple[float, float, np.ndarray | None]:
    """sum |x|, sum x^2 and, for axis 0 / 1, the float64 Gram matrix (x^T x of an
    ``[n, rank]`` block, x x^T of a ``[rank, n]`` one; its trace is sum x^2).  The
    general path: one tensor or block at a time."""
    flat = x.reshape(-1)
    abs_sum = float(np.abs(flat).sum(dtype=np.float64 if x.dtype == np.float64 else None))
    if axis < 0:
        return abs_sum, float(np.dot(flat, flat)), None
    if axis:
        m = x.reshape(rank, -1)
        g = (m @ m.T).astype(np.float64)
    else:
        m = x.reshape(-1, rank)
        g = (m.T @ m).astype(np.float64)
    return abs_sum, float(g.trace()), g


class Scanner:
    """Scans tasks of one table; one per thread.  Reads with ``preadv`` from ``fd``."""

    def __init__(self, fd: int, tab: Table, elements: int, itemsize: int = 8):
        self.fd, self.tab = fd, tab
        size = max(elements, 4096)             # a column block of a down weight holds >= rank
        self.buf = _aligned(size * 4).view(np.float32)
        self.io = _aligned(size * itemsize + 64)
        self.ones = np.ones(min(size, BATCH), np.float32)
        self.scratch = np.empty(KERNEL.SCRATCH, np.float32) if KERNEL is not None else None

    def read(self, offset: int, count: int, dtype: np.dtype) -> np.ndarray:
        """``count`` values of ``dtype`` from ``offset``, in the read buffer at
        ``offset % 64`` (F32 is used in place: BLAS must see the same alignment in every
        thread for the same result)."""
        nbytes = count * dtype.itemsize
        pad = offset % 64
        _pread_into(self.fd, memoryview(self.io)[pad:pad + nbytes], offset)
        return self.io[pad:pad + nbytes].view(dtype)

    def read_rows(self, begin: int, rows: int, row_len: int, col: int, width: int,
                  dtype: np.dtype) -> np.ndarray:
        """Columns ``col:col+width`` of a ``[rows, row_len]`` tensor at ``begin``, as a
        contiguous ``[rows, width]`` array (one read per row)."""
        isz = dtype.itemsize
        mv = memoryview(self.io)
        for r in range(rows):
            _pread_into(self.fd, mv[r * width * isz:(r + 1) * width * isz],
                        begin + (r * row_len + col) * isz)
        return self.io[:rows * width * isz].view(dtype).reshape(rows, width)

    def widen(self, dtype: str, raw: np.ndarray) -> np.ndarray:
        """float32 values of raw bits (any shape) of a FAST dtype."""
        if dtype == "F32":
            x = raw.view("<f4")
            if x.flags.c_contiguous:
                return x
            out = self.buf[:raw.size].reshape(raw.shape)
            np.copyto(out, x)
            return out
        out = self.buf[:raw.size].reshape(raw.shape)
        # a plain widening copy, then in-place bit work (faster than a casting shift)
        if dtype == "BF16":
            u = out.view(np.uint32)
            np.copyto(u, raw, casting="unsafe")
            np.left_shift(u, 16, out=u)
        else:
            o = out.view(np.int32)
            np.copyto(o, raw.view(np.int16), casting="unsafe")     # sign-extends
            np.left_shift(o, 13, out=o)
            np.bitwise_and(o, F16_KEEP, out=o)
            np.multiply(out, F16_SCALE, out=out)
        return out

    def task(self, task: tuple[int, np.ndarray]) -> None:
        kind, rows = task
        if kind:
            self.batch(rows)
        else:
            self.one(int(rows[0]))

    # -- a span of small tensors ------------------------------------------------------

    def batch(self, rows: np.ndarray) -> None:
        """Neighbouring tensors of one FAST dtype, in file order, not overlapping, in one
        span of at most the buffer's size."""
        tab = self.tab
        dtype = tab.dtypes[rows[0]]
        u, i, sign, inf = FAST[dtype]
        lo_bits, hi_bits = SAFE_BITS[dtype]
        isz = u.itemsize
        b = tab.begin[rows]
        n_el = tab.numel[rows]
        base = int(b[0])
        s = (b - base) // isz                       # element offsets in the span
        e = s + n_el
        raw = self.read(base, int(e[-1]), u)
        if KERNEL is not None:
            self.compiled(rows, dtype, raw, s, n_el)
            return
        gap = e[:-1] < s[1:]
        if gap.any():                               # gaps: segments of their own, ignored
            seg = np.arange(len(s)) + np.concatenate(([0], np.cumsum(gap)))
            idx = np.empty(len(s) + int(gap.sum()), np.intp)
            idx[seg] = s
            idx[seg[:-1][gap] + 1] = e[:-1][gap]
            hi_u, hi_s = np.maximum.reduceat(raw, idx)[seg], np.maximum.reduceat(raw.view(i), idx)[seg]
        else:
            hi_u, hi_s = np.maximum.reduceat(raw, s), np.maximum.reduceat(raw.view(i), s)
        # the largest magnitude's bits: a negative value ``sign | m`` is the largest
        # unsigned pattern, a non-negative ``m`` the largest signed one
        bits = np.maximum(hi_u.astype(np.int64) - sign, hi_s)
        tab.count[rows] = n_el
        tab.abs_max[rows] = _bits_to_float(dtype, bits)
        val = self.widen(dtype, raw)
        # finite and within the float32-safe range (bit patterns of positive numbers
        # order as their values), or zero
        plain = ((bits >= lo_bits) & (bits <= hi_bits)) | (bits == 0)
        grams: list[tuple[np.ndarray, np.ndarray]] = []
        if not plain.all():
            top = tab.abs_max[rows]
            for k in np.flatnonzero(~plain).tolist():   # non-finite or extreme: the general path
                g = self.add(int(rows[k]), val[s[k]:e[k]], float(top[k]), bool(bits[k] >= inf))
                if g is not None:
                    grams.append((rows[k:k + 1], g[None]))
            rows, s, n_el = rows[plain], s[plain], n_el[plain]
            if not len(rows):
                self.pair_up(grams)
                return
        runs = list(_runs(tab, rows, s, n_el))
        for rr, p0, step, axis, rank, k, length in runs:
            if axis < 0:
                x = _view(val, p0, (k, length), (step, 1))
                tab.sq_sum[rr] = np.einsum("kl,kl->k", x, x)
                continue
            g = _grams(val, p0, step, axis, rank, k, length)
            tab.sq_sum[rr] = np.einsum("kii->k", g)
            grams.append((rr, g))
        np.abs(val, out=val)
        ones = self.ones
        for rr, p0, step, axis, rank, k, length in runs:
            x = _view(val, p0, (k, length), (step, 1))
            tab.abs_sum[rr] = np.matmul(x, ones[:length]) if length <= len(ones) else x.sum(axis=1)
        if len(grams) == 2 and not tab.mids:
            # the common case: a run of down weights and a run of their up weights
            (r1, g1), (r2, g2) = grams
            if len(r1) == len(r2) and (tab.partner[r1] == r2).all():
                c = np.einsum("kij,kij->k", g1, g2) if tab.axis[r1[0]] == 1 else np.einsum("kij,kij->k", g2, g1)
                tab.cross[r1] = c
                tab.cross[r2] = c
                return
        self.pair_up(grams)

    def compiled(self, rows: np.ndarray, dtype: str, raw: np.ndarray, s: np.ndarray,
                 n_el: np.ndarray) -> None:
        """:meth:`batch` through the compiled pass: every tensor's maximum bits, |x| and
        x**2 sums, and the Gram matrices it computes (down weights up to its rank, up
        weights of the UP_RANKS), in one call without the GIL; larger ranks by BLAS over
        the float32 values it widened; a tensor with non-finite or extreme values again
        on the general path."""
        tab = self.tab
        code = {"F16": 1, "BF16": 2, "F32": 3}[dtype]
        n = len(rows)
        axis, rank = tab.axis[rows], tab.rank[rows]
        here = (axis == 1) & (rank > 0) & (rank <= KERNEL.RANK)
        here |= (axis == 0) & np.isin(rank, UP_RANKS)
        here &= n_el % np.maximum(rank, 1) == 0          # (both terms above need rank > 0)
        blas = (axis >= 0) & ~here
        # the kernel's Gram matrices, one block per rank, rows in span order
        goff = np.full(n, -1, np.int64)
        blocks: list[tuple[np.ndarray, int, int]] = []
        at = 0
        for r in np.unique(rank[here]).tolist():
            k = np.flatnonzero(here & (rank == r))
            goff[k] = at + np.arange(len(k), dtype=np.int64) * (r * r)
            blocks.append((k, r, at))
            at += len(k) * r * r
        gram = np.empty(at)
        bits = np.empty(n, np.uint32)
        asum, qsum = np.empty(n), np.empty(n)
        wide = self.buf if blas.any() and code != 3 else self.buf[:0]
        KERNEL.scan_span(code, raw.view(np.uint8), s, n_el, axis, rank, goff, bits, asum,
                         qsum, gram, wide, self.scratch)
        lo_bits, hi_bits = SAFE_BITS[dtype]
        tab.count[rows] = n_el
        tab.abs_max[rows] = _bits_to_float(dtype, bits)
        tab.abs_sum[rows] = asum
        tab.sq_sum[rows] = qsum
        plain = ((bits >= lo_bits) & (bits <= hi_bits)) | (bits == 0)
        grams = [(rows[k[plain[k]]], gram[a:a + len(k) * r * r].reshape(-1, r, r)[plain[k]])
                 for k, r, a in blocks]
        b = np.flatnonzero(blas & plain)
        if b.size:
            val = raw.view("<f4") if code == 3 else self.buf
            for rr, p0, step, ax, r, k, length in _runs(tab, rows[b], s[b], n_el[b]):
                grams.append((rr, _grams(val, p0, step, ax, r, k, length)))
        if not plain.all():
            inf = FAST[dtype][3]
            for k in np.flatnonzero(~plain).tolist():   # non-finite or extreme: the general path
                x = self.widen(dtype, raw[s[k]:s[k] + n_el[k]])
                g = self.add(int(rows[k]), x, float(tab.abs_max[rows[k]]), bool(bits[k] >= inf))
                if g is not None:
                    grams.append((rows[k:k + 1], g[None]))
        self.pair_up([g for g in grams if len(g[0])])

    def add(self, r: int, x: np.ndarray, top: float, nonfinite: bool) -> np.ndarray | None:
        """The general path for one whole tensor of a span (row ``r``, count already
        set): cleans non-finite values, sums in float64 where float32 would overflow;
        returns its Gram matrix (float64) if the row wants one."""
        tab = self.tab
        if nonfinite:
            x, bad = _clean(x, tab.dtypes[r], self.buf)
            tab.nonfinite[r] = bad
            top = float(np.abs(x).max())
        tab.abs_max[r] = top
        if x.dtype == np.float32 and not (F32_SAFE[0] <= top <= F32_SAFE[1] or top == 0.0):
            x = x.astype(np.float64)            # huge or tiny values: squares would overflow
        tab.abs_sum[r], tab.sq_sum[r], g = _sums(x, int(tab.axis[r]), int(tab.rank[r]))
        return g

    # -- one large tensor, or one of another dtype -------------------------------------

    def one(self, r: int) -> None:
        """One tensor, in blocks of at most the buffer's size: rows of an up weight,
        columns of a down weight, plain ranges otherwise.  Non-FAST dtypes go through
        float64."""
        tab = self.tab
        t = tab.infos[r]
        fast = FAST.get(t.dtype)
        dt = fast[0] if fast else np.dtype(NUMPY_DTYPES[t.dtype])
        axis, rank = int(tab.axis[r]), int(tab.rank[r])
        width = rank if axis >= 0 else 1
        if width <= 0 or t.numel % width:
            raise ValueError(f"cannot reshape {t.numel} elements of {t.name} into rank {width}")
        size = self.buf.size
        if axis == 1:
            rows, cols = rank, t.numel // rank
            step = max(1, size // rank)
            blocks = (self.read_rows(t.begin, rows, cols, c, min(step, cols - c), dt)
                      for c in range(0, cols, step))
        else:
            rows = t.numel // width
            step = max(1, size // width)
            row = width * dt.itemsize
            blocks = (self.read(t.begin + q * row, min(step, rows - q) * width, dt).reshape(-1, width)
                      for q in range(0, rows, step))
        gram = None
        nonf = 0
        top_all = 0.0
        count = 0
        asum = ssum = 0.0
        for b in blocks:
            if fast:
                _, i, sign, inf = fast
                bits = _magnitude_bits(b.max(), b.view(i).max(), sign)
                x = self.widen(t.dtype, b)
                top = float(_bits_to_float(t.dtype, bits.reshape(1))[0])
                bad = bool(bits >= inf)
            else:
                x = b.astype(np.float64)
                top = float(np.abs(x).max())
                bad = not math.isfinite(top)
            count += x.size
            if bad:
                x, k = _clean(x, t.dtype, self.buf)
                nonf += k
                top = float(np.abs(x).max())
            top_all = max(top_all, top)
            if x.dtype == np.float32 and not (F32_SAFE[0] <= top <= F32_SAFE[1] or top == 0.0):
                x = x.astype(np.float64)
            a, q, g = _sums(x, axis, rank)
            asum += a
            ssum += q
            if g is not None:
                gram = g if gram is None else gram + g
        tab.count[r], tab.nonfinite[r], tab.abs_max[r] = count, nonf, top_all
        tab.abs_sum[r], tab.sq_sum[r] = asum, ssum
        if gram is not None:
            self.pair_up([(np.array([r]), gram[None])])

    # -- pairs -------------------------------------------------------------------------

    def pair_up(self, grams: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Cross terms of the linked pairs among these Gram matrices (rows, [k, r, r]);
        a matrix whose partner is elsewhere waits for it in the table."""
        if not grams:
            return
        tab = self.tab
        by_rank: dict[int, list] = {}
        for rr, g in grams:
            by_rank.setdefault(g.shape[1], []).append((rr, g))
        for lst in by_rank.values():
            rows = np.concatenate([x[0] for x in lst]) if len(lst) > 1 else lst[0][0]
            g = np.concatenate([x[1] for x in lst]) if len(lst) > 1 else lst[0][1]
            part = tab.partner[rows]
            order = np.argsort(rows, kind="stable")
            srt = rows[order]
            pos = np.minimum(np.searchsorted(srt, part), len(srt) - 1)
            here = (part >= 0) & (srt[pos] == part)
            down = np.flatnonzero(here & (tab.axis[rows] == 1))
            if down.size:
                up = order[pos[down]]
                mids = [k for k, r in enumerate(rows[down].tolist()) if r in tab.mids] if tab.mids else []
                cross = np.einsum("kij,kij->k", g[down], g[up])
                for k in mids:
                    cross[k] = _mid_cross(g[down[k]], g[up[k]], tab.mids[int(rows[down[k]])])
                tab.cross[rows[down]] = cross
                tab.cross[rows[up]] = cross
            for k in np.flatnonzero(~here).tolist():
                self.wait(int(rows[k]), g[k])

    def wait(self, r: int, g: np.ndarray) -> None:
        tab = self.tab
        p = int(tab.partner[r])
        if p < 0:
            if tab.grams is not None:
                tab.grams[r] = g
            return
        with tab._lock:
            other = tab._waiting.pop(p, None)
            if other is None:
                tab._waiting[r] = g
                return
        down, gd, gu = (r, g, other) if tab.axis[r] == 1 else (p, other, g)
        mid = tab.mids.get(down)
        c = _mid_cross(gd, gu, mid) if mid is not None else float(np.einsum("ij,ij->", gd, gu))
        tab.cross[r] = tab.cross[p] = c


def _mid_cross(gd: np.ndarray, gu: np.ndarray, mid: np.ndarray) -> float:
    """W_k = U M_k D per kernel position k: ||W_k||^2 = <M_k^T (U^T U) M_k, D D^T>."""
    return float(sum(np.vdot(m.T @ gu @ m, gd) for m in mid))


def _grams(val: np.ndarray, p0: int, step: int, axis: int, rank: int, k: int,
           length: int) -> np.ndarray:
    """float64 Gram matrices [k, rank, rank] of a run of k tensors of float32 ``val``
    (see :func:`_runs`): one batched ``sgemm``, or from :data:`SYRK_RANK` one ``ssyrk``
    per tensor."""
    other = length // rank
    if axis == 1:
        x = _view(val, p0, (k, rank, other), (step, other, 1))
        g = np.stack([m @ m.T for m in x]) if rank >= SYRK_RANK else np.matmul(x, x.transpose(0, 2, 1))
    else:
        x = _view(val, p0, (k, other, rank), (step, rank, 1))
        g = np.stack([m.T @ m for m in x]) if rank >= SYRK_RANK else np.matmul(x.transpose(0, 2, 1), x)
    return g.astype(np.float64)


def _view(val: np.ndarray, first: int, shape: tuple[int, ...], steps: tuple[int, ...]) -> np.ndarray:
    """A strided view of float32 ``val`` from element ``first`` (strides in elements)."""
    return np.ndarray(shape, np.float32, val, first * 4, tuple(4 * st for st in steps))


def _clean(x: np.ndarray, dtype: str, buf: np.ndarray) -> tuple[np.ndarray, int]:
    """x with its non-finite values set to 0 (in the float32 buffer for F32 read in
    place), and how many there were."""
    if x.dtype == np.float32 and not np.may_share_memory(x, buf):
        copy = buf[:x.size].reshape(x.shape)
        np.copyto(copy, x)
        x = copy
    bad = ~np.isfinite(x)
    if dtype == "F16":
        bad |= np.abs(x) >= F16_BIG
    x[bad] = 0.0
    return x, int(bad.sum())


def _runs(tab: Table, rows: np.ndarray, s: np.ndarray, n_el: np.ndarray):
    """Groups of a span's tensors that one numpy call can take: same axis, rank and
    size, at equal distances.  Yields (rows, first offset, distance, axis, rank, count,
    elements per tensor)."""
    axis, rank = tab.axis[rows], tab.rank[rows]
    if len(rows) == 1:
        yield rows, int(s[0]), 0, int(axis[0]), int(rank[0]), 1, int(n_el[0])
        return
    key = (axis.astype(np.int64) + 1) << 58 | rank << 40 | n_el
    n = len(rows)
    # the common case: a layer's p tensors (down and up weight; in an F32 file its alpha
    # too), the next layer's, ... all of one shape and at one distance: p runs
    first = key[:3].tolist()
    p = 2 if first[0] != first[1] and (n < 3 or first[2] in first[:2]) else 3
    if n % p == 0 and len(set(first[:p])) == p:
        if n == p:
            step = 0
        else:
            d = s[p:] - s[:-p]
            step = int(d[0])
            if not ((key[p:] == key[:-p]).all() and (d == step).all()):
                step = -1
        if step >= 0:
            for j in range(p):
                yield (rows[j::p], int(s[j]), step, int(axis[j]), int(rank[j]), n // p,
                       int(n_el[j]))
            return
    order = np.argsort(key, kind="stable")
    ks = key[order]
    cut = np.flatnonzero(ks[1:] != ks[:-1]) + 1
    for grp in np.split(order, cut) if cut.size else (order,):
        pos = s[grp]
        a, r, length = int(axis[grp[0]]), int(rank[grp[0]]), int(n_el[grp[0]])
        d = np.diff(pos)
        if len(grp) == 1 or (d == d[0]).all():
            yield rows[grp], int(pos[0]), int(d[0]) if len(d) else 0, a, r, len(grp), length
            continue
        p = pos.tolist()                        # unequal distances: runs of equal ones
        start = 0
        while start < len(p):
            stop = start + 1
            if stop < len(p):
                step = p[stop] - p[start]
                while stop + 1 < len(p) and p[stop + 1] - p[stop] == step:
                    stop += 1
                stop += 1
            else:
                step = 0
            yield rows[grp[start:stop]], p[start], step, a, r, stop - start, length
            start = stop


# -- planning and running -------------------------------------------------------------

def plan(tab: Table) -> list[tuple[int, np.ndarray]]:
    """Tasks in file order: ``(1, rows)`` a span of neighbouring FAST-dtype tensors of at
    most BATCH elements, or one such tensor of up to WHOLE elements, scanned as a span;
    ``(0, [row])`` a larger tensor, or one of another dtype, scanned in blocks.  Empty
    tensors need no scan."""
    live = np.flatnonzero(tab.numel > 0)
    if not live.size:
        return []
    order = live[np.argsort(tab.begin[live], kind="stable")]
    begin, nbytes, numel = tab.begin[order], tab.nbytes[order], tab.numel[order]
    partner = tab.partner[order]
    codes = {"F16": 1, "BF16": 2, "F32": 3}
    code = np.fromiter((codes.get(tab.dtypes[r], 0) for r in order.tolist()), np.int8, len(order))
    isz = np.where(code == 3, 4, 2)
    small = (code > 0) & (numel <= BATCH)
    end = begin + nbytes
    # a tensor joins the span of the one before it: same dtype, both small, no overlap,
    # a gap of at most MAX_GAP bytes and a whole number of elements
    gap = begin[1:] - end[:-1]
    join = np.zeros(len(order), bool)
    join[1:] = (small[1:] & small[:-1] & (code[1:] == code[:-1]) & (gap >= 0)
                & (gap <= MAX_GAP) & (gap % isz[1:] == 0))
    tasks: list[tuple[int, np.ndarray]] = []
    starts = np.flatnonzero(~join).tolist() + [len(order)]
    limit = BATCH * (KERNEL_SPANS if KERNEL is not None else 1) * isz
    for a, b in zip(starts[:-1], starts[1:]):
        if not small[a]:
            whole = code[a] > 0 and numel[a] <= WHOLE
            tasks.append((1 if whole else 0, order[a:a + 1]))
            continue
        while a < b:                            # greedy: as many as fit in BATCH elements
            c = a + int(np.searchsorted(end[a:b], begin[a] + limit[a], side="right"))
            if c < b and c - 1 > a and partner[c - 1] == order[c]:
                c -= 1                          # not between a layer's down and up weight
            c = max(c, a + 1)
            tasks.append((1, order[a:c]))
            a = c
    return tasks


def _blas_single_thread():
    """BLAS at one thread while scanning: the products are small, and the scan's own
    threads use the CPUs."""
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(1, user_api="blas")
    except Exception:               # optional at run time; any failure: leave BLAS alone
        return contextlib.nullcontext()


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _buffers(tab: Table, tasks: list[tuple[int, np.ndarray]]) -> tuple[int, int]:
    """(elements, bytes per element) of the buffers the largest task needs: a span, a
    tensor scanned whole, or a block (of 8-byte values for F64 and 64-bit integers)."""
    most, isz = BATCH * (KERNEL_SPANS if KERNEL is not None else 1), 4
    for kind, rows in tasks:
        if len(rows) == 1:
            r = int(rows[0])
            if kind:
                most = max(most, int(tab.numel[r]))
            else:
                dt = tab.dtypes[r]
                isz = max(isz, FAST[dt][0].itemsize if dt in FAST else np.dtype(NUMPY_DTYPES[dt]).itemsize)
    return most, isz


def scan_table(path: str | os.PathLike, tab: Table, workers: int | None = None) -> None:
    """Fill the table's statistics (and ``cross`` of linked rows).  Files with at least
    :data:`PARALLEL_MIN_BYTES` of tensors are shared among up to :data:`SCAN_WORKERS`
    threads (one per CPU).  Raises OSError/ValueError (FileShrank) if the file is shorter
    than its header said."""
    tasks = plan(tab)
    nbytes = int(sum(int(tab.nbytes[rows].sum()) for _, rows in tasks))
    n = min(SCAN_WORKERS if workers is None else workers, _cpus(), len(tasks))
    from lorascope.safe_open import open_file
    with open_file(path) as f:
        if not tasks:
            return
        with _blas_single_thread():
            size = _buffers(tab, tasks)
            if n > 1 and nbytes >= PARALLEL_MIN_BYTES:
                _scan_threads(f.fileno(), tab, tasks, n, size)
            else:
                sc = Scanner(f.fileno(), tab, *size)
                for task in tasks:
                    sc.task(task)


def _scan_threads(fd: int, tab: Table, tasks: list, n: int, size: tuple[int, int]) -> None:
    """n threads (this one included) take tasks in file order from one counter.  The
    first error stops them all and is raised here; a thread that cannot be started
    leaves its share to the others."""
    counter = itertools.count()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            sc = Scanner(fd, tab, *size)
            while not errors:
                k = next(counter)
                if k >= len(tasks):
                    return
                sc.task(tasks[k])
        except BaseException as e:     # noqa: BLE001 - handed to the caller below
            errors.append(e)

    threads = []
    for _ in range(n - 1):
        t = threading.Thread(target=work, name="lorascope-scan", daemon=True)
        try:
            t.start()
        except RuntimeError:           # no more threads here: the others scan its share
            break
        threads.append(t)
    work()                             # an interrupt here stops the others too
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def read_small(fd: int, t: TensorInfo, limit: int) -> np.ndarray | None:
    """A small tensor (an alpha, a Tucker core, a LyCORIS factor) as flat float64, read
    with ``pread``; None if it is empty, holds more than ``limit`` elements or cannot be
    read."""
    if t.dtype not in NUMPY_DTYPES or not 0 < t.numel <= limit:
        return None
    try:
        data = os.pread(fd, t.nbytes, t.begin)
    except OSError:
        return None
    if len(data) != t.nbytes:
        return None
    return _decode(data, t.dtype)


def _decode(data, dtype: str) -> np.ndarray:
    a = np.frombuffer(data, NUMPY_DTYPES[dtype])
    if dtype == "BF16":
        a = (a.astype(np.uint32) << 16).view(np.float32)
    elif dtype == "F16":
        a = a.view(np.float16)
    return a.astype(np.float64)


def scalar(fd: int, t: TensorInfo) -> float | None:
    """The value of a one-element tensor (kohya's alpha); None if not a finite number."""
    a = read_small(fd, t, 1)
    v = float(a[0]) if a is not None else math.nan
    return v if math.isfinite(v) else None


_SCALAR = {"F32": "<f", "F16": "<e", "F64": "<d", "BF16": "<H", "BOOL": "<?", "U8": "<B",
           "I8": "<b", "I16": "<h", "U16": "<H", "I32": "<i", "U32": "<I", "I64": "<q", "U64": "<Q"}


def scalars(fd: int, ts: list[TensorInfo | None]) -> list[float | None]:
    """:func:`scalar` of each (None stays None), reading neighbours in one ``pread``:
    a kohya file's thousands of alphas lie together."""
    out: list[float | None] = [None] * len(ts)
    want = sorted((t.begin, i) for i, t in enumerate(ts)
                  if t is not None and t.numel == 1 and t.dtype in _SCALAR)
    k = 0
    while k < len(want):
        first = want[k][0]
        stop = k + 1
        while stop < len(want) and want[stop][0] - want[stop - 1][0] <= SMALL_READ:
            stop += 1
        last = ts[want[stop - 1][1]]
        try:
            data = os.pread(fd, last.begin + last.nbytes - first, first)
        except OSError:
            data = b""
        for begin, i in want[k:stop]:
            t = ts[i]
            at = begin - first
            if at + t.nbytes <= len(data):
                (v,) = struct.unpack_from(_SCALAR[t.dtype], data, at)
                if t.dtype == "BF16":
                    (v,) = struct.unpack("<f", struct.pack("<I", v << 16))
                v = float(v)
                out[i] = v if math.isfinite(v) else None
        k = stop
    return out
