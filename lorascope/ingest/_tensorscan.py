"""Statistics of the tensors of a safetensors file, in one pass over their bytes.

Per tensor (:class:`Acc`): element count, non-finite count, abs max, sum of |x| and of
x**2 over the finite elements, and on request its rank x rank Gram matrix (``B^T B`` of an
up weight ``[n, rank]``, ``A A^T`` of a down weight ``[rank, n]``), from which the caller
gets the exact norm of ``B @ A`` without forming it.

How it stays fast without a compiled kernel (1 GB of LoRA weights per second on two
cores; ``bench/bench_ckpt.py``):

* **Batches.** LoRA tensors are small (tens to hundreds of KiB) and lie back to back in the
  file, so neighbouring tensors of one dtype are handled as one span of up to
  :data:`BATCH` elements: one widening call for the span, one ``maximum.reduceat`` per
  view for all per-tensor maxima, then per tensor only BLAS calls (``sasum``, ``sdot`` or
  one Gram product, which numpy runs as ``syrk``).
* **Maxima on the raw bits.** For BF16, F16 and F32 the largest magnitude is read from the
  stored integers: the largest unsigned value is the largest negative number's
  magnitude plus the sign bit, the largest signed value the largest positive number's
  magnitude.  Magnitude bits at or above the infinity pattern mean a non-finite value;
  only then is the tensor cleaned element by element (rare: a broken adapter).
* **Widening** BF16 is a widening copy and a shift of the 16 bits into the high half of a
  float32; F16 a sign-extending copy, a shift by 13, a mask and a multiplication by
  2**112 (exact for normal and subnormal halves; numpy's own float16 cast is five times
  slower here).  F32 is read in place.  Other dtypes (F64, integers) go through float64.
  Blocks whose values would overflow or underflow float32 squares are summed in float64.
* **Processes, not threads.** The per-tensor calls are too short for threads: two threads
  handing the GIL over on every call ran slower than one.  Files of at least
  :data:`PARALLEL_MIN_BYTES` are cut into pieces that forked worker processes take from
  the end and this process from the start (shared counters, so all finish together);
  workers send back a few numbers per tensor.  Where forking is not possible (not Linux,
  a daemonic process) or a worker dies, this process scans what is left.  BLAS is held
  to one thread per process.

* **This process reads; only workers map.** A memory-mapped file that shrinks while it
  is read (a trainer still writing the adapter) kills the process with SIGBUS, which
  Python cannot catch.  So this process reads each batch (and each block of a large
  tensor) with ``preadv`` into one reusable buffer: a read that comes back short is a
  problem on the file ("truncated, or shrinking while read").  Forked workers read
  through a map, which is about 13% cheaper in CPU than the copy (no second pass over
  the bytes); a worker killed by SIGBUS, or one that cannot map under a memory limit,
  dies quietly (its stderr is closed) and this process reads its pieces.

Results do not depend on which process scanned a tensor: buffers are 64-byte aligned, so
BLAS splits its sums the same way everywhere.

Memory: per process, one :data:`BATCH`-element float32 buffer and one read buffer of
``8 * BATCH`` bytes (12 MiB in all); tensors larger than a batch are scanned in blocks of
rows (or of columns for a wide down weight).  A worker releases the mapped pages it has
scanned, so resident memory does not grow with the file.
"""
from __future__ import annotations

import contextlib
import functools
import math
import mmap
import multiprocessing as mp
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import blas

from lorascope.model import TensorStat

BATCH = 1 << 20                        # float32 elements widened per call (4 MiB per process)
MAX_GAP = 1 << 16                      # bytes of unscanned data a batch may step over
SCAN_WORKERS = 4                       # processes scanning one file (at most one per CPU)
PIECES_PER_WORKER = 32                 # pieces of the file per process, for load balance
PARALLEL_MIN_BYTES = 256 * 1024 * 1024 # below this, starting workers costs more than it saves
READ_BYTES = 8 * BATCH                 # the read buffer: a batch or a block of 8-byte values
FAULT_AROUND = 256 * 1024              # a page fault may map this much around it (Linux: 64 KiB)
DROP_EVERY = 64 * 1024 * 1024          # larger tensors release their mapped pages block by block

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
# batch's sum of squares stays below 1e36); outside it a block is summed in float64
F32_SAFE = (1e-15, 1e15)


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int                     # absolute byte offset in the file
    nbytes: int

    @functools.cached_property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class Acc:
    """Running statistics of one tensor."""

    nonfinite: int = 0
    abs_max: float = 0.0
    abs_sum: float = 0.0
    sq_sum: float = 0.0
    count: int = 0
    gram: np.ndarray | None = None     # rank x rank, float64

    def stat(self, t: TensorInfo) -> TensorStat:
        fin = self.count - self.nonfinite
        sq = self.sq_sum
        # positional: 20k of these per large file
        return TensorStat(t.name, t.dtype, t.shape, self.nonfinite,
                          self.count > 0 and self.nonfinite == 0 and self.abs_max == 0.0,
                          self.abs_max, math.sqrt(sq) if sq > 0 else 0.0,
                          self.abs_sum / fin if fin else 0.0)


@dataclass(eq=False)
class Job:
    """One tensor to scan.  axis 0: the tensor is ``[n, rank]`` (up / B), accumulate
    ``x^T x``; axis 1: it is ``[rank, n]`` (down / A), accumulate ``x x^T``; None: no Gram.
    Two jobs linked as partners (a layer's down and up weight) get, once both are
    scanned, ``cross = sum(gram_down * gram_up) = ||up @ down||_F^2``, and their Gram
    matrices are freed (a 1 GB rank-64 file holds 100 MB of them)."""

    t: TensorInfo
    axis: int | None = None
    rank: int = 0
    acc: Acc = field(default_factory=Acc)
    partner: Job | None = None
    cross: float | None = None
    done: bool = False
    # on a down job: the LoCon Tucker core between down and up, [k, rank, rank] float64
    mid: np.ndarray | None = None

    def finish(self) -> None:
        self.done = True
        p = self.partner
        if p is None or not p.done:
            return
        a, b = self.acc.gram, p.acc.gram
        if a is not None and b is not None and a.shape == b.shape:
            down, up = (self, p) if self.axis == 1 else (p, self)
            if down.mid is None:
                cross = float(np.vdot(a, b))
            else:
                # W_k = U M_k D per kernel position k: ||W_k||^2 = <M_k^T (U^T U) M_k, D D^T>
                gu, gd = up.acc.gram, down.acc.gram
                cross = float(sum(np.vdot(m.T @ gu @ m, gd) for m in down.mid))
            self.cross = p.cross = cross
        self.acc.gram = p.acc.gram = None


def pair(down: Job, up: Job) -> None:
    down.partner, up.partner = up, down


def _sums(x: np.ndarray, axis: int | None, rank: int) -> tuple[float, float, np.ndarray | None]:
    """sum |x|, sum x^2 and, for axis 0 / 1, the float64 Gram matrix (x^T x of an
    ``[n, rank]`` block, x x^T of a ``[rank, n]`` one; its trace is sum x^2)."""
    single = x.dtype == np.float32
    flat = x.reshape(-1)
    abs_sum = float((blas.sasum if single else blas.dasum)(flat))
    if axis is None:
        return abs_sum, float((blas.sdot if single else blas.ddot)(flat, flat)), None
    if axis:
        m = x.reshape(rank, -1)
        g = (m @ m.T).astype(np.float64)
    else:
        m = x.reshape(-1, rank)
        g = (m.T @ m).astype(np.float64)
    return abs_sum, float(g.trace()), g


def _magnitude_bits(hi_unsigned, hi_signed, sign: int):
    """Largest magnitude bit pattern from the maxima of the unsigned and signed views
    (arrays or scalars).  A negative value ``sign | m`` is the largest unsigned pattern
    of its group; a non-negative ``m`` is the largest signed one."""
    neg = np.asarray(hi_unsigned).astype(np.int64) - sign     # >= 0 iff a negative exists
    pos = np.asarray(hi_signed).astype(np.int64)              # >= 0 iff a non-negative exists
    return np.maximum(neg, pos)


def _bits_to_float(dtype: str, bits: np.ndarray) -> np.ndarray:
    if dtype == "BF16":
        return (bits.astype(np.uint32) << 16).view(np.float32)
    if dtype == "F16":
        return bits.astype(np.uint16).view(np.float16).astype(np.float32)
    return bits.astype(np.uint32).view(np.float32)


class FileShrank(ValueError):
    """A read came back short: the file is shorter than its header says, or it shrank
    while it was read (a trainer still writing it)."""

    def __init__(self, offset: int, want: int, got: int):
        super().__init__(f"the file ends at byte {offset + got}, before the {want} bytes at "
                         f"{offset} the header names: truncated, or shrinking while read")


def _aligned(nbytes: int) -> np.ndarray:
    """A 64-byte aligned uint8 buffer: BLAS splits its sums by alignment, and results must
    not depend on which process (or malloc arena) scanned a tensor."""
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


class Scanner:
    """Scans tasks of one file into their jobs' :class:`Acc`; one per process.  ``src``
    is an open file descriptor (read with ``preadv``) or, in a worker, a memory map."""

    def __init__(self, src: int | mmap.mmap):
        self.fd = src if isinstance(src, int) else None
        self.mm = None if isinstance(src, int) else src
        size = max(BATCH, 4096)            # a column block of a down weight holds >= rank
        self.buf = _aligned(size * 4).view(np.float32)
        self.io = _aligned(max(READ_BYTES, size * 8) + 64) if self.mm is None else None

    def read(self, offset: int, count: int, dtype: np.dtype) -> np.ndarray:
        """``count`` values of ``dtype`` from ``offset``: in the read buffer, or a view of
        the map.  In the buffer the values start at ``offset % 64``, where a (page
        aligned) map has them: F32 is summed in place, and BLAS must see the same
        alignment in every process for the same result."""
        if self.mm is not None:
            return np.frombuffer(self.mm, dtype, count=count, offset=offset)
        nbytes = count * dtype.itemsize
        pad = offset % 64
        _pread_into(self.fd, memoryview(self.io)[pad:pad + nbytes], offset)
        return self.io[pad:pad + nbytes].view(dtype)

    def read_rows(self, begin: int, rows: int, row_len: int, col: int, width: int,
                  dtype: np.dtype) -> np.ndarray:
        """Columns ``col:col+width`` of a ``[rows, row_len]`` tensor at ``begin``, as a
        ``[rows, width]`` array: contiguous in the read buffer (one read per row), or a
        strided view of the map."""
        if self.mm is not None:
            a = np.frombuffer(self.mm, dtype, count=rows * row_len, offset=begin)
            return a.reshape(rows, row_len)[:, col:col + width]
        isz = dtype.itemsize
        mv = memoryview(self.io)
        for r in range(rows):
            _pread_into(self.fd, mv[r * width * isz:(r + 1) * width * isz],
                        begin + (r * row_len + col) * isz)
        return self.io[:rows * width * isz].view(dtype).reshape(rows, width)

    def drop(self, begin: int, nbytes: int) -> None:
        """In a worker, unmap scanned pages (they stay in the page cache), so that its
        resident memory does not grow with the file."""
        if self.mm is None or nbytes <= 0 or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = begin // mmap.PAGESIZE * mmap.PAGESIZE
        end = min(begin + nbytes, len(self.mm))
        with contextlib.suppress(OSError, ValueError):
            self.mm.madvise(mmap.MADV_DONTNEED, start, end - start)

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

    def batch(self, jobs: list[Job]) -> None:
        """Neighbouring tensors of one FAST dtype, sorted, not overlapping, in one span of
        at most BATCH elements (gaps between them are widened too and ignored)."""
        dtype = jobs[0].t.dtype
        u, i, sign, inf = FAST[dtype]
        base = jobs[0].t.begin
        last = jobs[-1].t
        n = (last.begin + last.nbytes - base) // u.itemsize
        raw = self.read(base, n, u)
        starts: list[int] = []
        seg: list[int] = []
        pos = 0
        for j in jobs:
            s = (j.t.begin - base) // u.itemsize
            if s > pos:
                starts.append(pos)              # a gap: its own segment, ignored
            seg.append(len(starts))
            starts.append(s)
            pos = s + j.t.numel
        idx = np.array(starts, np.intp)
        bits = _magnitude_bits(np.maximum.reduceat(raw, idx),
                               np.maximum.reduceat(raw.view(i), idx), sign)
        top = _bits_to_float(dtype, bits).tolist()
        bad = (bits >= inf).tolist()
        val = self.widen(dtype, raw)
        lo, hi = F32_SAFE
        for k, j in zip(seg, jobs):
            s = starts[k]
            x = val[s:s + j.t.numel]
            m = top[k]
            if bad[k] or not (lo <= m <= hi or m == 0.0):
                self.add(j, x, m, bad[k])          # the general path: cleaning, float64
            else:                                  # the common case: a batch holds
                acc = j.acc                        # whole tensors, so assign
                acc.count, acc.abs_max = x.size, m
                acc.abs_sum, acc.sq_sum, acc.gram = _sums(x, j.axis, j.rank)
            j.finish()

    def one(self, j: Job) -> None:
        """One tensor, in blocks of at most BATCH elements: rows of an up weight, columns
        of a down weight, plain ranges otherwise.  Non-FAST dtypes go through float64."""
        t = j.t
        fast = FAST.get(t.dtype)
        dt = fast[0] if fast else np.dtype(NUMPY_DTYPES[t.dtype])
        width = j.rank if j.axis is not None else 1
        if width <= 0 or t.numel % width:
            raise ValueError(f"cannot reshape {t.numel} elements of {t.name} into rank {width}")
        if j.axis == 1:
            rows, cols = j.rank, t.numel // j.rank
            step = max(1, BATCH // j.rank)
            blocks = ((self.read_rows(t.begin, rows, cols, c, min(step, cols - c), dt), None)
                      for c in range(0, cols, step))
        else:
            rows = t.numel // width
            step = max(1, BATCH // width)
            row = width * dt.itemsize
            blocks = ((self.read(t.begin + r * row, min(step, rows - r) * width, dt).reshape(-1, width),
                       t.begin + r * row) for r in range(0, rows, step))
        big = t.nbytes > DROP_EVERY
        for b, where in blocks:
            if fast:
                _, i, sign, inf = fast
                bits = _magnitude_bits(b.max(), b.view(i).max(), sign)
                self.add(j, self.widen(t.dtype, b), float(_bits_to_float(t.dtype, bits.reshape(1))[0]),
                         bool(bits >= inf))
            else:
                x = b.astype(np.float64)
                top = float(np.abs(x).max())
                self.add(j, x, top, not math.isfinite(top))
            if big and where is not None:
                self.drop(where, b.nbytes)       # a worker's map: release it block by block
        j.finish()

    def add(self, j: Job, x: np.ndarray, top: float, nonfinite: bool) -> None:
        acc = j.acc
        acc.count += x.size
        if nonfinite:
            if x.dtype == np.float32 and not np.may_share_memory(x, self.buf):   # F32 read in place:
                # clean a copy in the (aligned) buffer: every process sums it at one alignment
                copy = self.buf[:x.size].reshape(x.shape)
                np.copyto(copy, x)
                x = copy
            bad = ~np.isfinite(x)
            if j.t.dtype == "F16":
                bad |= np.abs(x) >= F16_BIG
            acc.nonfinite += int(bad.sum())
            x[bad] = 0.0
            top = float(np.abs(x).max())
        acc.abs_max = max(acc.abs_max, top)
        if x.dtype == np.float32 and not (F32_SAFE[0] <= top <= F32_SAFE[1] or top == 0.0):
            x = x.astype(np.float64)            # huge or tiny values: squares would overflow
        abs_sum, sq_sum, g = _sums(x, j.axis, j.rank)
        acc.abs_sum += abs_sum
        acc.sq_sum += sq_sum
        if g is not None:
            if acc.gram is None:
                acc.gram = g
            else:
                acc.gram += g


def plan(jobs: list[Job]) -> list[list[Job]]:
    """Tasks: runs of neighbouring small FAST-dtype tensors (scanned as one batch), or
    single tensors (large ones, other dtypes).  Empty tensors need no scan."""
    tasks: list[list[Job]] = []
    cur: list[Job] = []
    base = end = 0
    for j in sorted((j for j in jobs if j.t.numel), key=lambda j: j.t.begin):
        t = j.t
        if t.dtype not in FAST or t.numel > BATCH:
            if cur:
                tasks.append(cur)
            tasks.append([j])
            cur = []
            continue
        size = FAST[t.dtype][0].itemsize
        stop = t.begin + t.nbytes
        if (cur and t.dtype == cur[0].t.dtype and end <= t.begin <= end + MAX_GAP
                and (t.begin - base) % size == 0 and (stop - base) // size <= BATCH):
            cur.append(j)
        else:
            if cur:
                tasks.append(cur)
            cur, base = [j], t.begin
        end = stop
    if cur:
        tasks.append(cur)
    return tasks


def _blas_single_thread():
    """BLAS at one thread while scanning: the products are small and a multi-threaded
    OpenBLAS spends more time synchronising than computing on them."""
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


def _can_fork() -> bool:
    """Worker processes are forked (they start in milliseconds and inherit the imports);
    only on Linux, where forking a process that uses numpy and OpenBLAS is safe."""
    return sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()


def _scan_tasks(src: int | mmap.mmap, tasks: list[list[Job]]) -> None:
    sc = Scanner(src)
    for task in tasks:
        try:
            if len(task) == 1 and (task[0].t.dtype not in FAST or task[0].t.numel > BATCH):
                sc.one(task[0])
            else:
                sc.batch(task)
        finally:
            # a worker's map: fault-around also re-mapped pages before the task, already
            # released by the task that scanned them: release those too
            lo = max(0, task[0].t.begin - FAULT_AROUND)
            sc.drop(lo, max(j.t.begin + j.t.nbytes for j in task) - lo)


def _split(tasks: list[list[Job]], n: int) -> list[list[list[Job]]]:
    """n runs of consecutive tasks with about the same number of bytes each."""
    sizes = [sum(j.t.nbytes for j in task) for task in tasks]
    total = sum(sizes) or 1
    parts: list[list[list[Job]]] = [[] for _ in range(n)]
    done = 0
    for task, size in zip(tasks, sizes):
        parts[min(n - 1, done * n // total)].append(task)
        done += size
    return [p for p in parts if p]


# what a worker process sends back per job: the Acc numbers, the cross term, and the
# Gram matrix when the partner was scanned elsewhere
_Result = tuple[int, int, float, float, float, "float | None", "np.ndarray | None"]


def _context():
    return mp.get_context("fork")


def _claim(claim, front: bool) -> int | None:
    """Take the next piece from the front (this process) or the back (workers) of the
    shared counters ``[next front piece, one past the last back piece]``; None when
    every piece is taken."""
    lock = claim.get_lock()
    if not lock.acquire(timeout=60):
        raise RuntimeError("scan workers stopped answering")
    try:
        lo, hi = claim[0], claim[1]
        if lo >= hi:
            return None
        if front:
            claim[0] = lo + 1
            return lo
        claim[1] = hi - 1
        return hi - 1
    finally:
        lock.release()


def _worker(path: str, ident: tuple[int, int, int], pieces: list[list[list[Job]]],
            claim, conn) -> None:
    """A forked worker: scans pieces from the back until none is left, then sends
    ``[(piece, [_Result per job])]``.  The jobs are the parent's, inherited by fork."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C: the parent stops us, quietly
    try:
        # nothing of a worker reaches the user's terminal: a failure here (no memory for
        # the buffers under a limit, a file that changed) only means the parent scans
        # this worker's pieces itself
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        taken: list[int] = []
        from lorascope.safe_open import open_file
        with open_file(path) as f:
            st = os.fstat(f.fileno())
            if (st.st_dev, st.st_ino, st.st_size) != ident:
                return                             # a different file now: send nothing
            with _blas_single_thread(), mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                while (k := _claim(claim, front=False)) is not None:
                    _scan_tasks(mm, pieces[k])
                    taken.append(k)
        conn.send([(k, [(j.acc.count, j.acc.nonfinite, j.acc.abs_max, j.acc.abs_sum, j.acc.sq_sum,
                         j.cross, j.acc.gram) for task in pieces[k] for j in task]) for k in taken])
        conn.close()
    except BaseException:                           # noqa: BLE001 - see above
        os._exit(1)


def _apply(piece: list[list[Job]], results: list[_Result]) -> None:
    for j, (count, nonfinite, abs_max, abs_sum, sq_sum, cross, gram) in zip(
            (j for task in piece for j in task), results):
        a = j.acc
        a.count, a.nonfinite, a.abs_max, a.abs_sum, a.sq_sum = count, nonfinite, abs_max, abs_sum, sq_sum
        a.gram = gram
        if cross is not None:
            j.cross, j.done = cross, True
        else:
            j.finish()                         # partner scanned elsewhere, or none


def scan(path: str | os.PathLike, jobs: list[Job], workers: int | None = None) -> None:
    """Fill every job's ``acc`` (and ``cross`` of linked partners).  Files of at least
    :data:`PARALLEL_MIN_BYTES` are split among up to :data:`SCAN_WORKERS` processes (one
    per CPU): the per-tensor work is too fine-grained for threads, which spend more time
    handing the GIL over than they save.  Raises OSError/ValueError if the file is
    shorter than its header said."""
    tasks = plan(jobs)
    nbytes = sum(j.t.nbytes for task in tasks for j in task)
    n = min(SCAN_WORKERS if workers is None else workers, _cpus(), len(tasks))
    from lorascope.safe_open import open_file
    with open_file(path) as f, _blas_single_thread():
        if not tasks:
            return
        fd = f.fileno()
        if n > 1 and nbytes >= PARALLEL_MIN_BYTES and _can_fork():
            st = os.fstat(fd)
            _scan_parallel(os.fspath(path), (st.st_dev, st.st_ino, st.st_size), fd, tasks, n)
        else:
            _scan_tasks(fd, tasks)


def _scan_parallel(path: str, ident: tuple[int, int, int], fd: int,
                   tasks: list[list[Job]], n: int) -> None:
    """Forked workers and this process share the scan, work-stealing style: the file is
    cut into PIECES_PER_WORKER pieces per process; workers take pieces from the end and
    this process from the start, through two shared counters, so all finish together
    however busy each CPU is.  The pieces of a worker that could not start, died or
    stopped answering are scanned here."""
    pieces = _split(tasks, n * PIECES_PER_WORKER)
    done = [False] * len(pieces)
    workers = []
    try:
        ctx = _context()
        claim = ctx.Array("q", [0, len(pieces)])
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking a process with threads (OpenBLAS's); the
            # workers only run numpy and BLAS code, which is safe after fork
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork.*")
            for _ in range(n - 1):
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker, args=(path, ident, pieces, claim, send), daemon=True)
                proc.start()
                send.close()                   # so that a dead worker reads as EOF
                workers.append((proc, recv))
    except (OSError, RuntimeError, ValueError, ImportError, AssertionError):
        # no worker processes here (no semaphores; a daemonic process may not fork):
        # scan in this one
        claim = None
    try:
        start = time.perf_counter()
        if claim is not None:
            while (k := _claim(claim, front=True)) is not None:
                _scan_tasks(fd, pieces[k])
                done[k] = True
        patience = max(30.0, 10 * (time.perf_counter() - start))
        for _, recv in workers:
            try:
                if recv.poll(patience):
                    for k, results in recv.recv():
                        _apply(pieces[k], results)
                        done[k] = True
            except Exception:                  # noqa: BLE001 - died, or sent garbage:
                pass                           # its pieces are redone here
    except RuntimeError:
        pass                                   # the counters' lock is lost: redo the rest here
    finally:
        for proc, recv in workers:
            recv.close()
            if proc.is_alive():
                proc.kill()
            proc.join()
    for piece, ok in zip(pieces, done):
        if not ok:
            for task in piece:
                for j in task:
                    j.acc, j.cross, j.done = Acc(), None, False
            _scan_tasks(fd, piece)


def read_small(fd: int, t: TensorInfo, limit: int) -> np.ndarray | None:
    """A small tensor (an alpha, a Tucker core, a LyCORIS factor) as flat float64, read
    with ``pread`` so that no page of the map is touched; None if it is empty, holds more
    than ``limit`` elements or cannot be read."""
    if t.dtype not in NUMPY_DTYPES or not 0 < t.numel <= limit:
        return None
    try:
        data = os.pread(fd, t.nbytes, t.begin)
    except OSError:
        return None
    if len(data) != t.nbytes:
        return None
    a = np.frombuffer(data, NUMPY_DTYPES[t.dtype])
    if t.dtype == "BF16":
        a = (a.astype(np.uint32) << 16).view(np.float32)
    elif t.dtype == "F16":
        a = a.view(np.float16)
    return a.astype(np.float64)


def scalar(fd: int, t: TensorInfo) -> float | None:
    """The value of a one-element tensor (kohya's alpha); None if not a finite number."""
    a = read_small(fd, t, 1)
    v = float(a[0]) if a is not None else math.nan
    return v if math.isfinite(v) else None
